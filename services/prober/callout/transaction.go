package callout

// One transaction: MAIL FROM (with the fallback sender), the catch-all probe, the real RCPT, and the next transaction.

import (
	"context"
	"time"

	"github.com/callout-mail/callout/services/prober/classify"
	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
)

// firstRcpt is the reply to the RCPT sent with MAIL FROM (pipelined when
// the host offers PIPELINING), or the error reading it; wasted counts the
// RCPTs pipelined with a MAIL FROM that was refused.
type firstRcpt struct {
	rep    smtpprobe.Reply
	err    error
	wasted int
}

// mail sends MAIL FROM with the sender, falling back to FallbackSender when
// refused, and with it RCPT TO rcpt. A sender refused at the RCPT (Postfix
// with smtpd_delay_reject=yes answers "Sender address rejected" there) is
// refused all the same. It returns the sender in use and the RCPT's reply,
// or a result to report. Of the refusals it met, only the last is a fact:
// both senders refused is what the fallback's refusal says (the lookup
// answers it for the last sender), and two facts under one key would have
// the cache keep either.
func (v *Verifier) mail(ctx context.Context, d *destination.Dest, host string, t Target, s *session, rcpt string) (string, firstRcpt, *Result, []verdict.Verdict, error) {
	sender, first, fail, facts, fault := v.mailOnce(ctx, d, host, t, s, rcpt)
	if len(facts) > 1 {
		facts = facts[len(facts)-1:]
	}
	return sender, first, fail, facts, fault
}

func (v *Verifier) mailOnce(ctx context.Context, d *destination.Dest, host string, t Target, s *session, rcpt string) (string, firstRcpt, *Result, []verdict.Verdict, error) {
	var facts []verdict.Verdict
	sender := t.Sender
	wasted := 0
	for {
		rep, rrep, sent, err := s.c.MailRcpt(ctx, sender, rcpt)
		atRcpt := rep.Class() == 2 && err == nil && rrep != nil && senderRefused(*rrep)
		if rep.Class() == 2 && !atRcpt {
			if rrep == nil {
				rrep = &smtpprobe.Reply{}
			}
			return sender, firstRcpt{rep: *rrep, err: err, wasted: wasted}, nil, facts, nil
		}
		if atRcpt {
			rep = *rrep // the refusal, given at the RCPT
		}
		if sent {
			wasted++
			s.rcpts++
		}
		if err != nil {
			r, fault := v.failErr(t, host, err)
			r.Rcpts = wasted
			return "", firstRcpt{}, &r, facts, fault
		}
		if rep.Class() == 4 {
			noteReply(d, rep)
			r := v.fail(t, host, verdict.TempFail, verdict.ReasonDeferred, rep)
			r.Rcpts = wasted
			return "", firstRcpt{}, &r, facts, faultIf421(rep)
		}
		reason := verdict.ReasonSenderRejected
		if sender == "" {
			reason = verdict.ReasonNullSenderRejected
		}
		f := v.fact(t, host, kvkey.FactAccess, verdict.Unverifiable, reason, rep)
		f.Sender = sender
		facts = append(facts, f)
		if t.FallbackSender == "" || sender == t.FallbackSender {
			r := v.fail(t, host, verdict.Unverifiable, reason, rep)
			r.Address.Sender = sender
			r.Rcpts = wasted
			return "", firstRcpt{}, &r, facts, nil
		}
		sender = t.FallbackSender
		if !s.c.Reset(ctx) {
			s.c.Close()
			ns, fail, fault := v.open(ctx, d, host, t, false, nil)
			if fail != nil {
				fail.Rcpts = wasted
				return "", firstRcpt{}, fail, facts, fault
			}
			*s = *ns
		}
	}
}

