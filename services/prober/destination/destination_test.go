package destination

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/callout-mail/callout/shared/waitfor"
)

// The breaker opens on consecutive failures that count against the host
// (ErrUnhealthy), never on other errors (a user unknown, a policy
// refusal), refuses calls while open, and lets one trial through after
// BreakerOpen.
func TestBreaker(t *testing.T) {
	var changes []string
	p := NewPool(Config{BreakerFailures: 3, BreakerOpen: 100 * time.Millisecond}, func(host string, from, to gobreaker.State) {
		changes = append(changes, fmt.Sprintf("%s %s->%s", host, from, to))
	})
	d := p.Get("mx.example:25")
	unhealthy := fmt.Errorf("connect: %w", ErrUnhealthy)
	other := errors.New("550 5.1.1 user unknown")
	for i := 0; i < 5; i++ {
		if err := d.Do(func() error { return other }); !errors.Is(err, other) {
			t.Fatalf("other error: %v", err)
		}
	}
	if d.State() != gobreaker.StateClosed {
		t.Fatalf("errors that do not count opened the breaker: %s", d.State())
	}
	for i := 0; i < 3; i++ {
		_ = d.Do(func() error { return unhealthy })
	}
	if !d.Open() {
		t.Fatalf("3 unhealthy failures: %s", d.State())
	}
	called := false
	if err := d.Do(func() error { called = true; return nil }); !errors.Is(err, ErrOpen) || called {
		t.Fatalf("open breaker: %v, called %v", err, called)
	}
	waitfor.Cond(t, 5*time.Second, func() bool { return d.State() == gobreaker.StateHalfOpen })
	if err := d.Do(func() error { return nil }); err != nil || d.State() != gobreaker.StateClosed {
		t.Fatalf("trial: %v, %s", err, d.State())
	}
	if len(changes) != 3 || p.States()[gobreaker.StateClosed] != 1 {
		t.Fatalf("state changes %v, states %v", changes, p.States())
	}
}

// A throttled host gets half the rate and RCPTs per connection for each
// throttling reply (at most six halvings), one step back per quiet period.
func TestThrottledBacksOff(t *testing.T) {
	p := NewPool(Config{Rate: 64, ReuseMaxRcpts: 20, BackoffQuiet: time.Hour}, nil)
	d := p.Get("mx.example:25")
	for i, want := range []struct {
		rate  float64
		rcpts int
	}{{32, 10}, {16, 5}, {8, 2}, {4, 1}, {2, 1}, {1, 1}, {1, 1}} {
		d.Throttled("421 4.7.0 too many connections")
		in := d.Info()
		if in.Rate != want.rate || d.MaxRcpts() != want.rcpts || in.LastReply != "421 4.7.0 too many connections" {
			t.Fatalf("after %d throttles: rate %v, %d RCPTs per connection (%+v)", i+1, in.Rate, d.MaxRcpts(), in)
		}
	}
	// Quiet periods ease it back, one level each.
	d.mu.Lock()
	d.lastThrottle = time.Now().Add(-2 * time.Hour)
	d.mu.Unlock()
	d.ease()
	if in := d.Info(); in.Backoff != 4 || in.Rate != 4 {
		t.Fatalf("two quiet periods later: %+v", in)
	}
}

// Connection slots bound the connections to a host; TryAcquire takes one
// only when it is free, and a released slot serves the next.
func TestSlots(t *testing.T) {
	p := NewPool(Config{MaxConns: 2, Rate: 1000}, nil)
	d := p.Get("mx.example:25")
	ctx := context.Background()
	a, err := d.Acquire(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	b, ok := d.TryAcquire(ctx)
	if !ok {
		t.Fatal("the second slot was not free")
	}
	if _, ok := d.TryAcquire(ctx); ok {
		t.Fatal("a third slot past MAX_CONNS 2")
	}
	tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := d.Acquire(tctx, false); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire with every slot taken: %v", err)
	}
	a.Release()
	if c, ok := d.TryAcquire(ctx); !ok {
		t.Fatal("a released slot was not given again")
	} else {
		c.Release()
	}
	b.Release()
}

// What the control probe found shows on the host, for operators, until
// the same domain's probe finds otherwise.
func TestRefusesVerifier(t *testing.T) {
	p := NewPool(Config{}, nil)
	d := p.Get("mx.example:25")
	d.RefusesVerifier("a.example", true)
	d.RefusesVerifier("b.example", false) // another domain's answer leaves it
	if got := p.Hosts(1)[0].RefusesVerifier; got != "a.example" {
		t.Fatalf("refuses verifier %q", got)
	}
	d.RefusesVerifier("a.example", false)
	if got := p.Hosts(1)[0].RefusesVerifier; got != "" {
		t.Fatalf("after postmaster was accepted: %q", got)
	}
}

// Hosts lists the busiest first, at most n.
func TestHostsOrder(t *testing.T) {
	p := NewPool(Config{MaxConns: 2, Rate: 1000}, nil)
	quiet, busy := p.Get("quiet.example:25"), p.Get("busy.example:25")
	busy.Observe(time.Millisecond)
	busy.Observe(3 * time.Millisecond)
	quiet.Observe(time.Millisecond)
	slot, err := busy.Acquire(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer slot.Release()
	hosts := p.Hosts(5)
	if len(hosts) != 2 || hosts[0].Host != "busy.example:25" || hosts[0].InUse != 1 || hosts[0].Calls != 2 {
		t.Fatalf("hosts %+v", hosts)
	}
	if h := p.Hosts(1); len(h) != 1 {
		t.Fatalf("at most 1: %d", len(h))
	}
}
