package callout

// The control probe: RCPT postmaster, before a user unknown is taken as one.

import (
	"context"

	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// control is the control probe, asked when a user unknown needs it: RCPT
// postmaster@domain, which RFC 5321 requires to exist. A destination that
// refuses it too is refusing the verifier (a relay refusal worded as
// "Invalid recipient", a block), so its 5xx says nothing of the user.
// What is known already (the job's Control) is not asked again: one RCPT
// per domain per fact TTL at most, and none for a domain that never says
// user unknown. A 4xx or a failure gives no fact, and the user unknown
// stands, as it did before this probe.
func (v *Verifier) control(ctx context.Context, d *destination.Dest, host string, t Target, s *session, sender string, rcpts *int) (refused bool, facts []verdict.Verdict) {
	switch t.Control {
	case wire.ControlRefused:
		return true, nil
	case wire.ControlAccepted, wire.ControlOff:
		return false, nil
	}
	if fail, _ := v.nextTransaction(ctx, d, host, t, s, sender, nil, *rcpts); fail != nil {
		return false, nil
	}
	rep, err := s.c.Rcpt(ctx, "postmaster@"+t.Address.Domain)
	*rcpts++
	s.rcpts++
	if err != nil {
		return false, nil
	}
	t.Trace.Add(host, "*", "control probe: postmaster %d %s", rep.Code, rep.Enhanced)
	switch rep.Class() {
	case 2:
		f := v.fact(t, host, kvkey.FactControl, verdict.Valid, verdict.ReasonControlAccepted, rep)
		f.Sender = sender
		return false, []verdict.Verdict{f}
	case 5:
		f := v.fact(t, host, kvkey.FactControl, verdict.Invalid, verdict.ReasonRefusesVerifier, rep)
		f.Sender = sender
		return true, []verdict.Verdict{f}
	}
	return false, nil
}
