package prober

// Jobs: taken from the work queue, run, their verdicts published, acked.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/services/prober/callout"
	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/pull"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/lookup"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// worker takes one job at a time: nothing waits in a local buffer while
// its AckWait runs.
func (s *Service) worker(ctx context.Context, jobs *pull.Queue) {
	for ctx.Err() == nil {
		msg, err := jobs.Next(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("fetch", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(250 * time.Millisecond):
				}
			}
			continue
		}
		s.handle(ctx, msg)
	}
}

// readJob decodes a job and its address; a job without a purpose is a
// recipient check.
func readJob(data []byte) (wire.ProbeJob, address.Address, error) {
	var job wire.ProbeJob
	if err := wire.Decode(data, &job); err != nil {
		return job, address.Address{}, err
	}
	addr, err := address.Parse(job.Address)
	if err != nil {
		return job, address.Address{}, err
	}
	if job.Purpose == "" {
		job.Purpose = verdict.Recipient
	}
	return job, addr, nil
}

func (s *Service) handle(ctx context.Context, msg *pull.Msg) {
	job, addr, err := readJob(msg.Data())
	if err != nil {
		s.log.Error("probe job refused", "subject", msg.Subject(), "err", err)
		s.m.jobs.WithLabelValues("garbage").Inc()
		_ = msg.Term()
		return
	}
	if msg.NumDelivered() > 1 {
		if v, ok := s.answered(ctx, job, addr); ok {
			// Published again for the ingest that queued the job: it waits
			// for a verdict on the subject, and the cache keeps the one it has.
			s.finish(ctx, msg, addr, job.Purpose, callout.Result{Address: v}, "answered")
			return
		}
	}
	if n := msg.NumDelivered(); int(n) > s.cfg.MaxDeliver {
		// Earlier deliveries died mid-callout: answer rather than retry forever.
		v := verdict.Verdict{Kind: verdict.KindAddress, Address: addr.String(), Domain: addr.Domain, Status: verdict.TempFail,
			Reason: verdict.ReasonGaveUp, Text: fmt.Sprintf("no result after %d deliveries", n-1), CheckedAt: time.Now(), Source: verdict.SourceProbe}
		s.finish(ctx, msg, addr, job.Purpose, callout.Result{Address: v}, "gave_up")
		return
	}
	// Heartbeat so a long dialogue, or a wait for a busy host, is not
	// redelivered to another prober.
	stopHB := heartbeat(msg, max(s.cfg.AckWait/3, 200*time.Millisecond))
	start := time.Now()
	target, done := s.prepare(ctx, job, addr, nil)
	if done != nil {
		stopHB()
		s.complete(ctx, msg, job, addr, start, *done)
		return
	}
	// The first host's slot is taken without waiting. A job whose host is
	// busy (connections or rate) waits on its own goroutine, not on a
	// worker: one slow destination cannot hold every worker.
	d := s.pool.Get(target.Hosts[0])
	var slot *destination.Slot
	if !d.Open() {
		var ok bool
		if slot, ok = d.TryAcquire(ctx); !ok && s.waiting.Add(1) <= int64(s.cfg.MaxWaiting) {
			wait := func() {
				defer s.waiting.Add(-1)
				slot, err := d.Acquire(ctx, true)
				if err != nil {
					stopHB()
					_ = msg.NakWithDelay(time.Second) // shutting down: another prober takes it
					s.m.jobs.WithLabelValues("requeued").Inc()
					return
				}
				s.run(ctx, msg, job, addr, target, slot, stopHB, start)
			}
			if !s.parked.Do(wait) {
				s.waiting.Add(-1)
				stopHB()
				_ = msg.NakWithDelay(time.Second) // shutting down
				s.m.jobs.WithLabelValues("requeued").Inc()
			}
			return
		} else if !ok {
			s.waiting.Add(-1) // too many waiting already: this worker waits
		}
	}
	s.run(ctx, msg, job, addr, target, slot, stopHB, start)
}

// answeredLookupTimeout bounds the cache lookup before a callout: past
// it, the callout is made.
const answeredLookupTimeout = time.Second

// answered reports, for a job delivered again, whether the cache holds
// a verdict for its address from a callout under way or begun when the
// job was asked (started at most one budget before; for a refresh, after
// it was asked): the job's first delivery made it and its ack was lost
// (while the stream elected a leader, say). By then the verdict is
// stored; calling out again would only load the destination. A flushed
// verdict is no longer in the cache. A job without a time, or a cache
// that does not answer, is called out.
func (s *Service) answered(ctx context.Context, job wire.ProbeJob, addr address.Address) (verdict.Verdict, bool) {
	if job.RequestedAt.IsZero() {
		return verdict.Verdict{}, false
	}
	_, sender, fallback, _ := s.routing(job, addr)
	senders := domains.Policy{Sender: sender, FallbackSender: fallback}.Senders()
	lctx, cancel := context.WithTimeout(ctx, answeredLookupTimeout)
	defer cancel()
	r, err := lookup.Ask(lctx, s.nc, s.names.CacheLookup(), &wire.LookupRequest{Address: addr.String(), Purpose: job.Purpose, Senders: senders})
	if err != nil {
		s.log.Debug("cache lookup before callout", "address", addr.String(), "err", err)
		return verdict.Verdict{}, false
	}
	if !r.Hit {
		return verdict.Verdict{}, false
	}
	since := job.RequestedAt
	if !job.Refresh {
		since = since.Add(-s.cfg.Budget)
	}
	v := *r.Verdict
	ok := v.Kind == verdict.KindAddress && strings.EqualFold(v.Address, addr.String()) && v.Purpose == job.Purpose &&
		!v.CheckedAt.Before(since)
	return v, ok
}

