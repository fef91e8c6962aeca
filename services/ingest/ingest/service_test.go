package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/cachekeeper/cachekeeper"
	"github.com/callout-mail/callout/services/prober/prober"
	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/dnstest"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// The services' settings in these tests: their defaults (config.Defaults),
// then what the tests need to differ, on purpose: shorter waits, smaller
// sizes, no fleet-wide leases or rate limit to wait on, no STARTTLS.

func ingestConfig() Config {
	var c Config
	mustDefaults(&c)
	c.Timeout, c.MaxTimeout, c.PendingRetry = 10*time.Second, 10*time.Second, 100*time.Millisecond
	c.Workers, c.NearCacheEntries, c.KnownKeys = 512, 10000, 100000
	c.PolicyAddr = "" // a test that wants a listener names its address
	c.RefreshAge, c.StatsInterval = 0, 0
	return c
}

func proberConfig() prober.Config {
	var c prober.Config
	mustDefaults(&c)
	c.Workers, c.HeloName, c.RandomSecret, c.StartTLS = 8, "verifier.test", "s", false
	c.ConnectTimeout, c.BannerTimeout, c.CommandTimeout = time.Second, 5*time.Second, 5*time.Second
	c.DialogueTimeout, c.Budget, c.AckWait = 10*time.Second, 20*time.Second, 5*time.Second
	c.Rate, c.FleetLimits, c.BreakerOpen, c.IdleTimeout, c.ReuseRetry = 1000, false, time.Second, time.Second, time.Minute
	c.StatsInterval = 0
	return c
}

func keeperConfig() cachekeeper.Config {
	var c cachekeeper.Config
	mustDefaults(&c)
	c.StoreWorkers, c.RefreshAge, c.StatsInterval = 4, 0, 0
	return c
}

func mustDefaults(spec any) {
	if err := config.Defaults(spec); err != nil {
		panic(err)
	}
}

type system struct {
	ns     *natstest.Server
	nc     *nats.Conn
	ingest *Service
	kv     *domains.Store
}

// startSystem runs ingest, one prober and one cachekeeper on an embedded server.
func startSystem(t *testing.T, icfg Config) *system {
	t.Helper()
	return startSystemWith(t, icfg, proberConfig())
}

