package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/bcrypt"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
	"github.com/callout-mail/callout/tools/stack"
)

// aptInstall makes sure a command exists, installing its Debian packages
// as root; otherwise the test is skipped.
func aptInstall(t *testing.T, command string, pkgs ...string) string {
	t.Helper()
	if p, err := exec.LookPath(command); err == nil {
		return p
	}
	if os.Geteuid() != 0 {
		t.Skipf("%s missing and not root to install %v", command, pkgs)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skipf("%s missing and no apt-get", command)
	}
	aptGet(t, "", append([]string{"install", "-y", "-qq"}, pkgs...)...)
	p, err := exec.LookPath(command)
	if err != nil {
		t.Fatalf("%s still missing after installing %v", command, pkgs)
	}
	return p
}

// consoleToken is the console admin's API token in the e2e tests.
const consoleToken = "e2e-token"

// consoleCall is one request to the console's API: as a logged-in user
// (cookie and CSRF token) or with the admin's token.
func consoleCall(t *testing.T, hc *http.Client, csrf, method, url, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if csrf != "" {
		req.Header.Set("X-CSRF-Token", csrf)
	} else {
		req.Header.Set("Authorization", "Bearer "+consoleToken)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// consoleLogin logs in through the API and returns the client and the
// session's CSRF token.
func consoleLogin(t *testing.T, base, user, pw string) (*http.Client, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	st, b := consoleCall(t, hc, "-", "POST", base+"/api/login", fmt.Sprintf(`{"user":%q,"password":%q}`, user, pw))
	var me struct {
		CSRF string `json:"csrf"`
	}
	if st != http.StatusOK || json.Unmarshal([]byte(b), &me) != nil {
		t.Fatalf("console login %s: %d %s", user, st, b)
	}
	return hc, me.CSRF
}

// startConsole runs the console process with an admin and a viewer.
func (s *system) startConsole(adminPW, viewerPW string, extraEnv ...string) string {
	s.t.Helper()
	ha, _ := bcrypt.GenerateFromPassword([]byte(adminPW), bcrypt.MinCost)
	hv, _ := bcrypt.GenerateFromPassword([]byte(viewerPW), bcrypt.MinCost)
	sum := sha256.Sum256([]byte(consoleToken))
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(s.t))
	env := []string{"CALLOUT_CONSOLE_NATS_URL=" + s.url, "CALLOUT_CONSOLE_METRICS_ADDR=", "CALLOUT_CONSOLE_LISTEN=" + addr,
		"CALLOUT_CONSOLE_HISTORY_EVERY=1s", "CALLOUT_CONSOLE_STATS_INTERVAL=0",
		"CALLOUT_CONSOLE_USERS=admin:admin:" + string(ha) + ":" + hex.EncodeToString(sum[:]) + " viewer:viewer:" + string(hv)}
	env = append(env, extraEnv...)
	p, err := stack.Start(s.dir, "console", filepath.Join(binDir, "console"), nil, env)
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := stack.WaitHTTP(ctx, "http://"+addr+"/api/openapi.yaml"); err != nil {
		s.dumpLogs()
		s.t.Fatal(err)
	}
	return "http://" + addr
}

// browser runs headless Chromium from Debian's package; confirmation
// dialogs are accepted.
func browser(t *testing.T) context.Context {
	t.Helper()
	exe := aptInstall(t, "chromium", "chromium", "fonts-dejavu-core")
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 900), chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	// The browser starts with the first Run, tied to the context of that
	// Run: start it here, not under one action's deadline.
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	chromedp.ListenTarget(ctx, func(ev any) {
		if _, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			go func() { _ = chromedp.Run(ctx, page.HandleJavaScriptDialog(true)) }()
		}
	})
	return ctx
}

// run runs browser actions with a deadline.
func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Run(c, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	var s string
	run(t, ctx, "read "+sel, chromedp.WaitVisible(sel, chromedp.ByQuery), chromedp.Text(sel, &s, chromedp.ByQuery))
	return strings.TrimSpace(s)
}

func exists(t *testing.T, ctx context.Context, sel string) bool {
	t.Helper()
	var n int
	run(t, ctx, "count "+sel, chromedp.Evaluate(fmt.Sprintf("document.querySelectorAll(%q).length", sel), &n))
	return n > 0
}

