package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
	"github.com/callout-mail/callout/tools/stack"
)

// binDir holds nats-server and the service binaries.
var binDir string

func TestMain(m *testing.M) {
	binDir = os.Getenv("CALLOUT_BIN")
	if binDir != "" {
		binDir, _ = filepath.Abs(binDir) // processes start in other directories
	}
	cleanup := func() {}
	if binDir == "" {
		dir, err := os.MkdirTemp("", "callout-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		cleanup = func() { os.RemoveAll(dir) }
		if err := buildAll(dir); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: build:", err)
			cleanup()
			os.Exit(1)
		}
		binDir = dir
	}
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// buildAll builds into dir every binary a test runs, as `make build` and
// `make tools` do: the services, calloutctl and devrun, nats-server, and
// the nats CLI at the Makefile's pinned version.
func buildAll(dir string) error {
	builds := [][2]string{
		{"../services/prober", "./cmd/prober"}, {"../services/cachekeeper", "./cmd/cachekeeper"},
		{"../services/ingest", "./cmd/ingest"}, {"../services/console", "./cmd/console"}, {"../tools", "./devrun"},
		{"../tools", "./calloutctl"}, {".", "github.com/nats-io/nats-server/v2"},
	}
	for _, b := range builds {
		out := filepath.Join(dir, filepath.Base(b[1]))
		if strings.HasPrefix(b[1], "github.com") {
			out = filepath.Join(dir, "nats-server")
		}
		cmd := exec.Command("go", "build", "-o", out, b[1])
		cmd.Dir = b[0]
		if o, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", b[1], err, o)
		}
	}
	version, err := makefileVar("../Makefile", "NATSCLI_VERSION")
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "install", "github.com/nats-io/natscli/nats@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nats CLI: %v\n%s", err, o)
	}
	return nil
}

// makefileVar reads a `NAME := value` line of the Makefile, so that a
// pinned version is written in one place.
func makefileVar(path, name string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, name+" := "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("%s: no %s", path, name)
}

// system is one running callout system.
type system struct {
	t      *testing.T
	dir    string
	port   int
	url    string
	nats   *stack.Proc
	procs  map[string][]*stack.Proc
	nc     *nats.Conn
	js     jetstream.JetStream
	env    map[string][]string
	policy string // Postfix policy listener address
	names  subjects.Names
	syncs  int
}