func startSystemWith(t *testing.T, icfg Config, pcfg prober.Config) *system {
	t.Helper()
	ns := natstest.Start(t)
	sys := &system{ns: ns, nc: ns.Connect(t)}
	js := natstest.JetStream(t, sys.nc)
	var err error
	if sys.kv, err = domains.Bucket(context.Background(), js, subjects.New(""), 1); err != nil {
		t.Fatal(err)
	}
	k, err := cachekeeper.New(keeperConfig(), ns.Connect(t), prometheus.NewRegistry(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, k)
	p, err := prober.New(pcfg, ns.Connect(t), prometheus.NewRegistry(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, p)
	if icfg.MilterAddr != "" || icfg.PolicyAddr != "" {
		// With its listeners, as the command runs it.
		w, err := NewWithPolicy(icfg, ns.Connect(t), prometheus.NewRegistry(), quiet)
		if err != nil {
			t.Fatal(err)
		}
		sys.ingest = w.Service
		natstest.RunService(t, w)
	} else {
		sys.ingest, err = New(icfg, ns.Connect(t), prometheus.NewRegistry(), quiet)
		if err != nil {
			t.Fatal(err)
		}
		natstest.RunService(t, sys.ingest)
	}
	<-sys.ingest.Ready()
	// The cache answers before tests start.
	waitfor.Cond(t, 15*time.Second, func() bool {
		_, err := sys.nc.Request(subjects.New("").CacheLookup(), []byte("x"), 200*time.Millisecond)
		return err == nil
	})
	return sys
}

func (s *system) policy(t *testing.T, domain string, p domains.Policy) {
	t.Helper()
	if err := domains.Put(context.Background(), s.kv, domain, p); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 15*time.Second, func() bool {
		got, ok := s.ingest.domains.Lookup(domain)
		return ok && got.EffectiveMode() == p.EffectiveMode() && len(got.Route) == len(p.Route)
	})
}

// verify asks over NATS, as an MTA would.
func (s *system) verify(t *testing.T, req wire.VerifyRequest) wire.VerifyReply {
	t.Helper()
	b, _ := wire.Encode(&req)
	m, err := s.nc.Request(subjects.New("").Verify(), b, 15*time.Second)
	if err != nil {
		t.Fatalf("verify %s: %v", req.Address, err)
	}
	var rep wire.VerifyReply
	if err := wire.Decode(m.Data, &rep); err != nil {
		t.Fatalf("reply: %v", err)
	}
	return rep
}

func rcpt(a string) wire.VerifyRequest {
	return wire.VerifyRequest{Address: a, Purpose: verdict.Recipient, ClientAddress: "192.0.2.10"}
}

func expect(t *testing.T, rep wire.VerifyReply, action verdict.Action, code int, source verdict.Source) {
	t.Helper()
	if rep.Decision.Action != action || rep.Decision.Code != code || (source != "" && rep.Verdict.Source != source) {
		t.Fatalf("got %s %d (%s, %s/%s), want %s %d from %s", rep.Decision.Action, rep.Decision.Code, rep.Verdict.Source, rep.Verdict.Status, rep.Verdict.Reason, action, code, source)
	}
}

func destination(t *testing.T, cfg smtptest.Config) *smtptest.Server {
	t.Helper()
	return smtptest.Run(t, cfg)
}

func TestPaths(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, CatchAll: []string{"catchall.example"}})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	sys.policy(t, "catchall.example", domains.Policy{Route: []string{dest.Addr()}})
	sys.policy(t, "static.example", domains.Policy{Mode: domains.ModeStatic, Mailboxes: []string{"listed"}})
	sys.policy(t, "off.example", domains.Policy{Mode: domains.ModeOff})

	t.Run("valid, then from cache", func(t *testing.T) {
		expect(t, sys.verify(t, rcpt("alice@example.org")), verdict.Accept, 250, verdict.SourceProbe)
		waitfor.Cond(t, 15*time.Second, func() bool { return sys.verify(t, rcpt("alice@example.org")).Verdict.Source == verdict.SourceCache })
		before := dest.Rcpts()
		expect(t, sys.verify(t, rcpt("alice@example.org")), verdict.Accept, 250, verdict.SourceCache)
		if dest.Rcpts() != before {
			t.Fatal("a cached address was probed again")
		}
	})
	t.Run("invalid, then from cache", func(t *testing.T) {
		rep := sys.verify(t, rcpt("nobody@example.org"))
		expect(t, rep, verdict.Reject, 550, verdict.SourceProbe)
		if rep.Decision.Enhanced != "5.1.1" || rep.Decision.Text != "<nobody@example.org>: Recipient address rejected: User unknown" {
			t.Fatalf("decision %+v", rep.Decision)
		}
		if rep.Verdict.Host != "" || rep.Verdict.Text != "" {
			t.Fatal("reply reveals the destination")
		}
		waitfor.Cond(t, 15*time.Second, func() bool { return sys.verify(t, rcpt("nobody@example.org")).Verdict.Source == verdict.SourceCache })
	})
	t.Run("known not catch-all: no second random RCPT", func(t *testing.T) {
		rand := dest.Rcpts()
		expect(t, sys.verify(t, rcpt("other@example.org")), verdict.Reject, 550, verdict.SourceProbe)
		if n := dest.Rcpts() - rand; n != 1 {
			t.Fatalf("%d RCPTs, want 1 (domain known not to be catch-all)", n)
		}
	})
	t.Run("catch-all short-cut", func(t *testing.T) {
		expect(t, sys.verify(t, rcpt("first@catchall.example")), verdict.Accept, 250, verdict.SourceProbe)
		before := dest.Rcpts()
		// Once the domain fact is stored, other addresses are answered without a job.
		waitfor.Cond(t, 15*time.Second, func() bool {
			return sys.verify(t, rcpt("second@catchall.example")).Verdict.Source == verdict.SourceCache
		})
		rep := sys.verify(t, rcpt("third@catchall.example"))
		expect(t, rep, verdict.Accept, 250, verdict.SourceCache)
		if rep.Verdict.Status != verdict.CatchAll {
			t.Fatalf("status %s", rep.Verdict.Status)
		}
		if n := dest.Rcpts() - before; n > 1 {
			t.Fatalf("%d RCPTs for a known catch-all domain", n)
		}
	})
	t.Run("static", func(t *testing.T) {
		expect(t, sys.verify(t, rcpt("listed@static.example")), verdict.Accept, 250, verdict.SourceStatic)
		expect(t, sys.verify(t, rcpt("unlisted@static.example")), verdict.Reject, 550, verdict.SourceStatic)
	})
	t.Run("off", func(t *testing.T) {
		rep := sys.verify(t, rcpt("anyone@off.example"))
		expect(t, rep, verdict.Accept, 250, verdict.SourceStatic)
		if rep.Verdict.Status != verdict.Skipped {
			t.Fatalf("status %s", rep.Verdict.Status)
		}
	})
	t.Run("malformed address", func(t *testing.T) {
		for _, a := range []string{"not-an-address", "a@b.example>\r\nDATA", "<>"} {
			rep := sys.verify(t, rcpt(a))
			if rep.Decision.Code != 501 || rep.Decision.Enhanced != "5.1.3" {
				t.Fatalf("%q: %+v", a, rep.Decision)
			}
		}
	})
	t.Run("forms real mail uses are never rejected", func(t *testing.T) {
		before := dest.Rcpts()
		for _, a := range []string{"taro..yamada@example.org", ".dot@example.org", "user@[192.0.2.1]", "jörg@example.org"} {
			for _, p := range []verdict.Purpose{verdict.Recipient, verdict.Sender} {
				rep := sys.verify(t, wire.VerifyRequest{Address: a, Purpose: p})
				if rep.Decision.Action != verdict.Accept || rep.Verdict.Reason != verdict.ReasonUnprobeable {
					t.Fatalf("%q as %s: %+v %+v", a, p, rep.Decision, rep.Verdict)
				}
			}
		}
		if dest.Rcpts() != before {
			t.Fatal("an unprobeable address was sent to the destination")
		}
	})
	t.Run("garbage request", func(t *testing.T) {
		m, err := sys.nc.Request(subjects.New("").Verify(), []byte("\xc1\xc1garbage"), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(micro.ErrorCodeHeader) != "400" {
			t.Fatalf("headers %v", m.Header)
		}
		var rep wire.VerifyReply
		if err := wire.Decode(m.Data, &rep); err != nil || rep.Decision.Action != verdict.Defer {
			t.Fatalf("garbage answer %+v %v", rep, err)
		}
	})
	t.Run("JSON", func(t *testing.T) {
		msg := nats.NewMsg(subjects.New("").Verify())
		msg.Header.Set("Content-Type", "application/json")
		msg.Data = []byte(`{"address":"alice@example.org"}`)
		m, err := sys.nc.RequestMsg(msg, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var rep wire.VerifyReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Decision.Action != verdict.Accept {
			t.Fatalf("JSON reply %s: %v", m.Data, err)
		}
	})
	t.Run("probe sender is never verified", func(t *testing.T) {
		sys.policy(t, "withsender.example", domains.Policy{Route: []string{dest.Addr()}, Sender: "verify@example.org"})
		before := dest.Rcpts()
		rep := sys.verify(t, rcpt("verify@example.org"))
		if rep.Decision.Action != verdict.Accept || rep.Verdict.Reason != verdict.ReasonProbeSender || dest.Rcpts() != before {
			t.Fatalf("probe sender verified: %+v", rep.Verdict)
		}
	})
}

// 200 concurrent asks for one new address make exactly one RCPT.
func TestCoalescing(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{Mailboxes: []string{"burst@example.org"}, Delay: 50 * time.Millisecond})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, _ := wire.Encode(&wire.VerifyRequest{Address: "burst@example.org"})
			m, err := sys.nc.Request(subjects.New("").Verify(), b, 15*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			var rep wire.VerifyReply
			if err := wire.Decode(m.Data, &rep); err != nil || rep.Decision.Action != verdict.Accept {
				t.Errorf("reply %+v %v", rep.Decision, err)
			}
		}()
	}
	wg.Wait()
	if n := dest.RcptsFor("burst@example.org"); n != 1 {
		t.Fatalf("%d RCPTs for the address, want 1", n)
	}
}

