package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
	"github.com/callout-mail/callout/tools/stack"
)

// `make run` starts everything on the dev ports, answers, and stops cleanly.
func TestMakeRun(t *testing.T) {
	for _, a := range []string{"127.0.0.1:4222", "127.0.0.1:2525", "127.0.0.1:10040", "127.0.0.1:8222", "127.0.0.1:8080"} {
		if c, err := net.DialTimeout("tcp", a, 200*time.Millisecond); err == nil {
			c.Close()
			t.Skipf("%s is in use (is `make run` running?)", a)
		}
	}
	devrun := filepath.Join(binDir, "devrun")
	if _, err := os.Stat(devrun); err != nil {
		t.Skipf("no devrun binary in %s", binDir)
	}
	logs := t.TempDir()
	root, _ := filepath.Abs("..")
	p, err := stack.StartIn(root, logs, "devrun", devrun, []string{"-bin", binDir, "-dir", logs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(20 * time.Second) })
	out := func() string { b, _ := os.ReadFile(p.Log); return string(b) }
	waitFor(t, 60*time.Second, func() bool { return strings.Contains(out(), "Ctrl-C stops everything") || p.Exited() })
	if p.Exited() {
		t.Fatalf("devrun exited:\n%s", out())
	}
	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ask := func(addr string) wire.VerifyReply {
		b, _ := wire.Encode(&wire.VerifyRequest{Address: addr})
		m, err := nc.Request("callout.verify", b, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var rep wire.VerifyReply
		if err := wire.Decode(m.Data, &rep); err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if rep := ask("alice@demo.example"); rep.Decision.Action != verdict.Accept {
		t.Fatalf("alice: %+v", rep.Decision)
	}
	if rep := ask("nobody@demo.example"); rep.Decision.Action != verdict.Reject {
		t.Fatalf("nobody: %+v", rep.Decision)
	}
	if rep := ask("x@catchall.example"); rep.Decision.Action != verdict.Accept {
		t.Fatalf("catch-all: %+v", rep.Decision)
	}
	// Every command it prints works as printed (./bin is where make puts them).
	ran := 0
	for _, line := range strings.Split(out(), "\n") {
		if !strings.HasPrefix(line, "  ./bin/") && !strings.HasPrefix(line, "  curl ") {
			continue
		}
		cmdline := strings.TrimSpace(line)
		if i := strings.Index(cmdline, "   #"); i > 0 {
			cmdline = strings.TrimSpace(cmdline[:i])
		}
		if strings.HasPrefix(cmdline, "./bin/") {
			cmdline = filepath.Join(binDir) + "/" + strings.TrimPrefix(cmdline, "./bin/")
		}
		cmd := exec.Command("bash", "-c", cmdline)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "HOME="+t.TempDir()) // no nats contexts of the machine's user
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmdline, err, o)
		}
		ran++
	}
	if ran < 10 {
		t.Fatalf("only %d commands printed:\n%s", ran, out())
	}
	nc.Close()
	if err := p.Stop(20 * time.Second); err != nil {
		t.Fatalf("devrun did not stop cleanly: %v\n%s", err, out())
	}
	for _, name := range []string{"console", "ingest", "prober", "cachekeeper", "nats-server"} {
		if !strings.Contains(out(), "stopped "+name) {
			t.Errorf("%s not stopped cleanly:\n%s", name, out())
		}
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:4222", 200*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("nats-server still listening after devrun stopped")
	}
}
