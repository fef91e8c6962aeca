package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/smtptest"
)

// What the docs tell operators to type with the standard nats CLI works.
func TestNatsCLI(t *testing.T) {
	natsBin := filepath.Join(binDir, "nats")
	if _, err := os.Stat(natsBin); err != nil {
		t.Skipf("no nats CLI in %s (make e2e installs it)", binDir)
	}
	s := newSystem(t, options{})
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	nats := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(natsBin, append([]string{"--server", s.url, "--timeout", "20s"}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no contexts of the machine's user
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nats %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	out := nats("req", "callout.verify", `{"address":"alice@example.org"}`, "-H", "Content-Type:application/json")
	if !strings.Contains(out, `"action":"accept"`) {
		t.Fatalf("nats req callout.verify:\n%s", out)
	}
	s.cached("alice@example.org")
	waitFor(t, 10*time.Second, func() bool {
		return strings.Contains(nats("kv", "ls", "callout_cache"), "addr.example/org.alice.rcpt")
	})
	out = nats("req", "callout.control.flush", `{"scope":"address","address":"alice@example.org"}`, "-H", "Content-Type:application/json")
	if !strings.Contains(out, `"removed":1`) {
		t.Fatalf("nats req callout.control.flush:\n%s", out)
	}
	out = nats("micro", "ls")
	if !strings.Contains(out, "callout-ingest") || !strings.Contains(out, "callout-cache") {
		t.Fatalf("nats micro ls:\n%s", out)
	}
}