func TestDeadlineDefers(t *testing.T) {
	cfg := ingestConfig()
	cfg.Timeout = 500 * time.Millisecond
	sys := startSystem(t, cfg)
	// A tarpit: the banner comes after 5 s.
	dest := destination(t, smtptest.Config{Mailboxes: []string{"a@example.org"}, Delay: 5 * time.Second})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	rep := sys.verify(t, rcpt("nobody@example.org"))
	expect(t, rep, verdict.Defer, 450, "")
	if rep.Decision.Enhanced != "4.4.3" || rep.Verdict.Reason != verdict.ReasonDeadline {
		t.Fatalf("deadline answer %+v %+v", rep.Decision, rep.Verdict)
	}
	// The request's own shorter deadline is honoured.
	req := rcpt("other@example.org")
	req.TimeoutMS = 200
	start := time.Now()
	expect(t, sys.verify(t, req), verdict.Defer, 450, "")
	if time.Since(start) > 2*time.Second {
		t.Fatal("request deadline not honoured")
	}
}

// Greylisting, a 5.7.1 block and a refused null sender never reject.
func TestNeverRejectOnDoubt(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	grey := destination(t, smtptest.Config{Rcpt: smtptest.Greylist(smtptest.Mailboxes(nil, nil))})
	block := destination(t, smtptest.Config{Rcpt: func(_, _ string) string { return "550 5.7.1 Client host blocked using zen.spamhaus.org" }})
	nonull := destination(t, smtptest.Config{Mail: func(f string) string {
		if f == "" {
			return "550 5.7.1 null sender refused"
		}
		return "250 ok"
	}})
	sys.policy(t, "grey.example", domains.Policy{Route: []string{grey.Addr()}})
	sys.policy(t, "block.example", domains.Policy{Route: []string{block.Addr()}})
	sys.policy(t, "strict.example", domains.Policy{Route: []string{block.Addr()}, OnUnverifiable: verdict.Defer})
	sys.policy(t, "nonull.example", domains.Policy{Route: []string{nonull.Addr()}})
	expect(t, sys.verify(t, rcpt("x@grey.example")), verdict.Defer, 450, verdict.SourceProbe)
	expect(t, sys.verify(t, rcpt("x@block.example")), verdict.Accept, 250, verdict.SourceProbe)
	expect(t, sys.verify(t, rcpt("x@strict.example")), verdict.Defer, 450, verdict.SourceProbe)
	expect(t, sys.verify(t, rcpt("x@nonull.example")), verdict.Accept, 250, verdict.SourceProbe)
	// The refusal is cached as a domain fact: the next address makes no callout.
	before := nonull.Conns()
	waitfor.Cond(t, 15*time.Second, func() bool { return sys.verify(t, rcpt("y@nonull.example")).Verdict.Source == verdict.SourceCache })
	if nonull.Conns() > before+1 {
		t.Fatalf("%d more connections to a destination that refuses us", nonull.Conns()-before)
	}
}

