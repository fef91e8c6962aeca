package nearcache

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
)

func hit(expires time.Time) verdict.Verdict {
	return verdict.Verdict{Kind: verdict.KindAddress, Status: verdict.Valid, ExpiresAt: expires}
}

func TestApplyDrops(t *testing.T) {
	c := New(100, false)
	exp := time.Now().Add(time.Hour)
	put := func(local, domain string, p verdict.Purpose) string {
		k := Key(local+"@"+domain, p, []string{""})
		c.Put(k, domain, local, p, hit(exp), c.Revision())
		return k
	}
	a := put("alice", "one.example", verdict.Recipient)
	as := put("alice", "one.example", verdict.Sender)
	b := put("bob", "one.example", verdict.Recipient)
	o := put("carol", "two.example", verdict.Recipient)
	has := func(k string) bool { _, ok := c.Get(k); return ok }
	c.Apply(kvkey.Address("one.example", "alice", verdict.Recipient, ""), 10)
	if has(a) || !has(as) || !has(b) || !has(o) {
		t.Fatal("an address change dropped the wrong entries")
	}
	c.Apply(kvkey.Domain("one.example", verdict.Sender, kvkey.FactCatchAll), 11)
	if has(as) || !has(b) {
		t.Fatal("a domain fact dropped the wrong view")
	}
	c.Apply(kvkey.FlushDomain("one.example"), 12)
	if has(b) || !has(o) {
		t.Fatal("a domain flush")
	}
	put("dave", "two.example", verdict.Recipient)
	c.Apply(kvkey.FlushAddress("two.example", "dave"), 13)
	if has(Key("dave@two.example", verdict.Recipient, []string{""})) || !has(o) {
		t.Fatal("an address flush")
	}
	// An address flush drops the address in any case; a control fact
	// drops nothing (it never answers).
	upper := put("Erin", "two.example", verdict.Recipient)
	c.Apply(kvkey.Domain("two.example", verdict.Recipient, kvkey.FactControl), 14)
	if !has(upper) || !has(o) {
		t.Fatal("a control fact dropped entries")
	}
	c.Apply(kvkey.FlushAddress("two.example", "ERIN"), 15)
	if has(upper) || !has(o) {
		t.Fatal("an address flush in another case")
	}
	c.Apply(kvkey.FlushAll, 16)
	if has(o) {
		t.Fatal("a full flush")
	}
	if c.Revision() != 16 {
		t.Fatalf("revision %d", c.Revision())
	}
}

func TestBoundedAndExpiry(t *testing.T) {
	c := New(10, false)
	key := func(local string) string { return Key(local+"@d.example", verdict.Recipient, []string{""}) }
	for i := 0; i < 100; i++ {
		c.Put(key(fmt.Sprint(i)), "d.example", fmt.Sprint(i), verdict.Recipient, hit(time.Now().Add(time.Hour)), 0)
	}
	if n, _, _ := c.Stats(); n != 10 {
		t.Fatalf("%d entries, bound 10", n)
	}
	if _, ok := c.Get(key("99")); !ok {
		t.Fatal("the newest entry was evicted")
	}
	if _, ok := c.Get(key("89")); ok {
		t.Fatal("the oldest entry was kept")
	}
	c.Put(key("old"), "d.example", "old", verdict.Recipient, hit(time.Now().Add(-time.Second)), 0)
	if _, ok := c.Get(key("old")); ok {
		t.Fatal("served past expires_at")
	}
	// A lookup answered across a change is not kept.
	c.Apply("addr.x.y.rcpt", 5)
	c.Put(key("late"), "d.example", "late", verdict.Recipient, hit(time.Now().Add(time.Hour)), 4)
	if _, ok := c.Get(key("late")); ok {
		t.Fatal("kept a reply older than an applied change")
	}
	// A key that is not the address's is never kept (nothing could be
	// served under another address).
	held, _, _ := c.Stats()
	c.Put("x", "d.example", "x", verdict.Recipient, hit(time.Now().Add(time.Hour)), 5)
	if n, _, _ := c.Stats(); n != held {
		t.Fatalf("%d entries after a foreign key, %d before", n, held)
	}
}

// An entry gives back the verdict the lookup gave, but for what no answer
// needs (the destination's text and host, unless kept for replies that
// show them).
func TestVerdictKept(t *testing.T) {
	now := time.Now()
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: "Bob@d.example", Domain: "d.example", Purpose: verdict.Sender,
		Sender: "verify@gw.example", Status: verdict.Invalid, Reason: "user_unknown", Code: 550, Enhanced: "5.1.1",
		Text: "User unknown", Host: "192.0.2.1:25", CheckedAt: now, ExpiresAt: now.Add(time.Hour), Source: verdict.SourceCache}
	for _, details := range []bool{false, true} {
		c := New(10, details)
		k := Key(v.Address, verdict.Sender, []string{"verify@gw.example"})
		c.Put(k, "d.example", "Bob", verdict.Sender, v, 0)
		got, ok := c.Get(k)
		want := v
		if !details {
			want.Text, want.Host = "", ""
		}
		if !ok || !got.CheckedAt.Equal(want.CheckedAt) || !got.ExpiresAt.Equal(want.ExpiresAt) {
			t.Fatalf("details %v: %+v %v", details, got, ok)
		}
		got.CheckedAt, got.ExpiresAt = want.CheckedAt, want.ExpiresAt
		if got != want {
			t.Fatalf("details %v:\n got %+v\nwant %+v", details, got, want)
		}
	}
}

// An entry costs a few hundred bytes: it keeps what an answer needs.
func TestBytesPerEntry(t *testing.T) {
	const n = 100000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := New(n, false)
	now := time.Now()
	for i := 0; i < n; i++ {
		local := fmt.Sprintf("u%d", i)
		v := verdict.Verdict{Kind: verdict.KindAddress, Address: local + "@hit.example", Domain: "hit.example", Status: verdict.Invalid,
			Reason: "user_unknown", Code: 550, Enhanced: "5.1.1", Text: "<" + local + "@hit.example>: Recipient address rejected: User unknown in local recipient table",
			Host: "192.0.2.1:25", CheckedAt: now, ExpiresAt: now.Add(time.Hour), Source: verdict.SourceCache}
		c.Put(Key(v.Address, verdict.Recipient, []string{""}), "hit.example", local, verdict.Recipient, v, 0)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%.0f bytes per entry", per)
	if per > 400 {
		t.Fatalf("%.0f bytes per entry, want at most 400", per)
	}
	runtime.KeepAlive(c)
}

// A verdict for one address of a big domain costs the same as one of a
// small domain: the ingests apply every stored verdict, so this is on the
// path of every callout.
func BenchmarkApplyAddressBigDomain(b *testing.B) {
	for _, n := range []int{100, 100000} {
		b.Run(fmt.Sprintf("domain_entries=%d", n), func(b *testing.B) {
			c := New(n+1, false)
			exp := time.Now().Add(time.Hour)
			for i := 0; i < n; i++ {
				local := fmt.Sprintf("u%d", i)
				c.Put(Key(local+"@big.example", verdict.Recipient, []string{""}), "big.example", local, verdict.Recipient, hit(exp), c.Revision())
			}
			key := kvkey.Address("big.example", "nobody", verdict.Recipient, "")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c.Apply(key, uint64(i+1))
			}
		})
	}
}
