package ingest

// A miss: the cache's answer, or a callout's job.

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/lookup"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// answerMiss answers a miss: a traced callout (req.Trace, only from
// callout.verify.trace, reads no cache: a prober makes a fresh callout and
// *transcript gets its dialogue), or the cache's answer, or a callout.
func (s *Service) answerMiss(ctx context.Context, req wire.VerifyRequest, purpose verdict.Purpose, m *miss, transcript *[]wire.TraceLine) (verdict.Verdict, verdict.Policy) {
	a, pol, dpol, v, senders, nearKey := m.a, m.pol, m.dpol, m.v, m.senders, m.nearKey
	if req.Trace {
		return s.traced(ctx, a, newJob(a, purpose, pol), transcript), dpol
	}
	rev := s.seen()
	if purpose == verdict.Recipient && s.brake.Braked(req.ClientAddress) {
		// No callout for this client now: the cache alone answers.
		if look := s.askCache(ctx, a, purpose, senders, nearKey, rev, nil); look.Hit {
			return *look.Verdict, dpol
		}
		s.m.braked.Inc()
		v.Status, v.Reason = verdict.TempFail, verdict.ReasonBraked
		return v, dpol
	}
	return s.joinOrStartFlight(ctx, a, purpose, senders, nearKey, rev, newJob(a, purpose, pol)), dpol
}

// askCache asks the cache (with the job to queue on a miss, if any); a failure
// to ask is logged and answers as a miss, a hit is kept in the near cache.
func (s *Service) askCache(ctx context.Context, a address.Address, purpose verdict.Purpose, senders []string, nearKey string, rev uint64, job *wire.ProbeJob) wire.LookupReply {
	look, err := s.requestLookup(ctx, a, purpose, senders, rev, job)
	if err != nil {
		s.log.Warn("cache lookup failed; treating as a miss", "address", a.String(), "err", err)
	}
	if look.Hit && s.nearOn.Load() && !s.fenced() {
		s.near.Put(nearKey, a.Domain, a.Local, purpose, *look.Verdict, rev)
	}
	return look
}

// joinOrStartFlight answers a miss of the near cache: it joins the flight of a callout
// for the same target in this ingest, or starts one. A new flight asks the
// cache with the job attached: on a miss the cachekeeper queues it at once
// (the callout starts without waiting for the answer to travel back); if it
// cannot, this ingest queues it. The flight is there before the ask, so a
// verdict that comes before the answer is not missed, and requests that
// come meanwhile join it instead of asking again.
func (s *Service) joinOrStartFlight(ctx context.Context, a address.Address, purpose verdict.Purpose, senders []string, nearKey string, rev uint64, job wire.ProbeJob) verdict.Verdict {
	// One flight per address and view: a sender check never shares a
	// recipient check's callout.
	key := kvkey.Target(a.Domain, a.Local, purpose)
	s.mu.Lock()
	f, ok := s.flights[key]
	if ok {
		s.mu.Unlock()
		s.m.coalesced.Inc()
		return s.wait(ctx, a, f)
	}
	subject := s.names.Verdict(kvkey.Address(a.Domain, a.Local, purpose, ""))
	f = &flight{key: key, subject: subject, job: job, done: make(chan struct{}), refused: make(chan struct{}, 1), again: make(chan struct{}, 1)}
	s.flights[key] = f
	s.mu.Unlock()
	// With every key of the bucket known here, an address without any
	// is a miss without asking: the job is queued at once.
	look, known := s.index.Answer(a, purpose, senders, time.Now())
	if known {
		s.m.known.Inc()
	} else {
		look = s.askCache(ctx, a, purpose, senders, nearKey, rev, &job)
	}
	switch {
	case look.Hit:
		s.end(f, *look.Verdict, nil)
	case look.Queued || look.Pending:
		go s.followFlight(f, job, nil, look.Pending)
	default:
		if look.QueueError != "" {
			s.log.Warn("cachekeeper could not queue the job; queueing it here", "address", a.String(), "err", look.QueueError)
		}
		look.Adjust(&job)
		// Published here, before the flight's goroutine starts: the
		// callout does not wait for it.
		ack, err := s.queueAsync(key, job)
		if err != nil {
			s.end(f, verdict.Verdict{}, err)
			break
		}
		s.mu.Lock()
		f.job = job // adjusted: what recheckFlights looks for
		s.mu.Unlock()
		go s.followFlight(f, job, ack, false)
	}
	return s.wait(ctx, a, f)
}