func TestDestinationDown(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{Mailboxes: []string{"known@example.org"}})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	expect(t, sys.verify(t, rcpt("known@example.org")), verdict.Accept, 250, verdict.SourceProbe)
	waitfor.Cond(t, 15*time.Second, func() bool { return sys.verify(t, rcpt("known@example.org")).Verdict.Source == verdict.SourceCache })
	dest.Close()
	// Known recipients are still accepted; unknown ones deferred.
	expect(t, sys.verify(t, rcpt("known@example.org")), verdict.Accept, 250, verdict.SourceCache)
	expect(t, sys.verify(t, rcpt("new@example.org")), verdict.Defer, 450, verdict.SourceProbe)
}

func TestDictionaryBrake(t *testing.T) {
	cfg := ingestConfig()
	cfg.BrakeLimit = 3
	sys := startSystem(t, cfg)
	dest := destination(t, smtptest.Config{Mailboxes: []string{"real@example.org"}})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	for i, l := range []string{"a", "b", "c"} {
		if rep := sys.verify(t, rcpt(l+"@example.org")); rep.Decision.Action != verdict.Reject {
			t.Fatalf("attempt %d: %+v", i, rep.Decision)
		}
	}
	before := dest.Rcpts()
	rep := sys.verify(t, rcpt("d@example.org"))
	if rep.Decision.Action != verdict.Defer || rep.Decision.Enhanced != "4.7.1" || dest.Rcpts() != before {
		t.Fatalf("braked client: %+v, %d new RCPTs", rep.Decision, dest.Rcpts()-before)
	}
	// Another client is not braked.
	other := rcpt("d@example.org")
	other.ClientAddress = "192.0.2.99"
	if rep := sys.verify(t, other); rep.Decision.Action != verdict.Reject {
		t.Fatalf("other client: %+v", rep.Decision)
	}
}

