package ingest

// The decision log: every answer becomes a record (decisions.Record),
// queued for the log without holding up the answer, and counted per
// domain per hour.

import (
	"context"
	"math/rand/v2"
	"os"
	"time"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// viaKey marks a request's context with where it was asked (a
// decisions.Via* value); none is an MTA over NATS.
type viaKey struct{}

func viaOf(ctx context.Context) string {
	if v, ok := ctx.Value(notMail{}).(string); ok {
		return v
	}
	if v, ok := ctx.Value(viaKey{}).(string); ok {
		return v
	}
	return decisions.ViaNATS
}

// record logs and counts one answer. near: the verdict came from this
// ingest's near cache.
func (s *Service) record(ctx context.Context, req *wire.VerifyRequest, purpose verdict.Purpose, v *verdict.Verdict, d verdict.Decision, would *verdict.Decision, took time.Duration, near bool) {
	if s.recorder == nil {
		return
	}
	rec := decisions.Record{
		At: time.Now(), Region: s.names.Region, Via: viaOf(ctx),
		Client: req.ClientAddress, Helo: req.Helo, Purpose: purpose,
		Action: d.Action, Code: d.Code, Enhanced: d.Enhanced, Text: d.Text,
		Status: v.Status, Reason: v.Reason, Source: v.Source,
		Host: v.Host, DestCode: v.Code, DestText: v.Text, TookUS: took.Microseconds(), CheckedAt: v.CheckedAt, DestEnhanced: v.Enhanced,
	}
	if p := s.instance.Load(); p != nil {
		rec.Instance = *p
	}
	if near {
		rec.Source = decisions.SourceNear
	}
	if would != nil {
		rec.Would = would.Action
	}
	checked := v.Address
	if checked == "" {
		checked = req.Address
	}
	if purpose == verdict.Sender {
		rec.Sender, rec.Recipient = checked, req.Recipient
	} else {
		rec.Sender, rec.Recipient = req.Sender, checked
	}
	s.counter.Count(&rec)
	if d.Action == verdict.Accept && (v.Source == verdict.SourceCache) && s.cfg.DecisionLogCachedAccepts < 1 &&
		rand.Float64() >= s.cfg.DecisionLogCachedAccepts {
		s.m.decisionsSampled.Inc()
		return
	}
	s.recorder.Record(&rec)
}

// setInstance names this ingest in its records: the host and the micro
// service id.
func (s *Service) setInstance(id string) {
	host, _ := os.Hostname()
	name := host + "/" + id
	s.instance.Store(&name)
}

// runHistory adds the counts per domain per hour to the history bucket
// every HistoryInterval, and once more when ctx ends.
func (s *Service) runHistory(ctx context.Context) {
	t := time.NewTicker(s.cfg.HistoryInterval)
	defer t.Stop()
	flush := func(ctx context.Context) {
		if s.history == nil {
			// Made when missing; an existing one is used as it is.
			kv, err := s.js.CreateKeyValue(ctx, decisions.HistoryConfig(s.names, s.cfg.Replicas))
			if err != nil {
				if kv, err = s.js.KeyValue(ctx, s.names.HistoryBucket()); err != nil {
					s.log.Warn("history bucket", "err", err)
					return
				}
			}
			s.history = kv
		}
		if err := s.counter.Flush(ctx, s.history); err != nil {
			s.m.historyErrors.Inc()
			s.log.Warn("history not written (kept for the next try)", "err", err)
		}
	}
	for {
		select {
		case <-t.C:
			flush(ctx)
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			flush(fctx)
			cancel()
			return
		}
	}
}
