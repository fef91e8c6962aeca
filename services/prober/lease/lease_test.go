package lease

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/waitfor"
)

func leases(t *testing.T, ns *natstest.Server, cfg Config) *Leases {
	t.Helper()
	nc := ns.Connect(t)
	js, _ := jetstream.New(nc)
	if _, err := streams.Leases(context.Background(), js, subjects.New(""), 1); err != nil {
		t.Fatal(err)
	}
	return New(cfg, nc, js, subjects.New(""))
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