// Operators' verifies (the console, calloutctl) ask on their own subject:
// they are answered as an MTA's, a braked client's view included, but
// however many unknown recipients they ask for, they never move the brake.
func TestConsoleVerifiesDoNotFeedTheBrake(t *testing.T) {
	cfg := ingestConfig()
	cfg.BrakeLimit = 3
	sys := startSystem(t, cfg)
	dest := destination(t, smtptest.Config{Mailboxes: []string{"real@example.org"}})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	ops, err := operate.New(sys.nc, subjects.New(""))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		rep, err := ops.Verify(context.Background(), rcpt(fmt.Sprintf("nobody%d@example.org", i)))
		if err != nil || rep.Decision.Action != verdict.Reject {
			t.Fatalf("console verify %d: %+v %v", i, rep.Decision, err)
		}
	}
	// The client they named is not braked: an MTA's unknown recipient
	// from it is still called out and rejected.
	if rep := sys.verify(t, rcpt("fresh@example.org")); rep.Decision.Action != verdict.Reject {
		t.Fatalf("the console's verifies braked the client: %+v", rep.Decision)
	}
	// Once the MTA's own unknown recipients brake the client, the console
	// sees what that MTA would.
	for _, l := range []string{"b", "c"} {
		sys.verify(t, rcpt(l+"@example.org"))
	}
	if rep, err := ops.Verify(context.Background(), rcpt("d@example.org")); err != nil || rep.Decision.Enhanced != "4.7.1" {
		t.Fatalf("console view of a braked client: %+v %v", rep.Decision, err)
	}
}

// Sender verification: any domain, destination by MX, reject only on a
// definite invalid.
func TestSenderVerification(t *testing.T) {
	dest := destination(t, smtptest.Config{Mailboxes: []string{"real@sender.example"}})
	_, port, _ := net.SplitHostPort(dest.Addr())
	pcfg := proberConfig()
	pcfg.DNSServer = dnstest.Start(t,
		"sender.example. 60 IN MX 10 mx.sender.example.", "mx.sender.example. 60 IN A 127.0.0.1",
		"nomail.example. 60 IN MX 0 .")
	pcfg.MXPort, _ = strconv.Atoi(port)
	icfg := ingestConfig()
	icfg.UnknownDomains = "callout" // recipient domains without a policy go by MX too
	sys := startSystemWith(t, icfg, pcfg)
	snd := func(a string) wire.VerifyReply {
		return sys.verify(t, wire.VerifyRequest{Address: a, Purpose: verdict.Sender})
	}
	expect(t, snd("real@sender.example"), verdict.Accept, 250, verdict.SourceProbe)
	rep := snd("forged@sender.example")
	expect(t, rep, verdict.Reject, 550, verdict.SourceProbe)
	if rep.Decision.Enhanced != "5.1.0" || !strings.Contains(rep.Decision.Text, "Sender address rejected") {
		t.Fatalf("sender reject %+v", rep.Decision)
	}
	// A null MX says the domain takes no mail (RFC 7505); a domain DNS
	// says does not exist may be newly registered: deferred, as Postfix's
	// reject_unknown_sender_domain does, and not cached.
	rep = snd("x@nomail.example")
	expect(t, rep, verdict.Reject, 550, verdict.SourceProbe)
	if rep.Decision.Enhanced != "5.7.27" {
		t.Fatalf("null MX sender: %+v", rep.Decision)
	}
	for i := 0; i < 2; i++ {
		expect(t, snd("x@nxdomain.example"), verdict.Defer, 450, verdict.SourceProbe)
	}
	expect(t, snd("x@lookup.fail"), verdict.Accept, 250, verdict.SourceProbe) // SERVFAIL: temporary, accepted by default
	if dest.RcptsFor("forged@sender.example") != 1 {
		t.Fatal("the sender's MX was not asked")
	}
	// For a recipient, a domain without mail says our set-up is wrong, not
	// that the user is unknown: never a reject.
	for _, a := range []string{"y@nomail.example", "y@nxdomain.example"} {
		rep := sys.verify(t, rcpt(a))
		if rep.Decision.Action == verdict.Reject || rep.Verdict.Status != verdict.Unverifiable {
			t.Fatalf("recipient %s: %+v %+v", a, rep.Decision, rep.Verdict)
		}
	}
}
