package ingest

// The answer of one request: what memory knows (answerFromMemory), then the policy's decision (reply).

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/callout-mail/callout/services/ingest/nearcache"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Verify answers one request before its deadline. It never rejects unless
// the destination said "user unknown" (or the operator's list says so).
func (s *Service) Verify(ctx context.Context, req wire.VerifyRequest) wire.VerifyReply {
	return s.verify(ctx, req, time.Now())
}

// verify is Verify with the deadline counted from start, the request's
// arrival.
func (s *Service) verify(ctx context.Context, req wire.VerifyRequest, start time.Time) wire.VerifyReply {
	purpose := purposeOf(req)
	v, pol, m := s.answerFromMemory(req, purpose)
	return s.answer(ctx, req, purpose, start, v, pol, m, nil)
}

// answer goes on from answerFromMemory's result: a miss (m) is asked of the cache and
// the destination before its deadline. The log line goes to *later when
// set (see reply).
func (s *Service) answer(ctx context.Context, req wire.VerifyRequest, purpose verdict.Purpose, start time.Time, v verdict.Verdict, pol verdict.Policy, m *miss, later *func()) wire.VerifyReply {
	var transcript []wire.TraceLine
	if req.Trace {
		transcript = []wire.TraceLine{}
	}
	if m != nil {
		timeout := req.Timeout(s.cfg.Timeout, s.cfg.MaxTimeout)
		// Answer a little before the caller gives up.
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(max(timeout-timeout/20, timeout-250*time.Millisecond)))
		defer cancel()
		v, pol = s.answerMiss(ctx, req, purpose, m, &transcript)
	}
	return s.reply(ctx, req, purpose, start, v, pol, transcript, later, m == nil && v.Source == verdict.SourceCache)
}

func purposeOf(req wire.VerifyRequest) verdict.Purpose {
	if req.Purpose == "" {
		return verdict.Recipient
	}
	return req.Purpose
}

// reply makes the answer of a verdict under a policy: the decision (monitor
// mode's too), the brake's count, metrics and the log line. With later
// set, the log line is left there for the caller to write once the answer
// is sent: the MTA does not wait for it. near: v is a near-cache hit.
func (s *Service) reply(ctx context.Context, req wire.VerifyRequest, purpose verdict.Purpose, start time.Time, v verdict.Verdict, pol verdict.Policy, transcript []wire.TraceLine, later *func(), near bool) wire.VerifyReply {
	if v.Status == verdict.Invalid && v.Source == verdict.SourceCache && s.cutOff.Load() {
		// A reject a flush elsewhere may have removed (region.go).
		s.m.unconfirmed.Inc()
		v.Status, v.Reason = verdict.TempFail, verdict.ReasonUnconfirmed
	}
	d := s.decide(v, pol)
	var would *verdict.Decision
	if pol.Monitor && d.Action != verdict.Accept {
		// Monitor mode: accept, and say what callout mode would have done.
		w := d
		would = &w
		d = verdict.Decide(verdict.Verdict{Address: v.Address, Status: verdict.Valid}, pol)
		s.m.monitored.WithLabelValues(v.Domain, string(w.Action)).Inc()
		s.log.Info("monitor: would not accept", "address", v.Address, "would", w.Action, "code", w.Code, "text", w.Text,
			"status", v.Status, "reason", v.Reason, "dest_code", v.Code, "dest_text", v.Text)
	}
	if d.Action == verdict.Reject && purpose == verdict.Recipient && v.Status == verdict.Invalid && isMail(ctx) {
		s.brake.Invalid(req.ClientAddress)
	}
	el := time.Since(start)
	s.record(ctx, &req, purpose, &v, d, would, el, near)
	s.m.requests.WithLabelValues(string(d.Action), string(v.Source)).Inc()
	s.m.latency.Observe(el.Seconds())
	// Answers from the cache are the bulk at high rates and repeat what
	// was logged when the verdict was made (the MTA logs its own rejects):
	// they log at debug.
	level := slog.LevelInfo
	if v.Source == verdict.SourceCache {
		level = slog.LevelDebug
	}
	logLine := func() {}
	if s.log.Enabled(ctx, level) { // the arguments cost allocations: none when the line is off
		logged := v
		logLine = func() {
			// Typed attributes: named string types would go through fmt.
			s.log.LogAttrs(ctx, level, "verify", slog.String("address", logged.Address), slog.String("purpose", string(purpose)),
				slog.String("client", req.ClientAddress), slog.String("action", string(d.Action)), slog.Int("code", d.Code),
				slog.String("status", string(logged.Status)), slog.String("reason", string(logged.Reason)), slog.String("source", string(logged.Source)),
				slog.String("host", logged.Host), slog.Int("dest_code", logged.Code), slog.String("dest_text", logged.Text),
				slog.Duration("took", el.Round(time.Microsecond)))
		}
	}
	if later != nil {
		*later = logLine
	} else {
		logLine()
	}
	if !s.cfg.ReplyDetails {
		v.Host, v.Text = "", ""
	}
	return wire.VerifyReply{Decision: d, Verdict: &v, Would: would, WouldReject: would != nil && would.Action == verdict.Reject, Transcript: transcript}
}

