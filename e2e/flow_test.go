package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Every path over NATS request-reply, through the real processes.
func TestNATSFlow(t *testing.T) {
	s := newSystem(t, options{})
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, CatchAll: []string{"catchall.example"}})
	grey := destination(t, smtptest.Config{Rcpt: smtptest.Greylist(smtptest.Mailboxes([]string{"alice@grey.example"}, nil))})
	nonull := destination(t, smtptest.Config{Mailboxes: []string{"alice@nonull.example"}, Mail: func(from string) string {
		if from == "" {
			return "550 5.7.1 we do not take mail from <>"
		}
		return "250 2.1.0 Ok"
	}})
	blocked := destination(t, smtptest.Config{Rcpt: func(_, _ string) string {
		return "550 5.7.1 Service unavailable; client [127.0.0.1] blocked using zen.spamhaus.org"
	}})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	s.setPolicy("catchall.example", domains.Policy{Route: []string{dest.Addr()}})
	s.setPolicy("grey.example", domains.Policy{Route: []string{grey.Addr()}})
	s.setPolicy("nonull.example", domains.Policy{Route: []string{nonull.Addr()}})
	s.setPolicy("fallback.example", domains.Policy{Route: []string{nonull.Addr()}, FallbackSender: "verify@gw.test"})
	s.setPolicy("blocked.example", domains.Policy{Route: []string{blocked.Addr()}})
	s.setPolicy("static.example", domains.Policy{Mode: domains.ModeStatic, Mailboxes: []string{"alice"}})
	s.setPolicy("off.example", domains.Policy{Mode: domains.ModeOff})

	t.Run("valid", func(t *testing.T) {
		must(t, s.verify("alice@example.org"), verdict.Accept, 250)
		must(t, s.cached("alice@example.org"), verdict.Accept, 250)
		before := dest.Rcpts()
		must(t, s.verify("alice@example.org"), verdict.Accept, 250)
		if dest.Rcpts() != before {
			t.Fatal("cache hit made a callout")
		}
	})
	t.Run("invalid", func(t *testing.T) {
		rep := s.verify("nobody@example.org")
		must(t, rep, verdict.Reject, 550)
		if rep.Decision.Enhanced != "5.1.1" {
			t.Fatalf("enhanced %s", rep.Decision.Enhanced)
		}
		must(t, s.cached("nobody@example.org"), verdict.Reject, 550)
	})
	t.Run("catch-all: second address makes no RCPT", func(t *testing.T) {
		must(t, s.verify("first@catchall.example"), verdict.Accept, 250)
		// Wait for the domain fact to be stored, then count.
		waitFor(t, 15*time.Second, func() bool {
			_, err := s.cacheEntry(kvkey.Domain("catchall.example", verdict.Recipient, kvkey.FactCatchAll))
			return err == nil
		})
		// The fact reaches the ingest's and the cachekeeper's copies of the
		// bucket a moment after the bucket: on a loaded machine the first
		// new address may still be called out (a random RCPT, no wrong
		// answer); from then on none is.
		n := 0
		waitFor(t, 15*time.Second, func() bool {
			n++
			before := dest.Rcpts()
			rep := s.verify(fmt.Sprintf("second%d@catchall.example", n))
			must(t, rep, verdict.Accept, 250)
			if rep.Verdict.Status != verdict.CatchAll {
				t.Fatalf("status %s", rep.Verdict.Status)
			}
			return dest.Rcpts() == before
		})
		if n > 3 {
			t.Fatalf("%d new addresses of a known catch-all domain were called out", n-1)
		}
	})
	t.Run("greylisting defers", func(t *testing.T) {
		rep := s.verify("alice@grey.example")
		must(t, rep, verdict.Defer, 450)
		if _, err := s.cacheEntry(kvkey.Address("grey.example", "alice", verdict.Recipient, "")); err == nil {
			t.Fatal("a greylisting answer was cached")
		}
	})
	t.Run("null sender refused", func(t *testing.T) {
		rep := s.verify("alice@nonull.example")
		must(t, rep, verdict.Accept, 250)
		if rep.Verdict.Status != verdict.Unverifiable || rep.Verdict.Reason != verdict.ReasonNullSenderRejected {
			t.Fatalf("verdict %+v", rep.Verdict)
		}
		// With a fallback sender the callout goes through.
		rep = s.verify("nobody@fallback.example")
		must(t, rep, verdict.Reject, 550)
	})
	t.Run("5.7.1 block is not cached as invalid", func(t *testing.T) {
		must(t, s.verify("alice@blocked.example"), verdict.Accept, 250)
		var v verdict.Verdict
		waitFor(t, 15*time.Second, func() bool {
			e, err := s.cacheEntry(kvkey.Address("blocked.example", "alice", verdict.Recipient, ""))
			v = e
			return err == nil
		})
		if v.Status != verdict.Unverifiable {
			t.Fatalf("cached as %s", v.Status)
		}
		must(t, s.verify("alice@blocked.example"), verdict.Accept, 250)
	})
	t.Run("static", func(t *testing.T) {
		must(t, s.verify("alice@static.example"), verdict.Accept, 250)
		must(t, s.verify("bob@static.example"), verdict.Reject, 550)
	})
	t.Run("off", func(t *testing.T) {
		rep := s.verify("anyone@off.example")
		must(t, rep, verdict.Accept, 250)
		if rep.Verdict.Status != verdict.Skipped {
			t.Fatalf("status %s", rep.Verdict.Status)
		}
	})
	t.Run("keys read naturally in the bucket", func(t *testing.T) {
		kv, err := s.js.KeyValue(context.Background(), s.names.CacheBucket())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Get(context.Background(), "addr.example/org.alice.rcpt"); err != nil {
			t.Fatalf("addr.example/org.alice.rcpt: %v", err)
		}
	})
}

