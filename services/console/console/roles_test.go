package console

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/callout-mail/callout/shared/waitfor"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/operate"
)

// walker is one identity of the role walk, with what the test expects of
// it (a model of the scope rules, written apart from scope.go).
type walker struct {
	name    string
	rank    int // 3 admin, 2 reseller, 1 domain
	ro      bool
	domains []string // nil: every domain
	c       *client  // with its API token
}

func (w *walker) has(d string) bool { return w.domains == nil || slices.Contains(w.domains, d) }

// manages: an admin every user, a reseller the domain users it made.
func (w *walker) manages(user, owner string) bool {
	return w.rank == 3 || w.rank == 2 && owner == w.name
}

// walkOp is one operation of openapi.yaml as the walk calls it on tenant
// A's resources.
type walkOp struct {
	method, path string // the path template, as in openapi.yaml
	min          int    // the least rank
	write        bool
	// call makes the request for w (prep included) and returns the path
	// and body to send.
	call func(w *walker) (string, any)
	// scoped says whether w reaches the resource (false: 404).
	scoped func(w *walker) bool
	// forbidden says whether w is refused with 403 past the role check.
	forbidden func(w *walker) bool
	ok        int
}

// roleWalk calls every operation of openapi.yaml as every role (admin,
// reseller, domain user, each also read-only) and as a user of another
// tenant, with API tokens, and checks each status against the model: 403
// below the operation's role or read-only on a write, 404 outside the
// scope, success inside. Every answer a tenant gets is also searched for
// the other tenant's domains and users.
func roleWalk(t *testing.T, sys *system, admin *client) {
	sys.console.users.cost = bcrypt.MinCost
	for _, d := range []string{"a.test", "b.test", "other.test"} {
		st, b := admin.call("PUT", "/api/domains/"+d, map[string]any{"policy": map[string]any{"mode": "callout", "route": []string{sys.dest.Addr()}, "bypass": []string{"abuse"}}})
		wantStatus(t, "create "+d, st, http.StatusOK, b)
	}
	const pw = "walk-password-1"
	mkUser := func(by *client, name, role string, ro bool, domains ...string) {
		t.Helper()
		st, b := by.call("POST", "/api/users", map[string]any{"name": name, "role": role, "read_only": ro, "domains": domains, "password": pw})
		wantStatus(t, "create user "+name, st, http.StatusCreated, b)
	}
	mkUser(admin, "res", "reseller", false, "a.test", "b.test")
	mkUser(admin, "res-ro", "reseller", true, "a.test")
	mkUser(admin, "other", "reseller", false, "other.test")
	mkUser(sys.login("res", pw), "dom", "domain", false, "a.test")
	mkUser(sys.login("res", pw), "dom-ro", "domain", true, "a.test")
	mkUser(sys.login("other", pw), "other-dom", "domain", false, "other.test")

	tokenOf := func(c *client) string {
		t.Helper()
		st, b := c.call("POST", "/api/tokens", map[string]any{"expires_in_days": 1, "label": "walk"})
		wantStatus(t, "make a token", st, http.StatusCreated, b)
		return decode[tokenMade](t, b).Secret
	}
	walkers := []*walker{
		{name: "admin", rank: 3, c: sys.withToken(sys.token)},
		{name: "viewer", rank: 3, ro: true, c: sys.withToken(tokenOf(sys.login("viewer", viewerPassword)))},
		{name: "res", rank: 2, domains: []string{"a.test", "b.test"}},
		{name: "res-ro", rank: 2, ro: true, domains: []string{"a.test"}},
		{name: "dom", rank: 1, domains: []string{"a.test"}},
		{name: "dom-ro", rank: 1, ro: true, domains: []string{"a.test"}},
		{name: "other", rank: 2, domains: []string{"other.test"}},
		{name: "other-dom", rank: 1, domains: []string{"other.test"}},
	}
	for _, w := range walkers[2:] {
		w.c = sys.withToken(tokenOf(sys.login(w.name, pw)))
	}
	domClient := walkers[4].c

	// A cache entry of a.test to look at and delete.
	must(admin.call("POST", "/api/verify", map[string]any{"address": "nobody@a.test"}))
	key := ""
	waitfor.Cond(t, 10*time.Second, func() bool { // the cachekeeper stores it after the answer
		page := decode[CachePage](t, must(admin.call("GET", "/api/cache?domain=a.test", nil)))
		for _, e := range page.Entries {
			if e.Verdict.Address != "" {
				key = url.QueryEscape(e.Key)
			}
		}
		return key != ""
	})

	rev := func(domain string) uint64 {
		return decode[operate.Stored](t, must(admin.call("GET", "/api/domains/"+domain, nil))).Revision
	}
	policy := func() map[string]any {
		st := decode[operate.Stored](t, must(admin.call("GET", "/api/domains/a.test", nil)))
		return map[string]any{"policy": st.Policy, "revision": st.Revision}
	}
	userRev := func() uint64 { return decode[userView](t, must(admin.call("GET", "/api/users/dom", nil))).Revision }
	ensureEntry := func(field string) {
		must(admin.call("POST", fmt.Sprintf("/api/domains/a.test/%s/walk?revision=%d", field, rev("a.test")), nil))
	}
	inA := func(w *walker) bool { return w.has("a.test") }
	fixed := func(p string) func(*walker) (string, any) { return func(*walker) (string, any) { return p, nil } }
	var lastToken string
	n := 0
	ops := []walkOp{
		{method: "GET", path: "/api/me", min: 1, call: fixed("/api/me"), ok: 200},
		{method: "POST", path: "/api/verify", min: 1, call: func(*walker) (string, any) {
			return "/api/verify", map[string]any{"address": "alice@a.test"}
		}, scoped: inA, ok: 200},
		{method: "GET", path: "/api/cache", min: 1, call: fixed("/api/cache?domain=a.test"), scoped: inA, ok: 200},
		{method: "GET", path: "/api/cache/entry", min: 1, call: fixed("/api/cache/entry?key=" + key), scoped: inA, ok: 200},
		{method: "DELETE", path: "/api/cache/entry", min: 1, write: true, call: fixed("/api/cache/entry?key=" + key), scoped: inA, ok: 200},
		{method: "POST", path: "/api/flush", min: 1, write: true, call: func(*walker) (string, any) {
			return "/api/flush", map[string]any{"scope": "domain", "domain": "a.test", "only": "invalid"}
		}, scoped: inA, ok: 200},
		{method: "GET", path: "/api/domains", min: 1, call: fixed("/api/domains"), ok: 200},
		{method: "GET", path: "/api/domains/{domain}", min: 1, call: fixed("/api/domains/a.test"), scoped: inA, ok: 200},
		{method: "PUT", path: "/api/domains/{domain}", min: 1, write: true, call: func(*walker) (string, any) {
			return "/api/domains/a.test", policy()
		}, scoped: inA, ok: 200},
		{method: "DELETE", path: "/api/domains/{domain}", min: 3, write: true, call: fixed("/api/domains/a.test?revision=1"), scoped: inA, ok: 409},
		{method: "POST", path: "/api/domains/{domain}/monitor", min: 1, write: true, call: func(*walker) (string, any) {
			return "/api/domains/a.test/monitor", map[string]any{"on": false, "revision": rev("a.test")}
		}, scoped: inA, ok: 200},
		{method: "GET", path: "/api/stats", min: 3, call: fixed("/api/stats"), ok: 200},
		{method: "GET", path: "/api/stats/history", min: 3, call: fixed("/api/stats/history"), ok: 200},
		{method: "GET", path: "/api/hosts", min: 3, call: fixed("/api/hosts"), ok: 200},
		{method: "GET", path: "/api/regions", min: 3, call: fixed("/api/regions"), ok: 200},
		{method: "GET", path: "/api/audit", min: 1, call: fixed("/api/audit"), ok: 200},
		{method: "GET", path: "/api/decisions", min: 1, call: fixed("/api/decisions?domain=a.test"), scoped: inA, ok: 200},
		{method: "POST", path: "/api/decisions/erase", min: 3, write: true, call: func(*walker) (string, any) {
			return "/api/decisions/erase", map[string]any{"domain": "a.test"}
		}, ok: 200},
		{method: "GET", path: "/api/domains/{domain}/history", min: 1, call: fixed("/api/domains/a.test/history?days=2"), scoped: inA, ok: 200},
		{method: "GET", path: "/api/history", min: 3, call: fixed("/api/history"), ok: 200},
		{method: "GET", path: "/api/users", min: 2, call: fixed("/api/users"), ok: 200},
		{method: "POST", path: "/api/users", min: 2, write: true, call: func(*walker) (string, any) {
			n++
			return "/api/users", map[string]any{"name": fmt.Sprintf("made-%d", n), "role": "domain", "domains": []string{"a.test"}, "password": pw}
		}, forbidden: func(w *walker) bool { return !inA(w) }, ok: 201},
		{method: "GET", path: "/api/users/{name}", min: 2, call: fixed("/api/users/dom"), scoped: func(w *walker) bool { return w.manages("dom", "res") }, ok: 200},
		{method: "PATCH", path: "/api/users/{name}", min: 2, write: true, call: func(*walker) (string, any) {
			return "/api/users/dom", map[string]any{"revision": userRev(), "disabled": false}
		}, scoped: func(w *walker) bool { return w.manages("dom", "res") }, ok: 200},
		{method: "DELETE", path: "/api/users/{name}", min: 2, write: true, call: fixed("/api/users/dom?revision=1"), scoped: func(w *walker) bool { return w.manages("dom", "res") }, ok: 409},
		{method: "GET", path: "/api/tokens", min: 1, call: fixed("/api/tokens"), ok: 200},
		{method: "POST", path: "/api/tokens", min: 1, call: func(*walker) (string, any) {
			return "/api/tokens", map[string]any{"expires_in_days": 1}
		}, ok: 201},
		{method: "DELETE", path: "/api/tokens/{id}", min: 1, call: func(*walker) (string, any) {
			st, b := domClient.call("POST", "/api/tokens", map[string]any{"expires_in_days": 1})
			wantStatus(t, "a token to revoke", st, http.StatusCreated, b)
			lastToken = decode[tokenMade](t, b).ID
			return "/api/tokens/" + lastToken, nil
		}, scoped: func(w *walker) bool { return w.name == "dom" || w.manages("dom", "res") },
			forbidden: func(w *walker) bool { return w.ro && w.name != "dom" }, ok: 204},
		{method: "POST", path: "/api/logout", min: 1, call: fixed("/api/logout"), ok: 204},
	}
	for _, field := range []string{"mailboxes", "bypass"} {
		ops = append(ops,
			walkOp{method: "GET", path: "/api/domains/{domain}/" + field, min: 1, call: fixed("/api/domains/a.test/" + field), scoped: inA, ok: 200},
			walkOp{method: "PUT", path: "/api/domains/{domain}/" + field, min: 1, write: true, call: func(*walker) (string, any) {
				return fmt.Sprintf("/api/domains/a.test/%s?dry_run=true&mode=merge&revision=%d", field, rev("a.test")), "walk\n"
			}, scoped: inA, ok: 200},
			walkOp{method: "POST", path: "/api/domains/{domain}/" + field + "/{entry}", min: 1, write: true, call: func(*walker) (string, any) {
				return fmt.Sprintf("/api/domains/a.test/%s/walk?revision=%d", field, rev("a.test")), nil
			}, scoped: inA, ok: 200},
			walkOp{method: "DELETE", path: "/api/domains/{domain}/" + field + "/{entry}", min: 1, write: true, call: func(*walker) (string, any) {
				ensureEntry(field)
				return fmt.Sprintf("/api/domains/a.test/%s/walk?revision=%d", field, rev("a.test")), nil
			}, scoped: inA, ok: 200},
		)
	}
	if scopedOps := len(ops); scopedOps < 30 {
		t.Fatalf("%d operations in the walk", scopedOps)
	}
	walked := map[string]bool{}
	for _, op := range ops {
		walked[op.method+" "+op.path] = true
		for _, w := range walkers {
			want := op.ok
			switch {
			case w.rank < op.min, op.write && w.ro:
				want = http.StatusForbidden
			case op.scoped != nil && !op.scoped(w):
				want = http.StatusNotFound
			case op.forbidden != nil && op.forbidden(w):
				want = http.StatusForbidden
			}
			path, body := op.call(w)
			st, b := w.c.call(op.method, path, body)
			if st != want {
				t.Errorf("%s %s as %s: %d, want %d: %s", op.method, path, w.name, st, want, b)
			}
			if st < 300 {
				for _, foreign := range foreignNames(w) {
					if strings.Contains(string(b), foreign) {
						t.Errorf("%s %s as %s: the answer names %q of another tenant: %s", op.method, path, w.name, foreign, b)
					}
				}
			}
		}
	}
	// Every operation of the document is in the walk.
	for _, op := range specOperations(t) {
		if !walked[op] && op != "GET /api/openapi.yaml" && op != "POST /api/login" {
			t.Errorf("%s is not in the role walk", op)
		}
	}
}

