package ingest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
)

// An ingest that has a static domain's policy but not yet every chunk of
// its mailbox list (as after a start or a reconnect, with a chunk still on
// its way) answers no recipient of the domain from the part it has: it
// defers, listed or not, and never rejects; once the chunk arrives it
// answers from the whole list.
func TestPartialListNeverRejects(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js := natstest.JetStream(t, sys.nc)
	// The policy is written whole to a scratch pair of buckets, then
	// copied to the served ones without one of its chunks.
	scratch, err := domains.Bucket(ctx, js, subjects.New("scratch"), 1)
	if err != nil {
		t.Fatal(err)
	}
	list := make([]string, 20_000)
	for i := range list {
		list[i] = fmt.Sprintf("user%05d", i)
	}
	const d = "big.example"
	if err := domains.Put(ctx, scratch, d, domains.Policy{Mode: domains.ModeStatic, Mailboxes: list}); err != nil {
		t.Fatal(err)
	}
	chunks := map[string][]byte{}
	w, err := scratch.Lists.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		t.Fatal(err)
	}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		chunks[e.Key()] = e.Value()
	}
	_ = w.Stop()
	if len(chunks) < 2 {
		t.Fatalf("%d chunks", len(chunks))
	}
	var held string
	for k, v := range chunks {
		if held == "" {
			held = k
			continue
		}
		if _, err := sys.kv.Lists.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	rec, err := scratch.Get(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sys.kv.Put(ctx, d, rec.Value()); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 15*time.Second, func() bool { _, ok := sys.ingest.domains.Lookup(d); return ok })

	for _, a := range []string{"user00001@" + d, "user19999@" + d, "nobody@" + d} {
		rep := sys.verify(t, rcpt(a))
		if rep.Decision.Action != verdict.Defer || rep.Verdict.Reason != verdict.ReasonListLoading {
			t.Fatalf("%s with the list incomplete: %s %d (%s)", a, rep.Decision.Action, rep.Decision.Code, rep.Verdict.Reason)
		}
	}
	if _, err := sys.kv.Lists.Put(ctx, held, chunks[held]); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 15*time.Second, func() bool { p, _ := sys.ingest.domains.Lookup(d); return p.Complete() })
	for _, a := range []string{"user00001@" + d, "user19999@" + d} {
		expect(t, sys.verify(t, rcpt(a)), verdict.Accept, 250, "")
	}
	rep := sys.verify(t, rcpt("nobody@"+d))
	expect(t, rep, verdict.Reject, 550, "")
	if rep.Verdict.Reason != verdict.ReasonNotListed {
		t.Fatalf("reason %s", rep.Verdict.Reason)
	}
}
