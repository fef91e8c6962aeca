package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/wire"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
)

// After a login only a same-origin path is followed: no scheme, no host,
// no control characters, no backslashes, no "//" after decoding.
func TestLocalPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/domains?x=1", "/domains?x=1"},
		{"/", "/"},
		{"", "/"},
		{"//evil.example", "/"},
		{"/\t/evil.example", "/"}, // next=/%09/evil.example after form decoding
		{"/\n/evil.example", "/"},
		{"/\r\n/evil.example", "/"},
		{"/\\evil.example", "/"},
		{"/x\\y", "/"},
		{"/%2F/evil.example", "/"}, // "//evil.example" once decoded
		{"/%2f/evil.example", "/"},
		{"/%09/evil.example", "/"},
		{"/%5C/evil.example", "/"},
		{"https://evil.example/", "/"},
		{"javascript:alert(1)", "/"},
		{"/\x00", "/"},
		{" /x", "/"},
	} {
		if got := localPath(tc.in); got != tc.want {
			t.Errorf("localPath(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// An unknown user's login does the same bcrypt work as a known one's:
// the time does not tell which user names exist.
func TestUnknownUserCostsTheSame(t *testing.T) {
	h, err := bcrypt.GenerateFromPassword([]byte("right"), 10)
	if err != nil {
		t.Fatal(err)
	}
	u, err := ParseUsers("alice:admin:" + string(h))
	if err != nil {
		t.Fatal(err)
	}
	u.cost = 10 // the cost of the hashes the console makes, as alice's
	var costs []int
	u.compare = func(hash, pw []byte) error {
		c, _ := bcrypt.Cost(hash)
		costs = append(costs, c)
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	u.Check("alice", "wrong")
	u.Check("mallory", "wrong")
	if len(costs) != 2 || costs[0] != costs[1] {
		t.Fatalf("bcrypt costs, known then unknown user: %v", costs)
	}
	// Cost 10 is below what the console asks for: it says so at start.
	if w := u.WeakHashes(); len(w) != 1 || w[0] != "alice" {
		t.Fatalf("weak hashes: %v", w)
	}
}

func limitedServer(t *testing.T, rate int) *Server {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte("right"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users, err := ParseUsers("alice:admin:" + string(h) + " bob:viewer:" + string(h))
	if err != nil {
		t.Fatal(err)
	}
	return &Server{cfg: Config{SessionTTL: time.Hour}, log: quiet, users: users, sess: newSessions(time.Hour),
		limit: newLoginLimiter(rate), flushes: newPerMinute(3), m: newMetrics(prometheus.NewRegistry())}
}

// A user's flushes past FLUSH_RATE a minute are refused, not run (and so
// not audited); another user's are not.
func TestFlushRateLimited(t *testing.T) {
	s := limitedServer(t, 10)
	s.cfg.FlushRate = 3
	ua, _ := s.users.table.User("alice")
	ub, _ := s.users.table.User("bob")
	alice, bob := &identity{user: ua, scope: scopeOf(ua, nil)}, &identity{user: ub, scope: scopeOf(ub, nil)}
	now := time.Now()
	for i := 0; i < 3; i++ {
		if !s.flushes.take(alice.user.Name, now) {
			t.Fatalf("flush %d refused", i)
		}
	}
	_, err := s.flush(httptest.NewRequest("POST", "/api/flush", nil), alice, wire.FlushCommand{Scope: wire.ScopeAll})
	var he *httpError
	if !errors.As(err, &he) || he.status != http.StatusTooManyRequests {
		t.Fatalf("the fourth flush in a minute: %v", err)
	}
	if !s.flushes.take(bob.user.Name, now) {
		t.Fatal("another user's flush refused")
	}
	if !s.flushes.take(alice.user.Name, now.Add(time.Minute)) {
		t.Fatal("still refused a minute later")
	}
}

func loginRequest(remote string) *http.Request {
	r := httptest.NewRequest("POST", "/api/login", nil)
	r.RemoteAddr = remote
	return r
}

// Parallel attempts cannot pass the limit: each is counted before the
// password is checked.
func TestParallelLoginsLimited(t *testing.T) {
	s := limitedServer(t, 5)
	slow := make(chan struct{})
	s.users.compare = func(hash, pw []byte) error {
		<-slow // every attempt is inside the password check at once
		return bcrypt.CompareHashAndPassword(hash, pw)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	tried := 0
	for i := 0; i < 40; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := s.login(loginRequest("192.0.2.7:1000"), "alice", "wrong")
			var he *httpError
			if errors.As(err, &he) && he.status == http.StatusUnauthorized {
				mu.Lock()
				tried++
				mu.Unlock()
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let them all reach the check or the limit
	close(slow)
	wg.Wait()
	if tried > 5 {
		t.Fatalf("%d parallel attempts reached the password check, limit 5", tried)
	}
}

// Failures for one account slow further attempts at it down, from any
// address, but never lock it: its owner gets in after the back-off; and
// another account is not slowed.
func TestAccountBackoff(t *testing.T) {
	s := limitedServer(t, 1000)
	now := time.Unix(1_000_000, 0)
	s.limit.now = func() time.Time { return now }
	for i := 0; i < accountFreeFailures; i++ {
		if _, _, err := s.login(loginRequest(fmt.Sprintf("198.51.100.%d:1", i)), "alice", "wrong"); err == nil || !strings.Contains(err.Error(), "wrong user name or password") {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	// The next attempt at alice, even with the right password and from
	// elsewhere, waits.
	if _, _, err := s.login(loginRequest("203.0.113.9:1"), "alice", "right"); err == nil || !strings.Contains(err.Error(), "try again") {
		t.Fatalf("no back-off after %d failures: %v", accountFreeFailures, err)
	}
	if _, _, err := s.login(loginRequest("203.0.113.9:1"), "bob", "right"); err != nil {
		t.Fatalf("another account was slowed: %v", err)
	}
	now = now.Add(maxAccountBackoff)
	if _, _, err := s.login(loginRequest("203.0.113.9:1"), "alice", "right"); err != nil {
		t.Fatalf("locked out after the back-off: %v", err)
	}
}

// A body is one JSON document: a second value after it is refused.
func TestTrailingJSONRefused(t *testing.T) {
	for _, body := range []string{`{"address":"a@b.example"} {"address":"x@y.example"}`, `{"address":"a@b.example"}x`, `{"address":"a@b.example"}]`} {
		r := httptest.NewRequest("POST", "/api/verify", strings.NewReader(body))
		var v struct {
			Address string `json:"address"`
		}
		if err := decodeJSON(r, &v); err == nil {
			t.Errorf("%s: taken", body)
		}
	}
	r := httptest.NewRequest("POST", "/api/verify", strings.NewReader("{\"address\":\"a@b.example\"}\n"))
	var v struct {
		Address string `json:"address"`
	}
	if err := decodeJSON(r, &v); err != nil || v.Address != "a@b.example" {
		t.Fatalf("one document with a newline: %v", err)
	}
}

// Behind a TLS proxy listed in TRUSTED_PROXIES the console reads the
// client's address and scheme from X-Forwarded-For and -Proto: the session
// cookie is Secure and HSTS is sent. From anyone else the headers count
// for nothing.
func TestTrustedProxies(t *testing.T) {
	s := limitedServer(t, 10)
	var err error
	if s.proxies, err = parseProxies([]string{"10.1.0.0/16", "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		remote, xff, proto string
		client             string
		https              bool
	}{
		{"127.0.0.1:5000", "192.0.2.50", "https", "192.0.2.50", true},
		{"10.1.2.3:5000", "198.51.100.1, 192.0.2.50", "https", "192.0.2.50", true},
		{"10.1.2.3:5000", "192.0.2.50, 10.1.9.9", "http", "192.0.2.50", false},
		{"192.0.2.99:5000", "192.0.2.50", "https", "192.0.2.99", false}, // not a proxy: headers ignored
		{"127.0.0.1:5000", "", "", "127.0.0.1", false},
		{"127.0.0.1:5000", "not an address", "https", "127.0.0.1", true},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tc.remote
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if tc.proto != "" {
			r.Header.Set("X-Forwarded-Proto", tc.proto)
		}
		client, https := s.clientOf(r)
		if client != tc.client || https != tc.https {
			t.Errorf("%+v: client %s https %v", tc, client, https)
		}
	}
	r := httptest.NewRequest("GET", "/static/none", nil)
	r.RemoteAddr, r.Header["X-Forwarded-Proto"] = "127.0.0.1:5000", []string{"https"}
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, r)
	if w.Header().Get("Strict-Transport-Security") == "" {
		t.Error("no HSTS behind a TLS proxy")
	}
	w = httptest.NewRecorder()
	s.setSessionCookie(w, r, "id", 60)
	if c := w.Result().Cookies(); len(c) != 1 || !c[0].Secure {
		t.Errorf("session cookie not Secure behind a TLS proxy: %v", c)
	}
}
