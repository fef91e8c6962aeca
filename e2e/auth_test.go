package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
	"github.com/callout-mail/callout/tools/stack"
)

// roleConn connects as a role of deploy/nats/auth.conf and records the
// permission violations the server reports.
type roleConn struct {
	*nats.Conn
	mu         sync.Mutex
	violations []string
}

func connectAs(t *testing.T, url, role string) *roleConn {
	t.Helper()
	return connectAsUser(t, url, role, role)
}

// connectAsUser connects as user with the dev password of role (a region's
// users share their role's).
func connectAsUser(t *testing.T, url, user, role string) *roleConn {
	t.Helper()
	rc := &roleConn{}
	nc, err := nats.Connect(url, nats.UserInfo(user, role+"-dev-password"), nats.CustomInboxPrefix("_INBOX_"+user),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			rc.mu.Lock()
			rc.violations = append(rc.violations, err.Error())
			rc.mu.Unlock()
		}))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	rc.Conn = nc
	return rc
}

// denied waits for the server to report a permission violation naming subject.
func (rc *roleConn) denied(t *testing.T, what, subject string) {
	t.Helper()
	waitFor(t, 5*time.Second, func() bool {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		for _, v := range rc.violations {
			if strings.Contains(v, "Permissions Violation") && strings.Contains(v, what) && strings.Contains(v, subject) {
				return true
			}
		}
		return false
	})
}

