package callout

// Replies: what they say of the host, and the results and facts made of them.

import (
	"errors"
	"fmt"
	"strings"

	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/verdict"
)

// throttling reports a reply that says the host is overloaded or limits
// us: 421 at any stage, 451 4.7.x (Microsoft 365's 4.7.500-699 among
// them), 450 4.7.1 "too many ...", 452 4.5.3 too many recipients.
func throttling(rep smtpprobe.Reply) bool {
	switch {
	case rep.Code == 421:
		return true
	case rep.Code == 451 && strings.HasPrefix(rep.Enhanced, "4.7."):
		return true
	case rep.Code == 450 && rep.Enhanced == "4.7.1" && strings.Contains(strings.ToLower(rep.Text()), "too many"):
		return true
	}
	return tooManyRecipients(rep)
}

// senderRefused reports an RCPT reply that refuses the sender, not the
// recipient: Postfix's "Sender address rejected" (smtpd_delay_reject=yes
// defers sender restrictions to RCPT), or x.1.7 / x.1.8 (bad sender's
// mailbox or system address).
func senderRefused(rep smtpprobe.Reply) bool {
	if rep.Class() != 5 {
		return false
	}
	return rep.Enhanced == "5.1.7" || rep.Enhanced == "5.1.8" || strings.Contains(strings.ToLower(rep.Text()), "sender address rejected")
}

func tooManyRecipients(rep smtpprobe.Reply) bool {
	return rep.Code == 452 && rep.Enhanced == "4.5.3"
}

// noteReply tells the host's state about a reply.
func noteReply(d *destination.Dest, rep smtpprobe.Reply) {
	if throttling(rep) {
		d.Throttled(rep.String())
		return
	}
	d.Replied(rep.String())
}

func (v *Verifier) result(t Target, host, sender string, st verdict.Status, reason verdict.Reason, rep smtpprobe.Reply) Result {
	r := v.fail(t, host, st, reason, rep)
	r.Address.Sender = sender
	return r
}

func (v *Verifier) fail(t Target, host string, st verdict.Status, reason verdict.Reason, rep smtpprobe.Reply) Result {
	return Result{Address: verdict.Verdict{
		Kind: verdict.KindAddress, Address: t.Address.String(), Domain: t.Address.Domain,
		Sender: t.Sender, Status: st, Reason: reason,
		Code: rep.Code, Enhanced: rep.Enhanced, Text: verdict.CleanText(rep.Text()),
		Host: host, CheckedAt: v.now(), Source: verdict.SourceProbe,
	}}
}

func (v *Verifier) fact(t Target, host, fact string, st verdict.Status, reason verdict.Reason, rep smtpprobe.Reply) verdict.Verdict {
	return verdict.Verdict{
		Kind: verdict.KindDomain, Domain: t.Address.Domain, Fact: fact, Sender: t.Sender,
		Status: st, Reason: reason, Code: rep.Code, Enhanced: rep.Enhanced,
		Text: verdict.CleanText(rep.Text()), Host: host, CheckedAt: v.now(), Source: verdict.SourceProbe,
	}
}

// failErr turns a network or protocol error into a tempfail and its
// fault: timeouts and refused connections count against the host's
// breaker (the fault wraps destination.ErrUnhealthy); other errors do not
// (nil).
func (v *Verifier) failErr(t Target, host string, err error) (Result, error) {
	var se *smtpprobe.Error
	reason, fault := verdict.ReasonProtocolError, error(nil)
	if errors.As(err, &se) {
		switch {
		case se.Timeout():
			reason, fault = verdict.ReasonTimeout, fmt.Errorf("%w: %w", destination.ErrUnhealthy, err)
		case se.Stage == smtpprobe.StageConnect:
			reason, fault = verdict.ReasonConnect, fmt.Errorf("%w: %w", destination.ErrUnhealthy, err)
		}
	}
	r := v.fail(t, host, verdict.TempFail, reason, smtpprobe.Reply{})
	r.Address.Text = verdict.CleanText(err.Error())
	return r, fault
}

// faultIf421 is the fault of a reply: a 421 (the host closes the
// connection, overloaded or shutting down) counts against its breaker.
func faultIf421(rep smtpprobe.Reply) error {
	if rep.Code == 421 {
		return fmt.Errorf("%w: %s", destination.ErrUnhealthy, rep.String())
	}
	return nil
}

// errNextHost marks a host that could not be spoken to (unreachable, or
// refusing at banner or EHLO): it said nothing about the address, so the
// next host is tried.
var errNextHost = errors.New("no dialogue with this host")
