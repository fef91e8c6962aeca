package ingest

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/cachekeeper/cachekeeper"
	"github.com/callout-mail/callout/services/ingest/nearcache"
	"github.com/callout-mail/callout/services/prober/prober"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

// twoIngests runs a cachekeeper, a prober and two ingest instances.
type twoIngests struct {
	ns   *natstest.Server
	dir  string
	port int
	a, b *Service
	kv   *domains.Store
	js   jetstream.JetStream
	dest *smtptest.Server
}

func startTwo(t *testing.T, kcfg cachekeeper.Config) *twoIngests {
	t.Helper()
	return startTwoDest(t, kcfg, ingestConfig(), smtptest.Config{Mailboxes: []string{"alice@example.org", "flip@example.org"}})
}

// startTwoDest is startTwo with the ingests' settings and a destination
// scripted by dcfg.
func startTwoDest(t *testing.T, kcfg cachekeeper.Config, icfg Config, dcfg smtptest.Config) *twoIngests {
	t.Helper()
	dir := t.TempDir()
	ns := natstest.StartIn(t, dir, -1)
	s := &twoIngests{ns: ns, dir: dir, port: ns.Port()}
	nc := ns.Connect(t)
	s.js = natstest.JetStream(t, nc)
	var err error
	if s.kv, err = domains.Bucket(context.Background(), s.js, subjects.New(""), 1); err != nil {
		t.Fatal(err)
	}
	k, err := cachekeeper.New(kcfg, ns.Connect(t), prometheus.NewRegistry(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, k)
	<-k.Ready()
	p, err := prober.New(proberConfig(), ns.Connect(t), prometheus.NewRegistry(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, p)
	for _, ing := range []**Service{&s.a, &s.b} {
		if *ing, err = New(icfg, ns.Connect(t), prometheus.NewRegistry(), quiet); err != nil {
			t.Fatal(err)
		}
		natstest.RunService(t, *ing)
		<-(*ing).Ready()
	}
	waitfor.Cond(t, 15*time.Second, func() bool { return s.a.nearOn.Load() && s.b.nearOn.Load() })
	s.dest = destination(t, dcfg)
	if err := domains.Put(context.Background(), s.kv, "example.org", domains.Policy{Route: []string{s.dest.Addr()}}); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 15*time.Second, func() bool {
		_, okA := s.a.domains.Lookup("example.org")
		_, okB := s.b.domains.Lookup("example.org")
		return okA && okB
	})
	return s
}

func ask(ing *Service, a string) wire.VerifyReply {
	return ing.Verify(context.Background(), wire.VerifyRequest{Address: a, Purpose: verdict.Recipient})
}

// held waits until both ingests answer a from their near caches.
func (s *twoIngests) held(t *testing.T, a string) {
	t.Helper()
	key := nearKeyOf(a)
	waitfor.Cond(t, 15*time.Second, func() bool {
		ask(s.a, a)
		ask(s.b, a)
		_, okA := s.a.near.Get(key)
		_, okB := s.b.near.Get(key)
		return okA && okB
	})
}

// nearKeyOf is the near-cache key of a recipient check of a with the null
// sender.
func nearKeyOf(a string) string {
	return nearcache.Key(a, verdict.Recipient, []string{""})
}

func TestNearCacheCoherence(t *testing.T) {
	s := startTwo(t, keeperConfig())

	t.Run("a hit is answered inside the ingest", func(t *testing.T) {
		s.held(t, "alice@example.org")
		_, hits0, _ := s.a.near.Stats()
		rep := ask(s.a, "alice@example.org")
		_, hits1, _ := s.a.near.Stats()
		if rep.Decision.Action != verdict.Accept || hits1 != hits0+1 {
			t.Fatalf("%+v, near hits %d -> %d", rep.Decision, hits0, hits1)
		}
	})
	t.Run("a new verdict replaces what both hold", func(t *testing.T) {
		s.held(t, "flip@example.org")
		v := verdict.Verdict{Kind: verdict.KindAddress, Address: "flip@example.org", Domain: "example.org", Purpose: verdict.Recipient,
			Status: verdict.Invalid, Code: 550, Enhanced: "5.1.1", Reason: "user_unknown", CheckedAt: time.Now(), Source: verdict.SourceProbe}
		b, _ := wire.EncodeVerdict(v)
		if _, err := s.js.Publish(context.Background(), subjects.New("").Verdict(kvkey.Address("example.org", "flip", verdict.Recipient, "")), b); err != nil {
			t.Fatal(err)
		}
		waitfor.Cond(t, 5*time.Second, func() bool {
			return ask(s.a, "flip@example.org").Decision.Action == verdict.Reject && ask(s.b, "flip@example.org").Decision.Action == verdict.Reject
		})
	})
	t.Run("a flush is in effect on both once answered", func(t *testing.T) {
		s.held(t, "alice@example.org")
		before := s.dest.RcptsFor("alice@example.org")
		b, _ := wire.Encode(&wire.FlushCommand{Scope: wire.ScopeAddress, Address: "alice@example.org"})
		flushed := time.Now()
		if _, err := s.ns.Connect(t).Request(subjects.New("").Flush(), b, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		// No wait: the next verify on each ingest probes again, or gets the
		// verdict of a callout made after the flush (by the other ingest's
		// request), never the flushed one.
		for _, ing := range []*Service{s.a, s.b} {
			if rep := ask(ing, "alice@example.org"); rep.Verdict.Source != verdict.SourceProbe && !rep.Verdict.CheckedAt.After(flushed) {
				t.Fatalf("after the flush: %s/%s from %s, checked %v", rep.Verdict.Status, rep.Verdict.Reason, rep.Verdict.Source, rep.Verdict.CheckedAt)
			}
		}
		if n := s.dest.RcptsFor("alice@example.org") - before; n < 1 {
			t.Fatalf("%d RCPTs after the flush", n)
		}
	})
	t.Run("a reconnection drops the near cache", func(t *testing.T) {
		s.held(t, "alice@example.org")
		s.ns.Stop()
		s.ns = natstest.StartIn(t, s.dir, s.port)
		waitfor.Cond(t, 15*time.Second, func() bool {
			na, _, _ := s.a.near.Stats()
			nb, _, _ := s.b.near.Stats()
			return s.a.nc.IsConnected() && s.b.nc.IsConnected() && na == 0 && nb == 0
		})
	})
}

// An entry is never served past its expires_at.
func TestNearCacheExpiry(t *testing.T) {
	kcfg := keeperConfig()
	kcfg.TTLValid = 2 * time.Second
	s := startTwo(t, kcfg)
	s.held(t, "alice@example.org")
	rep := ask(s.a, "alice@example.org")
	exp := rep.Verdict.ExpiresAt
	if exp.IsZero() {
		t.Fatal("no expires_at")
	}
	waitfor.Cond(t, 10*time.Second, func() bool { return time.Now().After(exp) })
	for _, ing := range []*Service{s.a, s.b} {
		if rep := ask(ing, "alice@example.org"); rep.Verdict.Source == verdict.SourceCache && !rep.Verdict.ExpiresAt.After(time.Now()) {
			t.Fatalf("served past expires_at: %+v", rep.Verdict)
		}
	}
}

// With every key of the bucket known, a miss of an address without any is
// queued without a lookup; a stored verdict (another ingest's) makes its
// address known, so it is looked up and answered from the cache, never
// called out again; the domain facts learnt at the first callout come
// along (no second random check); a reconnection reads the bucket afresh.
func TestKnownMisses(t *testing.T) {
	s := startTwo(t, keeperConfig())
	waitfor.Cond(t, 15*time.Second, func() bool { return s.a.index.Complete() && s.b.index.Complete() })
	nc := s.ns.Connect(t)
	var lookups atomic.Int64
	// The ingests' lookups: they carry the revision their near cache
	// applied, or a job. (A prober asks the cache too, for a job
	// delivered again, with neither.)
	sub, err := nc.Subscribe(subjects.New("").CacheLookup(), func(m *nats.Msg) {
		var req wire.LookupRequest
		if wire.Decode(m.Data, &req) == nil && (req.Rev > 0 || req.Job != nil) {
			lookups.Add(1)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	rep := ask(s.a, "alice@example.org")
	if rep.Decision.Action != verdict.Accept || rep.Verdict.Source != verdict.SourceProbe {
		t.Fatalf("first verify: %+v from %s", rep.Decision, rep.Verdict.Source)
	}
	if n := lookups.Load(); n != 0 {
		t.Fatalf("%d lookups for a miss known without asking", n)
	}
	rcpts := s.dest.Rcpts()
	if rcpts != 2 { // the random address, then alice
		t.Fatalf("%d RCPTs for the first callout of the domain, want 2", rcpts)
	}
	// Once stored (until then b would call out too: the known window
	// between a verdict and its storage), b knows the key: it asks, and
	// the cache answers. The domain's fact comes along.
	known := func(ing *Service, a string) (wire.LookupReply, bool) {
		addr, err := address.Parse(a)
		if err != nil {
			t.Fatal(err)
		}
		return ing.index.Answer(addr, verdict.Recipient, nil, time.Now())
	}
	waitfor.Cond(t, 10*time.Second, func() bool {
		_, isKnown := known(s.b, "alice@example.org")
		r, _ := known(s.b, "nobody@example.org")
		return !isKnown && r.CatchAll != nil
	})
	// One lookup, or none when b already took the verdict as it went by
	// on its way to the cache (a loaded machine lets it arrive first):
	// either way from the cache, never a second callout.
	if rep := ask(s.b, "alice@example.org"); rep.Verdict.Source != verdict.SourceCache || lookups.Load() > 1 || s.dest.Rcpts() != rcpts {
		t.Fatalf("a stored address: from %s, %d lookups, %d RCPTs (want the cache, at most 1 lookup, %d RCPTs)", rep.Verdict.Source, lookups.Load(), s.dest.Rcpts(), rcpts)
	}
	// The domain is known not to be a catch-all: no random RCPT. The
	// domain's first user unknown is checked against postmaster (the
	// control probe), once.
	before := lookups.Load()
	if rep := ask(s.b, "nobody@example.org"); rep.Decision.Action != verdict.Reject {
		t.Fatalf("unknown user: %+v", rep.Decision)
	}
	if n := lookups.Load() - before; n != 0 || s.dest.Rcpts() != rcpts+2 || s.dest.RcptsFor("postmaster@example.org") != 1 {
		t.Fatalf("known miss of a not-catch-all domain: %d lookups, %d RCPTs (want 0, 2: nobody and postmaster)", n, s.dest.Rcpts()-rcpts)
	}
	// A flush of the domain: what it removed is a known miss again at once.
	b, _ := wire.Encode(&wire.FlushCommand{Scope: wire.ScopeDomain, Domain: "example.org"})
	if _, err := nc.Request(subjects.New("").Flush(), b, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	before, rcpts = lookups.Load(), s.dest.Rcpts()
	if rep := ask(s.a, "alice@example.org"); rep.Verdict.Source != verdict.SourceProbe {
		t.Fatalf("after the flush: from %s", rep.Verdict.Source)
	}
	if n := lookups.Load() - before; n != 0 || s.dest.Rcpts() != rcpts+2 {
		t.Fatalf("after the flush: %d lookups, %d RCPTs (want 0, 2: the facts went too)", n, s.dest.Rcpts()-rcpts)
	}
	// A reconnection: incomplete at once, complete again once read.
	s.ns.Stop()
	waitfor.Cond(t, 10*time.Second, func() bool { return !s.a.nc.IsConnected() })
	s.ns = natstest.StartIn(t, s.dir, s.port)
	waitfor.Cond(t, 15*time.Second, func() bool { return s.a.nc.IsConnected() && s.a.index.Complete() && s.a.index.Keys() > 0 })
}

// An old valid entry that the near cache answers is re-probed in the
// background (the hottest addresses never reach a cachekeeper lookup): a
// mailbox deleted at the destination is rejected once the new verdict is
// stored, not only when the valid TTL runs out; the answers meanwhile come
// from the near cache.
func TestNearCacheRefreshAhead(t *testing.T) {
	mb := newMailboxes("alice@example.org")
	icfg := ingestConfig()
	icfg.RefreshAge = time.Second
	s := startTwoDest(t, keeperConfig(), icfg, smtptest.Config{Rcpt: mb.rcpt})
	s.held(t, "alice@example.org")
	checked := ask(s.a, "alice@example.org").Verdict.CheckedAt
	mb.set("alice@example.org", false)
	waitfor.Cond(t, 10*time.Second, func() bool { return time.Since(checked) > icfg.RefreshAge })
	before := s.dest.RcptsFor("alice@example.org")
	if rep := ask(s.a, "alice@example.org"); rep.Decision.Action != verdict.Accept || rep.Verdict.Source != verdict.SourceCache {
		t.Fatalf("the old entry: %+v from %s", rep.Decision, rep.Verdict.Source)
	}
	waitfor.Cond(t, 15*time.Second, func() bool {
		return ask(s.a, "alice@example.org").Decision.Action == verdict.Reject && ask(s.b, "alice@example.org").Decision.Action == verdict.Reject
	})
	// One per ingest at most (each answered the old entry once).
	if n := s.dest.RcptsFor("alice@example.org") - before; n < 1 || n > 2 {
		t.Fatalf("%d re-probes, want 1 or 2", n)
	}
}