// options change how a system starts.
type options struct {
	env map[string][]string // extra environment per service
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// startNATS runs nats-server from deploy/nats/dev.conf on free ports.
func (s *system) startNATS() {
	t := s.t
	if s.port == 0 {
		s.port = freePort(t)
	}
	s.url = fmt.Sprintf("nats://127.0.0.1:%d", s.port)
	conf, _ := filepath.Abs("../deploy/nats/dev.conf")
	// Started in the test's directory, so the config's ./var store lands there.
	p, err := stack.StartIn(s.dir, s.dir, "nats-server", filepath.Join(binDir, "nats-server"),
		[]string{"-c", conf, "-p", strconv.Itoa(s.port), "-m", strconv.Itoa(freePort(t))}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.nats = p
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := stack.WaitNATS(ctx, s.url); err != nil {
		t.Fatal(err)
	}
}

func newSystem(t *testing.T, o options) *system {
	t.Helper()
	s := &system{t: t, dir: t.TempDir(), procs: map[string][]*stack.Proc{}, env: o.env, names: newNames()}
	s.startNATS()
	t.Cleanup(func() { _ = s.nats.Stop(10 * time.Second) })
	nc, err := nats.Connect(s.url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s.nc = nc
	s.js, _ = jetstream.New(nc)
	s.policy = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s.startServices()
	return s
}

// startServices runs one cachekeeper, prober and ingest, waits until they
// serve, and stops every service instance when the test ends (its logs are
// shown when it failed).
func (s *system) startServices() {
	s.t.Helper()
	s.t.Cleanup(func() {
		for _, name := range []string{"ingest", "prober", "cachekeeper"} {
			for _, p := range s.procs[name] {
				_ = p.Stop(10 * time.Second)
			}
		}
		if s.t.Failed() {
			s.dumpLogs()
		}
	})
	for _, name := range []string{"cachekeeper", "prober", "ingest"} {
		s.start(name)
	}
	s.waitReady()
}

func (s *system) dumpLogs() { logTails(s.t, s.dir, 40) }

// logTails logs the last n lines of every process log in dir.
func logTails(t *testing.T, dir string, n int) {
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		lines := strings.Split(string(b), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		t.Logf("--- %s (tail)\n%s", filepath.Base(f), strings.Join(lines, "\n"))
	}
}

// start runs one more instance of a service, configured by environment only.
func (s *system) start(name string) *stack.Proc {
	s.t.Helper()
	up := "CALLOUT_" + strings.ToUpper(name) + "_"
	env := []string{up + "NATS_URL=" + s.url, up + "METRICS_ADDR="}
	switch name {
	case "prober":
		env = append(env, up+"RANDOM_SECRET=e2e", up+"HELO_NAME=verifier.test", up+"ACK_WAIT=2s",
			up+"CONNECT_TIMEOUT=1s", up+"BANNER_TIMEOUT=5s", up+"COMMAND_TIMEOUT=5s", up+"BREAKER_OPEN=2s", up+"BREAKER_FAILURES=3")
	case "ingest":
		env = append(env, up+"POLICY_ADDR="+s.policy, up+"TIMEOUT=10s", up+"MAX_TIMEOUT=15s")
	}
	env = append(env, s.env[name]...)
	p, err := stack.Start(s.dir, fmt.Sprintf("%s-%d", name, len(s.procs[name])), filepath.Join(binDir, name), nil, env)
	if err != nil {
		s.t.Fatal(err)
	}
	s.procs[name] = append(s.procs[name], p)
	return p
}

func (s *system) waitReady() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, svc := range []string{"callout-cache", "callout-ingest"} {
		if err := stack.WaitService(ctx, s.nc, svc); err != nil {
			s.dumpLogs()
			s.t.Fatal(err)
		}
	}
	// The prober has created its consumer once it runs.
	waitFor(s.t, 30*time.Second, func() bool {
		_, err := s.js.Consumer(ctx, s.names.ProbeStream(), s.names.ProbeConsumer())
		return err == nil
	})
}

// setPolicy stores a domain policy and waits until the ingest uses it: it
// then stores a static sentinel domain and waits for the ingest to answer
// from it. KV watchers get changes in order, so the policy is in place too.
func (s *system) setPolicy(domain string, p domains.Policy) {
	s.t.Helper()
	ctx := context.Background()
	kv, err := domains.Bucket(ctx, s.js, s.names, 1)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := domains.Put(ctx, kv, domain, p); err != nil {
		s.t.Fatal(err)
	}
	s.syncs++
	sentinel := fmt.Sprintf("sync-%d.test", s.syncs)
	if err := domains.Put(ctx, kv, sentinel, domains.Policy{Mode: domains.ModeStatic, Mailboxes: []string{"ok"}}); err != nil {
		s.t.Fatal(err)
	}
	waitFor(s.t, 10*time.Second, func() bool {
		rep := s.verify("ok@" + sentinel)
		return rep.Verdict != nil && rep.Verdict.Reason == "listed"
	})
}

func (s *system) verify(addr string) wire.VerifyReply {
	s.t.Helper()
	return s.verifyReq(wire.VerifyRequest{Address: addr, ClientAddress: "192.0.2.1"})
}

func (s *system) verifyReq(req wire.VerifyRequest) wire.VerifyReply {
	s.t.Helper()
	b, _ := wire.Encode(&req)
	m, err := s.nc.Request(s.names.Verify(), b, 20*time.Second)
	if err != nil {
		s.t.Fatalf("verify %s: %v", req.Address, err)
	}
	var rep wire.VerifyReply
	if err := wire.Decode(m.Data, &rep); err != nil {
		s.t.Fatalf("verify reply: %v", err)
	}
	return rep
}

func (s *system) flush(cmd wire.FlushCommand) uint64 {
	s.t.Helper()
	b, _ := wire.Encode(&cmd)
	m, err := s.nc.Request(s.names.Flush(), b, 20*time.Second)
	if err != nil {
		s.t.Fatal(err)
	}
	var rep wire.FlushReply
	if err := wire.Decode(m.Data, &rep); err != nil || rep.Error != "" {
		s.t.Fatalf("flush: %v %s", err, rep.Error)
	}
	return rep.Removed
}

// cached waits until the cache answers for addr from its store.
func (s *system) cached(addr string) wire.VerifyReply {
	s.t.Helper()
	var rep wire.VerifyReply
	waitFor(s.t, 15*time.Second, func() bool {
		rep = s.verify(addr)
		return rep.Verdict != nil && rep.Verdict.Source == verdict.SourceCache
	})
	return rep
}

func must(t *testing.T, rep wire.VerifyReply, action verdict.Action, code int) {
	t.Helper()
	if rep.Decision.Action != action || rep.Decision.Code != code {
		v := verdict.Verdict{}
		if rep.Verdict != nil {
			v = *rep.Verdict
		}
		t.Fatalf("got %s %d (%s/%s from %s), want %s %d", rep.Decision.Action, rep.Decision.Code, v.Status, v.Reason, v.Source, action, code)
	}
}

func destination(t *testing.T, cfg smtptest.Config) *smtptest.Server {
	t.Helper()
	return smtptest.Run(t, cfg)
}

func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	waitfor.Cond(t, d, cond)
}

func newNames() subjects.Names { return subjects.New("") }