// heartbeat tells the server every interval that msg is in progress,
// until stop is called (any number of times). A timer, not a goroutine
// per job: most callouts end before the first beat.
func heartbeat(msg *pull.Msg, every time.Duration) (stop func()) {
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock()
	t = time.AfterFunc(every, func() {
		_ = msg.InProgress()
		mu.Lock()
		if !stopped {
			t.Reset(every)
		}
		mu.Unlock()
	})
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}

// run makes the callout (slot, when set, is the first host's) and
// publishes its verdicts.
func (s *Service) run(ctx context.Context, msg *pull.Msg, job wire.ProbeJob, addr address.Address, target callout.Target, slot *destination.Slot, stopHB func(), start time.Time) {
	s.m.inFlight.Inc()
	defer s.m.inFlight.Dec()
	res, end := s.verifier.VerifyResultFirst(ctx, target, slot)
	stopHB()
	// The verdict goes first: it does not wait for the destination's reply
	// to the connection's RSET (or QUIT), which comes next, before the
	// worker takes another job.
	s.complete(ctx, msg, job, addr, start, res)
	end()
}

// complete stamps the verdicts with the callout's start and hands them on.
func (s *Service) complete(ctx context.Context, msg *pull.Msg, job wire.ProbeJob, addr address.Address, start time.Time, res callout.Result) {
	res.Started(start)
	if ctx.Err() != nil {
		// Shutting down: the result is an artefact of the cancellation.
		_ = msg.Nak()
		s.m.jobs.WithLabelValues("requeued").Inc()
		return
	}
	el := time.Since(start)
	s.m.duration.Observe(el.Seconds())
	s.m.callouts.WithLabelValues(string(res.Address.Status)).Inc()
	if res.Address.Reason == verdict.ReasonRefusesVerifier {
		s.m.refusing.Inc()
	}
	if res.Address.Host != "" && res.Rcpts > 0 {
		kind := "opened"
		if res.Reused {
			kind = "reused"
		}
		s.m.connections.WithLabelValues(kind).Inc()
	}
	a := res.Address
	s.finish(ctx, msg, addr, job.Purpose, res, "done")
	// Logged once the verdict is on its way: its ingest does not wait for the line.
	// Typed attributes: named string types would go through fmt.
	s.log.LogAttrs(ctx, slog.LevelInfo, "callout", slog.String("address", a.Address), slog.String("purpose", string(job.Purpose)),
		slog.String("host", a.Host), slog.String("result", string(a.Status)), slog.String("reason", string(a.Reason)), slog.Int("code", a.Code),
		slog.String("enhanced", a.Enhanced), slog.String("text", a.Text), slog.Int("rcpts", res.Rcpts), slog.Bool("reused", res.Reused),
		slog.Duration("duration", el.Round(time.Millisecond)))
}

// finish publishes the domain facts, then the address verdict, and only then
// acks the job: a prober killed before the ack leaves the job to another.
// Every verdict carries the job's purpose, its view (see kvkey).
func (s *Service) finish(ctx context.Context, msg *pull.Msg, addr address.Address, purpose verdict.Purpose, res callout.Result, outcome string) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.publishAll(pctx, addr, purpose, &res); err != nil {
		s.requeue(msg, err)
		return
	}
	// A plain ack: if it is lost, the job comes back after AckWait and is
	// called out again, which costs one callout; waiting for the server to
	// confirm every ack would cost a round trip on every job.
	if err := msg.Ack(); err != nil {
		s.log.Warn("job ack failed; it will be redelivered", "subject", msg.Subject(), "err", err)
	}
	s.m.jobs.WithLabelValues(outcome).Inc()
}

// publishAll publishes the domain facts, then the address verdict, each
// marked with the purpose, its view (see kvkey).
func (s *Service) publishAll(ctx context.Context, addr address.Address, purpose verdict.Purpose, res *callout.Result) error {
	for _, f := range res.Facts {
		f.Purpose = purpose
		if err := s.publish(ctx, s.names.Verdict(kvkey.Domain(f.Domain, purpose, f.Fact)), f); err != nil {
			return err
		}
	}
	res.Address.Purpose = purpose
	return s.publish(ctx, s.names.Verdict(kvkey.Address(addr.Domain, addr.Local, purpose, "")), res.Address)
}

func (s *Service) requeue(msg *pull.Msg, err error) {
	s.log.Error("verdict publish failed; job handed back", "subject", msg.Subject(), "err", err)
	_ = msg.NakWithDelay(time.Second)
	s.m.jobs.WithLabelValues("requeued").Inc()
}

func (s *Service) publish(ctx context.Context, subject string, v verdict.Verdict) error {
	b, err := wire.EncodeVerdict(v)
	if err != nil {
		return err
	}
	_, err = streams.Publish(ctx, s.nc, &nats.Msg{Subject: subject, Data: b})
	return err
}
