package pull

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/waitfor"
)

func setup(t *testing.T) (*natstest.Server, jetstream.JetStream, jetstream.Consumer) {
	t.Helper()
	ns := natstest.Start(t)
	js, err := jetstream.New(ns.Connect(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "JOBS", Subjects: []string{"jobs.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	c, err := js.CreateOrUpdateConsumer(ctx, "JOBS", jetstream.ConsumerConfig{Durable: "workers", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return ns, js, c
}

func pending(t *testing.T, c jetstream.Consumer) (ackPending, waiting int) {
	t.Helper()
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumAckPending, info.NumWaiting
}

// One message at a time: the next is not taken before it is asked for;
// acks, naks and terms reach the consumer; an empty stream answers nil
// once the request expires.
func TestOneAtATime(t *testing.T) {
	ns, js, c := setup(t)
	ctx := context.Background()
	for _, s := range []string{"jobs.a", "jobs.b", "jobs.c"} {
		if _, err := js.Publish(ctx, s, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	p, err := New(ns.Connect(t), "JOBS", "workers", 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	m, err := p.Next(ctx)
	if err != nil || m == nil || string(m.Data()) != "jobs.a" || m.Subject() != "jobs.a" || m.NumDelivered() != 1 {
		t.Fatalf("first: %+v, %v", m, err)
	}
	if ack, _ := pending(t, c); ack != 1 {
		t.Fatalf("%d messages taken for one asked", ack)
	}
	if err := m.Nak(); err != nil {
		t.Fatal(err)
	}
	// The three left, the first one again among them, each acked or
	// dropped.
	got := map[string]uint64{}
	for i := 0; i < 3; i++ {
		m, err := p.Next(ctx)
		if err != nil || m == nil {
			t.Fatalf("message %d: %+v, %v", i, m, err)
		}
		got[string(m.Data())] = m.NumDelivered()
		done := m.Ack
		if i%2 == 1 {
			done = m.Term
		}
		if err := done(); err != nil {
			t.Fatal(err)
		}
	}
	if got["jobs.a"] != 2 || got["jobs.b"] != 1 || got["jobs.c"] != 1 {
		t.Fatalf("deliveries %v", got)
	}
	m, err = p.Next(ctx)
	if err != nil || m != nil {
		t.Fatalf("empty stream: %+v, %v", m, err)
	}
}

// A request that ended here before the server answered (the caller's
// context) does not confuse the next: its message is still taken, its
// expiry is not read as the next request's.
func TestEarlierRequestsEnd(t *testing.T) {
	ns, js, c := setup(t)
	p, err := New(ns.Connect(t), "JOBS", "workers", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if m, err := p.Next(short); m != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cut short: %+v, %v", m, err)
	}
	// The first request's expiry comes while the second waits: the second
	// still gets the message published after it.
	ctx := context.Background()
	done := make(chan *Msg, 1)
	go func() {
		m, err := p.Next(ctx)
		if err != nil {
			t.Error(err)
		}
		done <- m
	}()
	// Both requests wait on the server, then the first expires.
	waitfor.Cond(t, 5*time.Second, func() bool { _, w := pending(t, c); return w == 2 })
	waitfor.Cond(t, 5*time.Second, func() bool { _, w := pending(t, c); return w == 1 })
	if _, err := js.Publish(ctx, "jobs.late", []byte("late")); err != nil {
		t.Fatal(err)
	}
	if m := <-done; m == nil || string(m.Data()) != "late" {
		t.Fatalf("second request: %+v", m)
	}
}

// A consumer that is gone answers a request with a status, not a hang:
// Next says so, and the worker waits a little before it asks again.
func TestConsumerGone(t *testing.T) {
	ns, js, _ := setup(t)
	if err := js.DeleteConsumer(context.Background(), "JOBS", "workers"); err != nil {
		t.Fatal(err)
	}
	p, err := New(ns.Connect(t), "JOBS", "workers", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	m, err := p.Next(context.Background())
	if m != nil || !errors.Is(err, ErrPull) {
		t.Fatalf("gone consumer: %+v, %v; want %v", m, err, ErrPull)
	}
}
