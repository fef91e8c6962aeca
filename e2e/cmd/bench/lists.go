package main

// Section 10: static mode with long mailbox lists.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/verdict"
)

// staticLists measures a static domain of 100,000 listed mailboxes
// against one of 10: the import of the long list (as the console and
// calloutctl do it: parse, check, store in chunks, audit), the ingest's
// memory for it, and the verify rate of each.
func (b *bench) staticLists() error {
	const long = 100_000
	sec := "10 static lists"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	op, err := operate.New(b.nc, b.names)
	if err != nil {
		return err
	}
	short := fmt.Sprintf("short%d.bench", time.Now().UnixNano())
	big := fmt.Sprintf("long%d.bench", time.Now().UnixNano())
	if err := domains.Put(ctx, b.kv, short, domains.Policy{Mode: domains.ModeStatic, Mailboxes: listOf(10)}); err != nil {
		return err
	}
	if err := domains.Put(ctx, b.kv, big, domains.Policy{Mode: domains.ModeStatic, Mailboxes: []string{"first"}}); err != nil {
		return err
	}
	if err := b.waitReason("first@"+big, verdict.ReasonListed); err != nil {
		return err
	}
	heap0 := b.ingestLiveHeap()
	var text strings.Builder
	for _, m := range listOf(long) {
		text.WriteString(m + "@" + big + "\n")
	}
	t0 := time.Now()
	list, err := operate.ParseList(text.String())
	if err != nil {
		return err
	}
	if _, _, err := op.ImportList(ctx, "bench", big, "mailboxes", list, false, domains.AnyRevision, false); !operate.Made(err) {
		return fmt.Errorf("import: %w", err)
	}
	b.add(sec, "import of 100,000 mailboxes", float64(time.Since(t0).Milliseconds()), "ms")
	last := listOf(long)[long-1]
	if err := b.waitReason(last+"@"+big, verdict.ReasonListed); err != nil {
		return err
	}
	b.add(sec, "import until the ingest answers from it", float64(time.Since(t0).Milliseconds()), "ms")
	b.add(sec, "ingest heap per 100,000 listed", (b.ingestLiveHeap()-heap0)/(1<<20), "MiB")

	conns := clients(b.url, 8)
	defer closeAll(conns)
	rate := func(domain string, n int) (float64, error) {
		names := listOf(n)
		r, _, err := load(16, 3*time.Second, func(w, i int) error {
			addr := names[(w*7919+i*31)%n] + "@" + domain
			want := verdict.ReasonListed
			if i%4 == 3 {
				addr, want = fmt.Sprintf("nobody%d@%s", i, domain), verdict.ReasonNotListed
			}
			rep, err := b.verifyOn(conns[w%len(conns)], addr, 10*time.Second)
			if err != nil {
				return err
			}
			if rep.Verdict == nil || rep.Verdict.Reason != want {
				return fmt.Errorf("%s: not %s", addr, want)
			}
			return nil
		})
		return r, err
	}
	r10, err := rate(short, 10)
	if err != nil {
		return err
	}
	r100k, err := rate(big, long)
	if err != nil {
		return err
	}
	b.add(sec, "c=16 verify rate, 10 listed", r10, "req/s")
	b.add(sec, "c=16 verify rate, 100,000 listed", r100k, "req/s")
	b.add(sec, "c=16 100,000/10 listed rate ratio", r100k/r10, "")
	for _, d := range []string{short, big} {
		if err := op.RemovePolicy(ctx, "bench", d, 0); !operate.Made(err) {
			return err
		}
	}
	return nil
}

// listOf is n local parts.
func listOf(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("user%06d", i)
	}
	return out
}

// waitReason waits until addr is answered with reason.
func (b *bench) waitReason(addr string, reason verdict.Reason) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if rep, err := b.verify(addr, 5*time.Second); err == nil && rep.Verdict != nil && rep.Verdict.Reason == reason {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("%s never answered %s", addr, reason)
}
