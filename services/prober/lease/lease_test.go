package lease

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/waitfor"
)

func leases(t *testing.T, ns *natstest.Server, cfg Config) *Leases {
	t.Helper()
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	if _, err := streams.Leases(context.Background(), js, subjects.New(""), 1); err != nil {
		t.Fatal(err)
	}
	return New(cfg, nc, subjects.New(""))
}

// Two probers share a host's connection slots; a released slot is free at
// once, and one held by a prober that died is free after the lease TTL.
func TestConnectionSlots(t *testing.T) {
	ns := natstest.Start(t)
	cfg := Config{MaxConns: 2, Rate: 1000, TTL: 3 * time.Second}
	a, b := leases(t, ns, cfg), leases(t, ns, cfg)
	ctx := context.Background()
	r1, err := a.TryAcquire(ctx, "mx.example:25")
	if err != nil {
		t.Fatal(err)
	}
	r2, err := b.TryAcquire(ctx, "mx.example:25")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.TryAcquire(ctx, "mx.example:25"); !a.Busy(err) {
		t.Fatalf("third slot: %v, want busy", err)
	}
	if r, err := b.TryAcquire(ctx, "other.example:25"); err != nil {
		t.Fatalf("another host: %v", err)
	} else {
		r()
	}
	r1()
	waitfor.Cond(t, 5*time.Second, func() bool {
		r, err := b.TryAcquire(ctx, "mx.example:25")
		if err == nil {
			r()
		}
		return err == nil
	})
	// Slots stay held past the TTL while in use (renewed).
	time.Sleep(cfg.TTL + time.Second)
	r3, err := a.TryAcquire(ctx, "mx.example:25")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.TryAcquire(ctx, "mx.example:25"); !a.Busy(err) {
		t.Fatalf("renewed slots were lost: %v", err)
	}
	// b dies holding its slot: it is free within the TTL.
	b.nc.Close()
	_ = r2 // never released
	start := time.Now()
	waitfor.Cond(t, 2*cfg.TTL, func() bool {
		r, err := a.TryAcquire(ctx, "mx.example:25")
		if err == nil {
			r()
		}
		return err == nil
	})
	if time.Since(start) > cfg.TTL+time.Second {
		t.Logf("freed after %v", time.Since(start))
	}
	r3()
}

// The rate holds across probers: no more than RATE starts in any second.
func TestRateTokens(t *testing.T) {
	ns := natstest.Start(t)
	cfg := Config{MaxConns: 100, Rate: 5, TTL: 10 * time.Second}
	a, b := leases(t, ns, cfg), leases(t, ns, cfg)
	ctx := context.Background()
	taken := 0
	for i := 0; i < 20; i++ {
		l := a
		if i%2 == 1 {
			l = b
		}
		r, err := l.TryAcquire(ctx, "mx.example:25")
		switch {
		case err == nil:
			taken++
			r()
		case !errors.Is(err, ErrBusy):
			t.Fatal(err)
		}
	}
	if taken != 5 {
		t.Fatalf("%d starts in a burst, rate 5", taken)
	}
}

// Above 64 a second a rate token grants a batch of callouts (RATE/32 here:
// 20 for 640), spent locally: two probers together start RATE callouts in
// a burst with 32 round trips, and the next one is refused.
func TestRateGrants(t *testing.T) {
	ns := natstest.Start(t)
	cfg := Config{MaxConns: 1, Rate: 640, TTL: 10 * time.Second}
	a, b := leases(t, ns, cfg), leases(t, ns, cfg)
	if a.tokens != 32 || a.grant != 20 || a.tokTTL != time.Second {
		t.Fatalf("%d tokens of %d for %v, want 32 of 20 for 1s", a.tokens, a.grant, a.tokTTL)
	}
	ctx := context.Background()
	start := time.Now()
	taken := 0
	for _, l := range []*Leases{a, b} {
		for {
			err := l.TryRate(ctx, "fast.example:25")
			if errors.Is(err, ErrBusy) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			taken++
		}
	}
	// The batch is spent from the token's start: it ends with the token.
	a.mu.Lock()
	a.grants["fast.example:25"] = grant{left: 5, until: time.Now().Add(-time.Millisecond)}
	a.mu.Unlock()
	late := a.TryRate(ctx, "fast.example:25")
	if el := time.Since(start); el >= 900*time.Millisecond {
		t.Skipf("the burst took %v: tokens may have expired within it, nothing to count", el)
	}
	if taken != 640 {
		t.Fatalf("%d starts in a burst, rate 640", taken)
	}
	if !errors.Is(late, ErrBusy) {
		t.Fatalf("a grant past its token's life was spent: %v", late)
	}
}

