package nearcache

import (
	"fmt"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

func hit(expires time.Time) wire.LookupReply {
	return wire.LookupReply{Hit: true, Verdict: &verdict.Verdict{Status: verdict.Valid, ExpiresAt: expires}}
}

func TestApplyDrops(t *testing.T) {
	c := New(100)
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
	c := New(10)
	for i := 0; i < 100; i++ {
		c.Put(fmt.Sprint(i), "d.example", fmt.Sprint(i), verdict.Recipient, hit(time.Now().Add(time.Hour)), 0)
	}
	if n, _, _ := c.Stats(); n != 10 {
		t.Fatalf("%d entries, bound 10", n)
	}
	if _, ok := c.Get("99"); !ok {
		t.Fatal("the newest entry was evicted")
	}
	c.Put("old", "d.example", "old", verdict.Recipient, hit(time.Now().Add(-time.Second)), 0)
	if _, ok := c.Get("old"); ok {
		t.Fatal("served past expires_at")
	}
	// A lookup answered across a change is not kept.
	c.Apply("addr.x.y.rcpt", 5)
	c.Put("late", "d.example", "late", verdict.Recipient, hit(time.Now().Add(time.Hour)), 4)
	if _, ok := c.Get("late"); ok {
		t.Fatal("kept a reply older than an applied change")
	}
}

// A verdict for one address of a big domain costs the same as one of a
// small domain: the ingests apply every stored verdict, so this is on the
// path of every callout.
func BenchmarkApplyAddressBigDomain(b *testing.B) {
	for _, n := range []int{100, 100000} {
		b.Run(fmt.Sprintf("domain_entries=%d", n), func(b *testing.B) {
			c := New(n + 1)
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
