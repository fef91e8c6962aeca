package cachecopy

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

func entry(t *testing.T, st verdict.Status, reason verdict.Reason, ttl time.Duration) []byte {
	t.Helper()
	now := time.Now()
	b, err := wire.EncodeEntry(verdict.Verdict{Status: st, Reason: reason, Code: 250, CheckedAt: now, ExpiresAt: now.Add(ttl)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func record(t *testing.T, r Record) []byte {
	t.Helper()
	b, _ := json.Marshal(r)
	return b
}

func mustParse(t *testing.T, s string) address.Address {
	t.Helper()
	a, err := address.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// known reports whether the copy answers for s alone (a known miss or a
// domain fact), without asking the cachekeeper.
func known(t *testing.T, c *Copy, s string, senders ...string) (wire.LookupReply, bool) {
	t.Helper()
	return c.Answer(mustParse(t, s), verdict.Recipient, senders, time.Now())
}

func addrKey(d, l string) string { return kvkey.Address(d, l, verdict.Recipient, "") }

func TestAnswerNeedsACompleteIndex(t *testing.T) {
	c := New(10)
	c.Apply(addrKey("a.example", "bob"), entry(t, verdict.Valid, "", time.Hour), 1, false)
	if _, ok := known(t, c, "new@a.example"); ok {
		t.Fatal("answered before the bucket was read whole")
	}
	c.Loaded()
	r, ok := known(t, c, "new@a.example")
	if !ok || r.Hit || r.CatchAll != nil || r.Refused != nil {
		t.Fatalf("known miss = %+v, %v; want a plain miss", r, ok)
	}
	if _, ok := known(t, c, "bob@a.example"); ok {
		t.Fatal("an address with an entry is answered without its entry")
	}
	if _, ok := New(0).Answer(mustParse(t, "x@a.example"), verdict.Recipient, nil, time.Now()); ok {
		t.Fatal("a copy without an index answered")
	}
	// A sender check's key is not a recipient check's.
	c.Apply(kvkey.Address("b.example", "carol", verdict.Sender, ""), entry(t, verdict.Valid, "", time.Hour), 2, false)
	if _, ok := known(t, c, "carol@b.example"); !ok {
		t.Fatal("a sender check's entry hid a recipient miss")
	}
	// With probe senders every sender's key counts.
	c.Apply(kvkey.Address("b.example", "dave", verdict.Recipient, "probe@us.example"), entry(t, verdict.Valid, "", time.Hour), 3, false)
	if _, ok := known(t, c, "dave@b.example", "probe@us.example", ""); ok {
		t.Fatal("the entry of a probe sender was ignored")
	}
}

func TestAnswerFromDomainFacts(t *testing.T) {
	c := New(10)
	c.Loaded()
	ca := kvkey.Domain("ca.example", verdict.Recipient, kvkey.FactCatchAll)
	c.Apply(ca, entry(t, verdict.CatchAll, "random_accepted", time.Hour), 1, false)
	r, ok := known(t, c, "anyone@ca.example")
	if !ok || !r.Hit || r.Verdict.Status != verdict.CatchAll || r.Verdict.Address != "anyone@ca.example" || r.Verdict.Source != verdict.SourceCache {
		t.Fatalf("catch-all = %+v, %v", r, ok)
	}
	nca := kvkey.Domain("nca.example", verdict.Recipient, kvkey.FactCatchAll)
	c.Apply(nca, entry(t, verdict.NotCatchAll, "random_refused", time.Hour), 2, false)
	r, ok = known(t, c, "x@nca.example")
	if !ok || r.Hit || r.CatchAll == nil || r.CatchAll.Status != verdict.NotCatchAll {
		t.Fatalf("not catch-all = %+v, %v; want a miss carrying the fact", r, ok)
	}
	job := wire.ProbeJob{}
	r.Adjust(&job)
	if !job.SkipRandom {
		t.Fatal("a known not-catch-all domain still gets the random check")
	}
	// An expired fact is not used, even before the server removes it.
	old := kvkey.Domain("old.example", verdict.Recipient, kvkey.FactCatchAll)
	c.Apply(old, entry(t, verdict.CatchAll, "random_accepted", -time.Second), 3, false)
	if r, ok := known(t, c, "x@old.example"); !ok || r.Hit || r.CatchAll != nil {
		t.Fatalf("expired fact = %+v, %v", r, ok)
	}
	// The null sender refused: a hit without senders, a miss carrying the
	// refusal when a fallback sender is still to be tried.
	acc := kvkey.Domain("acc.example", verdict.Recipient, kvkey.FactAccess)
	c.Apply(acc, entry(t, verdict.Unverifiable, verdict.ReasonNullSenderRejected, time.Hour), 4, false)
	if r, ok := known(t, c, "x@acc.example"); !ok || !r.Hit || r.Verdict.Status != verdict.Unverifiable {
		t.Fatalf("refused null sender = %+v, %v", r, ok)
	}
	if r, ok := known(t, c, "x@acc.example", "", "fallback@us.example"); !ok || r.Hit || r.Refused == nil {
		t.Fatalf("refused null sender with a fallback = %+v, %v", r, ok)
	}
	// A deleted fact goes.
	c.Apply(ca, nil, 5, true)
	if r, ok := known(t, c, "anyone@ca.example"); !ok || r.Hit {
		t.Fatalf("deleted fact = %+v, %v", r, ok)
	}
}

func TestIndexFollowsTheBucket(t *testing.T) {
	c := New(100)
	c.Loaded()
	put := func(d, l string, rev uint64) {
		c.Apply(addrKey(d, l), entry(t, verdict.Valid, "", time.Hour), rev, false)
	}
	held := func(s string) bool { _, ok := known(t, c, s); return !ok }
	put("d.example", "a", 1)
	put("d.example", "b", 2)
	put("e.example", "a", 3)
	// A delete (or an expiry marker) removes the key.
	c.Apply(addrKey("d.example", "a"), nil, 4, true)
	if held("a@d.example") || !held("b@d.example") {
		t.Fatal("delete marker not applied")
	}
	// A flush of only valid entries leaves the keys (a lookup tells).
	c.Apply(kvkey.FlushDomain("d.example"), record(t, Record{Valid: time.Now()}), 5, false)
	if !held("b@d.example") {
		t.Fatal("a flush of only valid entries dropped a key it may have left")
	}
	// A flush of the domain drops the keys written before its record.
	put("d.example", "c", 7)
	c.Apply(kvkey.FlushDomain("d.example"), record(t, Record{Any: time.Now()}), 6, false)
	if held("b@d.example") || !held("c@d.example") || !held("a@e.example") {
		t.Fatal("domain flush: wrong keys dropped")
	}
	// An address flush drops that address's null-sender keys.
	c.Apply(kvkey.FlushAddress("d.example", "c"), record(t, Record{Any: time.Now()}), 8, false)
	if held("c@d.example") {
		t.Fatal("address flush not applied")
	}
	// A flush of everything drops every key written before it.
	put("f.example", "a", 10)
	c.Apply(kvkey.FlushAll, record(t, Record{Any: time.Now()}), 9, false)
	if held("a@e.example") || !held("a@f.example") || c.Keys() != 1 {
		t.Fatalf("full flush: %d keys left", c.Keys())
	}
}

func TestIndexOverflow(t *testing.T) {
	c := New(2)
	for i, l := range []string{"a", "b", "c"} {
		c.Apply(addrKey("o.example", l), entry(t, verdict.Valid, "", time.Hour), uint64(i+1), false)
	}
	c.Loaded()
	if c.Complete() || c.Keys() != 0 {
		t.Fatalf("complete %v with %d keys after overflow", c.Complete(), c.Keys())
	}
	if _, ok := known(t, c, "z@o.example"); ok {
		t.Fatal("an overflowed index answered")
	}
	c.Reset()
	c.Apply(addrKey("o.example", "a"), entry(t, verdict.Valid, "", time.Hour), 1, false)
	c.Loaded()
	if !c.Complete() {
		t.Fatal("not complete after a reset and a load within bounds")
	}
}

func BenchmarkAnswer(b *testing.B) {
	c := New(1000)
	now := time.Now()
	data, _ := wire.EncodeEntry(verdict.Verdict{Status: verdict.NotCatchAll, Reason: "random_refused", Code: 550, CheckedAt: now, ExpiresAt: now.Add(time.Hour)})
	c.Apply(kvkey.Domain("b.example", verdict.Recipient, kvkey.FactCatchAll), data, 1, false)
	c.Loaded()
	a, _ := address.Parse("someone@b.example")
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := c.Answer(a, verdict.Recipient, nil, now); !ok {
			b.Fatal("not known")
		}
	}
}

// Covers reads the flush of everything, of the verdict's domain and of
// its address (whatever the domain's spelling in a key), and forgets
// records Prune drops.
func TestCovers(t *testing.T) {
	c := New(0)
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	c.Merge(kvkey.FlushDomain("flushed.example"), record(t, Record{Any: at(0)}), 1)
	c.Merge(kvkey.FlushAddress("some.example", "bob"), record(t, Record{Any: at(0)}), 2)
	c.Merge(kvkey.FlushDomain("invalid-only.example"), record(t, Record{Invalid: at(0)}), 3)
	c.Merge(kvkey.FlushDomain("flushed.example"), record(t, Record{Any: at(-time.Hour)}), 4) // older: no change
	v := func(addr string, st verdict.Status, checked time.Duration) verdict.Verdict {
		a := mustParse(t, addr)
		return verdict.Verdict{Kind: verdict.KindAddress, Address: a.String(), Domain: a.Domain, Status: st, CheckedAt: at(checked)}
	}
	for _, tt := range []struct {
		v    verdict.Verdict
		want bool
	}{
		{v("a@flushed.example", verdict.Valid, -time.Second), true},
		{v("a@flushed.example", verdict.Valid, time.Second), false}, // checked after the flush
		{v("bob@some.example", verdict.Invalid, -time.Second), true},
		{v("alice@some.example", verdict.Invalid, -time.Second), false},
		{v("a@invalid-only.example", verdict.Invalid, -time.Second), true},
		{v("a@invalid-only.example", verdict.Valid, -time.Second), false},
		{v("a@other.example", verdict.Valid, -time.Second), false},
	} {
		if got := c.Covers(tt.v); got != tt.want {
			t.Errorf("Covers(%s %s at %v) = %v", tt.v.Address, tt.v.Status, tt.v.CheckedAt.Sub(t0), got)
		}
	}
	c.Merge(kvkey.FlushAll, record(t, Record{Any: at(0)}), 5)
	if !c.Covers(v("a@other.example", verdict.Valid, -time.Second)) {
		t.Error("the flush of everything does not cover another domain")
	}
	// Pruned after the longest TTL: nothing covers any more, and the
	// domains with records are forgotten with them.
	c.Prune(at(2*time.Hour), time.Hour)
	if c.Covers(v("a@flushed.example", verdict.Valid, -time.Second)) || len(c.recDomains) != 0 {
		t.Errorf("after Prune: covered, or domains kept %v", c.recDomains)
	}
}

// While the bucket is read, a record rewritten by a later only-invalid
// flush (its revision after the entries) drops nothing: the entries may
// have been written after the flush of everything it records. Once read,
// a new flush of everything drops what was written before it. A fact or
// key that a record covers is still never answered (Covers).
func TestLoadKeepsWhatARewrittenRecordPredates(t *testing.T) {
	flushedAll := time.Now().Add(-time.Minute)
	rec := record(t, Record{Any: flushedAll, Invalid: time.Now().Add(-time.Second)})
	fact := kvkey.Domain("example.org", verdict.Recipient, kvkey.FactCatchAll)
	for _, loadedFirst := range []bool{false, true} {
		c := New(100)
		if loadedFirst {
			c.Loaded()
		}
		c.Apply(addrKey("example.org", "alice"), entry(t, verdict.Valid, "accepted", time.Hour), 5, false)
		c.Apply(fact, entry(t, verdict.NotCatchAll, "random_refused", time.Hour), 6, false)
		c.Apply(kvkey.FlushAll, rec, 9, false)
		c.Loaded()
		_, aliceKnown := known(t, c, "alice@example.org")
		r, _ := known(t, c, "nobody@example.org")
		if loadedFirst {
			// A live flush of everything at revision 9: both went.
			if !aliceKnown || c.Keys() != 0 {
				t.Fatalf("live flush: alice known %v, %d keys", aliceKnown, c.Keys())
			}
			continue
		}
		if aliceKnown || c.Keys() != 1 || r.CatchAll == nil {
			t.Fatalf("while loading: alice taken for absent %v, %d keys, catch-all fact %v", aliceKnown, c.Keys(), r.CatchAll)
		}
	}
}