// decide applies the policy and the configured texts.
func (s *Service) decide(v verdict.Verdict, pol verdict.Policy) verdict.Decision {
	d := verdict.Decide(v, pol)
	if v.AboutRequest() {
		return d // the configured defer text is not for it
	}
	text := ""
	switch d.Action {
	case verdict.Reject:
		if v.Status == verdict.Invalid {
			text = s.cfg.RejectText
		}
	case verdict.Defer:
		text = s.cfg.DeferText
	}
	if text != "" {
		d.Text = strings.ReplaceAll(text, "{address}", "<"+v.Address+">")
	}
	return d
}

func newVerdict(a address.Address, raw string) verdict.Verdict {
	addr := raw
	if a.Domain != "" {
		addr = a.String()
	}
	return verdict.Verdict{Kind: verdict.KindAddress, Address: addr, Domain: a.Domain, CheckedAt: time.Now(), Source: verdict.SourceStatic}
}

// miss is what answerFromMemory learned about a request it could not answer.
type miss struct {
	a       address.Address
	pol     domains.Policy
	dpol    verdict.Policy
	v       verdict.Verdict
	senders []string
	nearKey string
}

// answerFromMemory returns the verdict that answers the request and the policy to
// apply when memory has it: the null sender and postmaster, bad input, the
// policy's own answers, a near-cache hit. Otherwise it returns a miss for
// answerMiss. It never waits.
func (s *Service) answerFromMemory(req wire.VerifyRequest, purpose verdict.Purpose) (verdict.Verdict, verdict.Policy, *miss) {
	if v, ok := neverCalledOut(req.Address, purpose); ok {
		return v, verdict.Policy{Purpose: purpose}, nil
	}
	a, err := address.Parse(req.Address)
	if err != nil {
		v := newVerdict(address.Address{}, verdict.CleanText(req.Address))
		v.Text = err.Error()
		if address.Broken(err) {
			v.Status, v.Reason = verdict.Malformed, verdict.ReasonSyntax
		} else {
			// Real mail uses these forms (literals, internationalized or
			// odd local parts, underscores or one label in the domain):
			// they are only not safe to call out for. Never a reject.
			v.Status, v.Reason = verdict.Unverifiable, verdict.ReasonUnprobeable
		}
		return v, verdict.Policy{Purpose: purpose}, nil
	}
	v := newVerdict(a, "")
	as := v.Address // a.String(), built once
	if s.extra[strings.ToLower(as)] || s.domains.IsProbeSender(as) {
		v.Status, v.Reason = verdict.Skipped, verdict.ReasonProbeSender
		return v, verdict.Policy{Purpose: purpose}, nil
	}
	pol, known := s.domains.Lookup(a.Domain)
	dpol := pol.Decision(purpose)
	if purpose == verdict.Sender {
		dpol.OnTempfail, dpol.OnUnverifiable = s.cfg.SenderOnTempfail, s.cfg.SenderOnUnverifiable
	} else {
		switch {
		case known && !pol.Complete():
			// A list not yet read whole: an entry may be in a chunk still
			// on its way, so neither "listed" nor "bypassed" can be said.
			v.Status, v.Reason = verdict.TempFail, verdict.ReasonListLoading
			return v, dpol, nil
		case known && pol.Bypassed(a.Local, s.cfg.RecipientDelimiter):
			v.Status, v.Reason = verdict.Skipped, verdict.ReasonBypass
			return v, dpol, nil
		case !known && s.cfg.UnknownDomains == "reject":
			v.Status, v.Reason = verdict.RelayDenied, verdict.ReasonNotServed
			return v, dpol, nil
		case !known && s.cfg.UnknownDomains == "accept":
			// Nothing the destination said: relay control is the MTA's.
			v.Status, v.Reason = verdict.Unverifiable, verdict.ReasonNotServed
			return v, dpol, nil
		case pol.EffectiveMode() == domains.ModeOff:
			v.Status, v.Reason = verdict.Skipped, verdict.ReasonPolicyOff
			return v, dpol, nil
		case pol.EffectiveMode() == domains.ModeStatic:
			if pol.Listed(a.Local, s.cfg.RecipientDelimiter) {
				v.Status, v.Reason = verdict.Valid, verdict.ReasonListed
			} else {
				v.Status, v.Reason = verdict.Invalid, verdict.ReasonNotListed
			}
			return v, dpol, nil
		}
	}
	if req.Trace {
		return v, dpol, &miss{a: a, pol: pol, dpol: dpol, v: v}
	}
	// Without a policy, pol is the zero policy: the null sender only.
	senders := pol.Senders()
	nearKey := nearcache.Key(as, purpose, senders)
	// Fenced (a flush this ingest was asked to confirm is not applied
	// here yet), the near cache serves nothing: the cache answers.
	if hit, ok := s.nearHit(nearKey); ok {
		if hit.Status != verdict.Invalid || !s.offline.Load() && !s.cutOff.Load() {
			s.refresh(a, purpose, pol, &hit)
			return hit, dpol, nil
		}
		// A reject this ingest cannot know is current: a flush may have
		// removed it while the bucket's changes do not reach here.
		s.m.unconfirmed.Inc()
		v.Status, v.Reason, v.Source = verdict.TempFail, verdict.ReasonUnconfirmed, verdict.SourceCache
		return v, dpol, nil
	}
	return v, dpol, &miss{a: a, pol: pol, dpol: dpol, v: v, senders: senders, nearKey: nearKey}
}

