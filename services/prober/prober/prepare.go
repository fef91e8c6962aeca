package prober

// Where a job goes: its route or the MX hosts, and what a failed MX lookup means.

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/callout-mail/callout/services/prober/callout"
	"github.com/callout-mail/callout/services/prober/resolve"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// prepare finds the hosts to ask: the ingest puts its routing decision in
// the job; jobs without one (refresh jobs) use the policy table. A failed
// MX lookup is a result at once. An MX list is cut to MX_LIMIT hosts (like
// Postfix's smtp_mx_address_limit), so a domain with 50 dead MX hosts
// cannot burn the whole budget.
func (s *Service) prepare(ctx context.Context, job wire.ProbeJob, addr address.Address, tr *smtpprobe.Transcript) (callout.Target, *callout.Result) {
	route, sender, fallback, control := s.routing(job, addr)
	target := callout.Target{Address: addr, SkipRandom: job.SkipRandom, Sender: sender, FallbackSender: fallback, Control: control, Trace: tr}
	if job.Purpose != verdict.Sender && !(domains.Policy{Route: route}).UsesMX() {
		target.Hosts = route
		tr.Add("", "*", "hosts by the domain's route: %s", strings.Join(route, " "))
	} else {
		hosts, err := s.resolver.MX(ctx, addr.Domain)
		if err != nil {
			tr.Add("", "*", "MX lookup of %s failed: %v", addr.Domain, err)
			r := s.dnsResult(addr, job.Purpose, err)
			return target, &r
		}
		target.Hosts = hosts[:min(len(hosts), s.cfg.MXLimit)]
		tr.Add("", "*", "MX lookup of %s: %s (at most %d tried)", addr.Domain, strings.Join(hosts, " "), s.cfg.MXLimit)
	}
	tr.Add("", "*", "MAIL FROM sender %q, fallback %q; catch-all check: %v", sender, fallback, !job.SkipRandom)
	if len(target.Hosts) == 0 {
		r := s.verifier.Verify(ctx, target) // no destination: a tempfail
		return target, &r
	}
	return target, nil
}

// routing is a job's route, probe senders and control probe: the
// ingest's, written into the job, or for a job without them (a
// cachekeeper's refresh) the policy table's.
func (s *Service) routing(job wire.ProbeJob, addr address.Address) (route []string, sender, fallback, control string) {
	route, sender, fallback, control = job.Route, job.Sender, job.FallbackSender, job.Control
	if !job.Routed {
		if pol, known := s.domains.Lookup(addr.Domain); known {
			route, sender, fallback = pol.Route, pol.Sender, pol.FallbackSender
			if pol.ControlProbe == "off" {
				control = wire.ControlOff
			}
		}
	}
	return route, sender, fallback, control
}

// dnsResult turns a failed MX lookup into a verdict. A sender domain that
// publishes a null MX says it takes no mail: a definite invalid, refused
// with RFC 7505's 550 5.7.27. One that DNS says does not exist may be
// newly registered: deferred (a 4xx the MTA retries, as Postfix's
// reject_unknown_sender_domain does for a negative answer), or refused
// with 550 5.1.8 when SENDER_NXDOMAIN says so. For a recipient domain we
// serve, either means our set-up is wrong, not the user: unverifiable,
// never a reject.
func (s *Service) dnsResult(addr address.Address, purpose verdict.Purpose, err error) callout.Result {
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: addr.String(), Domain: addr.Domain,
		Text: verdict.CleanText(err.Error()), CheckedAt: time.Now(), Source: verdict.SourceProbe}
	switch {
	case errors.Is(err, resolve.ErrNullMX) && purpose == verdict.Sender:
		v.Status, v.Reason, v.Code, v.Enhanced = verdict.Invalid, verdict.ReasonNullMX, 550, verdict.EnhancedNullMX
	case errors.Is(err, resolve.ErrNoDomain) && purpose == verdict.Sender && s.cfg.SenderNXDomain == "reject":
		v.Status, v.Reason, v.Code, v.Enhanced = verdict.Invalid, verdict.ReasonNoDomain, 550, "5.1.8"
	case errors.Is(err, resolve.ErrNoDomain) && purpose == verdict.Sender:
		// Invalid but not definite (a 4xx): deferred, never stored.
		v.Status, v.Reason, v.Code, v.Enhanced = verdict.Invalid, verdict.ReasonNoDomain, 450, "4.1.8"
	case errors.Is(err, resolve.ErrNoMail):
		v.Status, v.Reason = verdict.Unverifiable, verdict.ReasonNoMail
	default:
		v.Status, v.Reason = verdict.TempFail, verdict.ReasonDNS
	}
	return callout.Result{Address: v}
}
