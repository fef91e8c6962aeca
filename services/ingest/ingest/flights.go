package ingest

// Flights: one callout that any number of requests wait for.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// flight is one pending callout that any number of requests wait for.
// Verdicts arrive on one subscription to every address verdict
// (onVerdict), which ends the flight of their target: no subscription per
// callout, each of which would change the server's interest graph twice.
//
// A flight never ends with a verdict that a flush known here covers (its
// callout started before the flush): it asks for a fresh callout instead
// (refused), so that a request that comes after a flush never gets the
// verdict of a callout from before it.
type flight struct {
	key     string
	subject string        // the verdict subject
	job     wire.ProbeJob // what it queued or would queue
	done    chan struct{}
	refused chan struct{} // a covered verdict came: queue a fresh callout (counted)
	again   chan struct{} // none came while cut off: queue a fresh callout
	once    sync.Once
	v       verdict.Verdict
	err     error
}

// end ends the flight with its answer, once: the first of the verdict,
// the cache's answer or a failure wins. It leaves the map, and its
// waiters have the answer.
func (s *Service) end(f *flight, v verdict.Verdict, err error) {
	f.once.Do(func() {
		f.v, f.err = v, err
		s.mu.Lock()
		if s.flights[f.key] == f {
			delete(s.flights, f.key)
		}
		s.mu.Unlock()
		close(f.done)
	})
}

// wait waits for the flight's verdict until ctx ends; then the answer is
// a tempfail, never a reject.
func (s *Service) wait(ctx context.Context, a address.Address, f *flight) verdict.Verdict {
	v := newVerdict(a, "")
	select {
	case <-f.done:
		if f.err != nil {
			v.Status, v.Reason, v.Text = verdict.TempFail, verdict.ReasonQueue, f.err.Error()
			return v
		}
		return f.v
	case <-ctx.Done():
		s.m.deadlines.Inc()
		v.Status, v.Reason = verdict.TempFail, verdict.ReasonDeadline
		return v
	}
}

// followFlight waits for the flight's verdict (which onVerdict brings) at most
// MaxTimeout. ack is the PubAck of the job this ingest queued, if it did;
// pending says the job was found pending (queued by another, or by the
// cachekeeper for another request).
//
// A job already pending is fine: its verdict comes on the same subject,
// unless it went by before the subscription (the prober publishes, then
// acks). So a request that finds a job pending looks for a verdict that
// has passed: in the verdict stream (not yet stored) and in the cache
// (stored). Failing both, it asks again to queue the job until it either
// gets the verdict or its own job is queued: a verdict that was neither
// kept nor stored (a tempfail) then costs a new callout, never a wait to
// the deadline. A verdict refused as flushed (onVerdict) starts the same:
// a fresh callout is queued as soon as none is pending.
func (s *Service) followFlight(f *flight, job wire.ProbeJob, ack jetstream.PubAckFuture, pending bool) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.MaxTimeout)
	defer cancel()
	if ack != nil {
		select {
		case <-ack.Ok():
		case err := <-ack.Err():
			if !streams.JobPending(err) {
				s.end(f, verdict.Verdict{}, fmt.Errorf("queue job: %w", err))
				return
			}
			pending = true
		case <-f.done:
			return
		case <-ctx.Done():
			s.end(f, verdict.Verdict{}, errors.New("no verdict in time"))
			return
		}
	}
	var b []byte // the job, encoded for a retry when one is needed
	requeue := func() (pending bool, err error) {
		if b == nil {
			if b, err = wire.Encode(&job); err != nil {
				return false, err
			}
		}
		return s.queue(ctx, f.key, b)
	}
	refused := 0
	// While a job is pending and its verdict unseen, try to queue ours.
	var ticker *time.Ticker
	var retry <-chan time.Time
	retrying := func(on bool) {
		switch {
		case on && ticker == nil:
			ticker = time.NewTicker(s.cfg.PendingRetry)
			retry = ticker.C
		case !on && ticker != nil:
			ticker.Stop()
			ticker, retry = nil, nil
		}
	}
	defer retrying(false)
	askAgain := func() {
		pending, err := requeue()
		retrying(err != nil || pending)
	}
	if pending {
		if v, ok := s.passed(ctx, f.subject, job); ok {
			s.end(f, v, nil)
			return
		}
		retrying(true)
	}
	for {
		select {
		case <-f.done:
			return
		case <-f.refused:
			// The verdict that came was a flushed one: ask again now. A
			// third in a row says the verdicts' clock is behind the
			// flush records' (NTP): stop calling the destination out,
			// and defer.
			if refused++; refused > maxRefused {
				s.end(f, verdict.Verdict{}, errors.New("every verdict predates a flush of its scope: are the probers' and cachekeepers' clocks apart?"))
				return
			}
			askAgain()
		case <-f.again:
			askAgain()
		case <-retry:
			if pending, err := requeue(); err == nil && !pending {
				retrying(false) // our own job is queued now
			}
		case <-ctx.Done():
			s.end(f, verdict.Verdict{}, errors.New("no verdict in time"))
			return
		}
	}
}

// maxRefused is how many flushed verdicts in a row a flight asks a fresh
// callout for.
const maxRefused = 2

// onVerdict ends the flight of an address verdict's target, if any
// (verdicts of other ingests' callouts pass by). A verdict that a flush
// known here covers does not end it: the flight asks for a fresh callout.
func (s *Service) onVerdict(m *nats.Msg) {
	// The subject is the verdict subject of addr.<target>, the flight's key.
	key, ok := strings.CutPrefix(m.Subject, s.names.Verdict("addr."))
	if !ok {
		return
	}
	s.mu.Lock()
	f := s.flights[key]
	s.mu.Unlock()
	if f == nil {
		return
	}
	v, err := wire.DecodeVerdict(m.Data)
	if err != nil {
		s.log.Error("verdict refused", "subject", m.Subject, "err", err)
		return
	}
	s.deliver(f, v)
}

// deliver ends f with v, unless a flush known here covers v.
func (s *Service) deliver(f *flight, v verdict.Verdict) {
	if s.index.Covers(v) {
		s.m.flushedVerdicts.Inc()
		select {
		case f.refused <- struct{}{}:
		default:
		}
		return
	}
	s.end(f, v, nil)
}

// recheckFlights looks, after a reconnection, for the verdicts of the open
// flights that were published while this ingest was cut off.
func (s *Service) recheckFlights() {
	type open struct {
		f   *flight
		job wire.ProbeJob
	}
	s.mu.Lock()
	var fs []open
	for _, f := range s.flights {
		fs = append(fs, open{f, f.job})
	}
	s.mu.Unlock()
	for _, o := range fs {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.MaxTimeout)
			defer cancel()
			if v, ok := s.passed(ctx, o.f.subject, o.job); ok {
				s.end(o.f, v, nil)
				return
			}
			// None passed: a fresh callout, if none is pending (not
			// counted as a flushed verdict).
			select {
			case o.f.again <- struct{}{}:
			default:
			}
		}()
	}
}
