package cachekeeper

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/cachekeeper/cache"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

func testConfig() Config {
	return Config{Replicas: 1, TTLValid: 96 * time.Hour, TTLInvalid: 2 * time.Hour, TTLDisabled: 30 * time.Minute,
		TTLCatchAll: 96 * time.Hour, TTLNotCatchAll: 2 * time.Hour, TTLUnverifiable: 2 * time.Hour,
		RefreshAge: 48 * time.Hour, Workers: 8, StoreWorkers: 4,
		DecisionLogMaxAge: decisions.DefaultLimits.MaxAge, DecisionLogMaxBytes: 1 << 30, DecisionSearchMaxRead: 100000}
}

func start(t *testing.T, ns *natstest.Server, cfg Config) (stop func()) {
	t.Helper()
	nc := ns.Connect(t)
	svc, err := New(cfg, nc, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	run := natstest.RunService(t, svc)
	select {
	case <-svc.Ready():
	case <-time.After(15 * time.Second):
		t.Fatal("cachekeeper not ready")
	}
	// A stopped cachekeeper is a process gone: its connection closes, and
	// with it the pull requests the server still holds for it.
	return func() { run(); nc.Close() }
}

func publishVerdict(t *testing.T, js jetstream.JetStream, v verdict.Verdict) {
	t.Helper()
	n := subjects.New("")
	b, err := wire.EncodeVerdict(v)
	if err != nil {
		t.Fatal(err)
	}
	key, err := cache.SubjectKey(v)
	if err != nil {
		t.Fatal(err)
	}
	subj := n.Verdict(key)
	if _, err := js.Publish(context.Background(), subj, b); err != nil {
		t.Fatal(err)
	}
}

func lookup(t *testing.T, nc *nats.Conn, addr string) wire.LookupReply {
	t.Helper()
	b, _ := wire.Encode(&wire.LookupRequest{Address: addr})
	m, err := nc.Request(subjects.New("").CacheLookup(), b, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if e := m.Header.Get(micro.ErrorHeader); e != "" {
		t.Fatalf("lookup error %s", e)
	}
	var r wire.LookupReply
	if err := wire.Decode(m.Data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

func valid(a, d string, at time.Time) verdict.Verdict {
	return verdict.Verdict{Kind: verdict.KindAddress, Address: a, Domain: d, Purpose: verdict.Recipient, Status: verdict.Valid, Code: 250, CheckedAt: at, Source: verdict.SourceProbe}
}

// Verdicts published while no cachekeeper runs are stored when one starts.
func TestRestartLosesNothing(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	ctx := context.Background()
	if _, err := streams.Verdicts(ctx, js, subjects.New(""), 1); err != nil {
		t.Fatal(err)
	}
	stop := start(t, ns, testConfig())
	publishVerdict(t, js, valid("a@example.org", "example.org", time.Now()))
	waitfor.Cond(t, 15*time.Second, func() bool { return lookup(t, nc, "a@example.org").Hit })
	stop()
	// Publish once the server has dropped the stopped instance's pull
	// requests; a verdict handed to a gone process waits out AckWait.
	n := subjects.New("")
	waitfor.Cond(t, 15*time.Second, func() bool {
		c, err := js.Consumer(ctx, n.VerdictStream(), n.VerdictConsumer())
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumWaiting == 0
	})
	for _, l := range []string{"b", "c", "d"} {
		publishVerdict(t, js, valid(l+"@example.org", "example.org", time.Now()))
	}
	start(t, ns, testConfig())
	waitfor.Cond(t, 15*time.Second, func() bool {
		return lookup(t, nc, "b@example.org").Hit && lookup(t, nc, "c@example.org").Hit && lookup(t, nc, "d@example.org").Hit
	})
}

func TestLookupGarbage(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	start(t, ns, testConfig())
	for _, data := range [][]byte{[]byte("\xc1\xc1"), []byte(`{"address":"x"}`), nil} {
		m, err := nc.Request(subjects.New("").CacheLookup(), data, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(micro.ErrorCodeHeader) != "400" || m.Header.Get(micro.ErrorHeader) == "" {
			t.Fatalf("garbage %q: headers %v", data, m.Header)
		}
	}
	b, _ := wire.Encode(&wire.LookupRequest{Address: "bad\r\naddress@x.org"})
	m, err := nc.Request(subjects.New("").CacheLookup(), b, 5*time.Second)
	if err != nil || m.Header.Get(micro.ErrorCodeHeader) != "400" {
		t.Fatalf("bad address: %v %v", m, err)
	}
	// Still serving.
	if r := lookup(t, nc, "nobody@example.org"); r.Hit {
		t.Fatal("hit on an empty cache")
	}
}

// Every instance applies a flush; a request gets the count.
func TestFlushControl(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	start(t, ns, testConfig())
	start(t, ns, testConfig())
	now := time.Now()
	for _, l := range []string{"a", "b", "c"} {
		publishVerdict(t, js, valid(l+"@example.org", "example.org", now))
	}
	waitfor.Cond(t, 15*time.Second, func() bool {
		return lookup(t, nc, "c@example.org").Hit && lookup(t, nc, "a@example.org").Hit && lookup(t, nc, "b@example.org").Hit
	})

	// Broadcast: both instances answer.
	inbox := nats.NewInbox()
	sub, _ := nc.SubscribeSync(inbox)
	b, _ := wire.Encode(&wire.FlushCommand{Scope: wire.ScopeAddress, Address: "a@example.org"})
	if err := nc.PublishRequest(subjects.New("").Flush(), inbox, b); err != nil {
		t.Fatal(err)
	}
	var total uint64
	for i := 0; i < 2; i++ {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
		var r wire.FlushReply
		if err := wire.Decode(m.Data, &r); err != nil || r.Error != "" {
			t.Fatalf("reply %v %+v", err, r)
		}
		total += r.Removed
	}
	if total != 1 {
		t.Fatalf("removed %d in all, want 1", total)
	}
	if lookup(t, nc, "a@example.org").Hit || !lookup(t, nc, "b@example.org").Hit {
		t.Fatal("address flush scope wrong")
	}
	// JSON for people, as `nats req` sends it.
	msg := nats.NewMsg(subjects.New("").Flush())
	msg.Header.Set("Content-Type", "application/json")
	msg.Data = []byte(`{"scope":"all"}`)
	m, err := nc.RequestMsg(msg, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var jr wire.FlushReply
	if err := json.Unmarshal(m.Data, &jr); err != nil {
		t.Fatalf("JSON reply %q: %v", m.Data, err)
	}
	waitfor.Cond(t, 15*time.Second, func() bool { return !lookup(t, nc, "b@example.org").Hit && !lookup(t, nc, "c@example.org").Hit })
	// A bad command gets an error and changes nothing.
	msg.Data = []byte(`{"scope":"everything"}`)
	m, err = nc.RequestMsg(msg, 5*time.Second)
	if err != nil || m.Header.Get(micro.ErrorCodeHeader) != "400" {
		t.Fatalf("bad flush: %v %v", m, err)
	}
}

func TestRefreshAhead(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	cfg := testConfig()
	cfg.RefreshAge = time.Hour
	start(t, ns, cfg)
	n := subjects.New("")
	jobs, _ := nc.SubscribeSync(n.ProbeAll())
	publishVerdict(t, js, valid("old@example.org", "example.org", time.Now().Add(-2*time.Hour)))
	publishVerdict(t, js, valid("new@example.org", "example.org", time.Now()))
	waitfor.Cond(t, 15*time.Second, func() bool { return lookup(t, nc, "old@example.org").Hit && lookup(t, nc, "new@example.org").Hit })
	for i := 0; i < 3; i++ {
		if r := lookup(t, nc, "old@example.org"); !r.Hit || r.Verdict.Status != verdict.Valid {
			t.Fatal("old entry not served from cache")
		}
	}
	m, err := jobs.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal("no refresh job")
	}
	var job wire.ProbeJob
	if err := wire.Decode(m.Data, &job); err != nil || job.Address != "old@example.org" {
		t.Fatalf("job %+v %v", job, err)
	}
	// One job per refresh period, and none for the fresh entry.
	if m, err := jobs.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("second refresh job: %s", m.Subject)
	}
}

// A verdict is stored only under the subject it came on: a prober (the one
// process that parses hostile replies) cannot write one address's verdict
// through another's subject, nor a verdict without its view.
func TestVerdictMustMatchSubject(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	ctx := context.Background()
	n := subjects.New("")
	if _, err := streams.Verdicts(ctx, js, n, 1); err != nil {
		t.Fatal(err)
	}
	start(t, ns, testConfig())
	send := func(subject string, v verdict.Verdict) {
		b, _ := wire.EncodeVerdict(v)
		if _, err := js.Publish(ctx, subject, b); err != nil {
			t.Fatal(err)
		}
	}
	mallory := valid("mallory@example.org", "example.org", time.Now())
	send(n.Verdict("addr.example/org.alice.rcpt"), mallory) // another address's subject
	asSender := valid("bob@example.org", "example.org", time.Now())
	asSender.Purpose = verdict.Sender
	send(n.Verdict("addr.example/org.bob.rcpt"), asSender) // another view's subject
	noView := valid("carol@example.org", "example.org", time.Now())
	noView.Purpose = ""
	send(n.Verdict("addr.example/org.carol.rcpt"), noView)
	publishVerdict(t, js, valid("dave@example.org", "example.org", time.Now())) // a good one
	// Every verdict handled: the work-queue stream is empty.
	waitfor.Cond(t, 15*time.Second, func() bool {
		st, err := js.Stream(ctx, n.VerdictStream())
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	if !lookup(t, nc, "dave@example.org").Hit {
		t.Fatal("a good verdict was not stored")
	}
	for _, a := range []string{"alice@example.org", "mallory@example.org", "bob@example.org", "carol@example.org"} {
		if lookup(t, nc, a).Hit {
			t.Errorf("%s stored from a mismatched verdict", a)
		}
	}
}

func ask(t *testing.T, nc *nats.Conn, req wire.LookupRequest) wire.LookupReply {
	t.Helper()
	b, _ := wire.Encode(&req)
	m, err := nc.Request(subjects.New("").CacheLookup(), b, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r wire.LookupReply
	if err := wire.Decode(m.Data, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// A lookup that brings its job has it queued on a miss, for the address
// and view looked up (whatever the job says) and fitted to what the cache
// knows of the domain; a second one finds it pending; a hit queues nothing.
func TestQueueOnMiss(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	start(t, ns, testConfig())
	n := subjects.New("")
	fact := verdict.Verdict{Kind: verdict.KindDomain, Domain: "example.org", Purpose: verdict.Recipient, Fact: "catchall",
		Status: verdict.NotCatchAll, CheckedAt: time.Now(), Source: verdict.SourceProbe}
	publishVerdict(t, js, fact)
	publishVerdict(t, js, valid("known@example.org", "example.org", time.Now()))
	waitfor.Cond(t, 15*time.Second, func() bool {
		return lookup(t, nc, "new@example.org").CatchAll != nil && lookup(t, nc, "known@example.org").Hit
	})
	jobs, _ := nc.SubscribeSync(n.ProbeAll())
	_ = nc.Flush()
	job := &wire.ProbeJob{Address: "someone@else.example", Routed: true, Route: []string{"127.0.0.1:2525"}}
	r := ask(t, nc, wire.LookupRequest{Address: "new@example.org", Job: job})
	if r.Hit || !r.Queued || r.Pending || r.QueueError != "" {
		t.Fatalf("first ask: %+v", r)
	}
	m, err := jobs.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal("no job queued")
	}
	var got wire.ProbeJob
	if err := wire.Decode(m.Data, &got); err != nil {
		t.Fatal(err)
	}
	if m.Subject != n.Probe(kvkey.Target("example.org", "new", verdict.Recipient)) || got.Address != "new@example.org" || got.Purpose != verdict.Recipient || !got.SkipRandom || len(got.Route) != 1 {
		t.Fatalf("queued %s %+v", m.Subject, got)
	}
	if r := ask(t, nc, wire.LookupRequest{Address: "new@example.org", Job: job}); !r.Pending || r.Queued {
		t.Fatalf("second ask: %+v", r)
	}
	st, err := js.Stream(context.Background(), n.ProbeStream())
	if err != nil {
		t.Fatal(err)
	}
	if info, err := st.Info(context.Background()); err != nil || info.State.Msgs != 1 {
		t.Fatalf("jobs in the stream: %v %v, want 1", info, err)
	}
	// A hit publishes nothing (a pending job's refused publish was seen by
	// the first subscription: this one is new).
	after, _ := nc.SubscribeSync(n.ProbeAll())
	_ = nc.Flush()
	if r := ask(t, nc, wire.LookupRequest{Address: "known@example.org", Job: job}); !r.Hit || r.Queued || r.Pending {
		t.Fatalf("hit: %+v", r)
	}
	if m, err := after.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("a job for a hit: %s", m.Subject)
	}
}

// A page that would not fit in a message is cut, and goes on from the
// last record kept.
func TestFitPage(t *testing.T) {
	res := decisions.Result{}
	for i := 0; i < 500; i++ {
		res.Records = append(res.Records, decisions.Hit{ID: uint64(1000 - i), Record: decisions.Record{Recipient: strings.Repeat("a", 100) + "@example.org", Text: strings.Repeat("t", 200)}})
	}
	b := fitPage(&res, 64<<10)
	if len(b) > 64<<10 || len(res.Records) == 0 || len(res.Records) == 500 || res.Next != res.Records[len(res.Records)-1].ID {
		t.Fatalf("%d bytes, %d records, next %d", len(b), len(res.Records), res.Next)
	}
}

// The log keeps records as long as its age limit says: with a short
// one, a record found at first is gone a little later, and a search
// says so without error; the index forgets it.
func TestDecisionRetention(t *testing.T) {
	ns := natstest.Start(t)
	cfg := testConfig()
	cfg.DecisionLogMaxAge = 2 * time.Second
	start(t, ns, cfg)
	nc := ns.Connect(t)
	names := subjects.New("")
	js := natstest.JetStream(t, nc)
	waitfor.Cond(t, 10*time.Second, func() bool {
		st, err := js.Stream(context.Background(), names.DecisionStream())
		return err == nil && st.CachedInfo().Config.MaxAge == 2*time.Second
	})
	rec, err := decisions.NewRecorder(nc, names, 16, func(string) { t.Error("dropped") }, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go rec.Run(ctx)
	rec.Record(&decisions.Record{At: time.Now(), Recipient: "old@example.org", Action: verdict.Reject, Code: 550})
	search := func() decisions.Result { return searchLog(t, nc, names, `{"recipient":"old@example.org"}`) }
	waitfor.Cond(t, 10*time.Second, func() bool { return len(search().Records) == 1 })
	waitfor.Cond(t, 10*time.Second, func() bool { return len(search().Records) == 0 })
}

// An erase removes a domain's records and no other's, whether its
// records have a subject of their own (purged) or share messages with
// other domains' (written again without them).
func TestDecisionErase(t *testing.T) {
	nc, js, names, rec := eraseSetup(t)
	// exa_mple.org and other_x.org are no plain subject tokens: their
	// records share messages.
	for _, to := range []string{"a@gone.example", "b@gone.example", "a@kept.example", "a@exa_mple.org", "b@other_x.org", "c@exa_mple.org"} {
		rec.Record(&decisions.Record{At: time.Now(), Recipient: to, Action: verdict.Reject, Code: 550})
	}
	count := func(domain string) int { return len(searchLog(t, nc, names, `{"domain":"`+domain+`"}`).Records) }
	waitfor.Cond(t, 10*time.Second, func() bool { return count("exa_mple.org") == 2 && count("gone.example") == 2 })
	for _, d := range []string{"gone.example", "exa_mple.org"} {
		m, err := nc.Request(names.DecisionErase(), []byte(`{"domain":"`+d+`"}`), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var rep EraseReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Removed != 2 || rep.Error != "" {
			t.Fatalf("erase %s: %s %v", d, m.Data, err)
		}
	}
	waitfor.Cond(t, 10*time.Second, func() bool {
		return count("gone.example") == 0 && count("exa_mple.org") == 0 && count("kept.example") == 1 && count("other_x.org") == 1
	})
	// Nothing of the erased domains is left in the stream's messages.
	ctx := context.Background()
	st, _ := js.Stream(ctx, names.DecisionStream())
	info, _ := st.Info(ctx)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue
		}
		if strings.Contains(string(m.Data), "gone.example") || strings.Contains(string(m.Data), "exa_mple") {
			t.Fatalf("message %d still holds an erased domain: %q", seq, m.Data)
		}
	}
}

// Erases one after another, of domains whose records share a message:
// each erase writes the message again without its domain, and the next
// must find its own records in that new message. Its answer waits until
// the index holds what it wrote: an erase answered before found nothing
// ("removed": 0) and left the records in the log.
func TestDecisionEraseInTurn(t *testing.T) {
	nc, _, names, rec := eraseSetup(t)
	const n = 12
	for i := range n {
		rec.Record(&decisions.Record{At: time.Now(), Recipient: fmt.Sprintf("a@d%d.example", i), Action: verdict.Reject, Code: 550})
	}
	rec.Record(&decisions.Record{At: time.Now(), Recipient: "a@kept.example", Action: verdict.Reject, Code: 550})
	search := func(domain string) decisions.Result { return searchLog(t, nc, names, `{"domain":"`+domain+`"}`) }
	waitfor.Cond(t, 10*time.Second, func() bool { return len(search("kept.example").Records) == 1 })
	for i := range n {
		d := fmt.Sprintf("d%d.example", i)
		m, err := nc.Request(names.DecisionErase(), []byte(`{"domain":"`+d+`"}`), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var rep EraseReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Removed != 1 || rep.Error != "" {
			t.Fatalf("erase %s, the %d. in turn: %s %v", d, i+1, m.Data, err)
		}
		// At once, no waiting: the records kept are found where the
		// erase wrote them.
		if got := search("kept.example").Records; len(got) != 1 {
			t.Fatalf("after erasing %s: kept.example has %d records", d, len(got))
		}
	}
}

// eraseSetup starts a cachekeeper and a recorder of decisions for an
// erase test.
func eraseSetup(t *testing.T) (*nats.Conn, jetstream.JetStream, subjects.Names, *decisions.Recorder) {
	t.Helper()
	ns := natstest.Start(t)
	start(t, ns, testConfig())
	nc := ns.Connect(t)
	names := subjects.New("")
	js := natstest.JetStream(t, nc)
	waitfor.Cond(t, 10*time.Second, func() bool { _, err := js.Stream(context.Background(), names.DecisionStream()); return err == nil })
	rec, err := decisions.NewRecorder(nc, names, 64, func(string) { t.Error("dropped") }, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go rec.Run(ctx)
	return nc, js, names, rec
}

// searchLog is the first page of a search of the decision log (query:
// JSON, decisions.Query).
func searchLog(t *testing.T, nc *nats.Conn, names subjects.Names, query string) decisions.Result {
	t.Helper()
	m, err := nc.Request(names.DecisionSearch(), []byte(query), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var res decisions.Result
	if err := json.Unmarshal(m.Data, &res); err != nil {
		t.Fatalf("%v: %s", err, m.Data)
	}
	return res
}