func TestAuthRoles(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	conf, _ := filepath.Abs("../deploy/nats/auth.conf")
	ns, err := stack.StartIn(dir, dir, "nats-server", filepath.Join(binDir, "nats-server"),
		[]string{"-c", conf, "-p", strconv.Itoa(port), "-m", strconv.Itoa(freePort(t))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Stop(10 * time.Second) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := stack.WaitNATS(ctx, url, nats.UserInfo("admin", "admin-dev-password")); err != nil {
		t.Fatal(err)
	}
	admin := connectAs(t, url, "admin")
	js, _ := jetstream.New(admin.Conn)
	s := &system{t: t, dir: dir, url: url, nats: ns, procs: map[string][]*stack.Proc{}, nc: admin.Conn, js: js, names: newNames(),
		policy: fmt.Sprintf("127.0.0.1:%d", freePort(t)), env: map[string][]string{}}
	for _, role := range []string{"ingest", "prober", "cachekeeper"} {
		up := "CALLOUT_" + strings.ToUpper(role) + "_NATS_"
		s.env[role] = []string{up + "USER=" + role, up + "PASSWORD=" + role + "-dev-password", up + "INBOX_PREFIX=_INBOX_" + role}
	}
	// The admin creates the domain policy bucket and the policy.
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	kv, err := domains.Bucket(ctx, js, s.names, 1)
	if err != nil {
		t.Fatalf("admin creates the policy bucket: %v", err)
	}
	if err := domains.Put(ctx, kv, "example.org", domains.Policy{Route: []string{dest.Addr()}}); err != nil {
		t.Fatalf("admin writes a policy: %v", err)
	}
	s.startServices()
	// The services run with least privilege: the whole flow works.
	mta := connectAs(t, url, "mta-mx1")
	ask := func(addr string) wire.VerifyReply {
		b, _ := wire.Encode(&wire.VerifyRequest{Address: addr})
		var rep wire.VerifyReply
		waitFor(t, 30*time.Second, func() bool {
			m, err := mta.Request(s.names.Verify(), b, 5*time.Second)
			return err == nil && wire.Decode(m.Data, &rep) == nil
		})
		return rep
	}

	t.Run("mta", func(t *testing.T) {
		rep := ask("alice@example.org") // allowed: ask (the prober called out, as its role)
		if rep.Decision.Action != verdict.Accept || rep.Verdict.Source != verdict.SourceProbe {
			t.Fatalf("verify as mta: %+v %+v", rep.Decision, rep.Verdict)
		}
		_ = mta.Publish(s.names.Flush(), []byte("x")) // denied: flush
		mta.denied(t, "Publish", s.names.Flush())
		_, _ = mta.SubscribeSync("_INBOX.>") // denied: other roles' replies
		mta.denied(t, "Subscription", "_INBOX.>")
		_, _ = mta.SubscribeSync("_INBOX_mta-mx2.>") // denied: another MTA's replies
		mta.denied(t, "Subscription", "_INBOX_mta-mx2.>")
		_ = mta.Publish(s.names.VerifyTrace(), []byte("x")) // denied: traced callouts are for operators
		mta.denied(t, "Publish", s.names.VerifyTrace())
		_ = mta.Publish(s.names.VerifyConsole(), []byte("x")) // denied: ask where the brake does not count
		mta.denied(t, "Publish", s.names.VerifyConsole())
	})
	t.Run("cachekeeper", func(t *testing.T) {
		// allowed: the cachekeeper stored the verdict and answers from it
		waitFor(t, 15*time.Second, func() bool { return ask("alice@example.org").Verdict.Source == verdict.SourceCache })
		ck := connectAs(t, url, "cachekeeper")
		_ = ck.Publish(s.names.Verify(), []byte("x")) // denied: pose as an MTA
		ck.denied(t, "Publish", s.names.Verify())
		_ = ck.Publish("$JS.API.STREAM.UPDATE.KV_callout_cache", []byte("{}")) // denied: change its bucket's settings
		ck.denied(t, "Publish", "$JS.API.STREAM.UPDATE.KV_callout_cache")
		_ = ck.Publish("$JS.API.STREAM.DELETE.CALLOUT_VERDICTS", nil) // denied: delete a stream
		ck.denied(t, "Publish", "$JS.API.STREAM.DELETE.CALLOUT_VERDICTS")
	})
	t.Run("ingest", func(t *testing.T) {
		in := connectAs(t, url, "ingest")
		if _, err := in.Request(s.names.CacheLookup(), []byte("x"), 5*time.Second); err != nil { // allowed: ask the cache
			t.Fatalf("ingest lookup: %v", err)
		}
		_ = in.Publish(s.names.Flush(), []byte("x")) // denied: flush
		in.denied(t, "Publish", s.names.Flush())
		_ = in.Publish("$JS.API.STREAM.UPDATE.CALLOUT_PROBES", []byte("{}")) // denied: change the job stream
		in.denied(t, "Publish", "$JS.API.STREAM.UPDATE.CALLOUT_PROBES")
		_ = in.Publish("$KV.callout_lists.example.org.mailboxes.0123456789abcdef01234567", []byte("x")) // denied: write a list it only reads
		in.denied(t, "Publish", "$KV.callout_lists")
	})
	t.Run("prober", func(t *testing.T) {
		pr := connectAs(t, url, "prober")
		if err := pr.Publish(s.names.Verdict("addr.example/org.x.rcpt"), []byte("x")); err != nil { // allowed: publish verdicts
			t.Fatal(err)
		}
		if _, err := pr.Request(s.names.CacheLookup(), []byte("x"), 5*time.Second); err != nil { // allowed: ask the cache whether a job is answered
			t.Fatal(err)
		}
		_ = pr.Publish(s.names.Flush(), []byte("x")) // denied: flush the cache
		pr.denied(t, "Publish", s.names.Flush())
		_ = pr.Publish("$KV.callout_cache.addr.example/org.alice.rcpt", []byte("x")) // denied: write the cache directly
		pr.denied(t, "Publish", "$KV.callout_cache")
		_ = pr.Publish("$JS.API.STREAM.UPDATE.KV_callout_domains", []byte(`{"max_age":1000000000}`)) // denied: shorten the policy bucket
		pr.denied(t, "Publish", "$JS.API.STREAM.UPDATE.KV_callout_domains")
		_ = pr.Publish("$JS.API.STREAM.PURGE.KV_callout_domains", nil) // denied: purge the policies
		pr.denied(t, "Publish", "$JS.API.STREAM.PURGE.KV_callout_domains")
	})
	t.Run("admin", func(t *testing.T) {
		b, _ := wire.Encode(&wire.FlushCommand{Scope: wire.ScopeAll}) // allowed: flush
		m, err := admin.Request(s.names.Flush(), b, 5*time.Second)
		if err != nil {
			t.Fatalf("flush as admin: %v", err)
		}
		var rep wire.FlushReply
		if err := wire.Decode(m.Data, &rep); err != nil || rep.Removed == 0 {
			t.Fatalf("flush reply %+v %v", rep, err)
		}
		cache, err := js.KeyValue(ctx, s.names.CacheBucket()) // allowed: read the cache bucket
		if err != nil {
			t.Fatalf("admin opens the cache bucket: %v", err)
		}
		if _, err := cache.Status(ctx); err != nil {
			t.Fatal(err)
		}
		// The audit trail is the admin's to add to, not to rewrite.
		_ = admin.Publish("$JS.API.STREAM.PURGE."+s.names.AuditStream(), nil) // denied
		admin.denied(t, "Publish", "$JS.API.STREAM.PURGE."+s.names.AuditStream())
		_ = admin.Publish("$JS.API.STREAM.MSG.DELETE."+s.names.AuditStream(), []byte(`{"seq":1}`)) // denied
		admin.denied(t, "Publish", "$JS.API.STREAM.MSG.DELETE."+s.names.AuditStream())
		_ = admin.Publish("$JS.API.STREAM.UPDATE."+s.names.AuditStream(), []byte(`{}`)) // denied: shorten its max_age
		admin.denied(t, "Publish", "$JS.API.STREAM.UPDATE."+s.names.AuditStream())
		_ = admin.Publish("$JS.API.STREAM.DELETE."+s.names.AuditStream(), nil) // denied
		admin.denied(t, "Publish", "$JS.API.STREAM.DELETE."+s.names.AuditStream())
		// Settings change through the maintenance user: calloutctl setup.
		maint := connectAs(t, url, "maintenance")
		mjs, _ := jetstream.New(maint.Conn)
		if _, err := streams.Setup(ctx, mjs, s.names, 1, 96*time.Hour); err != nil { // allowed: apply settings
			t.Fatalf("setup as maintenance: %v", err)
		}
		// calloutctl as admin: a flush is done and recorded in the audit trail.
		ctl := func(args ...string) string {
			out, err := exec.Command(filepath.Join(binDir, "calloutctl"), append([]string{"-server", url, "-user", "admin",
				"-password", "admin-dev-password", "-inbox-prefix", "_INBOX_admin"}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("calloutctl %v: %v\n%s", args, err, out)
			}
			return string(out)
		}
		ctl("flush", "-domain", "example.org")
		if out := ctl("audit", "-json"); !strings.Contains(out, `"what": "flush"`) || !strings.Contains(out, `"who": "admin"`) {
			t.Fatalf("audit trail:\n%s", out)
		}
		_, _ = admin.SubscribeSync(s.names.Verify()) // denied: pose as the ingest
		admin.denied(t, "Subscription", s.names.Verify())
	})
	t.Run("viewer", func(t *testing.T) {
		// The console speaks as its own NATS user for admins and as the
		// read-only viewer role for viewers.
		base := s.startConsole("admin-pw", "viewer-pw", "CALLOUT_CONSOLE_NATS_USER=console", "CALLOUT_CONSOLE_NATS_PASSWORD=console-dev-password",
			"CALLOUT_CONSOLE_NATS_INBOX_PREFIX=_INBOX_console", "CALLOUT_CONSOLE_VIEWER_NATS_USER=viewer", "CALLOUT_CONSOLE_VIEWER_NATS_PASSWORD=viewer-dev-password")
		hc, csrf := consoleLogin(t, base, "viewer", "viewer-pw")
		for _, c := range []struct{ method, path, body, want string }{
			{"GET", "/api/domains", "", `"domain": "example.org"`},
			{"GET", "/api/domains/example.org", "", `"revision"`},
			{"GET", "/api/cache?domain=example.org", "", `"entries"`},
			{"GET", "/api/audit", "", `"who": "admin"`},
			{"GET", "/api/hosts", "", `"instance"`},
			{"POST", "/api/verify", `{"address":"alice@example.org"}`, `"action": "accept"`},
		} {
			st, b := consoleCall(t, hc, csrf, c.method, base+c.path, c.body)
			if st != http.StatusOK || !strings.Contains(b, c.want) {
				t.Errorf("viewer %s %s: %d %s", c.method, c.path, st, b)
			}
		}
		if st, b := consoleCall(t, hc, csrf, "POST", base+"/api/flush", `{"scope":"all"}`); st != http.StatusForbidden {
			t.Errorf("viewer flush through the console: %d %s", st, b)
		}
		// Everything an admin does through the console, with the console's
		// own NATS user (its log is checked for violations below); a long
		// mailbox list is written, edited and removed in chunks.
		long := make([]string, 5000)
		for i := range long {
			long[i] = fmt.Sprintf(`"m%05d"`, i)
		}
		longPolicy := `{"policy":{"mode":"static","mailboxes":[` + strings.Join(long, ",") + `]}}`
		for _, c := range []struct {
			method, path, body string
			want               int
		}{
			{"PUT", "/api/domains/console.example", `{"policy":{"mode":"static","mailboxes":["alice"]}}`, http.StatusOK},
			{"GET", "/api/domains", "", http.StatusOK},
			{"GET", "/api/domains/console.example", "", http.StatusOK},
			{"POST", "/api/verify", `{"address":"alice@example.org","client_address":"192.0.2.1"}`, http.StatusOK},
			{"POST", "/api/verify", `{"address":"bob@example.org","trace":true}`, http.StatusOK},
			{"GET", "/api/cache?domain=example.org", "", http.StatusOK},
			{"GET", "/api/cache/entry?key=addr.example/org.alice.rcpt", "", http.StatusOK},
			{"DELETE", "/api/cache/entry?key=addr.example/org.alice.rcpt", "", http.StatusOK},
			{"POST", "/api/flush", `{"scope":"domain","domain":"example.org"}`, http.StatusOK},
			{"GET", "/api/audit", "", http.StatusOK},
			{"GET", "/api/hosts", "", http.StatusOK},
			{"GET", "/api/stats", "", http.StatusOK},
			{"DELETE", "/api/domains/console.example?revision=18446744073709551615", "", http.StatusNoContent},
			{"PUT", "/api/domains/lists.example", longPolicy, http.StatusOK},
			{"POST", "/api/domains/lists.example/mailboxes/zed?revision=18446744073709551615", "", http.StatusOK},
			{"DELETE", "/api/domains/lists.example/mailboxes/m00001?revision=18446744073709551615", "", http.StatusOK},
		} {
			if st, b := consoleCall(t, http.DefaultClient, "", c.method, base+c.path, c.body); st != c.want {
				t.Errorf("admin %s %s through the console: %d %s", c.method, c.path, st, b)
			}
		}
		// The viewer's connection reads the chunks of a long list.
		if st, b := consoleCall(t, hc, csrf, "GET", base+"/api/domains/lists.example", ""); st != http.StatusOK || !strings.Contains(b, `"m04999"`) || !strings.Contains(b, `"zed"`) || strings.Contains(b, `"m00001"`) {
			t.Errorf("viewer reads a long list: %d %.300s", st, b)
		}
		if st, b := consoleCall(t, http.DefaultClient, "", "DELETE", base+"/api/domains/lists.example?revision=18446744073709551615", ""); st != http.StatusNoContent {
			t.Errorf("admin removes the long-list domain: %d %s", st, b)
		}
		// A tenant made and working through the console's own NATS user:
		// the users and tokens live in the accounts bucket.
		if st, b := consoleCall(t, http.DefaultClient, "", "POST", base+"/api/users", `{"name":"tenant","role":"domain","domains":["example.org"],"password":"tenant-password"}`); st != http.StatusCreated {
			t.Fatalf("admin makes a domain user: %d %s", st, b)
		}
		th, tcsrf := consoleLogin(t, base, "tenant", "tenant-password")
		for _, c := range []struct {
			method, path, body string
			want               int
		}{
			{"GET", "/api/domains", "", http.StatusOK},
			{"POST", "/api/flush", `{"scope":"domain","domain":"example.org","only":"invalid"}`, http.StatusOK},
			{"POST", "/api/flush", `{"scope":"all"}`, http.StatusForbidden},
			{"GET", "/api/domains/other.example", "", http.StatusNotFound},
			{"POST", "/api/tokens", `{"expires_in_days":1}`, http.StatusCreated},
			{"GET", "/api/tokens", "", http.StatusOK},
		} {
			if st, b := consoleCall(t, th, tcsrf, c.method, base+c.path, c.body); st != c.want {
				t.Errorf("tenant %s %s through the console: %d %s", c.method, c.path, st, b)
			}
		}
		co := connectAs(t, url, "console")
		_ = co.Publish("$JS.API.STREAM.PURGE.KV_callout_accounts", nil) // denied: wipe the users
		co.denied(t, "Publish", "$JS.API.STREAM.PURGE.KV_callout_accounts")
		_ = co.Publish("$JS.API.STREAM.PURGE."+s.names.AuditStream(), nil) // denied: rewrite the audit trail
		co.denied(t, "Publish", "$JS.API.STREAM.PURGE."+s.names.AuditStream())
		_ = co.Publish("$JS.API.STREAM.DELETE.KV_callout_cache", nil) // denied: delete a bucket
		co.denied(t, "Publish", "$JS.API.STREAM.DELETE.KV_callout_cache")
		_ = co.Publish("$KV.callout_cache.addr.example/org.alice.rcpt", []byte("x")) // denied: write a verdict
		co.denied(t, "Publish", "$KV.callout_cache")
		_, _ = co.SubscribeSync(s.names.Verify()) // denied: pose as the ingest
		co.denied(t, "Subscription", s.names.Verify())
		vw := connectAs(t, url, "viewer")
		_ = vw.Publish(s.names.Flush(), []byte("x")) // denied: flush
		vw.denied(t, "Publish", s.names.Flush())
		_ = vw.Publish("$KV.callout_domains.example.org", []byte("{}")) // denied: change a policy
		vw.denied(t, "Publish", "$KV.callout_domains")
		_ = vw.Publish("$KV.callout_lists.example.org.mailboxes.0123456789abcdef01234567", []byte("x")) // denied: change a list
		vw.denied(t, "Publish", "$KV.callout_lists")
		_ = vw.Publish(s.names.VerifyTrace(), []byte("x")) // denied: traced callouts
		vw.denied(t, "Publish", s.names.VerifyTrace())
		_ = vw.Publish(s.names.Verify(), []byte("x")) // denied: ask as an MTA, where the brake counts
		vw.denied(t, "Publish", s.names.Verify())
		// A viewer may not name the client an MTA would ask for.
		if st, b := consoleCall(t, hc, csrf, "POST", base+"/api/verify", `{"address":"nobody@example.org","client_address":"192.0.2.1"}`); st != http.StatusForbidden {
			t.Errorf("viewer verify with a client address: %d %s", st, b)
		}
	})
	// The services needed nothing they were not given.
	for _, name := range []string{"ingest-0", "prober-0", "cachekeeper-0", "console"} {
		b, err := os.ReadFile(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "Permissions Violation") || strings.Contains(string(b), "permissions violation") {
			t.Errorf("%s hit a permission violation:\n%s", name, b)
		}
	}
}