// nearHit is the near cache's entry under key, unless this ingest is
// fenced.
func (s *Service) nearHit(key string) (verdict.Verdict, bool) {
	if s.fenced() {
		return verdict.Verdict{}, false
	}
	return s.near.Get(key)
}

// neverCalledOut answers the addresses that are never called out: the null
// sender (the bounce sender) and postmaster, which every domain must
// accept (RFC 5321 section 4.5.1), qualified or not.
func neverCalledOut(raw string, purpose verdict.Purpose) (verdict.Verdict, bool) {
	s := strings.TrimSpace(raw)
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: s, CheckedAt: time.Now(), Source: verdict.SourceStatic, Status: verdict.Skipped}
	switch {
	case s == "" && purpose == verdict.Sender:
		v.Reason = verdict.ReasonNullSender
		return v, true
	case strings.EqualFold(s, "postmaster"):
		v.Reason = verdict.ReasonPostmaster
		return v, true
	}
	local, domain, ok := strings.Cut(s, "@")
	if ok && strings.EqualFold(local, "postmaster") && !strings.ContainsRune(domain, '@') && !strings.ContainsFunc(domain, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		v.Reason = verdict.ReasonPostmaster
		if d, err := address.NormalizeDomain(domain); err == nil {
			v.Address, v.Domain = "postmaster@"+d, d
		}
		return v, true
	}
	return verdict.Verdict{}, false
}