func login(t *testing.T, ctx context.Context, base, user, pw string) {
	t.Helper()
	run(t, ctx, "log in as "+user, chromedp.Navigate(base+"/login"), chromedp.WaitVisible("#user", chromedp.ByQuery),
		chromedp.SendKeys("#user", user, chromedp.ByQuery), chromedp.SendKeys("#password", pw, chromedp.ByQuery),
		chromedp.Click("#login", chromedp.ByQuery), chromedp.WaitVisible("#whoami", chromedp.ByQuery))
}

// TestConsoleBrowser is an operator's session in a real browser.
func TestConsoleBrowser(t *testing.T) {
	ctx := browser(t)
	dest := smtptest.Run(t, smtptest.Config{Mailboxes: []string{"alice@corp.test", "bob@corp.test"}})
	s := newSystem(t, options{env: map[string][]string{
		"ingest": {"CALLOUT_INGEST_STATS_INTERVAL=1s", "CALLOUT_INGEST_HISTORY_INTERVAL=500ms"}, "prober": {"CALLOUT_PROBER_STATS_INTERVAL=1s"}, "cachekeeper": {"CALLOUT_CACHEKEEPER_STATS_INTERVAL=1s"},
	}})
	base := s.startConsole("admin-pw", "viewer-pw")
	login(t, ctx, base, "admin", "admin-pw")
	if got := text(t, ctx, "#whoami"); got != "admin (admin)" {
		t.Fatalf("logged in as %q", got)
	}

	// A static domain with two mailboxes.
	run(t, ctx, "create static domain", chromedp.Navigate(base+"/domains"), chromedp.WaitVisible("#new-domain-name", chromedp.ByQuery),
		chromedp.SendKeys("#new-domain-name", "shop.test", chromedp.ByQuery),
		chromedp.SetValue("#new-domain-mode", "static", chromedp.ByQuery),
		chromedp.SendKeys("#new-domain-mailboxes", "alice\nbob@shop.test", chromedp.ByQuery),
		chromedp.Click("#create-domain", chromedp.ByQuery), chromedp.WaitVisible(".msg", chromedp.ByQuery))
	if got := text(t, ctx, "#mode"); got != "static" {
		t.Fatalf("new domain's mode %q", got)
	}
	verifyIn := func(addr string) string {
		run(t, ctx, "verify "+addr, chromedp.Navigate(base+"/verify"), chromedp.WaitVisible("#verify-address", chromedp.ByQuery),
			chromedp.SendKeys("#verify-address", addr, chromedp.ByQuery), chromedp.Click("#verify", chromedp.ByQuery),
			chromedp.WaitVisible("#decision", chromedp.ByQuery))
		return text(t, ctx, "#decision")
	}
	// The ingests see the new policy within moments.
	waitFor(t, 10*time.Second, func() bool { return verifyIn("alice@shop.test") == "accept" })
	if got := verifyIn("mallory@shop.test"); got != "reject" {
		t.Fatalf("unlisted mailbox: %s", got)
	}

	// A callout domain, switched to monitor mode and back.
	run(t, ctx, "create callout domain", chromedp.Navigate(base+"/domains"), chromedp.WaitVisible("#new-domain-name", chromedp.ByQuery),
		chromedp.SendKeys("#new-domain-name", "corp.test", chromedp.ByQuery), chromedp.SetValue("#new-domain-mode", "callout", chromedp.ByQuery),
		chromedp.SendKeys("#new-domain-route", dest.Addr(), chromedp.ByQuery),
		chromedp.Click("#create-domain", chromedp.ByQuery), chromedp.WaitVisible("#monitor-on", chromedp.ByQuery))
	run(t, ctx, "monitor on", chromedp.Click("#monitor-on", chromedp.ByQuery), chromedp.WaitVisible("#monitor-off", chromedp.ByQuery))
	if got := text(t, ctx, "#mode"); got != "monitor" {
		t.Fatalf("mode after monitor on: %q", got)
	}
	waitFor(t, 10*time.Second, func() bool { return verifyIn("nobody@corp.test") == "accept" }) // monitor: never rejects
	run(t, ctx, "monitor off", chromedp.Navigate(base+"/domains/corp.test"), chromedp.WaitVisible("#monitor-off", chromedp.ByQuery),
		chromedp.Click("#monitor-off", chromedp.ByQuery), chromedp.WaitVisible("#monitor-on", chromedp.ByQuery))
	if got := text(t, ctx, "#mode"); got != "callout" {
		t.Fatalf("mode after monitor off: %q", got)
	}
	waitFor(t, 10*time.Second, func() bool { return s.verify("nobody@corp.test").Decision.Action == "reject" })
	s.verify("alice@corp.test")

	// The decision log: why was carol rejected? She exists now; her
	// cache entry is found from her record and flushed from it, and the
	// next decision accepts her.
	var carolExists atomic.Bool
	late := smtptest.Run(t, smtptest.Config{Rcpt: func(from, to string) string {
		if strings.EqualFold(to, "carol@late.test") && carolExists.Load() || strings.HasPrefix(strings.ToLower(to), "postmaster@") {
			return "250 2.1.5 ok"
		}
		return "550 5.1.1 no such user here"
	}})
	run(t, ctx, "create late.test", chromedp.Navigate(base+"/domains"), chromedp.WaitVisible("#new-domain-name", chromedp.ByQuery),
		chromedp.SendKeys("#new-domain-name", "late.test", chromedp.ByQuery), chromedp.SetValue("#new-domain-mode", "callout", chromedp.ByQuery),
		chromedp.SendKeys("#new-domain-route", late.Addr(), chromedp.ByQuery),
		chromedp.Click("#create-domain", chromedp.ByQuery), chromedp.WaitVisible("#monitor-on", chromedp.ByQuery))
	waitFor(t, 10*time.Second, func() bool {
		return s.verifyReq(wire.VerifyRequest{Address: "carol@late.test", ClientAddress: "192.0.2.9", Sender: "friend@example.com", Helo: "mx.example.com"}).Decision.Action == "reject"
	})
	carolExists.Store(true)
	searchCarol := func() {
		run(t, ctx, "search the decision log", chromedp.Navigate(base+"/decisions"), chromedp.WaitVisible("#f-recipient", chromedp.ByQuery),
			chromedp.SendKeys("#f-recipient", "carol@late.test", chromedp.ByQuery), chromedp.Click("#search", chromedp.ByQuery),
			chromedp.WaitVisible(`#decisions[data-recipient="carol@late.test"]`, chromedp.ByQuery))
	}
	carolRow := `#decisions tbody tr[data-recipient="carol@late.test"]`
	waitFor(t, 10*time.Second, func() bool { searchCarol(); return exists(t, ctx, carolRow+`[data-action="reject"]`) })
	if got := text(t, ctx, carolRow); !strings.Contains(got, "friend@example.com") || !strings.Contains(got, "192.0.2.9") || !strings.Contains(got, "user_unknown") || !strings.Contains(got, "550 5.1.1 no such user here") {
		t.Fatalf("carol's record: %q", got)
	}
	shot(t, ctx, "console-decisions.png")
	run(t, ctx, "open her cache entry", chromedp.Click(carolRow+" a.to-cache", chromedp.ByQuery), chromedp.WaitVisible("#cache-table", chromedp.ByQuery))
	if !exists(t, ctx, `tr[data-key="`+kvkey.Address("late.test", "carol", verdict.Recipient, "")+`"]`) {
		t.Fatal("carol's cache entry is not listed from her record")
	}
	searchCarol()
	run(t, ctx, "flush her from her record", chromedp.Click(carolRow+" button.flush-address", chromedp.ByQuery), chromedp.WaitVisible(".msg", chromedp.ByQuery))
	if got := text(t, ctx, ".msg"); !strings.Contains(got, "Flushed") {
		t.Fatalf("after the flush: %q", got)
	}
	if got := s.verify("carol@late.test").Decision.Action; got != "accept" {
		t.Fatalf("carol after the flush: %s", got)
	}
	waitFor(t, 10*time.Second, func() bool {
		searchCarol()
		return exists(t, ctx, `#decisions tbody tr:first-child[data-action="accept"]`)
	})
	searchCarol() // her record links to a traced callout
	run(t, ctx, "a traced callout from her record", chromedp.Click(carolRow+" a.to-verify", chromedp.ByQuery),
		chromedp.WaitVisible("#verify-trace:checked", chromedp.ByQuery), chromedp.Click("#verify", chromedp.ByQuery),
		chromedp.WaitVisible("#decision", chromedp.ByQuery))
	if got := text(t, ctx, "#decision"); got != "accept" {
		t.Fatalf("carol's traced callout: %s", got)
	}
	// Her domain's page charts its hours: one reject, one accept, a callout each.
	waitFor(t, 20*time.Second, func() bool {
		var drawn string
		run(t, ctx, "domain history", chromedp.Navigate(base+"/domains/late.test"), chromedp.WaitVisible("#chart-domain-history", chromedp.ByQuery),
			chromedp.Poll(`document.querySelector("#chart-domain-history").dataset.points !== undefined`, nil, chromedp.WithPollingTimeout(5*time.Second)),
			chromedp.Evaluate(`document.querySelector("#chart-domain-history").dataset.drawn || "0"`, &drawn))
		n, _ := strconv.Atoi(drawn)
		return n >= 3 // accept, reject and callouts in the hour
	})

	// The cache browser: delete one entry.
	nobody := `tr[data-key="` + kvkey.Address("corp.test", "nobody", verdict.Recipient, "") + `"]`
	alice := `tr[data-key="` + kvkey.Address("corp.test", "alice", verdict.Recipient, "") + `"]`
	waitFor(t, 10*time.Second, func() bool {
		run(t, ctx, "cache page", chromedp.Navigate(base+"/cache?domain=corp.test"), chromedp.WaitVisible("#cache-table", chromedp.ByQuery))
		return exists(t, ctx, nobody+" button.delete-entry") && exists(t, ctx, alice)
	})
	run(t, ctx, "delete an entry", chromedp.Click(nobody+" button.delete-entry", chromedp.ByQuery),
		chromedp.WaitVisible(".msg", chromedp.ByQuery))
	if exists(t, ctx, nobody) || !exists(t, ctx, alice) {
		t.Fatal("the deleted entry is still listed, or the other one went too")
	}

	// Flush the domain from its page.
	run(t, ctx, "flush a domain", chromedp.Navigate(base+"/domains/corp.test"), chromedp.WaitVisible("#flush-domain", chromedp.ByQuery),
		chromedp.Click("#flush-domain", chromedp.ByQuery), chromedp.WaitVisible(".msg", chromedp.ByQuery))
	if got := text(t, ctx, ".msg"); !strings.Contains(got, "Flushed") {
		t.Fatalf("after flush: %q", got)
	}
	run(t, ctx, "cache after flush", chromedp.Navigate(base+"/cache?domain=corp.test"), chromedp.WaitVisible("#cache-table", chromedp.ByQuery))
	if exists(t, ctx, `tr[data-key]`) {
		t.Fatal("entries listed after the domain flush")
	}
	run(t, ctx, "domain page", chromedp.Navigate(base+"/domains/shop.test"), chromedp.WaitVisible("#mailboxes", chromedp.ByQuery))
	shot(t, ctx, "console-domain.png")

	// The dashboard's charts draw what the services report: traffic while
	// it is watched.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			switch i % 3 { // static answers, cache hits and a few callouts
			case 0:
				s.verify(fmt.Sprintf("user%d@shop.test", i%7))
			case 1:
				s.verify("alice@corp.test")
			default:
				s.verify(fmt.Sprintf("user%d@corp.test", i/3))
			}
		}
	}()
	waitFor(t, 30*time.Second, func() bool {
		var drawn string
		run(t, ctx, "dashboard", chromedp.Navigate(base+"/"), chromedp.WaitVisible("#chart-decisions", chromedp.ByQuery),
			chromedp.Poll(`document.querySelector("#chart-decisions").dataset.points !== undefined`, nil, chromedp.WithPollingTimeout(5*time.Second)),
			chromedp.Evaluate(`document.querySelector("#chart-decisions").dataset.drawn || "0"`, &drawn))
		n, _ := strconv.Atoi(drawn)
		return n >= 8 // a few seconds of traffic on the chart
	})
	close(stop)
	wg.Wait()
	shot(t, ctx, "console-dashboard.png")

	// Log out; a viewer sees no flush button and the API refuses the flush.
	run(t, ctx, "log out", chromedp.Click("#logout", chromedp.ByQuery), chromedp.WaitVisible("#login", chromedp.ByQuery))
	login(t, ctx, base, "viewer", "viewer-pw")
	run(t, ctx, "viewer domain page", chromedp.Navigate(base+"/domains/corp.test"), chromedp.WaitVisible("#mode", chromedp.ByQuery))
	if exists(t, ctx, "#flush-domain") || exists(t, ctx, "#monitor-on") {
		t.Fatal("a viewer is shown the flush or monitor buttons")
	}
	var status int
	run(t, ctx, "viewer flush through the API", chromedp.Evaluate(`(async () => {
		const me = await (await fetch("/api/me")).json();
		const r = await fetch("/api/flush", {method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": me.csrf}, body: '{"scope":"all"}'});
		return r.status;
	})()`, &status, func(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }))
	if status != http.StatusForbidden {
		t.Fatalf("viewer flush: %d, want 403", status)
	}
}

