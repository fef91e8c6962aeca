package streams

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
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
	js := natstest.JetStream(t, ns.Connect(t))
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

// An existing stream with other settings is left alone and reported; Setup
// applies the settings.
func TestDriftAndSetup(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.Connect(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := subjects.New("")
	cfg := VerdictsConfig(n, 1)
	cfg.MaxAge = time.Hour
	if _, err := js.CreateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	s, err := Verdicts(ctx, js, n, 1)
	var drift *DriftError
	if s == nil || !errors.As(err, &drift) || !strings.Contains(drift.What, "max_age") {
		t.Fatalf("drift not reported: %v", err)
	}
	if strings.Contains(drift.What, "discard") {
		t.Errorf("drift names a setting that is the same: %s", drift.What)
	}
	if info, _ := s.Info(ctx); info.Config.MaxAge != time.Hour {
		t.Fatal("a service changed an existing stream")
	}
	if Warn(slog.New(slog.NewTextHandler(io.Discard, nil)), err) != nil {
		t.Fatal("Warn kept a drift error")
	}
	if _, err := Setup(ctx, js, n, 1, 96*time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := Verdicts(ctx, js, n, 1); err != nil {
		t.Fatalf("after setup: %v", err)
	}
}

// On one server, the streams of work in passing are written in the
// background; the cache, the flush log and the policies never are. The
// server cannot change the mode of a stream that exists, so setup keeps
// an existing stream's own and still applies the rest.
func TestTransientPersistMode(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.Connect(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n := subjects.New("")
	old := VerdictsConfig(n, 1)
	old.PersistMode, old.MaxAge = jetstream.DefaultPersistMode, time.Hour
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := SetupWith(ctx, js, n, 1, 96*time.Hour, DefaultLimits); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, FlushLogConfig(n, 1)); err != nil {
		t.Fatal(err)
	}
	want := map[string]jetstream.PersistModeType{
		n.ProbeStream():           jetstream.AsyncPersistMode,
		n.VerdictStream():         jetstream.DefaultPersistMode, // made before: kept
		n.DecisionStream():        jetstream.AsyncPersistMode,
		"KV_" + n.CacheBucket():   jetstream.DefaultPersistMode,
		"KV_" + n.DomainsBucket(): jetstream.DefaultPersistMode,
		n.FlushLogStream():        jetstream.DefaultPersistMode,
	}
	for name, mode := range want {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := s.CachedInfo().Config.PersistMode; got != mode {
			t.Errorf("%s: persist mode %v, want %v", name, got, mode)
		}
	}
	if _, err := Verdicts(ctx, js, n, 1); err != nil {
		t.Fatalf("after setup: %v", err) // max age applied, the mode no drift
	}
	for _, r := range []int{3, 5} {
		if ProbesConfig(n, r).PersistMode != jetstream.DefaultPersistMode || VerdictsConfig(n, r).PersistMode != jetstream.DefaultPersistMode {
			t.Errorf("replicas %d: replicated streams keep the default mode (the server flushes them in the background)", r)
		}
	}
}
