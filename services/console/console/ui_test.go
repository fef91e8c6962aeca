package console

import (
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// page fetches a page as a logged-in browser would.
func (c *client) page(method, path string, form url.Values) (int, string, *http.Response) {
	c.sys.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, c.sys.http.URL+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.sys.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// formLogin logs in through the login page and returns the form token.
func (s *system) formLogin(user, password string) (*client, string) {
	s.t.Helper()
	c := s.anonymous()
	st, _, resp := c.page("POST", "/login", url.Values{"user": {user}, "password": {password}, "next": {"/domains"}})
	if st != http.StatusSeeOther || resp.Header.Get("Location") != "/domains" {
		s.t.Fatalf("login: %d to %q", st, resp.Header.Get("Location"))
	}
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == cookieName {
			cookie = ck
		}
	}
	if cookie == nil || !cookie.HttpOnly || cookie.SameSite != http.SameSiteStrictMode {
		s.t.Fatalf("session cookie %+v: want HttpOnly and SameSite=Strict", cookie)
	}
	_, html, _ := c.page("GET", "/domains", nil)
	m := csrfField.FindStringSubmatch(html)
	if m == nil {
		s.t.Fatalf("no CSRF field on the domains page")
	}
	return c, m[1]
}

func TestPages(t *testing.T) {
	sys := startSystem(t, nil)
	anon := sys.anonymous()
	st, _, resp := anon.page("GET", "/cache?domain=x.test", nil)
	if st != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/login?next=") {
		t.Fatalf("a page without login: %d %s", st, resp.Header.Get("Location"))
	}
	st, html, _ := anon.page("POST", "/login", url.Values{"user": {"admin"}, "password": {"nope"}})
	if st != http.StatusUnauthorized || !strings.Contains(html, "wrong user name or password") {
		t.Fatalf("failed login page: %d", st)
	}
	if _, _, resp := anon.page("POST", "/login", url.Values{"user": {"admin"}, "password": {adminPassword}, "next": {"//evil.example/"}}); resp.Header.Get("Location") != "/" {
		t.Fatalf("login redirected off-site to %q", resp.Header.Get("Location"))
	}

	admin, tok := sys.formLogin("admin", adminPassword)
	for _, p := range []string{"/", "/domains", "/cache", "/verify", "/audit", "/destinations"} {
		if st, html, _ := admin.page("GET", p, nil); st != http.StatusOK || !strings.Contains(html, "<h1>") {
			t.Errorf("page %s: %d", p, st)
		}
	}
	// A form without its token is refused.
	if st, _, _ := admin.page("POST", "/domains", url.Values{"domain": {"x.test"}, "mode": {"off"}}); st != http.StatusForbidden {
		t.Fatalf("form without CSRF token: %d", st)
	}
	// A bad form shows the error beside its field and keeps the input.
	st, html, _ = admin.page("POST", "/domains", url.Values{"csrf": {tok}, "domain": {"form.test"}, "mode": {"static"}, "mailboxes": {""}})
	if st != http.StatusBadRequest || !strings.Contains(html, `<span class="fielderr" role="alert">bad domain policy: mailboxes: static mode needs at least one mailbox</span>`) || !strings.Contains(html, `value="form.test"`) {
		t.Fatalf("bad form: %d\n%s", st, html)
	}
	st, _, resp = admin.page("POST", "/domains", url.Values{"csrf": {tok}, "domain": {"form.test"}, "mode": {"static"}, "mailboxes": {"alice\nbob"}})
	if st != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/domains/form.test?msg=") {
		t.Fatalf("create: %d %s", st, resp.Header.Get("Location"))
	}
	_, html, _ = admin.page("GET", "/domains/form.test", nil)
	for _, want := range []string{`id="flush-domain"`, `data-confirm=`, "alice\nbob\n", `id="delete-domain"`} {
		if !strings.Contains(html, want) {
			t.Errorf("domain page lacks %q", want)
		}
	}
	// One mailbox added, one removed, then a merge: as the API's.
	rev := func() string {
		_, html, _ := admin.page("GET", "/domains/form.test", nil)
		_, after, _ := strings.Cut(html, `name="revision" value="`)
		v, _, _ := strings.Cut(after, `"`)
		return v
	}
	for _, f := range []url.Values{
		{"csrf": {tok}, "entry": {"carol"}, "op": {"add"}},
		{"csrf": {tok}, "entry": {"ALICE"}, "op": {"rm"}},
	} {
		f.Set("revision", rev())
		if st, _, resp := admin.page("POST", "/domains/form.test/mailboxes-entry", f); st != http.StatusSeeOther {
			t.Fatalf("entry %v: %d %s", f, st, resp.Header.Get("Location"))
		}
	}
	if st, _, _ := admin.page("POST", "/domains/form.test/mailboxes", url.Values{"csrf": {tok}, "revision": {rev()}, "mailboxes": {"dave\nbob"}, "merge": {"true"}}); st != http.StatusSeeOther {
		t.Fatalf("merge: %d", st)
	}
	if _, html, _ := admin.page("GET", "/domains/form.test", nil); !strings.Contains(html, "bob\ncarol\ndave\n") || !strings.Contains(html, `id="export-mailboxes"`) {
		t.Fatalf("after add, remove and merge the list is not bob, carol, dave:\n%s", html)
	}
	// What comes back from the system is escaped: an address with angle
	// brackets and quotes.
	evil := `"<script>alert('x')</script>"@form.test`
	st, html, _ = admin.page("POST", "/verify", url.Values{"csrf": {tok}, "address": {evil}})
	if st != http.StatusOK || strings.Contains(html, "<script>alert") || !strings.Contains(html, "&lt;script&gt;") {
		t.Fatalf("verify page with a hostile address: %d\n%s", st, html)
	}

	viewer, vtok := sys.formLogin("viewer", viewerPassword)
	_, html, _ = viewer.page("GET", "/domains/form.test", nil)
	if strings.Contains(html, "flush-domain") || strings.Contains(html, "delete-domain") || strings.Contains(html, "save-mailboxes") {
		t.Fatal("a viewer is shown change and flush buttons")
	}
	_, html, _ = viewer.page("GET", "/cache", nil)
	if strings.Contains(html, "flush-all") {
		t.Fatal("a viewer is shown the flush buttons")
	}
	if st, _, _ := viewer.page("POST", "/flush", url.Values{"csrf": {vtok}, "scope": {"all"}}); st != http.StatusForbidden {
		t.Fatalf("viewer flush through a form: %d", st)
	}
	if st, _, resp := viewer.page("POST", "/logout", url.Values{"csrf": {vtok}}); st != http.StatusSeeOther || resp.Header.Get("Location") != "/login" {
		t.Fatalf("logout: %d", st)
	}
	if st, _, _ := viewer.page("GET", "/", nil); st != http.StatusSeeOther {
		t.Fatalf("a page after logout: %d", st)
	}
}