// transaction runs MAIL FROM, the catch-all check and the real RCPT on s.
// keep says whether the connection is fit for reuse; fault whether the
// failure counts against the host's breaker (see failErr). The first RCPT (the
// random address, or the real one when the domain is known not to be a
// catch-all) goes with MAIL FROM.
func (v *Verifier) transaction(ctx context.Context, d *destination.Dest, host string, t Target, s *session) (res Result, keep bool, fault error) {
	// The random address only when it is asked: its HMAC cost 3% of a
	// prober's CPU on domains known not to be catch-alls.
	var random string
	first := t.Address.String()
	if !t.SkipRandom {
		random = RandomLocal(v.cfg.RandomSecret, t.Address.Domain) + "@" + t.Address.Domain
		first = random
	}
	asked := time.Now()
	sender, firstRep, fail, facts, fault := v.mail(ctx, d, host, t, s, first)
	s.refusedSlowly(firstRep.rep, time.Since(asked), v.cfg.TarpitAfter)
	if fail != nil {
		fail.Facts = append(fail.Facts, facts...)
		return *fail, false, fault
	}
	rcpts := firstRep.wasted
	if !t.SkipRandom {
		rep, err := firstRep.rep, firstRep.err
		rcpts++
		s.rcpts++
		if err == nil && tooManyRecipients(rep) {
			// As for the real RCPT: no answer about the address.
			var fail *Result
			if rep, fail, fault, err = v.askAgainFresh(ctx, d, host, t, s, sender, facts, &rcpts, random, rep); fail != nil {
				return *fail, false, fault
			}
		}
		if err != nil {
			r, fault := v.failErr(t, host, err)
			r.Rcpts = rcpts
			return r, false, fault
		}
		c := classify.Rcpt(rep)
		t.Trace.Add(host, "*", "random address: %s (%s)", c.Status, c.Reason)
		switch {
		case c.Status == verdict.Valid:
			r := v.result(t, host, sender, verdict.CatchAll, verdict.ReasonRandomAccepted, rep)
			r.Facts = append(facts, v.fact(t, host, kvkey.FactCatchAll, verdict.CatchAll, verdict.ReasonRandomAccepted, rep))
			r.Rcpts = rcpts
			return r, true, nil
		case c.Status == verdict.Invalid:
			facts = append(facts, v.fact(t, host, kvkey.FactCatchAll, verdict.NotCatchAll, verdict.ReasonRandomRefused, rep))
		case c.Status == verdict.TempFail && (throttling(rep) || rep.Code == 421):
			// The host limits us: back off, ask nothing more now.
			noteReply(d, rep)
			r := v.result(t, host, sender, verdict.TempFail, verdict.ReasonRandomDeferred, rep)
			r.Facts, r.Rcpts = facts, rcpts
			return r, false, faultIf421(rep)
		case c.Reason == verdict.ReasonRcptProtocol:
			r := v.result(t, host, sender, c.Status, c.Reason, rep)
			r.Facts, r.Rcpts = facts, rcpts
			return r, false, nil
		default:
			// Inconclusive: greylisting (which defers every new triplet,
			// the random address's too) or a reply that says nothing of
			// the domain (524 5.2.4, a refusal). No catch-all fact; the
			// real RCPT is asked in the same session, so that a
			// greylister lets it through one round earlier and such a
			// domain is verified at all.
			noteReply(d, rep)
			t.Trace.Add(host, "*", "random address inconclusive: asking the real one, no catch-all fact")
		}
		if fail, fault := v.nextTransaction(ctx, d, host, t, s, sender, facts, rcpts); fail != nil {
			return *fail, false, fault
		}
	}
	var rep smtpprobe.Reply
	var err error
	if t.SkipRandom {
		rep, err = firstRep.rep, firstRep.err
	} else {
		asked := time.Now()
		rep, err = s.c.Rcpt(ctx, t.Address.String())
		s.refusedSlowly(rep, time.Since(asked), v.cfg.TarpitAfter)
	}
	rcpts++
	s.rcpts++
	if err == nil && tooManyRecipients(rep) {
		var fail *Result
		if rep, fail, fault, err = v.askAgainFresh(ctx, d, host, t, s, sender, facts, &rcpts, t.Address.String(), rep); fail != nil {
			return *fail, false, fault
		}
	}
	if err != nil {
		r, fault := v.failErr(t, host, err)
		r.Facts, r.Rcpts = facts, rcpts
		return r, false, fault
	}
	noteReply(d, rep)
	c := classify.Rcpt(rep)
	t.Trace.Add(host, "*", "RCPT reply classified %s (%s)", c.Status, c.Reason)
	if c.Status == verdict.Invalid {
		refused, fact := v.control(ctx, d, host, t, s, sender, &rcpts)
		facts = append(facts, fact...)
		if refused || len(fact) > 0 {
			d.RefusesVerifier(t.Address.Domain, refused)
		}
		if refused {
			t.Trace.Add(host, "*", "postmaster refused: the destination refuses the verifier, not the user")
			c = classify.Result{Status: verdict.Unverifiable, Reason: verdict.ReasonRefusesVerifier}
		}
	}
	r := v.result(t, host, sender, c.Status, c.Reason, rep)
	r.Facts, r.Rcpts = facts, rcpts
	return r, rep.Code != 421 && !s.c.Broken() && !s.tarpit, faultIf421(rep)
}