// foreignNames are what a tenant's answers must never name: the other
// tenant's domain and users (nothing for an admin).
func foreignNames(w *walker) []string {
	switch {
	case w.domains == nil:
		return nil
	case w.has("other.test"):
		return []string{"a.test", "b.test", `"res"`, `"dom"`}
	}
	return []string{"other.test", `"other"`, `"other-dom"`}
}

// specOperations are "METHOD /path" of every operation in openapi.yaml.
func specOperations(t *testing.T) []string {
	t.Helper()
	var out []string
	path := ""
	for _, line := range strings.Split(string(mustRead(t, "openapi.yaml")), "\n") {
		if strings.HasPrefix(line, "  /api/") {
			path = strings.TrimSuffix(strings.TrimSpace(line), ":")
		}
		for _, m := range []string{"get", "put", "post", "delete", "patch"} {
			if path != "" && line == "    "+m+":" {
				out = append(out, strings.ToUpper(m)+" "+path)
			}
		}
	}
	return out
}

// A user disabled, removed or given a new password is logged out at once,
// and its tokens stop working; an expired token never works.
func TestAccountLifecycle(t *testing.T) {
	sys := startSystem(t, nil)
	sys.console.users.cost = bcrypt.MinCost
	admin := sys.login("admin", adminPassword)
	must(admin.call("PUT", "/api/domains/life.test", map[string]any{"policy": map[string]any{"mode": "off"}}))
	st, b := admin.call("POST", "/api/users", map[string]any{"name": "cust", "role": "domain", "domains": []string{"life.test"}, "password": "first-password"})
	wantStatus(t, "create", st, http.StatusCreated, b)
	cust := sys.login("cust", "first-password")
	tok := sys.withToken(decode[tokenMade](t, must(cust.call("POST", "/api/tokens", map[string]any{"expires_in_days": 1}))).Secret)
	works := func(c *client) bool { st, _ := c.call("GET", "/api/me", nil); return st == http.StatusOK }
	if !works(cust) || !works(tok) {
		t.Fatal("a new user's session or token does not work")
	}
	set := func(body map[string]any) {
		t.Helper()
		body["revision"] = decode[userView](t, must(admin.call("GET", "/api/users/cust", nil))).Revision
		st, b := admin.call("PATCH", "/api/users/cust", body)
		wantStatus(t, "change", st, http.StatusOK, b)
	}
	set(map[string]any{"disabled": true})
	if works(cust) || works(tok) {
		t.Fatal("a disabled user's session or token still works")
	}
	if st, _ := sys.anonymous().call("POST", "/api/login", map[string]string{"user": "cust", "password": "first-password"}); st != http.StatusUnauthorized {
		t.Fatalf("a disabled user logs in: %d", st)
	}
	set(map[string]any{"disabled": false})
	if !works(tok) || works(cust) {
		t.Fatal("after enabling: the token should work again, the ended session not")
	}
	cust = sys.login("cust", "first-password")
	set(map[string]any{"password": "second-password"})
	if works(cust) {
		t.Fatal("a session outlived its password")
	}
	if st, _ := sys.anonymous().call("POST", "/api/login", map[string]string{"user": "cust", "password": "first-password"}); st != http.StatusUnauthorized {
		t.Fatalf("the old password works: %d", st)
	}
	sys.login("cust", "second-password")
	// An expired token, as the bucket would hold it a day later.
	secret, id, hash := accounts.NewToken()
	sys.console.users.table.PutToken(accounts.Token{ID: id, User: "cust", Role: accounts.Domain, Expires: time.Now().Add(-time.Second), Hash: hash})
	if works(sys.withToken(secret)) {
		t.Fatal("an expired token works")
	}
	rev := decode[userView](t, must(admin.call("GET", "/api/users/cust", nil))).Revision
	st, b = admin.call("DELETE", fmt.Sprintf("/api/users/cust?revision=%d", rev), nil)
	wantStatus(t, "remove", st, http.StatusNoContent, b)
	if works(tok) {
		t.Fatal("a removed user's token works")
	}
	// Every change is in the audit trail, without hashes.
	evs := string(must(admin.call("GET", "/api/audit?what=user.set", nil)))
	if !strings.Contains(evs, "password reset") || strings.Contains(evs, "$2a$") {
		t.Fatalf("audit of user changes: %s", evs)
	}
}
