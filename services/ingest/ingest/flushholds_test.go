package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/cachecopy"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

// The cases of this file are the ways a flush (or a policy) was found not
// to hold; each failed before the cache protocol of docs/design.md.

// mailboxes is a destination whose mailboxes a test changes while it
// runs: the operator's "the destination fixed bob".
type mailboxes struct {
	mu    sync.Mutex
	valid map[string]bool
	// block, when set for an address, holds its next RCPT until the
	// channel is closed; the answer is the one due when the RCPT came.
	block map[string]chan struct{}
	held  chan string // each held RCPT's address, once it is held
}

func newMailboxes(valid ...string) *mailboxes {
	m := &mailboxes{valid: map[string]bool{}, block: map[string]chan struct{}{}, held: make(chan string, 16)}
	for _, a := range valid {
		m.valid[a] = true
	}
	return m
}

func (m *mailboxes) set(a string, valid bool) {
	m.mu.Lock()
	m.valid[a] = valid
	m.mu.Unlock()
}

// hold makes the next RCPT of a wait until release is called.
func (m *mailboxes) hold(a string) (release func()) {
	c := make(chan struct{})
	m.mu.Lock()
	m.block[a] = c
	m.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(c) }) }
}

func (m *mailboxes) rcpt(_, to string) string {
	to = strings.ToLower(to)
	m.mu.Lock()
	c := m.block[to]
	delete(m.block, to)
	valid := m.valid[to]
	m.mu.Unlock()
	if c != nil {
		m.held <- to
		<-c
	}
	if valid || strings.HasPrefix(to, "postmaster@") {
		return "250 2.1.5 Ok"
	}
	return "550 5.1.1 <" + to + ">: Recipient address rejected: User unknown in local recipient table"
}

// cached waits until a's verdict is stored: b answers it from the cache.
func (s *twoIngests) cached(t *testing.T, a string) {
	t.Helper()
	waitfor.Cond(t, 15*time.Second, func() bool { return ask(s.b, a).Verdict.Source == verdict.SourceCache })
}

func (s *twoIngests) flush(t *testing.T, cmd wire.FlushCommand) time.Time {
	t.Helper()
	b, _ := wire.Encode(&cmd)
	m, err := s.ns.Connect(t).Request(subjects.New("").Flush(), b, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rep wire.FlushReply
	if err := wire.Decode(m.Data, &rep); err != nil || rep.Error != "" {
		t.Fatalf("flush: %v %s", err, rep.Error)
	}
	return time.Now()
}

// A flush's record is in the bucket before its purge reaches the entries
// (a purge of thousands of keys takes seconds; a cachekeeper may stop in
// between). A verify in that window must not bring the flushed verdict
// back from the not yet purged entry, into a near cache that keeps it.
func TestFlushHoldsBeforeItsPurge(t *testing.T) {
	for _, tc := range []struct {
		name  string
		only  verdict.Status
		known int
	}{
		{"only invalid, keys indexed", verdict.Invalid, 100000},
		{"whole domain, no index", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mb := newMailboxes("alice@example.org")
			icfg := ingestConfig()
			icfg.KnownKeys = tc.known
			s := startTwoDest(t, keeperConfig(), icfg, smtptest.Config{Rcpt: mb.rcpt})
			if rep := ask(s.a, "bob@example.org"); rep.Decision.Action != verdict.Reject {
				t.Fatalf("bob before: %+v", rep.Decision)
			}
			s.cached(t, "bob@example.org")
			mb.set("bob@example.org", true)
			// The record, as the cachekeeper writes it before it purges.
			kv, err := s.js.KeyValue(context.Background(), subjects.New("").CacheBucket())
			if err != nil {
				t.Fatal(err)
			}
			r := cachecopy.Record{}
			*r.Slot(tc.only) = time.Now()
			data, _ := json.Marshal(r)
			rev, err := kv.Put(context.Background(), kvkey.FlushDomain("example.org"), data)
			if err != nil {
				t.Fatal(err)
			}
			waitfor.Cond(t, 10*time.Second, func() bool { return s.a.near.Revision() >= rev && s.b.near.Revision() >= rev })
			for i := 0; i < 3; i++ {
				for _, ing := range []*Service{s.a, s.b} {
					if rep := ask(ing, "bob@example.org"); rep.Decision.Action == verdict.Reject {
						t.Fatalf("ask %d: the flushed verdict answered: %+v (%s, checked %v)", i, rep.Decision, rep.Verdict.Source, rep.Verdict.CheckedAt)
					}
				}
			}
		})
	}
}

