package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
)

// records reads every record of the log, in its order.
func records(t *testing.T, js jetstream.JetStream) []decisions.Record {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, subjects.New("").DecisionStream())
	if err != nil {
		return nil // not made yet
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		seqs = append(seqs, seq)
	}
	var out []decisions.Record
	rd := decisions.StreamReader{NC: js.Conn(), Stream: subjects.New("").DecisionStream()}
	if err := rd.Messages(ctx, seqs, func(_ uint64, _ string, data []byte) {
		_ = decisions.DecodeBatch(data, func(_ int, r *decisions.Record) bool {
			out = append(out, *r)
			return true
		})
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

// logged counts the records of the log by action.
func logged(t *testing.T, js jetstream.JetStream) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, r := range records(t, js) {
		out[string(r.Action)]++
	}
	return out
}

// Cached accepts can be left out of the log (sampling); rejects never
// are; the counts per domain per hour count every answer all the same.
func TestDecisionLogSampling(t *testing.T) {
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@log.test"}})
	cfg := ingestConfig()
	cfg.DecisionLogCachedAccepts, cfg.HistoryInterval = 0, 100*time.Millisecond
	sys := startSystem(t, cfg)
	sys.policy(t, "log.test", domains.Policy{Route: []string{dest.Addr()}})
	js := natstest.JetStream(t, sys.nc)
	waitfor.Cond(t, 10*time.Second, func() bool {
		_, err := js.Stream(context.Background(), subjects.New("").DecisionStream())
		return err == nil
	})
	expect(t, sys.verify(t, rcpt("alice@log.test")), verdict.Accept, 250, verdict.SourceProbe)
	fresh := 1 // accepts not from a cache: recorded
	waitfor.Cond(t, 10*time.Second, func() bool {
		if sys.verify(t, rcpt("alice@log.test")).Verdict.Source == verdict.SourceCache {
			return true
		}
		fresh++
		return false
	})
	for i := 0; i < 5; i++ {
		expect(t, sys.verify(t, rcpt("alice@log.test")), verdict.Accept, 250, verdict.SourceCache)
	}
	for i := 0; i < 3; i++ {
		expect(t, sys.verify(t, rcpt("nobody@log.test")), verdict.Reject, 550, "")
	}
	waitfor.Cond(t, 10*time.Second, func() bool {
		n := logged(t, js)
		return n["accept"] == uint64(fresh) && n["reject"] == 3
	})
	if got := testutil.ToFloat64(sys.ingest.m.decisionsSampled); got < 6 {
		t.Fatalf("%v cached accepts sampled out, want at least 6", got)
	}
	kv, err := js.KeyValue(context.Background(), subjects.New("").HistoryBucket())
	for err != nil {
		time.Sleep(50 * time.Millisecond) // made at the first flush
		kv, err = js.KeyValue(context.Background(), subjects.New("").HistoryBucket())
	}
	waitfor.Cond(t, 10*time.Second, func() bool {
		day, err := decisions.Day(context.Background(), kv, time.Now())
		c := day["log.test"]
		return err == nil && c != nil && c.Accept >= 7 && c.Reject == 3 && c.Callouts >= 2 && c.Hits >= 6 && c.Reasons["reject/user_unknown"] == 3
	})
}

// Recording never holds up or fails an answer: with the log refusing
// every record (full, with new records discarded), answers go on and the
// dropped records are counted.
func TestDecisionLogDownAnswersGoOn(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	js := natstest.JetStream(t, sys.nc)
	ctx := context.Background()
	expect(t, sys.verify(t, rcpt("postmaster@nowhere.test")), verdict.Accept, 250, verdict.SourceStatic)
	var st jetstream.Stream
	waitfor.Cond(t, 15*time.Second, func() bool {
		var err error
		st, err = js.Stream(ctx, subjects.New("").DecisionStream())
		return err == nil && st.CachedInfo().State.Msgs >= 1
	})
	cfg := st.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 1, jetstream.DiscardNew
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		expect(t, sys.verify(t, rcpt("postmaster@nowhere.test")), verdict.Accept, 250, verdict.SourceStatic)
	}
	waitfor.Cond(t, 15*time.Second, func() bool {
		return testutil.ToFloat64(sys.ingest.m.decisionsDropped.WithLabelValues(decisions.DropStream)) >= 20
	})
}
