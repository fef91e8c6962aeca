package prober

// What operators see: the hosts, traced callouts.

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/services/prober/callout"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/wire"
)

// HostsReply is a prober's answer on the hosts subject.
type HostsReply = wire.HostsReply

// answerHosts tells an operator about this prober's destination hosts, the
// busiest first (at most 100).
func (s *Service) answerHosts(m *nats.Msg) {
	b, err := json.Marshal(s.hostsReply(100))
	if err == nil {
		_ = m.Respond(b)
	}
}

// trace runs a traced job (an operator's request through the ingest): a
// fresh callout with its dialogue recorded. Its verdicts are published and
// cached like any; the transcript goes back to the asker only.
func (s *Service) trace(ctx context.Context, m *nats.Msg) {
	reply := func(r *wire.TraceReply) {
		if b, err := wire.Encode(r); err == nil {
			_ = m.Respond(b)
		}
	}
	job, addr, err := readJob(m.Data)
	if err != nil {
		reply(&wire.TraceReply{Error: err.Error()})
		return
	}
	tr := smtpprobe.NewTranscript()
	start := time.Now()
	tr.Add("", "*", "%s check of %s", job.Purpose, addr)
	target, done := s.prepare(ctx, job, addr, tr)
	var res callout.Result
	if done != nil {
		tr.Add("", "*", "no callout: %s (%s) %s", done.Address.Status, done.Address.Reason, done.Address.Text)
		res = *done
	} else {
		res = s.verifier.Verify(ctx, target)
	}
	res.Started(start)
	if err := s.publishAll(ctx, addr, job.Purpose, &res); err != nil {
		tr.Add("", "*", "verdict not published: %v", err)
	}
	s.log.Info("traced callout", "address", addr.String(), "purpose", job.Purpose, "result", res.Address.Status, "reason", res.Address.Reason)
	reply(&wire.TraceReply{Verdict: res.Address, Facts: res.Facts, Transcript: tr.Lines()})
}

// StatsExtra adds the busiest destination hosts and the waiting jobs to the
// prober's stats messages.
func (s *Service) StatsExtra() any { return s.hostsReply(10) }

// hostsReply describes this prober's n busiest destination hosts.
func (s *Service) hostsReply(n int) HostsReply {
	return HostsReply{Instance: s.instance, Region: s.names.Region, Waiting: s.waiting.Load(), Hosts: s.pool.Hosts(n)}
}
