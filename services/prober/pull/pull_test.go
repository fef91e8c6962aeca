package pull

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/waitfor"
)

func setup(t *testing.T) (*natstest.Server, jetstream.JetStream, jetstream.Consumer) {
	t.Helper()
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.Connect(t))
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

// Each worker gets one message: no more are taken than workers wait, and
// acks, naks and terms reach the consumer.
func TestOneEach(t *testing.T) {
	ns, js, c := setup(t)
	ctx := context.Background()
	for _, s := range []string{"jobs.a", "jobs.b", "jobs.c"} {
		if _, err := js.Publish(ctx, s, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	q, err := New(ns.Connect(t), "JOBS", "workers", 4, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	m, err := q.Next(ctx)
	if err != nil || m == nil || string(m.Data()) != "jobs.a" || m.Subject() != "jobs.a" || m.NumDelivered() != 1 {
		t.Fatalf("first: %+v, %v", m, err)
	}
	if ack, _ := pending(t, c); ack != 1 {
		t.Fatalf("%d messages taken for one worker", ack)
	}
	if err := m.Nak(); err != nil {
		t.Fatal(err)
	}
	// The three left, the first one again among them, each acked or
	// dropped.
	got := map[string]uint64{}
	for i := 0; i < 3; i++ {
		m, err := q.Next(ctx)
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
	// An empty stream: the worker waits past a request's expiry, and
	// gets what comes later.
	late := make(chan *Msg, 1)
	go func() {
		m, err := q.Next(ctx)
		if err != nil {
			t.Error(err)
		}
		late <- m
	}()
	q.mu.Lock()
	asked := q.n
	q.mu.Unlock()
	waitfor.Cond(t, 5*time.Second, func() bool { // expired, and asked again
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.n >= asked+2
	})
	if _, err := js.Publish(ctx, "jobs.late", []byte("late")); err != nil {
		t.Fatal(err)
	}
	if m := <-late; m == nil || string(m.Data()) != "late" {
		t.Fatalf("after an expiry: %+v", m)
	}
}

// Idle workers are asked for in few requests, and never beyond their
// number: 16 waiting workers take 16 of 40 messages at once (long before
// any request expires), with the rest still in the stream.
func TestFewRequests(t *testing.T) {
	ns, js, c := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nc := ns.Connect(t)
	q, err := New(nc, "JOBS", "workers", 16, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	got := make(chan *Msg, 40)
	for i := 0; i < 16; i++ {
		go func() {
			if m, err := q.Next(ctx); err == nil {
				got <- m
			}
		}()
	}
	waitfor.Cond(t, 5*time.Second, func() bool {
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.idle == 16
	})
	if err := nc.Flush(); err != nil { // the requests made have reached the server
		t.Fatal(err)
	}
	if _, w := pending(t, c); w > 4 {
		t.Fatalf("%d requests wait for 16 workers, want at most 4", w)
	}
	for i := 0; i < 40; i++ {
		if _, err := js.Publish(ctx, "jobs.x", []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	waitfor.Cond(t, 10*time.Second, func() bool { return len(got) == 16 })
	if ack, _ := pending(t, c); ack != 16 {
		t.Fatalf("%d messages taken for 16 workers", ack)
	}
}

// A worker that stops waiting (its context) leaves the message asked for
// it to the next worker; a status for an earlier request is not mistaken
// for a later one's.
func TestWorkerLeaves(t *testing.T) {
	ns, js, c := setup(t)
	q, err := New(ns.Connect(t), "JOBS", "workers", 1, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if m, err := q.Next(short); m != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cut short: %+v, %v", m, err)
	}
	ctx := context.Background()
	if _, err := js.Publish(ctx, "jobs.x", []byte("x")); err != nil {
		t.Fatal(err)
	}
	// The request made for the first wait brings it (or has expired, and
	// the second asks again).
	if m, err := q.Next(ctx); err != nil || m == nil || string(m.Data()) != "x" {
		t.Fatalf("second worker: %+v, %v", m, err)
	}
	if ack, _ := pending(t, c); ack != 1 {
		t.Fatalf("%d taken", ack)
	}
}

// A consumer that is gone answers a request with a status, not a hang:
// Next says so, and the worker waits a little before it asks again.
func TestConsumerGone(t *testing.T) {
	ns, js, _ := setup(t)
	if err := js.DeleteConsumer(context.Background(), "JOBS", "workers"); err != nil {
		t.Fatal(err)
	}
	q, err := New(ns.Connect(t), "JOBS", "workers", 2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	m, err := q.Next(context.Background())
	if m != nil || !errors.Is(err, ErrPull) {
		t.Fatalf("gone consumer: %+v, %v; want %v", m, err, ErrPull)
	}
}

// A server restart loses the requests waiting there: the queue asks again
// once they are past their time, and a waiting worker gets the job
// published after the restart.
func TestServerRestart(t *testing.T) {
	ns, _, _ := setup(t)
	dir, port := ns.Dir, ns.Port()
	nc := ns.Connect(t, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	q, err := New(nc, "JOBS", "workers", 2, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	got := make(chan *Msg, 1)
	go func() {
		// As the prober's worker does: a refusal (the server says it shuts
		// down) is waited out a little, then asked again.
		for {
			m, err := q.Next(context.Background())
			if errors.Is(err, ErrPull) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			if err != nil {
				t.Error(err)
			}
			got <- m
			return
		}
	}()
	waitfor.Cond(t, 5*time.Second, func() bool { q.mu.Lock(); defer q.mu.Unlock(); return q.idle == 1 && q.asked == 1 })
	ns.Stop()
	ns = natstest.StartIn(t, dir, port)
	waitfor.Cond(t, 10*time.Second, nc.IsConnected)
	pub := natstest.JetStream(t, ns.Connect(t))
	if _, err := pub.Publish(context.Background(), "jobs.after", []byte("after")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m == nil || string(m.Data()) != "after" {
			t.Fatalf("after the restart: %+v", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no job after the restart")
	}
}