// A flush record rewritten by a later flush of only valid or only invalid
// entries must not make a re-reading ingest drop keys written since the
// flush of everything, nor the domain's facts.
func TestReloadKeepsKeysAfterRecordRewrite(t *testing.T) {
	s := startTwo(t, keeperConfig())
	s.flush(t, wire.FlushCommand{Scope: wire.ScopeAll})
	if rep := ask(s.a, "alice@example.org"); rep.Decision.Action != verdict.Accept {
		t.Fatalf("alice: %+v", rep.Decision)
	}
	s.cached(t, "alice@example.org")
	s.flush(t, wire.FlushCommand{Scope: wire.ScopeAll, Only: verdict.Invalid})
	c, err := New(ingestConfig(), s.ns.Connect(t), prometheus.NewRegistry(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, c)
	waitfor.Cond(t, 15*time.Second, func() bool { return c.index.Complete() })
	alice, _ := address.Parse("alice@example.org")
	if _, known := c.index.Answer(alice, verdict.Recipient, nil, time.Now()); known {
		t.Fatal("a re-read index takes alice's stored key for a missing one")
	}
	nobody, _ := address.Parse("nobody@example.org")
	if r, known := c.index.Answer(nobody, verdict.Recipient, nil, time.Now()); !known || r.CatchAll == nil {
		t.Fatalf("a re-read index lost the domain's catch-all fact: known %v, %+v", known, r)
	}
}

// A request that comes after a flush is answered must not get the verdict
// of a callout that started before it, by joining its flight.
func TestNoJoinAcrossFlush(t *testing.T) {
	mb := newMailboxes("alice@example.org")
	s := startTwoDest(t, keeperConfig(), ingestConfig(), smtptest.Config{Rcpt: mb.rcpt})
	// The domain's facts first, so that bob's callout is one RCPT.
	if rep := ask(s.a, "alice@example.org"); rep.Decision.Action != verdict.Accept {
		t.Fatalf("alice: %+v", rep.Decision)
	}
	release := mb.hold("bob@example.org")
	defer release()
	first := make(chan wire.VerifyReply, 1)
	go func() { first <- ask(s.a, "bob@example.org") }()
	<-mb.held // bob's callout is at its RCPT, before the flush
	key := kvkey.Target("example.org", "bob", verdict.Recipient)
	s.a.mu.Lock()
	f1 := s.a.flights[key]
	s.a.mu.Unlock()
	joined0 := testutil.ToFloat64(s.a.m.coalesced)
	mb.set("bob@example.org", true)
	flushed := s.flush(t, wire.FlushCommand{Scope: wire.ScopeAddress, Address: "bob@example.org"})
	second := make(chan wire.VerifyReply, 1)
	go func() { second <- ask(s.a, "bob@example.org") }()
	// Let the second request join (or not) before the held callout ends.
	waitfor.Cond(t, 5*time.Second, func() bool {
		s.a.mu.Lock()
		f := s.a.flights[key]
		s.a.mu.Unlock()
		return testutil.ToFloat64(s.a.m.coalesced) > joined0 || f != f1
	})
	release() // the held RCPT answers as bob was when it came: unknown
	<-first
	rep := <-second
	if rep.Decision.Action == verdict.Reject || !rep.Verdict.CheckedAt.After(flushed.Add(-time.Second)) && rep.Verdict.Source != verdict.SourceStatic {
		t.Fatalf("after the flush: %s (%s, checked %v, flushed %v)", rep.Decision.Action, rep.Verdict.Source, rep.Verdict.CheckedAt, flushed)
	}
}

// An ingest cut off from NATS keeps accepting from its near cache, but
// rejects nothing from it: it cannot know whether a flush removed it.
func TestDisconnectedServesNoReject(t *testing.T) {
	s := startTwo(t, keeperConfig())
	s.held(t, "alice@example.org")
	if rep := ask(s.a, "nobody@example.org"); rep.Decision.Action != verdict.Reject {
		t.Fatalf("nobody: %+v", rep.Decision)
	}
	s.held(t, "nobody@example.org")
	s.ns.Stop()
	waitfor.Cond(t, 10*time.Second, func() bool { return s.a.offline.Load() })
	if rep := ask(s.a, "nobody@example.org"); rep.Decision.Action == verdict.Reject {
		t.Fatalf("disconnected: a cached reject answered: %+v", rep.Decision)
	}
	if rep := ask(s.a, "alice@example.org"); rep.Decision.Action != verdict.Accept {
		t.Fatalf("disconnected: a cached accept: %+v", rep.Decision)
	}
}

// A stored policy that does not parse is served without rejects: its last
// good static list must not refuse the mailbox the broken one added.
func TestBrokenPolicyNeverRejects(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	sys.policy(t, "example.org", domains.Policy{Mode: domains.ModeStatic, Mailboxes: []string{"alice"}})
	if _, err := sys.kv.Put(context.Background(), "example.org", []byte(`{"mode":"static","mailboxes":["alice","carol"],"mailbox":["x"]}`)); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { return sys.ingest.domains.Errors() == 1 })
	if rep := sys.verify(t, rcpt("carol@example.org")); rep.Decision.Action == verdict.Reject {
		t.Fatalf("carol under a broken policy: %+v (%s)", rep.Decision, rep.Verdict.Reason)
	}
}