// A prober waiting for a host's slot is heard by the others, not by
// itself; the ask is no lease (the lease stream does not keep it); a rate
// token alone counts against RATE like one taken with a slot.
func TestWantAndRate(t *testing.T) {
	ns := natstest.Start(t)
	a := leases(t, ns, Config{MaxConns: 1, Rate: 2, TTL: 3 * time.Second, Instance: "a"})
	b := leases(t, ns, Config{MaxConns: 1, Rate: 2, TTL: 3 * time.Second, Instance: "b"})
	heard := make(chan string, 4)
	for _, l := range []*Leases{a, b} {
		sub, err := l.Wanted(func(host string) { heard <- l.cfg.Instance + " " + host })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
		_ = l.nc.Flush()
	}
	a.Want("mx.example:25")
	select {
	case got := <-heard:
		if got != "b mx.example:25" {
			t.Fatalf("heard %q, want b hearing mx.example:25", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the want was not heard")
	}
	select {
	case got := <-heard:
		t.Fatalf("also heard %q", got)
	case <-time.After(100 * time.Millisecond):
	}
	ctx := context.Background()
	js := natstest.JetStream(t, a.nc)
	s, _ := js.Stream(ctx, subjects.New("").LeaseStream())
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 0 {
		t.Fatalf("lease stream after a want: %v %+v", err, info)
	}
	if err := a.TryRate(ctx, "mx.example:25"); err != nil {
		t.Fatal(err)
	}
	if err := b.TryRate(ctx, "mx.example:25"); err != nil {
		t.Fatal(err)
	}
	if err := a.TryRate(ctx, "mx.example:25"); !a.Busy(err) {
		t.Fatalf("third rate token within a second at RATE=2: %v", err)
	}
}

// A prober does not ask for slots it holds, nor, for a moment, for slots
// it just found taken: a busy host costs no round trip then.
func TestBusySlotsNotAskedAgain(t *testing.T) {
	ns := natstest.Start(t)
	cfg := Config{MaxConns: 2, Rate: 1000, TTL: 30 * time.Second}
	a, b := leases(t, ns, cfg), leases(t, ns, cfg)
	b.takenFor = time.Hour // however slow the machine, b's second try is within it
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if _, err := a.TryAcquire(ctx, "mx.example:25"); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.asks.Load(); n != 2 {
		t.Fatalf("%d asks for two free slots, want 2", n)
	}
	// a holds both: it asks for neither.
	if _, err := a.TryAcquire(ctx, "mx.example:25"); !a.Busy(err) {
		t.Fatalf("a third slot: %v", err)
	}
	if n := a.asks.Load(); n != 2 {
		t.Fatalf("a asked %d times for slots it holds", n-2)
	}
	// b finds both taken, then does not ask again at once.
	if _, err := b.TryAcquire(ctx, "mx.example:25"); !b.Busy(err) {
		t.Fatalf("b: %v", err)
	}
	if _, err := b.TryAcquire(ctx, "mx.example:25"); !b.Busy(err) {
		t.Fatalf("b again: %v", err)
	}
	if got := b.asks.Load(); got != 2 {
		t.Fatalf("%d asks for a busy host, want the 2 of b's first try", got)
	}
}

// A slot found taken again as soon as its mark ends is left alone twice as
// long, up to 16 times takenFor; a finding after a pause starts over.
func TestTakenMarksGrow(t *testing.T) {
	l := New(Config{MaxConns: 2, Rate: 10, TTL: time.Second}, nil, subjects.New(""))
	// Long marks: a stalled test machine cannot turn "just after" into
	// "after a pause".
	const base = 10 * time.Second
	l.takenFor = base
	const subj = "callout.lease.conn.x.0"
	tests := []struct {
		name  string
		prior int           // findings in a row so far (0: no mark)
		ended time.Duration // how long ago the prior mark ended
		want  time.Duration
	}{
		{name: "first finding", want: base},
		{name: "again, just after the mark", prior: 1, ended: time.Millisecond, want: 2 * base},
		{name: "fourth in a row", prior: 3, ended: time.Millisecond, want: 8 * base},
		{name: "capped", prior: 9, ended: time.Millisecond, want: 16 * base},
		{name: "after a pause", prior: 9, ended: 3 * base, want: base},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			delete(l.taken, subj)
			if tt.prior > 0 {
				l.taken[subj] = takenMark{until: time.Now().Add(-tt.ended), n: tt.prior}
			}
			start := time.Now()
			l.markTaken(subj)
			got := l.taken[subj].until.Sub(start)
			if got < tt.want || got > tt.want+base/2 {
				t.Fatalf("marked for %v, want %v", got, tt.want)
			}
			if !l.skip(subj) {
				t.Fatal("a marked slot is asked for")
			}
		})
	}
}

// A single nats-server forgets its memory streams when it restarts: the
// lease stream is made again at the first ask after it, and the
// fleet-wide limits hold again rather than each callout failing over to
// the prober's own limits (after half a second of asking nobody).
func TestServerRestartMakesTheStreamAgain(t *testing.T) {
	ns := natstest.Start(t)
	dir, port := ns.Dir, ns.Port()
	nc := ns.Connect(t, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if _, err := streams.Leases(context.Background(), natstest.JetStream(t, nc), subjects.New(""), 1); err != nil {
		t.Fatal(err)
	}
	l := New(Config{MaxConns: 1, Rate: 1000, TTL: 3 * time.Second}, nc, subjects.New(""))
	ctx := context.Background()
	release, err := l.TryAcquire(ctx, "mx.example:25")
	if err != nil {
		t.Fatal(err)
	}
	release()
	ns.Stop()
	ns = natstest.StartIn(t, dir, port)
	waitfor.Cond(t, 10*time.Second, nc.IsConnected)
	release, err = l.TryAcquire(ctx, "mx.example:25")
	if err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	// The limit holds again: the one slot is held.
	other := New(Config{MaxConns: 1, Rate: 1000, TTL: 3 * time.Second}, ns.Connect(t), subjects.New(""))
	if _, err := other.TryAcquire(ctx, "mx.example:25"); !other.Busy(err) {
		t.Fatalf("second slot after the restart: %v, want busy", err)
	}
	release()
}