// shot takes a screenshot of the page: into CALLOUT_SCREENSHOTS when set
// (`make screenshots` sets it to docs/, for docs/console.md), else into the
// test's temporary directory, so that a test run leaves the tree as it was.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	var png []byte
	run(t, ctx, "screenshot", chromedp.FullScreenshot(&png, 100) /* 100: PNG */)
	if !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("screenshot %s is not a PNG (%d bytes)", name, len(png))
	}
	dir := os.Getenv("CALLOUT_SCREENSHOTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConsoleTenantBrowser is a reseller making a domain user, and that
// customer's session, in a real browser: it sees only its domain, flushes
// its cache, imports a CSV of listSize mailboxes, switches to static,
// removes one mailbox, reads the audit of its own changes and logs out.
// msgSays waits until the page's message holds text: the page the last
// click led to, not the one before it, which may show a message too.
func msgSays(text string) chromedp.Action {
	return chromedp.ActionFunc(func(ctx context.Context) error {
		expr := fmt.Sprintf(`(document.querySelector(".msg") || {}).innerText?.includes(%q) || false`, text)
		for {
			// While the page is replaced, evaluating fails: try again.
			var ok bool
			if err := chromedp.Evaluate(expr, &ok).Do(ctx); err == nil && ok {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("no message saying %q: %w", text, ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
	})
}

func TestConsoleTenantBrowser(t *testing.T) {
	// 10,000 mailboxes: stored in chunks, and too many for the page's
	// text box, so the page shows their number.
	const listSize = 10000
	ctx := browser(t)
	dest := smtptest.Run(t, smtptest.Config{Mailboxes: []string{"alice@shop.test"}})
	s := newSystem(t, options{})
	base := s.startConsole("admin-pw", "viewer-pw")
	for _, c := range []struct{ method, path, body string }{
		{"PUT", "/api/domains/shop.test", `{"policy":{"mode":"callout","route":["` + dest.Addr() + `"]}}`},
		{"PUT", "/api/domains/corp.test", `{"policy":{"mode":"callout","route":["` + dest.Addr() + `"]}}`},
		{"POST", "/api/users", `{"name":"res","role":"reseller","domains":["shop.test"],"password":"reseller-password"}`},
	} {
		if st, b := consoleCall(t, http.DefaultClient, "", c.method, base+c.path, c.body); st >= 300 {
			t.Fatalf("%s %s: %d %s", c.method, c.path, st, b)
		}
	}

	// The reseller makes its customer's login.
	login(t, ctx, base, "res", "reseller-password")
	run(t, ctx, "new domain user", chromedp.Navigate(base+"/users"), chromedp.WaitVisible("#new-user-name", chromedp.ByQuery),
		chromedp.SendKeys("#new-user-name", "shop-owner", chromedp.ByQuery), chromedp.SetValue("#new-user-role", "domain", chromedp.ByQuery),
		chromedp.SendKeys("#new-user-domains", "shop.test", chromedp.ByQuery), chromedp.SendKeys("#new-user-password", "customer-password", chromedp.ByQuery),
		chromedp.Click("#create-user", chromedp.ByQuery), msgSays("User shop-owner created"))
	if !exists(t, ctx, `tr[data-user="shop-owner"]`) {
		t.Fatal("the new user is not listed")
	}
	// Beyond its domains, the reseller is refused.
	run(t, ctx, "a user of another's domain", chromedp.SendKeys("#new-user-name", "thief", chromedp.ByQuery),
		chromedp.SendKeys("#new-user-domains", "corp.test", chromedp.ByQuery), chromedp.SendKeys("#new-user-password", "thief-password", chromedp.ByQuery),
		chromedp.Click("#create-user", chromedp.ByQuery), chromedp.WaitVisible(".fielderr", chromedp.ByQuery))
	shot(t, ctx, "console-users.png")
	run(t, ctx, "reseller logs out", chromedp.Click("#logout", chromedp.ByQuery), chromedp.WaitVisible("#login", chromedp.ByQuery))

	// The customer.
	login(t, ctx, base, "shop-owner", "customer-password")
	if got := text(t, ctx, "#whoami"); got != "shop-owner (domain)" {
		t.Fatalf("logged in as %q", got)
	}
	run(t, ctx, "domain list", chromedp.Navigate(base+"/domains"), chromedp.WaitVisible("#domains", chromedp.ByQuery))
	if !exists(t, ctx, `#domains a[href="/domains/shop.test"]`) || exists(t, ctx, `#domains a[href="/domains/corp.test"]`) {
		t.Fatal("the customer's domain list is not its domain alone")
	}
	run(t, ctx, "another's domain", chromedp.Navigate(base+"/domains/corp.test"), chromedp.WaitVisible("h1", chromedp.ByQuery))
	if got := text(t, ctx, "h1"); got != "Not found" {
		t.Fatalf("another customer's domain page: %q", got)
	}
	run(t, ctx, "flush", chromedp.Navigate(base+"/domains/shop.test"), chromedp.WaitVisible("#flush-domain", chromedp.ByQuery),
		chromedp.Click("#flush-domain", chromedp.ByQuery), msgSays("Flushed"))
	if exists(t, ctx, `input[name="route"]`) {
		t.Fatal("a domain user is offered the route")
	}
	var csv strings.Builder
	csv.WriteString("address\n")
	for i := 0; i < listSize; i++ {
		fmt.Fprintf(&csv, "u%05d@shop.test\n", i)
	}
	file := filepath.Join(t.TempDir(), "mailboxes.csv")
	if err := os.WriteFile(file, []byte(csv.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, "import 10,000 mailboxes", chromedp.SetUploadFiles(`#mailboxes-form input[type="file"]`, []string{file}, chromedp.ByQuery),
		chromedp.Click("#save-mailboxes", chromedp.ByQuery), msgSays("mailboxes list is saved"))
	if got := text(t, ctx, "#mailboxes-count"); !strings.HasPrefix(got, strconv.Itoa(listSize)+" mailboxes") {
		t.Fatalf("list size shown: %q", got)
	}
	run(t, ctx, "switch to static", chromedp.SetValue("#policy-mode", "static", chromedp.ByQuery),
		chromedp.Click("#save-policy", chromedp.ByQuery), msgSays("Policy of shop.test saved"))
	if got := text(t, ctx, "#mode"); got != "static" {
		t.Fatalf("mode %q", got)
	}
	run(t, ctx, "remove one mailbox", chromedp.SendKeys("#mailbox-entry", "u00042", chromedp.ByQuery),
		chromedp.Click("#remove-mailbox", chromedp.ByQuery), msgSays("u00042 removed"))
	waitFor(t, 10*time.Second, func() bool {
		return s.verify("u00043@shop.test").Decision.Action == "accept" && s.verify("u00042@shop.test").Decision.Action == "reject"
	})
	run(t, ctx, "domain list", chromedp.Navigate(base+"/domains"), chromedp.WaitVisible("#domains", chromedp.ByQuery))
	if got := text(t, ctx, "#domains tbody tr td:nth-child(4)"); got != strconv.Itoa(listSize-1) {
		t.Fatalf("mailboxes listed: %q", got)
	}
	run(t, ctx, "audit", chromedp.Navigate(base+"/audit"), chromedp.WaitVisible("#audit", chromedp.ByQuery))
	var rows string
	run(t, ctx, "audit rows", chromedp.Text("#audit tbody", &rows, chromedp.ByQuery))
	if !strings.Contains(rows, "console:shop-owner") || !strings.Contains(rows, "policy.set") || !strings.Contains(rows, "flush") || strings.Contains(rows, "corp.test") {
		t.Fatalf("the customer's audit:\n%s", rows)
	}
	shot(t, ctx, "console-tenant-audit.png")
	run(t, ctx, "log out", chromedp.Click("#logout", chromedp.ByQuery), chromedp.WaitVisible("#login", chromedp.ByQuery))
}
