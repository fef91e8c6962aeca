package cache

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/revision"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

func open(t *testing.T, ttls TTLs) *Store {
	t.Helper()
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	s, err := Open(context.Background(), nc, js, subjects.New(""), 1, ttls)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func addrVerdict(a string, st verdict.Status, code int, at time.Time) verdict.Verdict {
	p, _ := address.Parse(a)
	return verdict.Verdict{Kind: verdict.KindAddress, Address: p.String(), Domain: p.Domain, Purpose: verdict.Recipient, Status: st, Code: code, CheckedAt: at, Source: verdict.SourceProbe, Text: "destination said so"}
}

func domainFact(d, fact string, st verdict.Status, reason verdict.Reason, at time.Time) verdict.Verdict {
	return verdict.Verdict{Kind: verdict.KindDomain, Domain: d, Purpose: verdict.Recipient, Fact: fact, Status: st, Reason: reason, CheckedAt: at, Source: verdict.SourceProbe}
}

func put(t *testing.T, s *Store, v verdict.Verdict, want Outcome) {
	t.Helper()
	out, err := s.Put(context.Background(), v)
	if err != nil || out != want {
		t.Fatalf("Put(%s %s) = %s, %v; want %s", v.Address+v.Fact, v.Status, out, err, want)
	}
}

func lookup(t *testing.T, s *Store, a string, senders ...string) wire.LookupReply {
	t.Helper()
	p, err := address.Parse(a)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Lookup(context.Background(), p, verdict.Recipient, senders)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTTLClasses(t *testing.T) {
	d := DefaultTTLs
	tests := []struct {
		v    verdict.Verdict
		want time.Duration
	}{
		{addrVerdict("a@x.org", verdict.Valid, 250, time.Now()), 96 * time.Hour},
		{addrVerdict("a@x.org", verdict.Invalid, 550, time.Now()), 2 * time.Hour},
		{addrVerdict("a@x.org", verdict.Invalid, 0, time.Now()), 0}, // not definite: never cached as invalid
		{func() verdict.Verdict {
			v := addrVerdict("a@x.org", verdict.Invalid, 550, time.Now())
			v.Reason = verdict.ReasonMailboxDisabled
			return v
		}(), 30 * time.Minute},
		{addrVerdict("a@x.org", verdict.TempFail, 451, time.Now()), 0},
		{addrVerdict("a@x.org", verdict.Unverifiable, 550, time.Now()), 2 * time.Hour},
		{addrVerdict("a@x.org", verdict.CatchAll, 250, time.Now()), 0},
		{domainFact("x.org", kvkey.FactCatchAll, verdict.CatchAll, "", time.Now()), 96 * time.Hour},
		{domainFact("x.org", kvkey.FactCatchAll, verdict.NotCatchAll, "", time.Now()), 2 * time.Hour},
		{domainFact("x.org", kvkey.FactAccess, verdict.Unverifiable, "", time.Now()), 2 * time.Hour},
	}
	for _, tt := range tests {
		if got := d.For(tt.v); got != tt.want {
			t.Errorf("%s %s %s: TTL %v, want %v", tt.v.Kind, tt.v.Status, tt.v.Reason, got, tt.want)
		}
	}
}

func TestStoreAndLookup(t *testing.T) {
	s := open(t, DefaultTTLs)
	now := time.Now()
	put(t, s, addrVerdict("alice@example.org", verdict.Valid, 250, now), Written)
	put(t, s, addrVerdict("ghost@example.org", verdict.Invalid, 550, now), Written)
	put(t, s, addrVerdict("slow@example.org", verdict.TempFail, 451, now), NotCached)

	r := lookup(t, s, "alice@example.org")
	if !r.Hit || r.Verdict.Status != verdict.Valid || r.Verdict.Source != verdict.SourceCache || r.Verdict.Text != "destination said so" {
		t.Fatalf("alice: %+v", r.Verdict)
	}
	if r.Verdict.ExpiresAt.Sub(r.Verdict.CheckedAt) != 96*time.Hour {
		t.Fatalf("expires_at %v checked_at %v", r.Verdict.ExpiresAt, r.Verdict.CheckedAt)
	}
	if r := lookup(t, s, "ghost@example.org"); !r.Hit || r.Verdict.Status != verdict.Invalid {
		t.Fatalf("ghost: %+v", r)
	}
	if r := lookup(t, s, "slow@example.org"); r.Hit {
		t.Fatalf("tempfail was cached: %+v", r.Verdict)
	}
	// The keys read naturally.
	keys, err := s.kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for k := range keys.Keys() {
		got[k] = true
	}
	if !got["addr.example/org.alice.rcpt"] || !got["addr.example/org.ghost.rcpt"] || len(got) != 2 {
		t.Fatalf("keys %v", got)
	}
}

// Domain facts answer for their addresses, read from the bucket or (for an
// asker that says which revision it had seen) from the cachekeeper's copy.
func TestDomainFacts(t *testing.T) {
	for _, mode := range []string{"bucket", "copy"} {
		t.Run(mode, func(t *testing.T) { testDomainFacts(t, mode) })
	}
}

func testDomainFacts(t *testing.T, mode string) {
	s := open(t, DefaultTTLs)
	look := func(a string, senders ...string) wire.LookupReply {
		t.Helper()
		if mode == "bucket" {
			return lookup(t, s, a, senders...)
		}
		return lookupAfter(t, s, lastRev(t, s), a, senders...)
	}
	if mode == "copy" {
		watching(t, s)
	}
	now := time.Now()
	put(t, s, domainFact("catchall.example", kvkey.FactCatchAll, verdict.CatchAll, "random_accepted", now), Written)
	r := look("anyone@catchall.example")
	if !r.Hit || r.Verdict.Status != verdict.CatchAll || r.Verdict.Address != "anyone@catchall.example" || r.Verdict.Kind != verdict.KindAddress {
		t.Fatalf("catch-all: %+v", r)
	}
	put(t, s, domainFact("strict.example", kvkey.FactCatchAll, verdict.NotCatchAll, "random_refused", now), Written)
	r = look("x@strict.example")
	if r.Hit || r.CatchAll == nil || r.CatchAll.Status != verdict.NotCatchAll {
		t.Fatalf("not catch-all should be a miss carrying the fact: %+v", r)
	}
	// Banner refusal covers every sender; a refused null sender does not
	// cover a fallback sender still to be tried.
	put(t, s, domainFact("blocked.example", kvkey.FactAccess, verdict.Unverifiable, "refused_at_banner", now), Written)
	if r := look("x@blocked.example", "", "verify@gw.test"); !r.Hit || r.Verdict.Status != verdict.Unverifiable {
		t.Fatalf("banner refusal: %+v", r)
	}
	put(t, s, domainFact("nonull.example", kvkey.FactAccess, verdict.Unverifiable, verdict.ReasonNullSenderRejected, now), Written)
	if r := look("x@nonull.example"); !r.Hit {
		t.Fatal("null sender refused, no fallback: should be a hit")
	}
	if r := look("x@nonull.example", "", "verify@gw.test"); r.Hit {
		t.Fatal("null sender refused must not stop the fallback sender")
	}
	// An address's own entry wins over domain facts, with the sender it was
	// learnt with.
	v := addrVerdict("x@nonull.example", verdict.Valid, 250, now)
	v.Sender = "verify@gw.test"
	put(t, s, v, Written)
	if r := look("x@nonull.example", "", "verify@gw.test"); !r.Hit || r.Verdict.Status != verdict.Valid {
		t.Fatalf("fallback sender entry: %+v", r)
	}
	if r := look("x@nonull.example"); r.Verdict == nil || r.Verdict.Status != verdict.Unverifiable {
		t.Fatalf("null-sender lookup must not see the fallback sender's entry: %+v", r)
	}
}

// lastRev is the bucket's last revision.
func lastRev(t *testing.T, s *Store) uint64 {
	t.Helper()
	info, err := s.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

func lookupAfter(t *testing.T, s *Store, rev uint64, a string, senders ...string) wire.LookupReply {
	t.Helper()
	p, err := address.Parse(a)
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.LookupAsOf(context.Background(), p, verdict.Recipient, senders, rev)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The copy answers domain facts only for an asker whose revision it has
// reached, follows flushes of them (a purge leaves no change of the key
// in the bucket: the flush record stands for it), and loads what was
// stored before its watch started. A fact purged from the bucket behind
// the copy's back shows where an answer came from.
func TestLookupFromCopy(t *testing.T) {
	s := open(t, DefaultTTLs)
	ctx := context.Background()
	now := time.Now()
	put(t, s, domainFact("early.example", kvkey.FactCatchAll, verdict.CatchAll, "random_accepted", now), Written)
	watching(t, s) // loads early.example's fact
	put(t, s, domainFact("late.example", kvkey.FactCatchAll, verdict.CatchAll, "random_accepted", now), Written)
	rev := lastRev(t, s)
	for _, d := range []string{"early.example", "late.example"} {
		if _, err := s.purge(ctx, "$KV."+s.bucket+"."+kvkey.Domain(d, verdict.Recipient, kvkey.FactCatchAll)); err != nil {
			t.Fatal(err)
		}
		if r := lookupAfter(t, s, rev, "x@"+d); !r.Hit || r.Verdict.Status != verdict.CatchAll {
			t.Fatalf("%s from the copy: %+v", d, r)
		}
		if r := lookup(t, s, "x@"+d); r.Hit {
			t.Fatalf("%s from the bucket, where it was purged: %+v", d, r)
		}
	}
	// A copy behind the asker's revision is not used: the bucket answers
	// (after a short wait for the copy).
	mark := &revision.Mark{}
	mark.Set(rev)
	running := s.fl.SetMark(mark)
	if r := lookupAfter(t, s, rev+1, "x@late.example"); r.Hit {
		t.Fatalf("a copy behind the asker answered: %+v", r)
	}
	s.fl.SetMark(running)
	// A flush of the domain drops the fact from the copy; a fact stored
	// after the flush is served.
	put(t, s, domainFact("flushed.example", kvkey.FactCatchAll, verdict.CatchAll, "random_accepted", now), Written)
	_, frev, err := s.Flush(ctx, wire.FlushCommand{Scope: wire.ScopeDomain, Domain: "flushed.example"})
	if err != nil {
		t.Fatal(err)
	}
	if r := lookupAfter(t, s, frev, "x@flushed.example"); r.Hit {
		t.Fatalf("a flushed fact from the copy: %+v", r)
	}
	put(t, s, domainFact("flushed.example", kvkey.FactCatchAll, verdict.NotCatchAll, "random_refused", time.Now().Add(time.Millisecond)), Written)
	if r := lookupAfter(t, s, lastRev(t, s), "x@flushed.example"); r.CatchAll == nil || r.CatchAll.Status != verdict.NotCatchAll {
		t.Fatalf("a fact stored after the flush: %+v", r)
	}
	// A full flush drops every fact stored before it.
	_, frev, err = s.Flush(ctx, wire.FlushCommand{Scope: wire.ScopeAll})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"early.example", "late.example", "flushed.example"} {
		if r := lookupAfter(t, s, frev, "x@"+d); r.Hit || r.CatchAll != nil {
			t.Fatalf("%s after a full flush: %+v", d, r)
		}
	}
}

func TestOrdering(t *testing.T) {
	s := open(t, DefaultTTLs)
	t0 := time.Now().Add(-time.Minute)
	put(t, s, addrVerdict("a@example.org", verdict.Invalid, 550, t0.Add(10*time.Second)), Written)
	// A redelivered older verdict never overwrites a newer one.
	put(t, s, addrVerdict("a@example.org", verdict.Valid, 250, t0), Older)
	if r := lookup(t, s, "a@example.org"); r.Verdict.Status != verdict.Invalid {
		t.Fatalf("older verdict overwrote: %+v", r.Verdict)
	}
	put(t, s, addrVerdict("a@example.org", verdict.Valid, 250, t0.Add(20*time.Second)), Written)
	// Optimistic positives: a later failure does not replace valid...
	put(t, s, addrVerdict("a@example.org", verdict.Unverifiable, 550, t0.Add(30*time.Second)), KeptValid)
	s.ttls.TempFail = time.Minute
	put(t, s, addrVerdict("a@example.org", verdict.TempFail, 451, t0.Add(31*time.Second)), KeptValid)
	if r := lookup(t, s, "a@example.org"); r.Verdict.Status != verdict.Valid {
		t.Fatalf("failure overwrote valid: %+v", r.Verdict)
	}
	// ...but a definite invalid does.
	put(t, s, addrVerdict("a@example.org", verdict.Invalid, 550, t0.Add(40*time.Second)), Written)
	if r := lookup(t, s, "a@example.org"); r.Verdict.Status != verdict.Invalid {
		t.Fatalf("invalid did not replace valid: %+v", r.Verdict)
	}
	// A verdict whose TTL ran out on the way is not stored.
	put(t, s, addrVerdict("b@example.org", verdict.Invalid, 550, time.Now().Add(-3*time.Hour)), AlreadyGone)
}

func TestTTLExpiry(t *testing.T) {
	s := open(t, TTLs{Valid: 3 * time.Second, Invalid: time.Second, NotCatchAll: time.Second, CatchAll: 3 * time.Second})
	now := time.Now()
	put(t, s, addrVerdict("short@example.org", verdict.Invalid, 550, now), Written)
	put(t, s, addrVerdict("long@example.org", verdict.Valid, 250, now), Written)
	put(t, s, domainFact("example.org", kvkey.FactCatchAll, verdict.NotCatchAll, "", now), Written)
	if r := lookup(t, s, "short@example.org"); !r.Hit {
		t.Fatal("fresh entry missing")
	}
	deadline := time.Now().Add(10 * time.Second)
	for lookup(t, s, "short@example.org").Hit {
		if time.Now().After(deadline) {
			t.Fatal("entry served past its TTL")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if time.Since(now) < time.Second {
		t.Fatal("entry gone before its TTL")
	}
	if r := lookup(t, s, "long@example.org"); !r.Hit {
		t.Fatal("the longer class expired with the shorter one")
	}
	if r := lookup(t, s, "x@example.org"); r.CatchAll != nil {
		t.Fatal("domain fact served past its TTL")
	}
	// The server removes the message itself too, not only our check.
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, err := s.kv.Get(context.Background(), "addr.example/org.short.rcpt")
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server kept the expired message")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// After expiry a new verdict can be written again (expiry markers are handled).
	put(t, s, addrVerdict("short@example.org", verdict.Valid, 250, time.Now()), Written)
}

func TestFlush(t *testing.T) {
	s := open(t, DefaultTTLs)
	fill := func() {
		now := time.Now()
		for _, a := range []string{"a@one.example", "b@one.example", "c@two.example"} {
			put(t, s, addrVerdict(a, verdict.Valid, 250, now), Written)
		}
		for _, a := range []string{"x@one.example", "y@two.example"} {
			put(t, s, addrVerdict(a, verdict.Invalid, 550, now), Written)
		}
		v := addrVerdict("a@one.example", verdict.Valid, 250, now)
		v.Sender = "verify@gw.test"
		put(t, s, v, Written)
		put(t, s, domainFact("one.example", kvkey.FactCatchAll, verdict.NotCatchAll, "", now), Written)
		put(t, s, domainFact("two.example", kvkey.FactCatchAll, verdict.NotCatchAll, "", now), Written)
	}
	count := func() uint64 { return entries(t, s) }
	tests := []struct {
		cmd     wire.FlushCommand
		removed uint64
		gone    []string
		kept    []string
	}{
		{wire.FlushCommand{Scope: wire.ScopeAddress, Address: "a@one.example"}, 2, []string{"a@one.example"}, []string{"b@one.example", "x@one.example"}},
		{wire.FlushCommand{Scope: wire.ScopeDomain, Domain: "ONE.example"}, 5, []string{"a@one.example", "b@one.example", "x@one.example"}, []string{"c@two.example", "y@two.example"}},
		{wire.FlushCommand{Scope: wire.ScopeDomain, Domain: "one.example", Only: verdict.Invalid}, 1, []string{"x@one.example"}, []string{"a@one.example", "b@one.example", "y@two.example"}},
		{wire.FlushCommand{Scope: wire.ScopeAll, Only: verdict.Valid}, 4, []string{"a@one.example", "b@one.example", "c@two.example"}, []string{"x@one.example", "y@two.example"}},
		{wire.FlushCommand{Scope: wire.ScopeAll}, 8, []string{"a@one.example", "x@one.example", "y@two.example"}, nil},
	}
	for _, tt := range tests {
		if _, _, err := s.Flush(context.Background(), wire.FlushCommand{Scope: wire.ScopeAll}); err != nil {
			t.Fatal(err)
		}
		fill()
		before := count()
		n, _, err := s.Flush(context.Background(), tt.cmd)
		if err != nil || n != tt.removed {
			t.Fatalf("%+v: removed %d, %v; want %d", tt.cmd, n, err, tt.removed)
		}
		if count() != before-n {
			t.Fatalf("%+v: bucket went from %d to %d", tt.cmd, before, count())
		}
		for _, a := range tt.gone {
			if r := lookup(t, s, a); r.Hit && r.Verdict.Kind == verdict.KindAddress && r.Verdict.Status != verdict.CatchAll {
				if (tt.cmd.Only == "" || r.Verdict.Status == tt.cmd.Only) && r.Verdict.Source == verdict.SourceCache {
					t.Errorf("%+v: %s still cached", tt.cmd, a)
				}
			}
		}
		for _, a := range tt.kept {
			if r := lookup(t, s, a); !r.Hit {
				t.Errorf("%+v: %s flushed too", tt.cmd, a)
			}
		}
		if tt.cmd.Scope == wire.ScopeDomain && tt.cmd.Only == "" {
			if r := lookup(t, s, "new@one.example"); r.CatchAll != nil {
				t.Errorf("domain flush left the domain's facts")
			}
		}
	}
	// Flushing is idempotent.
	if n, _, err := s.Flush(context.Background(), wire.FlushCommand{Scope: wire.ScopeAll}); err != nil || n != 0 {
		t.Fatalf("second flush removed %d, %v", n, err)
	}
	if _, _, err := s.Flush(context.Background(), wire.FlushCommand{Scope: wire.ScopeAddress, Address: "not an address"}); err == nil {
		t.Fatal("bad address flushed")
	}
}

// entries counts the verdict entries (flush records aside).
func entries(t *testing.T, s *Store) uint64 {
	t.Helper()
	l, err := s.kv.ListKeysFiltered(context.Background(), kvkey.EntryFilters()...)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for range l.Keys() {
		n++
	}
	return n
}

// Facts learned by a sender check (by MX) never answer a recipient lookup
// (by route), and the reverse.
func TestViewsApart(t *testing.T) {
	s := open(t, DefaultTTLs)
	now := time.Now()
	snd := addrVerdict("user@corp.example", verdict.Invalid, 550, now)
	snd.Purpose = verdict.Sender
	put(t, s, snd, Written)
	ca := domainFact("corp.example", kvkey.FactCatchAll, verdict.CatchAll, "random_accepted", now)
	ca.Purpose = verdict.Sender
	put(t, s, ca, Written)
	if r := lookup(t, s, "user@corp.example"); r.Hit || r.CatchAll != nil {
		t.Fatalf("a sender fact answered a recipient lookup: %+v", r)
	}
	a, _ := address.Parse("user@corp.example")
	r, err := s.Lookup(context.Background(), a, verdict.Sender, nil)
	if err != nil || !r.Hit || r.Verdict.Status != verdict.Invalid || r.Verdict.Purpose != verdict.Sender {
		t.Fatalf("sender lookup: %+v %v", r, err)
	}
	// A verdict that does not say its view is not stored.
	old := addrVerdict("user@corp.example", verdict.Invalid, 550, now)
	old.Purpose = ""
	if _, err := s.Put(context.Background(), old); !errors.Is(err, ErrNoView) {
		t.Fatalf("verdict without view: %v", err)
	}
	// Entries of the layout without views are never read.
	b, _ := wire.EncodeVerdict(addrVerdict("legacy@corp.example", verdict.Invalid, 550, now))
	if _, err := s.kv.Put(context.Background(), "addr.corp/example.legacy", b); err != nil {
		t.Fatal(err)
	}
	if r := lookup(t, s, "legacy@corp.example"); r.Hit {
		t.Fatalf("legacy entry read: %+v", r)
	}
	// ...and a domain flush removes them too.
	if _, _, err := s.Flush(context.Background(), wire.FlushCommand{Scope: wire.ScopeDomain, Domain: "corp.example"}); err != nil {
		t.Fatal(err)
	}
	if entries(t, s) != 0 {
		t.Fatal("domain flush left entries")
	}
}

// watching runs the store's watch of the bucket until the test ends and
// returns once it runs.
func watching(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Watch(ctx, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for s.fl.Running() == nil {
		if time.Now().After(deadline) {
			t.Fatal("the watch did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A verdict whose callout started before a flush of its scope is not
// stored; one that started after is. The records are read from the bucket,
// or from the cachekeeper's copy when its watch runs (started before the
// flushes, or after them: then it loads the records there).
func TestFlushRecords(t *testing.T) {
	for _, watch := range []string{"none", "before", "after"} {
		t.Run(watch, func(t *testing.T) { testFlushRecords(t, watch) })
	}
}

func testFlushRecords(t *testing.T, watch string) {
	s := open(t, DefaultTTLs)
	ctx := context.Background()
	if watch == "before" {
		watching(t, s)
	}
	before := time.Now()
	time.Sleep(time.Millisecond) // distinct clock readings
	for _, c := range []wire.FlushCommand{
		{Scope: wire.ScopeAddress, Address: "a@one.example"},
		{Scope: wire.ScopeDomain, Domain: "two.example"},
		{Scope: wire.ScopeDomain, Domain: "three.example", Only: verdict.Invalid},
	} {
		if _, _, err := s.Flush(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if watch == "after" {
		watching(t, s)
	}
	after := time.Now().Add(time.Millisecond)
	put(t, s, addrVerdict("a@one.example", verdict.Invalid, 550, before), Flushed)
	put(t, s, addrVerdict("b@one.example", verdict.Invalid, 550, before), Written) // another address
	put(t, s, addrVerdict("a@two.example", verdict.Valid, 250, before), Flushed)
	put(t, s, domainFact("two.example", kvkey.FactCatchAll, verdict.NotCatchAll, "", before), Flushed)
	put(t, s, addrVerdict("a@three.example", verdict.Invalid, 550, before), Flushed)
	put(t, s, addrVerdict("b@three.example", verdict.Valid, 250, before), Written) // only invalid was flushed
	put(t, s, domainFact("three.example", kvkey.FactCatchAll, verdict.NotCatchAll, "", before), Written)
	put(t, s, addrVerdict("a@one.example", verdict.Invalid, 550, after), Written)
	put(t, s, addrVerdict("a@two.example", verdict.Valid, 250, after), Written)
	// The records are readable JSON.
	e, err := s.kv.Get(ctx, kvkey.FlushDomain("three.example"))
	if err != nil || !strings.Contains(string(e.Value()), `"invalid":`) || strings.Contains(string(e.Value()), `"any":`) {
		t.Fatalf("record %v %v", e, err)
	}
	// A flush of everything covers every domain; its record survives it
	// (older records go: it covers all they covered).
	beforeAll := time.Now()
	time.Sleep(time.Millisecond) // distinct clock readings
	if _, _, err := s.Flush(ctx, wire.FlushCommand{Scope: wire.ScopeAll}); err != nil {
		t.Fatal(err)
	}
	put(t, s, addrVerdict("c@four.example", verdict.Valid, 250, beforeAll), Flushed)
	put(t, s, addrVerdict("a@two.example", verdict.Valid, 250, time.Now().Add(time.Millisecond)), Written)
	if watch != "none" {
		// The copy forgets what the full flush covers.
		s.fl.Prune(time.Now(), s.ttls.longest())
		n := s.fl.RecordCount()
		if n != 1 {
			t.Fatalf("%d records kept after a full flush, want 1", n)
		}
	}
}

// A flush recorded while a verdict is being stored wins: the check after
// the write waits until the copy has come past the write, and so has every
// record written before it. The copy is driven by hand here, to stand
// still while the record (another cachekeeper's flush) is in the bucket.
func TestPutWaitsForTheCopy(t *testing.T) {
	s := open(t, DefaultTTLs)
	ctx := context.Background()
	a := "late@race.example"
	v := addrVerdict(a, verdict.Valid, 250, time.Now())
	time.Sleep(time.Millisecond)
	seq, err := s.record(ctx, kvkey.FlushAddress("race.example", "late"), "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	mark := &revision.Mark{}
	mark.Set(seq - 1) // the copy has not seen the record
	s.fl.SetMark(mark)
	type result struct {
		out Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := s.Put(ctx, v)
		done <- result{out, err}
	}()
	// The write lands (the entry is there) while the copy stands still.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if _, err := s.kv.Get(ctx, kvkey.Address("race.example", "late", verdict.Recipient, "")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the verdict was not written")
		}
	}
	select {
	case r := <-done:
		t.Fatalf("Put answered %s, %v before the copy saw its write", r.out, r.err)
	default:
	}
	e, err := s.kv.Get(ctx, kvkey.FlushAddress("race.example", "late"))
	if err != nil {
		t.Fatal(err)
	}
	s.fl.Merge(e.Key(), e.Value(), e.Revision())
	mark.Set(seq + 1)
	if r := <-done; r.err != nil || r.out != Flushed {
		t.Fatalf("Put = %s, %v; want %s", r.out, r.err, Flushed)
	}
	if r := lookup(t, s, a); r.Hit {
		t.Fatal("a flushed verdict is served")
	}
}

// A flush record is written from the copy's knowledge of the last one;
// when the copy is behind (another cachekeeper's record it has not seen),
// the write is refused and the bucket's record is merged, not lost.
func TestRecordWhenTheCopyIsBehind(t *testing.T) {
	s := open(t, DefaultTTLs)
	ctx := context.Background()
	key := kvkey.FlushDomain("behind.example")
	first := time.Now().Add(-time.Minute)
	if _, err := s.record(ctx, key, "", first); err != nil { // the copy does not run: read from the bucket
		t.Fatal(err)
	}
	mark := &revision.Mark{}
	mark.Set(1 << 40) // a copy that claims to be current but never saw the record
	old := s.fl.SetMark(mark)
	defer s.fl.SetMark(old)
	second := time.Now()
	if _, err := s.record(ctx, key, verdict.Valid, second); err != nil {
		t.Fatal(err)
	}
	r, _, err := s.flushRecord(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Any.Equal(first) || !r.Valid.Equal(second) {
		t.Fatalf("record %+v, want any %v and valid %v", r, first, second)
	}
}

// An address flush matches the local part without case, as static lists
// compare it: every cached case of the address goes, and its record
// covers them all.
func TestAddressFlushWithoutCase(t *testing.T) {
	s := open(t, DefaultTTLs)
	now := time.Now()
	for _, a := range []string{"Alice@one.example", "alice@one.example", "ALICE@one.example", "bob@one.example"} {
		put(t, s, addrVerdict(a, verdict.Invalid, 550, now), Written)
	}
	n, _, err := s.Flush(context.Background(), wire.FlushCommand{Scope: wire.ScopeAddress, Address: "aLiCe@one.example"})
	if err != nil || n != 3 {
		t.Fatalf("removed %d, %v; want 3", n, err)
	}
	for _, a := range []string{"Alice@one.example", "alice@one.example", "ALICE@one.example"} {
		if r := lookup(t, s, a); r.Hit {
			t.Errorf("%s still cached", a)
		}
		// A verdict of a callout before the flush, in any case, is not stored.
		put(t, s, addrVerdict(a, verdict.Invalid, 550, now), Flushed)
	}
	if r := lookup(t, s, "bob@one.example"); !r.Hit {
		t.Error("bob flushed too")
	}
}
