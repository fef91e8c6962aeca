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

	"github.com/callout-mail/callout/shared/accounts"
)

// Users are the console's users: the users file's (the bootstrap, read
// at start) and the accounts bucket's (kept by a watch), and the tokens.
type Users struct {
	table *accounts.Table
	// fileTokens are the users file's API tokens (SHA-256) by user name:
	// a file user's token has the user's whole scope and no expiry.
	fileTokens map[[32]byte]string
	// dummy is compared for an unknown user: a hash of the highest cost
	// among the users' and new hashes', so that the time does not tell
	// which names exist.
	dummy   []byte
	once    sync.Once
	compare func(hash, password []byte) error // bcrypt's; tests count the work
	cost    int                               // of new hashes
}

// WeakHashes names the users whose hash costs less than accounts.MinCost.
func (u *Users) WeakHashes() []string {
	var out []string
	for _, user := range u.table.Users() {
		if c, _ := bcrypt.Cost([]byte(user.Hash)); c < accounts.MinCost {
			out = append(out, user.Name)
		}
	}
	sort.Strings(out)
	return out
}

// Len is the number of users.
func (u *Users) Len() int { return len(u.table.Users()) }

// ParseUsers reads the users file: one user per line or space-separated
// entry, name:role:bcrypt-hash[:sha256-hex-of-api-token], role admin or
// viewer (an admin that only reads). # starts a comment.
func ParseUsers(text string) (*Users, error) {
	u := &Users{fileTokens: map[[32]byte]string{}, compare: bcrypt.CompareHashAndPassword, cost: accounts.MinCost}
	var list []accounts.User
	seen := map[string]bool{}
	for n, line := range strings.Split(text, "\n") {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		for _, f := range strings.Fields(line) {
			parts := strings.Split(f, ":")
			if len(parts) < 3 || len(parts) > 4 {
				return nil, fmt.Errorf("line %d: want name:role:bcrypt-hash[:token-sha256]", n+1)
			}
			user := accounts.User{Name: parts[0], Role: accounts.Admin, Hash: parts[2]}
			if err := accounts.CheckName(user.Name); err != nil {
				return nil, fmt.Errorf("line %d: %w", n+1, err)
			}
			switch parts[1] {
			case "admin":
			case "viewer":
				user.ReadOnly = true
			default:
				return nil, fmt.Errorf("line %d: user %s: role %q (want admin or viewer; other roles are made in the console)", n+1, user.Name, parts[1])
			}
			if _, err := bcrypt.Cost([]byte(user.Hash)); err != nil {
				return nil, fmt.Errorf("line %d: user %s: not a bcrypt hash: %v", n+1, user.Name, err)
			}
			if len(parts) == 4 {
				t, err := hex.DecodeString(parts[3])
				if err != nil || len(t) != sha256.Size {
					return nil, fmt.Errorf("line %d: user %s: the token field is the SHA-256 of the token in hex", n+1, user.Name)
				}
				u.fileTokens[[32]byte(t)] = user.Name
			}
			if seen[user.Name] {
				return nil, fmt.Errorf("line %d: user %s given twice", n+1, user.Name)
			}
			seen[user.Name] = true
			list = append(list, user)
		}
	}
	u.table = accounts.NewTable(list)
	return u, nil
}

// prepare makes the hash an unknown user's password is compared with: of
// the highest cost among the file's users and new hashes. The console
// does it once at start (a cost-12 hash takes a quarter of a second;
// checking the settings need not), Check on first need.
func (u *Users) prepare() {
	u.once.Do(func() {
		cost := max(u.cost, bcrypt.MinCost)
		for _, user := range u.table.FileUsers() {
			if c, _ := bcrypt.Cost([]byte(user.Hash)); c > cost {
				cost = c
			}
		}
		u.dummy, _ = bcrypt.GenerateFromPassword([]byte("no such user"), cost) // fails only above bcrypt's maximum cost, which Cost refused
	})
}

// Check returns the user whose password this is, or false. A disabled
// user's password is compared too (the time tells nothing) and refused.
func (u *Users) Check(name, password string) (accounts.User, bool) {
	user, ok := u.table.User(name)
	if !ok || user.Hash == "" {
		u.prepare()
		_ = u.compare(u.dummy, []byte(password))
		return accounts.User{}, false
	}
	if u.compare([]byte(user.Hash), []byte(password)) != nil || user.Disabled {
		return accounts.User{}, false
	}
	return user, true
}

// ByToken returns the user of an API token and the token (nil for a users
// file's token), or false: unknown, expired, or its user gone or disabled.
func (u *Users) ByToken(secret string, now time.Time) (accounts.User, *accounts.Token, bool) {
	if secret == "" {
		return accounts.User{}, nil, false
	}
	if name, ok := u.fileTokens[sha256.Sum256([]byte(secret))]; ok {
		user, ok := u.table.User(name)
		return user, nil, ok
	}
	id, ok := accounts.TokenID(secret)
	if !ok {
		return accounts.User{}, nil, false
	}
	tok, ok := u.table.Token(id)
	if !ok || !tok.Matches(secret) || !now.Before(tok.Expires) {
		return accounts.User{}, nil, false
	}
	user, ok := u.table.User(tok.User)
	if !ok || user.Disabled {
		return accounts.User{}, nil, false
	}
	return user, &tok, true
}

// HashPassword returns a users-file line's hash for a password.
func HashPassword(password string) (string, error) { return accounts.HashPassword(password, 0) }

// NewToken returns a new users-file API token and the SHA-256 (hex) the
// file keeps.
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

// session is one login. It names its user, read again on every request,
// so that a user disabled, removed or given a new password is logged out
// at once; hash is the password hash it logged in with.
type session struct {
	user    string
	hash    string
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

func (s *sessions) create(u accounts.User, now time.Time) (string, *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, se := range s.m { // sweep: logins are few
		if now.After(se.expires) {
			delete(s.m, id)
		}
	}
	id := randomString(32)
	se := &session{user: u.Name, hash: u.Hash, csrf: randomString(24), expires: now.Add(s.ttl)}
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