// nextTransaction readies s for another transaction with sender. Some
// servers take one recipient per transaction, some drop the connection
// after an unknown one: RSET, or reconnect (also when one more RSET would
// pass the host's non-mail command limit).
func (v *Verifier) nextTransaction(ctx context.Context, d *destination.Dest, host string, t Target, s *session, sender string, facts []verdict.Verdict, rcpts int) (*Result, error) {
	switch {
	case s.tarpit || s.c.NonMail()+1 > d.MaxNonMail():
		s.c.Quit(ctx)
		return v.reopen(ctx, d, host, t, s, sender, facts, rcpts)
	case !s.c.Reset(ctx):
		s.c.Close()
		d.DisableReuse()
		return v.reopen(ctx, d, host, t, s, sender, facts, rcpts)
	}
	return v.mailAgain(ctx, host, t, s, sender, facts, rcpts)
}

// askAgainFresh asks RCPT rcpt again, once, on a fresh connection after
// a 452 4.5.3 (rep): not a verdict, the connection carried more recipients
// than the host takes. On failure to reconnect it returns the result to
// report.
func (v *Verifier) askAgainFresh(ctx context.Context, d *destination.Dest, host string, t Target, s *session, sender string, facts []verdict.Verdict, rcpts *int, rcpt string, rep smtpprobe.Reply) (again smtpprobe.Reply, fail *Result, fault, err error) {
	d.Throttled(rep.String())
	s.c.Quit(ctx)
	if fail, fault := v.reopen(ctx, d, host, t, s, sender, facts, *rcpts); fail != nil {
		return smtpprobe.Reply{}, fail, fault, nil
	}
	again, err = s.c.Rcpt(ctx, rcpt)
	*rcpts++
	s.rcpts++
	return again, nil, nil, err
}

// reopen replaces s (closed by the caller) with a new connection past
// MAIL FROM. On failure it returns the result to report.
func (v *Verifier) reopen(ctx context.Context, d *destination.Dest, host string, t Target, s *session, sender string, facts []verdict.Verdict, rcpts int) (*Result, error) {
	ns, fail, fault := v.open(ctx, d, host, t, false, nil)
	if fail != nil {
		fail.Facts = append(fail.Facts, facts...)
		fail.Rcpts = rcpts
		return fail, fault
	}
	*s = *ns
	return v.mailAgain(ctx, host, t, s, sender, facts, rcpts)
}

// mailAgain starts a new transaction on s with sender.
func (v *Verifier) mailAgain(ctx context.Context, host string, t Target, s *session, sender string, facts []verdict.Verdict, rcpts int) (*Result, error) {
	rep, err := s.c.Mail(ctx, sender)
	if err == nil && rep.Class() == 2 {
		return nil, nil
	}
	var r Result
	var fault error
	if err != nil {
		r, fault = v.failErr(t, host, err)
	} else {
		r = v.fail(t, host, verdict.TempFail, verdict.ReasonDeferred, rep)
	}
	r.Facts, r.Rcpts = facts, rcpts
	return &r, fault
}