func (s *system) cacheEntry(key string) (verdict.Verdict, error) {
	kv, err := s.js.KeyValue(context.Background(), s.names.CacheBucket())
	if err != nil {
		return verdict.Verdict{}, err
	}
	e, err := kv.Get(context.Background(), key)
	if err != nil {
		return verdict.Verdict{}, err
	}
	return wire.DecodeEntry(key, e.Value())
}

func TestFlush(t *testing.T) {
	s := newSystem(t, options{})
	dest := destination(t, smtptest.Config{Mailboxes: []string{"a@one.example", "b@one.example", "c@two.example"}})
	s.setPolicy("one.example", domains.Policy{Route: []string{dest.Addr()}})
	s.setPolicy("two.example", domains.Policy{Route: []string{dest.Addr()}})
	addrs := []string{"a@one.example", "b@one.example", "c@two.example"}
	warm := func() {
		for _, a := range addrs {
			s.verify(a)
		}
		for _, a := range addrs {
			s.cached(a)
		}
	}
	probesAgain := func(a string) bool {
		before := dest.RcptsFor(a)
		rep := s.verify(a)
		return rep.Verdict.Source == verdict.SourceProbe && dest.RcptsFor(a) == before+1
	}
	warm()
	if n := s.flush(wire.FlushCommand{Scope: wire.ScopeAddress, Address: "a@one.example"}); n != 1 {
		t.Fatalf("address flush removed %d", n)
	}
	if !probesAgain("a@one.example") {
		t.Fatal("after an address flush the address was not probed again")
	}
	if rep := s.verify("b@one.example"); rep.Verdict.Source != verdict.SourceCache {
		t.Fatal("address flush removed another address")
	}
	warm()
	if n := s.flush(wire.FlushCommand{Scope: wire.ScopeDomain, Domain: "one.example"}); n < 2 {
		t.Fatalf("domain flush removed %d", n)
	}
	if !probesAgain("b@one.example") {
		t.Fatal("after a domain flush the address was not probed again")
	}
	if rep := s.verify("c@two.example"); rep.Verdict.Source != verdict.SourceCache {
		t.Fatal("domain flush removed another domain")
	}
	warm()
	if n := s.flush(wire.FlushCommand{Scope: wire.ScopeAll}); n < 3 {
		t.Fatalf("full flush removed %d", n)
	}
	if !probesAgain("c@two.example") {
		t.Fatal("after a full flush the address was not probed again")
	}
}

func TestTTLExpiry(t *testing.T) {
	s := newSystem(t, options{env: map[string][]string{
		"cachekeeper": {"CALLOUT_CACHEKEEPER_TTL_INVALID=2s", "CALLOUT_CACHEKEEPER_TTL_NOT_CATCH_ALL=2s"},
		"ingest":      {"CALLOUT_INGEST_BRAKE_LIMIT=0"}, // this test asks for one unknown address again and again
	}})
	dest := destination(t, smtptest.Config{})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	must(t, s.verify("ghost@example.org"), verdict.Reject, 550)
	must(t, s.cached("ghost@example.org"), verdict.Reject, 550)
	// Once the entry has expired the next verify probes again.
	waitFor(t, 15*time.Second, func() bool {
		return s.verify("ghost@example.org").Verdict.Source == verdict.SourceProbe
	})
	if dest.RcptsFor("ghost@example.org") < 2 {
		t.Fatal("expired entry answered without a new RCPT")
	}
}

func TestCoalescing(t *testing.T) {
	s := newSystem(t, options{})
	s.start("ingest") // two ingest instances share the queue group
	s.waitReady()
	dest := destination(t, smtptest.Config{Mailboxes: []string{"burst@example.org"}, Delay: 100 * time.Millisecond})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, _ := wire.Encode(&wire.VerifyRequest{Address: "burst@example.org"})
			m, err := s.nc.Request(s.names.Verify(), b, 20*time.Second)
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
		t.Fatalf("%d RCPTs for one address, want 1", n)
	}
}
