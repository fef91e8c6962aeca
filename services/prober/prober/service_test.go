package prober

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/cachekeeper/cachekeeper"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/dnstest"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

func testConfig() Config {
	return Config{
		Workers: 4, HeloName: "verifier.test", ConnectTimeout: time.Second, BannerTimeout: 5 * time.Second,
		CommandTimeout: 5 * time.Second, DialogueTimeout: 10 * time.Second, Budget: 20 * time.Second,
		MaxReplyLine: 2048, MaxReplyLines: 64, MaxReplyBytes: 16384, MaxConns: 2, Rate: 1000,
		BreakerFailures: 5, BreakerOpen: time.Second, ReuseMaxRcpts: 20, IdleTimeout: time.Second,
		RandomSecret: "s", AckWait: 2 * time.Second, MaxDeliver: 4, Replicas: 1,
		MaxNonMail: 8, ReuseRetry: time.Minute, BackoffQuiet: time.Minute, MaxWaiting: 1000, MXLimit: 5,
	}
}

type harness struct {
	ns    *natstest.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	names subjects.Names
}

func newHarness(t *testing.T) *harness {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	return &harness{ns: ns, nc: nc, js: js, names: subjects.New("")}
}

// start runs a prober with its own connection; the returned func kills it.
func (h *harness) start(t *testing.T, cfg Config) (kill func()) {
	t.Helper()
	return h.startWith(t, cfg, prometheus.NewRegistry())
}

