package streams

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/subjects"
)

// While a job for a target is pending, a second one is refused; once it is
// acked, the subject takes a new job.
func TestProbeStreamCoalesces(t *testing.T) {
	ns := natstest.Start(t)
	js, _ := jetstream.New(ns.Connect(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := subjects.New("")
	if _, err := Probes(ctx, js, n, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := Probes(ctx, js, n, 1); err != nil {
		t.Fatalf("ensuring twice: %v", err)
	}
	subj := n.Probe("example/org.alice")
	if _, err := js.Publish(ctx, subj, []byte("1")); err != nil {
		t.Fatal(err)
	}
	_, err := js.Publish(ctx, subj, []byte("2"))
	if !JobPending(err) {
		t.Fatalf("second job: %v, want pending refusal", err)
	}
	if _, err := js.Publish(ctx, n.Probe("example/org.bob"), []byte("3")); err != nil {
		t.Fatalf("other target refused: %v", err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, n.ProbeStream(), jetstream.ConsumerConfig{Durable: "t", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: subj})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cons.Next()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, subj, []byte("4")); !JobPending(err) {
		t.Fatalf("job in flight: %v, want pending refusal", err)
	}
	if err := m.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, subj, []byte("5")); err != nil {
		t.Fatalf("after ack: %v", err)
	}
}
