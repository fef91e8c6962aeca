package cachekeeper

// Lookups over NATS, the jobs queued on a miss, and refresh-ahead.

import (
	"context"
	"time"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/microasync"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

func (s *Service) lookup(ctx context.Context, r *microasync.Request) {
	var req wire.LookupRequest
	if err := wire.Decode(r.Data(), &req); err != nil {
		s.m.lookups.WithLabelValues("error").Inc()
		_ = r.Error("400", err.Error(), nil)
		return
	}
	a, err := address.Parse(req.Address)
	if err != nil {
		s.m.lookups.WithLabelValues("error").Inc()
		_ = r.Error("400", err.Error(), nil)
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	purpose := req.Purpose
	if purpose == "" {
		purpose = verdict.Recipient
	}
	rep, err := s.store.LookupAsOf(lctx, a, purpose, req.Senders, req.Rev)
	if err != nil {
		s.m.lookups.WithLabelValues("error").Inc()
		_ = r.Error("503", err.Error(), nil)
		return
	}
	kind := "miss"
	if rep.Hit {
		kind = string(rep.Verdict.Status)
		s.maybeRefresh(ctx, a, *rep.Verdict)
	} else if req.Job != nil {
		s.queue(lctx, a, purpose, *req.Job, &rep)
	}
	s.m.lookups.WithLabelValues(kind).Inc()
	b, err := wire.Encode(&rep)
	if err != nil {
		_ = r.Error("500", err.Error(), nil)
		return
	}
	_ = r.Respond(b)
}

// queue queues an ingest's job on a miss: its callout starts without
// waiting for the answer to travel back first. The job is for the address
// and view looked up, whatever it says; how it went is in the reply.
func (s *Service) queue(ctx context.Context, a address.Address, purpose verdict.Purpose, job wire.ProbeJob, rep *wire.LookupReply) {
	job.Address, job.Purpose = a.String(), purpose
	rep.Adjust(&job)
	b, err := wire.Encode(&job)
	pending := false
	if err == nil {
		pending, err = streams.QueueJob(ctx, s.js, s.names.Probe(kvkey.Target(a.Domain, a.Local, purpose)), b)
	}
	outcome := "queued"
	switch {
	case err != nil:
		rep.QueueError, outcome = err.Error(), "error"
	case pending:
		rep.Pending, outcome = true, "pending"
	default:
		rep.Queued = true
	}
	s.m.queued.WithLabelValues(outcome).Inc()
}

// maybeRefresh re-probes an old valid entry in the background, at most once
// per key per refresh period; the answer still comes from the cache.
func (s *Service) maybeRefresh(ctx context.Context, a address.Address, v verdict.Verdict) {
	now := time.Now()
	if !s.refresh.Due(&v, now, func() string { return kvkey.Address(a.Domain, a.Local, v.Purpose, v.Sender) }) {
		return
	}
	job := wire.ProbeJob{Address: a.String(), Purpose: v.Purpose, SkipRandom: true, RequestedAt: now, Refresh: true}
	b, err := wire.Encode(&job)
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.js.Publish(pctx, s.names.Probe(kvkey.Target(a.Domain, a.Local, v.Purpose)), b); err != nil && !streams.JobPending(err) {
		s.log.Warn("refresh job not queued", "address", a.String(), "err", err)
		return
	}
	s.m.refreshes.Inc()
}