// A policy stored under a key that is not the domain's normal form still
// governs the domain.
func TestPolicyKeyNormalized(t *testing.T) {
	icfg := ingestConfig()
	icfg.UnknownDomains = "reject"
	sys := startSystem(t, icfg)
	if _, err := sys.kv.Put(context.Background(), "Example.org", []byte(`{"mode":"static","mailboxes":["alice"]}`)); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool {
		return sys.verify(t, rcpt("alice@example.org")).Decision.Action == verdict.Accept
	})
}

// A request's timeout_ms is capped before it becomes a duration: the
// largest value must not wrap to an instant deadline. A near-cache hit
// needs no deadline; a miss (the near cache off here) does: both accept.
func TestTimeoutOverflow(t *testing.T) {
	for _, near := range []int{0, 10000} {
		t.Run(fmt.Sprintf("near cache %d", near), func(t *testing.T) {
			icfg := ingestConfig()
			icfg.NearCacheEntries = near
			if near == 0 {
				icfg.KnownKeys = 0
			}
			sys := startSystem(t, icfg)
			dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
			sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
			expect(t, sys.verify(t, rcpt("alice@example.org")), verdict.Accept, 250, verdict.SourceProbe)
			waitfor.Cond(t, 15*time.Second, func() bool { return sys.verify(t, rcpt("alice@example.org")).Verdict.Source == verdict.SourceCache })
			for _, ms := range []int{math.MaxInt, math.MaxInt / 1000, math.MaxInt / 1000000, -1, math.MinInt} {
				req := rcpt("alice@example.org")
				req.TimeoutMS = ms
				if rep := sys.verify(t, req); rep.Decision.Action != verdict.Accept {
					t.Fatalf("timeout_ms %d: %+v (%s)", ms, rep.Decision, rep.Verdict.Reason)
				}
			}
			// A miss with the largest deadline is called out, not deferred.
			req := rcpt("nobody@example.org")
			req.TimeoutMS = math.MaxInt
			if rep := sys.verify(t, req); rep.Decision.Action != verdict.Reject {
				t.Fatalf("a miss with timeout_ms MaxInt: %+v (%s)", rep.Decision, rep.Verdict.Reason)
			}
		})
	}
}

// A flush record whose time is ahead of the verdicts' (a cachekeeper's
// clock ahead of the probers') makes every fresh verdict look flushed: a
// flight asks for a fresh callout twice at most, then defers, instead of
// calling the destination out until its deadline.
func TestFlushedVerdictsBounded(t *testing.T) {
	s := startTwo(t, keeperConfig())
	kv, err := s.js.KeyValue(context.Background(), subjects.New("").CacheBucket())
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(cachecopy.Record{Any: time.Now().Add(time.Hour)})
	rev, err := kv.Put(context.Background(), kvkey.FlushAddress("example.org", "alice"), data)
	if err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { return s.a.near.Revision() >= rev })
	rep := ask(s.a, "alice@example.org")
	if rep.Decision.Action != verdict.Defer {
		t.Fatalf("%+v (%s/%s)", rep.Decision, rep.Verdict.Status, rep.Verdict.Reason)
	}
	if n := s.dest.RcptsFor("alice@example.org"); n < 1 || n > 1+maxRefused {
		t.Fatalf("%d callouts of alice, want 1 to %d", n, 1+maxRefused)
	}
}

// An ingest asked to confirm a flush it has not applied yet (fenced)
// serves nothing from its near cache: the cache answers, with the flush's
// revision as the one it must not miss. Once it has caught up, the near
// cache serves again.
func TestFencedServesNoNearCache(t *testing.T) {
	s := startTwo(t, keeperConfig())
	s.held(t, "alice@example.org")
	s.a.fence.Store(s.a.near.Revision() + 1) // asked to confirm the next change
	_, hits0, _ := s.a.near.Stats()
	if rep := ask(s.a, "alice@example.org"); rep.Decision.Action != verdict.Accept || rep.Verdict.Source != verdict.SourceCache {
		t.Fatalf("fenced: %+v from %s", rep.Decision, rep.Verdict.Source)
	}
	if _, hits, _ := s.a.near.Stats(); hits != hits0 {
		t.Fatalf("fenced: %d near-cache hits", hits-hits0)
	}
	// Any change of the bucket brings the watch past the fence.
	if rep := ask(s.a, "bob@example.org"); rep.Decision.Action != verdict.Reject {
		t.Fatalf("bob: %+v", rep.Decision)
	}
	waitfor.Cond(t, 10*time.Second, func() bool {
		ask(s.a, "alice@example.org")
		_, hits, _ := s.a.near.Stats()
		return hits > hits0
	})
}