// newJob is a callout job for a that carries this ingest's routing
// decision: the route (recipients only; senders go by MX) and the probe
// senders.
func newJob(a address.Address, purpose verdict.Purpose, pol domains.Policy) wire.ProbeJob {
	job := wire.ProbeJob{Address: a.String(), Purpose: purpose, RequestedAt: time.Now(),
		Routed: true, Sender: pol.Sender, FallbackSender: pol.FallbackSender}
	if purpose == verdict.Recipient {
		job.Route = pol.Route
	}
	if pol.ControlProbe == "off" {
		job.Control = wire.ControlOff
	}
	return job
}

// traced hands a job to one prober, which runs it with its dialogue
// recorded, and returns the verdict; the transcript goes to *transcript.
func (s *Service) traced(ctx context.Context, a address.Address, job wire.ProbeJob, transcript *[]wire.TraceLine) verdict.Verdict {
	v := newVerdict(a, "")
	b, err := wire.Encode(&job)
	if err != nil {
		v.Status, v.Reason, v.Text = verdict.TempFail, verdict.ReasonQueue, err.Error()
		return v
	}
	m, err := s.nc.RequestWithContext(ctx, s.names.ProberTrace(), b)
	if err != nil {
		v.Status, v.Reason, v.Text = verdict.TempFail, verdict.ReasonDeadline, "traced callout: "+err.Error()
		return v
	}
	var r wire.TraceReply
	if err := wire.Decode(m.Data, &r); err != nil || r.Error != "" {
		v.Status, v.Reason, v.Text = verdict.TempFail, verdict.ReasonQueue, fmt.Sprintf("traced callout: %v %s", err, r.Error)
		return v
	}
	*transcript = r.Transcript
	return r.Verdict
}

// requestLookup asks the cache; rev is the bucket revision this ingest had applied,
// job the job to queue on a miss, if any (see wire.LookupRequest). A hit
// that a flush known here covers answers as a miss (never queued): every
// path that asks the cache goes through here.
func (s *Service) requestLookup(ctx context.Context, a address.Address, purpose verdict.Purpose, senders []string, rev uint64, job *wire.ProbeJob) (wire.LookupReply, error) {
	lctx, cancel := context.WithTimeout(ctx, s.cfg.LookupTimeout)
	defer cancel()
	r, err := lookup.Ask(lctx, s.nc, s.names.CacheLookup(), &wire.LookupRequest{Address: a.String(), Purpose: purpose, Senders: senders, Rev: rev, Job: job})
	if err != nil {
		return wire.LookupReply{}, err
	}
	if r.Hit && s.index.Covers(*r.Verdict) {
		// A cachekeeper behind this ingest: the flush it missed holds.
		return wire.LookupReply{}, nil
	}
	return r, nil
}

// queueAsync publishes the job without waiting for the server's answer.
func (s *Service) queueAsync(key string, job wire.ProbeJob) (jetstream.PubAckFuture, error) {
	b, err := wire.Encode(&job)
	if err != nil {
		return nil, err
	}
	ack, err := s.js.PublishAsync(s.names.Probe(key), b)
	if err != nil {
		return nil, fmt.Errorf("queue job: %w", err)
	}
	return ack, nil
}

// queue publishes the job; pending says one for the same target was
// already queued or in flight.
func (s *Service) queue(ctx context.Context, key string, job []byte) (pending bool, err error) {
	return streams.QueueJob(ctx, s.js, s.names.Probe(key), job)
}

// passed looks for a verdict on subject published before the request
// subscribed: still in the verdict stream, or already in the cache.
func (s *Service) passed(ctx context.Context, subject string, job wire.ProbeJob) (verdict.Verdict, bool) {
	lctx, cancel := context.WithTimeout(ctx, s.cfg.LookupTimeout)
	defer cancel()
	data, ok, err := streams.LastMsg(lctx, s.nc, s.names.VerdictStream(), subject)
	if err != nil {
		s.log.Debug("verdict stream", "subject", subject, "err", err)
	}
	if ok {
		// The stream keeps verdicts until stored; an old one (cachekeepers
		// down for long) does not answer for a callout just asked.
		if v, err := wire.DecodeVerdict(data); err == nil && time.Since(v.CheckedAt) < s.cfg.MaxTimeout+passedMaxAge && !s.index.Covers(v) {
			return v, true
		}
	}
	a, err := address.Parse(job.Address)
	if err != nil {
		return verdict.Verdict{}, false
	}
	senders := domains.Policy{Sender: job.Sender, FallbackSender: job.FallbackSender}.Senders()
	look, err := s.requestLookup(ctx, a, job.Purpose, senders, s.seen(), nil)
	if err == nil && look.Hit {
		return *look.Verdict, true
	}
	return verdict.Verdict{}, false
}

// passedMaxAge bounds how old a callout found in the verdict stream may be
// (beyond the request deadline) to answer a request: a prober's budget.
const passedMaxAge = 5 * time.Minute
