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
	"sort"
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
	// dummy is compared for an unknown user: a hash of the highest cost
	// among the users', so that the time does not tell which names exist.
	dummy   []byte
	once    sync.Once
	compare func(hash, password []byte) error // bcrypt's; tests count the work
}

// minCost is the bcrypt cost a password hash should have at least.
const minCost = 12

// WeakHashes names the users whose hash costs less than minCost.
func (u *Users) WeakHashes() []string {
	var out []string
	for name, user := range u.byName {
		if c, _ := bcrypt.Cost(user.hash); c < minCost {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// Len is the number of users.
func (u *Users) Len() int { return len(u.byName) }

// ParseUsers reads users, one per line or space-separated entry:
// name:role:bcrypt-hash[:sha256-hex-of-api-token]. # starts a comment.
func ParseUsers(text string) (*Users, error) {
	u := &Users{byName: map[string]*User{}, byToken: map[[32]byte]*User{}, compare: bcrypt.CompareHashAndPassword}
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

// prepare makes the hash an unknown user's password is compared with: of
// the highest cost among the users'. The console does it once at start
// (a cost-12 hash takes a quarter of a second; checking the settings need
// not), Check on first need.
func (u *Users) prepare() {
	u.once.Do(func() {
		cost := bcrypt.MinCost
		for _, user := range u.byName {
			if c, _ := bcrypt.Cost(user.hash); c > cost {
				cost = c
			}
		}
		u.dummy, _ = bcrypt.GenerateFromPassword([]byte("no such user"), cost) // fails only above bcrypt's maximum cost, which Cost refused
	})
}

// Check returns the user whose password this is, or nil.
func (u *Users) Check(name, password string) *User {
	user := u.byName[name]
	if user == nil {
		u.prepare()
		_ = u.compare(u.dummy, []byte(password))
		return nil
	}
	if u.compare(user.hash, []byte(password)) != nil {
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
	b, err := bcrypt.GenerateFromPassword([]byte(password), minCost)
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
	mu       sync.Mutex
	clients  *perMinute          // attempts per client address
	accounts map[string]*account // failures per user name, known or not
	now      func() time.Time
}

// perMinute counts what each key did this minute, up to max (safe for
// concurrent use). It remembers at most maxLimiterClients keys: a flood of
// new ones is not counted once full, known ones still are.
type perMinute struct {
	mu     sync.Mutex
	max    int
	window time.Time
	counts map[string]int
}

func newPerMinute(max int) *perMinute { return &perMinute{max: max, counts: map[string]int{}} }

// take counts one for key and reports whether it was under the limit.
func (p *perMinute) take(key string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w := now.Truncate(time.Minute); !w.Equal(p.window) {
		p.window, p.counts = w, map[string]int{}
	}
	if p.counts[key] >= p.max {
		return false
	}
	if _, ok := p.counts[key]; ok || len(p.counts) < maxLimiterClients {
		p.counts[key]++
	}
	return true
}

// give takes one back for key.
func (p *perMinute) give(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.counts[key] > 0 {
		p.counts[key]--
	}
}

func (p *perMinute) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts = map[string]int{}
}

// account is one user name's run of failed logins.
type account struct {
	fails int
	last  time.Time
}

const maxLimiterClients = 100000

// An account's first failures cost nothing; each one after them doubles
// the wait before the next attempt at it, up to maxAccountBackoff. A
// wait, never a lockout: an attacker can slow an account's logins down,
// not shut its owner out.
const (
	accountFreeFailures = 5
	maxAccountBackoff   = time.Minute
)

var errTooMany = errors.New("too many failed logins from this address; try again in a minute")

func newLoginLimiter(max int) *loginLimiter {
	return &loginLimiter{clients: newPerMinute(max), accounts: map[string]*account{}, now: time.Now}
}

// reset forgets every count.
func (l *loginLimiter) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clients.reset()
	l.accounts = map[string]*account{}
}

func (a *account) wait() time.Duration {
	if a.fails < accountFreeFailures {
		return 0
	}
	return min(time.Second<<min(a.fails-accountFreeFailures, 10), maxAccountBackoff)
}

// attempt counts a login attempt before its password is checked, so that
// attempts made at once cannot pass the limits; done then says how it
// went. It refuses an attempt past the client's limit for this minute or
// within the account's back-off.
func (l *loginLimiter) attempt(client, name string) (done func(ok bool), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	a := l.accounts[name]
	if a != nil {
		if until := a.last.Add(a.wait()); now.Before(until) {
			return nil, fmt.Errorf("too many failed logins for this user; try again in %s", until.Sub(now).Round(time.Second)+time.Second)
		}
	}
	if !l.clients.take(client, now) {
		return nil, errTooMany
	}
	if a == nil && len(l.accounts) < maxLimiterClients {
		a = &account{}
		l.accounts[name] = a
	}
	if a != nil {
		a.fails++
		a.last = now
	}
	return func(ok bool) {
		if !ok {
			return
		}
		l.clients.give(client)
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.accounts, name)
	}, nil
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
