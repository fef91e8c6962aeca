package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Role is what a console user may do.
type Role string

const (
	RoleAdmin  Role = "admin"  // everything
	RoleViewer Role = "viewer" // read and verify; no change, no flush, no traced callout
)

// User is one console user.
type User struct {
	Name  string
	Role  Role
	hash  []byte // bcrypt of the password
	token []byte // sha256 of the API token, or nil
}

// Users are the console's users by name.
type Users struct {
	byName  map[string]*User
	byToken map[[32]byte]*User
}

// Len is the number of users.
func (u *Users) Len() int { return len(u.byName) }

// ParseUsers reads users, one per line or space-separated entry:
// name:role:bcrypt-hash[:sha256-hex-of-api-token]. # starts a comment.
func ParseUsers(text string) (*Users, error) {
	u := &Users{byName: map[string]*User{}, byToken: map[[32]byte]*User{}}
	for n, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		for _, f := range strings.Fields(line) {
			parts := strings.Split(f, ":")
			if len(parts) < 3 || len(parts) > 4 {
				return nil, fmt.Errorf("line %d: want name:role:bcrypt-hash[:token-sha256]", n+1)
			}
			user := &User{Name: parts[0], Role: Role(parts[1]), hash: []byte(parts[2])}
			if user.Name == "" || strings.ContainsAny(user.Name, "<>&\"'") {
				return nil, fmt.Errorf("line %d: a user name is needed, without <>&\"'", n+1)
			}
			if user.Role != RoleAdmin && user.Role != RoleViewer {
				return nil, fmt.Errorf("line %d: user %s: role %q (want admin or viewer)", n+1, user.Name, user.Role)
			}
			if _, err := bcrypt.Cost(user.hash); err != nil {
				return nil, fmt.Errorf("line %d: user %s: not a bcrypt hash: %v", n+1, user.Name, err)
			}
			if len(parts) == 4 {
				t, err := hex.DecodeString(parts[3])
				if err != nil || len(t) != sha256.Size {
					return nil, fmt.Errorf("line %d: user %s: the token field is the SHA-256 of the token in hex", n+1, user.Name)
				}
				user.token = t
				u.byToken[[32]byte(t)] = user
			}
			if _, dup := u.byName[user.Name]; dup {
				return nil, fmt.Errorf("line %d: user %s given twice", n+1, user.Name)
			}
			u.byName[user.Name] = user
		}
	}
	return u, nil
}

// dummyHash keeps a login for an unknown user as slow as for a known one.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("no such user"), bcrypt.MinCost+4)

// Check returns the user whose password this is, or nil.
func (u *Users) Check(name, password string) *User {
	user := u.byName[name]
	if user == nil {
		_ = bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		return nil
	}
	if bcrypt.CompareHashAndPassword(user.hash, []byte(password)) != nil {
		return nil
	}
	return user
}

// ByToken returns the user of an API token, or nil.
func (u *Users) ByToken(token string) *User {
	if token == "" {
		return nil
	}
	return u.byToken[sha256.Sum256([]byte(token))]
}

// HashPassword returns a users-file line's hash for a password.
func HashPassword(password string) (string, error) {
	b, err := bcrypt.GenerateFromPassword([]byte(password), 12)
	return string(b), err
}

// NewToken returns a new API token and the SHA-256 (hex) the users file keeps.
func NewToken() (token, digest string) {
	token = randomString(32)
	sum := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(sum[:])
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// session is one login.
type session struct {
	user    *User
	csrf    string
	expires time.Time
}

// sessions are the logins of this console instance (in memory: a
// restarted console asks its users to log in again).
type sessions struct {
	mu  sync.Mutex
	ttl time.Duration
	m   map[string]*session
}

func newSessions(ttl time.Duration) *sessions {
	return &sessions{ttl: ttl, m: map[string]*session{}}
}

func (s *sessions) create(u *User, now time.Time) (string, *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, se := range s.m { // sweep: logins are few
		if now.After(se.expires) {
			delete(s.m, id)
		}
	}
	id := randomString(32)
	se := &session{user: u, csrf: randomString(24), expires: now.Add(s.ttl)}
	s.m[id] = se
	return id, se
}

func (s *sessions) get(id string, now time.Time) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.m[id]
	if se == nil {
		return nil
	}
	if now.After(se.expires) {
		delete(s.m, id)
		return nil
	}
	return se
}

func (s *sessions) remove(id string) {
	s.mu.Lock()
	delete(s.m, id)
	s.mu.Unlock()
}

func sameToken(a, b string) bool {
	return len(a) > 0 && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// loginLimiter counts failed logins per client address (IPv6 per /64)
// in fixed one-minute windows, in bounded memory.
type loginLimiter struct {
	mu     sync.Mutex
	max    int
	window time.Time
	fails  map[string]int
}

const maxLimiterClients = 100000

var errTooMany = errors.New("too many failed logins from this address; try again in a minute")

func newLoginLimiter(max int) *loginLimiter {
	return &loginLimiter{max: max, fails: map[string]int{}}
}

func clientKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	if ip != nil && ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String()
	}
	return host
}

func (l *loginLimiter) roll(now time.Time) {
	if w := now.Truncate(time.Minute); !w.Equal(l.window) {
		l.window, l.fails = w, map[string]int{}
	}
}

// allowed says whether the client may try to log in now.
func (l *loginLimiter) allowed(client string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.roll(now)
	return l.fails[client] < l.max
}

// failed counts a failed login.
func (l *loginLimiter) failed(client string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.roll(now)
	if len(l.fails) >= maxLimiterClients {
		if _, ok := l.fails[client]; !ok {
			return // full: a flood of new addresses is not remembered; known ones still are
		}
	}
	l.fails[client]++
}