func (h *harness) startWith(t *testing.T, cfg Config, reg *prometheus.Registry) (kill func()) {
	t.Helper()
	nc := h.ns.Connect(t)
	svc, err := New(cfg, nc, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	stop := natstest.RunService(t, svc)
	return func() {
		nc.Close() // like kill -9: no ack, no goodbye
		stop()
	}
}

func (h *harness) route(t *testing.T, domain string, p domains.Policy) {
	t.Helper()
	ctx := context.Background()
	kv, err := domains.Bucket(ctx, h.js, h.names, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := domains.Put(ctx, kv, domain, p); err != nil {
		t.Fatal(err)
	}
}

// queueEmpty waits until the work queue holds no job: every one taken
// and acked (or dropped).
func (h *harness) queueEmpty(t *testing.T) {
	t.Helper()
	waitfor.Cond(t, 15*time.Second, func() bool {
		st, err := h.js.Stream(context.Background(), h.names.ProbeStream())
		if err != nil {
			return false
		}
		i, err := st.Info(context.Background())
		return err == nil && i.State.Msgs == 0
	})
}

// ask publishes a job and waits for the address verdict.
func (h *harness) ask(t *testing.T, domain, local string, job wire.ProbeJob, wait time.Duration) verdict.Verdict {
	t.Helper()
	ctx := context.Background()
	// The prober creates the stream as it starts; a JetStream API request
	// that meets that creation on a loaded machine can go unanswered, so
	// each try has a deadline of its own.
	waitfor.Cond(t, 60*time.Second, func() bool {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := streams.Probes(cctx, h.js, h.names, 1)
		if err != nil {
			t.Logf("probe stream: %v", err)
		}
		return err == nil
	})
	sub, err := h.nc.SubscribeSync(h.names.Verdict("addr." + kvkey.Target(domain, local, job.Purpose)))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	b, _ := wire.Encode(&job)
	if _, err := h.js.Publish(ctx, h.names.Probe(kvkey.Target(domain, local, job.Purpose)), b); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(wait)
	if err != nil {
		t.Fatalf("no verdict for %s@%s: %v", local, domain, err)
	}
	v, err := wire.DecodeVerdict(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestJobToVerdict(t *testing.T) {
	h := newHarness(t)
	reg := prometheus.NewRegistry()
	dest, _ := smtptest.Start("127.0.0.1:0", smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	defer dest.Close()
	h.route(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	factSub, _ := h.nc.SubscribeSync(h.names.Verdict(kvkey.Domain("example.org", verdict.Recipient, kvkey.FactCatchAll)))
	h.startWith(t, testConfig(), reg)

	v := h.ask(t, "example.org", "alice", wire.ProbeJob{Address: "alice@example.org", Purpose: verdict.Recipient}, 10*time.Second)
	if v.Status != verdict.Valid || v.Host != dest.Addr() {
		t.Fatalf("verdict %+v", v)
	}
	m, err := factSub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal("no catch-all domain fact published")
	}
	if f, _ := wire.DecodeVerdict(m.Data); f.Status != verdict.NotCatchAll || f.Kind != verdict.KindDomain {
		t.Fatalf("domain fact %+v", f)
	}
	v = h.ask(t, "example.org", "nobody", wire.ProbeJob{Address: "nobody@example.org", Purpose: verdict.Recipient, SkipRandom: true}, 10*time.Second)
	if v.Status != verdict.Invalid || v.Code != 550 {
		t.Fatalf("verdict %+v", v)
	}
	// The metrics count what happened.
	waitfor.Cond(t, 5*time.Second, func() bool {
		return counter(t, reg, "callout_prober_callouts_total", "result", "valid") == 1 &&
			counter(t, reg, "callout_prober_callouts_total", "result", "invalid") == 1
	})
	// The job was acked: the work queue is empty again.
	h.queueEmpty(t)
}

// A job for a domain whose MX lookup fails temporarily gets tempfail; the
// verdict for a garbage job never comes, and the job is removed.
func TestGarbageJobIsDropped(t *testing.T) {
	h := newHarness(t)
	h.start(t, testConfig())
	ctx := context.Background()
	if _, err := streams.Probes(ctx, h.js, h.names, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := h.js.Publish(ctx, h.names.Probe("x.y"), []byte("\xc1garbage")); err != nil {
		t.Fatal(err)
	}
	h.queueEmpty(t)
}

// A prober killed mid-callout loses nothing: the job goes to another.
func TestKilledProberJobIsRedelivered(t *testing.T) {
	h := newHarness(t)
	release := make(chan struct{})
	var once sync.Once
	var mu sync.Mutex
	calls := 0
	dest, _ := smtptest.Start("127.0.0.1:0", smtptest.Config{Rcpt: func(from, to string) string {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			once.Do(func() { close(release) })
			time.Sleep(3 * time.Second) // the first prober dies while waiting here
		}
		return "250 2.1.5 Ok"
	}})
	defer dest.Close()
	h.route(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	cfg := testConfig()
	cfg.AckWait = time.Second
	cfg.CommandTimeout = 10 * time.Second
	killA := h.start(t, cfg)

	ctx := context.Background()
	if _, err := streams.Probes(ctx, h.js, h.names, 1); err != nil {
		t.Fatal(err)
	}
	sub, _ := h.nc.SubscribeSync(h.names.Verdict("addr." + kvkey.Target("example.org", "alice", verdict.Recipient)))
	b, _ := wire.Encode(&wire.ProbeJob{Address: "alice@example.org", Purpose: verdict.Recipient, SkipRandom: true})
	if _, err := h.js.Publish(ctx, h.names.Probe(kvkey.Target("example.org", "alice", verdict.Recipient)), b); err != nil {
		t.Fatal(err)
	}
	select {
	case <-release:
	case <-time.After(10 * time.Second):
		t.Fatal("first prober never reached RCPT")
	}
	killA()
	h.start(t, cfg)
	m, err := sub.NextMsg(15 * time.Second)
	if err != nil {
		t.Fatal("job was lost with the killed prober")
	}
	v, _ := wire.DecodeVerdict(m.Data)
	if v.Status != verdict.Valid {
		t.Fatalf("verdict %+v", v)
	}
}

func TestGivesUpAfterMaxDeliver(t *testing.T) {
	h := newHarness(t)
	cfg := testConfig()
	cfg.MaxDeliver = 1
	ctx := context.Background()
	if _, err := streams.Probes(ctx, h.js, h.names, 1); err != nil {
		t.Fatal(err)
	}
	// Deliver the job once to a consumer that never acks, like a prober that died.
	cons, err := h.js.CreateOrUpdateConsumer(ctx, h.names.ProbeStream(), jetstream.ConsumerConfig{
		Durable: h.names.ProbeConsumer(), AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Second, MaxDeliver: -1, MaxAckPending: 10000,
	})
	if err != nil {
		t.Fatal(err)
	}
	sub, _ := h.nc.SubscribeSync(h.names.Verdict("addr." + kvkey.Target("example.org", "alice", verdict.Recipient)))
	b, _ := wire.Encode(&wire.ProbeJob{Address: "alice@example.org", Purpose: verdict.Recipient})
	if _, err := h.js.Publish(ctx, h.names.Probe(kvkey.Target("example.org", "alice", verdict.Recipient)), b); err != nil {
		t.Fatal(err)
	}
	if _, err := cons.Next(); err != nil {
		t.Fatal(err)
	}
	h.start(t, cfg)
	m, err := sub.NextMsg(15 * time.Second)
	if err != nil {
		t.Fatal("no final verdict")
	}
	v, _ := wire.DecodeVerdict(m.Data)
	if v.Status != verdict.TempFail || v.Reason != verdict.ReasonGaveUp {
		t.Fatalf("verdict %+v", v)
	}
}

// counter reads one labelled counter from a registry.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A dialogue longer than AckWait is heartbeated: no other prober gets the job.
func TestSlowDialogueIsNotRedelivered(t *testing.T) {
	h := newHarness(t)
	dest, _ := smtptest.Start("127.0.0.1:0", smtptest.Config{Rcpt: func(from, to string) string {
		time.Sleep(3 * time.Second)
		return "250 2.1.5 Ok"
	}})
	defer dest.Close()
	h.route(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	cfg := testConfig()
	cfg.AckWait = time.Second
	cfg.CommandTimeout = 10 * time.Second
	h.start(t, cfg)
	h.start(t, cfg)
	v := h.ask(t, "example.org", "slow", wire.ProbeJob{Address: "slow@example.org", Purpose: verdict.Recipient, SkipRandom: true}, 15*time.Second)
	if v.Status != verdict.Valid {
		t.Fatalf("verdict %+v", v)
	}
	if n := dest.RcptsFor("slow@example.org"); n != 1 {
		t.Fatalf("%d RCPTs: the job was redelivered while its dialogue ran", n)
	}
}

// A sender domain's DNS answer: a null MX is a definite 550 5.7.27; a
// domain that does not exist is a 4xx by default (deferred, not stored)
// and a 550 5.1.8 only when SENDER_NXDOMAIN says reject; for a recipient
// domain neither is ever a reject.
func TestSenderDomainDNS(t *testing.T) {
	for _, tc := range []struct {
		setting, domain string
		purpose         verdict.Purpose
		status          verdict.Status
		code            int
		enhanced        string
	}{
		{"defer", "nullmx.example", verdict.Sender, verdict.Invalid, 550, "5.7.27"},
		{"defer", "nxdomain.example", verdict.Sender, verdict.Invalid, 450, "4.1.8"},
		{"reject", "nxdomain.example", verdict.Sender, verdict.Invalid, 550, "5.1.8"},
		{"reject", "nxdomain.example", verdict.Recipient, verdict.Unverifiable, 0, ""},
		{"reject", "nullmx.example", verdict.Recipient, verdict.Unverifiable, 0, ""},
	} {
		t.Run(tc.setting+" "+tc.domain+" "+string(tc.purpose), func(t *testing.T) {
			h := newHarness(t)
			cfg := testConfig()
			cfg.SenderNXDomain = tc.setting
			cfg.DNSServer = dnstest.Start(t, "nullmx.example. 60 IN MX 0 .")
			h.start(t, cfg)
			v := h.ask(t, tc.domain, "x", wire.ProbeJob{Address: "x@" + tc.domain, Purpose: tc.purpose}, 10*time.Second)
			if v.Status != tc.status || v.Code != tc.code || v.Enhanced != tc.enhanced {
				t.Fatalf("verdict %s %d %s (%s), want %s %d %s", v.Status, v.Code, v.Enhanced, v.Reason, tc.status, tc.code, tc.enhanced)
			}
			if tc.code == 450 && verdict.Definite(v) {
				t.Fatal("a 4xx sender-domain verdict is definite")
			}
		})
	}
}

// A job delivered again after its callout's verdict was stored (its ack
// lost, say while the stream elected a leader) is answered from the
// cache: no second RCPT at the destination, the verdict published again
// for whoever waits on it. A refresh delivered again whose cached verdict
// is older than it is called out.
func TestRedeliveredAnsweredJob(t *testing.T) {
	h := newHarness(t)
	var kcfg cachekeeper.Config
	if err := config.Defaults(&kcfg); err != nil {
		t.Fatal(err)
	}
	kcfg.RefreshAge, kcfg.StatsInterval = 0, 0
	keeper, err := cachekeeper.New(kcfg, h.ns.Connect(t), prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, keeper)
	dest := smtptest.Run(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	h.route(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	cfg := testConfig()
	cfg.AckWait = time.Second
	kill := h.start(t, cfg)

	asked := time.Now()
	job := wire.ProbeJob{Address: "alice@example.org", Purpose: verdict.Recipient, SkipRandom: true, RequestedAt: asked}
	if v := h.ask(t, "example.org", "alice", job, 10*time.Second); v.Status != verdict.Valid {
		t.Fatalf("verdict %+v", v)
	}
	lookup, _ := wire.Encode(&wire.LookupRequest{Address: "alice@example.org", Senders: []string{""}})
	waitfor.Cond(t, 15*time.Second, func() bool {
		m, err := h.nc.Request(h.names.CacheLookup(), lookup, 2*time.Second)
		var rep wire.LookupReply
		return err == nil && wire.Decode(m.Data, &rep) == nil && rep.Hit
	})

	// redeliver queues job, takes its first delivery without an ack (no
	// prober runs), starts a prober to get it again, and waits until it
	// is acked; it returns the verdict published for it.
	redeliver := func(job wire.ProbeJob) verdict.Verdict {
		t.Helper()
		kill()
		ctx := context.Background()
		a, err := address.Parse(job.Address)
		if err != nil {
			t.Fatal(err)
		}
		target := kvkey.Target(a.Domain, a.Local, verdict.Recipient)
		sub, _ := h.nc.SubscribeSync(h.names.Verdict("addr." + target))
		defer sub.Unsubscribe()
		b, _ := wire.Encode(&job)
		if _, err := h.js.Publish(ctx, h.names.Probe(target), b); err != nil {
			t.Fatal(err)
		}
		cons, err := h.js.Consumer(ctx, h.names.ProbeStream(), h.names.ProbeConsumer())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		kill = h.start(t, cfg)
		m, err := sub.NextMsg(15 * time.Second)
		if err != nil {
			t.Fatal("no verdict for the job delivered again")
		}
		v, _ := wire.DecodeVerdict(m.Data)
		h.queueEmpty(t)
		return v
	}
	if v := redeliver(job); v.Status != verdict.Valid || dest.RcptsFor("alice@example.org") != 1 {
		t.Fatalf("the job delivered again: %+v, %d RCPTs (want the cached verdict, 1)", v, dest.RcptsFor("alice@example.org"))
	}
	job.RequestedAt, job.Refresh = time.Now(), true
	if v := redeliver(job); v.Status != verdict.Valid || dest.RcptsFor("alice@example.org") != 2 {
		t.Fatalf("a refresh delivered again: %+v, %d RCPTs (want a callout, 2)", v, dest.RcptsFor("alice@example.org"))
	}

	// A domain that probes with its own sender: a job without a route (a
	// cachekeeper's refresh) carries no sender, and is looked up with the
	// policy's, under which its verdict is kept.
	sent := smtptest.Run(t, smtptest.Config{Mailboxes: []string{"bob@sent.example"}})
	h.route(t, "sent.example", domains.Policy{Route: []string{sent.Addr()}, Sender: "verify@gw.example"})
	bob := wire.ProbeJob{Address: "bob@sent.example", Purpose: verdict.Recipient, SkipRandom: true, RequestedAt: time.Now(), Refresh: true}
	if v := h.ask(t, "sent.example", "bob", bob, 10*time.Second); v.Status != verdict.Valid || v.Sender != "verify@gw.example" {
		t.Fatalf("verdict %+v", v)
	}
	lookup, _ = wire.Encode(&wire.LookupRequest{Address: "bob@sent.example", Senders: []string{"verify@gw.example"}})
	waitfor.Cond(t, 15*time.Second, func() bool {
		m, err := h.nc.Request(h.names.CacheLookup(), lookup, 2*time.Second)
		var rep wire.LookupReply
		return err == nil && wire.Decode(m.Data, &rep) == nil && rep.Hit
	})
	if v := redeliver(bob); v.Status != verdict.Valid || sent.RcptsFor("bob@sent.example") != 1 {
		t.Fatalf("a refresh with the policy's sender delivered again: %+v, %d RCPTs (want the cached verdict, 1)", v, sent.RcptsFor("bob@sent.example"))
	}
}
