package ingest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

// A request that finds a job pending whose verdict went by before it
// subscribed still gets an answer, not a defer at the deadline. The test
// plays the prober, so each interleaving is forced.
func TestPendingJobVerdictNotMissed(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	n := subjects.New("")
	ctx := context.Background()
	cfg := ingestConfig()
	cfg.UnknownDomains = "callout"
	ing, err := New(cfg, ns.Connect(t), prometheus.NewRegistry(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, ing)
	<-ing.Ready()
	if _, err := streams.Verdicts(ctx, js, n, 1); err != nil {
		t.Fatal(err)
	}
	cons, err := streams.Workers(ctx, js, n.ProbeStream(), n.ProbeConsumer(), 30*time.Second, 1)
	if err != nil {
		t.Fatal(err)
	}
	job := func(local string) {
		b, _ := wire.Encode(&wire.ProbeJob{Address: local + "@example.org", Purpose: verdict.Recipient})
		if _, err := js.Publish(ctx, n.Probe(kvkey.Target("example.org", local, verdict.Recipient)), b); err != nil {
			t.Fatal(err)
		}
	}
	publish := func(local string, st verdict.Status, code int) {
		v := verdict.Verdict{Kind: verdict.KindAddress, Address: local + "@example.org", Domain: "example.org", Purpose: verdict.Recipient,
			Status: st, Code: code, Enhanced: "5.1.1", CheckedAt: time.Now(), Source: verdict.SourceProbe}
		b, _ := wire.EncodeVerdict(v)
		if _, err := js.Publish(ctx, n.Verdict(kvkey.Address("example.org", local, verdict.Recipient, "")), b); err != nil {
			t.Fatal(err)
		}
	}
	verify := func(local string) <-chan wire.VerifyReply {
		ch := make(chan wire.VerifyReply, 1)
		go func() {
			ch <- ing.Verify(ctx, wire.VerifyRequest{Address: local + "@example.org", Purpose: verdict.Recipient})
		}()
		return ch
	}

	t.Run("verdict in the stream, job not yet acked", func(t *testing.T) {
		job("gone")
		publish("gone", verdict.Invalid, 550)
		rep := <-verify("gone")
		if rep.Decision.Action != verdict.Reject || rep.Verdict.Reason == verdict.ReasonDeadline {
			t.Fatalf("%+v %+v", rep.Decision, rep.Verdict)
		}
		drainJob(t, cons)
	})
	t.Run("verdict neither kept nor stored", func(t *testing.T) {
		job("lost")
		done := verify("lost")
		// The prober finishes the pending job; its verdict went nowhere
		// this request could see (a tempfail is not stored).
		drainJob(t, cons)
		// The request queues its own job, and gets that one's verdict.
		msg := nextJob(t, cons)
		publish("lost", verdict.Valid, 250)
		_ = msg.Ack()
		rep := <-done
		if rep.Decision.Action != verdict.Accept {
			t.Fatalf("%+v %+v", rep.Decision, rep.Verdict)
		}
	})
}

func nextJob(t *testing.T, cons jetstream.Consumer) jetstream.Msg {
	t.Helper()
	var msg jetstream.Msg
	waitfor.Cond(t, 10*time.Second, func() bool {
		m, err := cons.Next(jetstream.FetchMaxWait(200 * time.Millisecond))
		if err != nil {
			return false
		}
		msg = m
		return true
	})
	return msg
}

func drainJob(t *testing.T, cons jetstream.Consumer) {
	t.Helper()
	if err := nextJob(t, cons).DoubleAck(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// When every worker is busy, a request is answered at once with a defer,
// never queued past its deadline.
func TestShedWhenBusy(t *testing.T) {
	cfg := ingestConfig()
	cfg.Workers = 1
	sys := startSystem(t, cfg)
	hold := make(chan struct{})
	dest := destination(t, smtptest.Config{Rcpt: func(_, to string) string {
		switch {
		case strings.HasPrefix(to, "slow@"):
			<-hold
		case !strings.HasPrefix(to, "other@"):
			return "550 5.1.1 User unknown"
		}
		return "250 2.1.5 Ok"
	}})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	// The slow verify ends before the test does (its connection closes then).
	done := make(chan error, 1)
	go func() {
		b, _ := wire.Encode(&wire.VerifyRequest{Address: "slow@example.org", Purpose: verdict.Recipient})
		_, err := sys.nc.Request(subjects.New("").Verify(), b, 15*time.Second)
		done <- err
	}()
	defer func() {
		close(hold)
		if err := <-done; err != nil {
			t.Errorf("the slow verify: %v", err)
		}
	}()
	waitfor.Cond(t, 10*time.Second, func() bool { return dest.RcptsFor("slow@example.org") == 1 })
	start := time.Now()
	rep := sys.verify(t, rcpt("other@example.org"))
	if rep.Decision.Action != verdict.Defer || rep.Decision.Code != 451 || rep.Decision.Enhanced != "4.3.2" || rep.Verdict.Reason != verdict.ReasonShed {
		t.Fatalf("busy answer %+v %+v", rep.Decision, rep.Verdict)
	}
	if el := time.Since(start); el > cfg.Timeout/2 {
		t.Fatalf("shed answer took %v", el)
	}
}
