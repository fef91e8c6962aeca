package callout

// A connection to one host: open (an idle one, or dial past banner and EHLO), the dialogue on it, and its end (kept after RSET, or QUIT).

import (
	"context"
	"errors"
	"time"

	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
)

// session is one connection in use.
type session struct {
	c     *smtpprobe.Conn
	rcpts int
	// tarpit: a refusal came slowly on this connection. Tarpits hold each
	// further refusal longer (often twice), so the next step of the
	// callout takes a fresh connection, and this one is not kept.
	tarpit bool
}

// refusedSlowly notes on s a 5xx reply that took longer than after.
func (s *session) refusedSlowly(rep smtpprobe.Reply, took, after time.Duration) {
	if rep.Class() == 5 && took > after {
		s.tarpit = true
	}
}

// open returns a connection ready for MAIL FROM: an idle one, or a new one
// past banner and EHLO. On failure it returns the result to report and
// its fault (see failErr).
func (v *Verifier) open(ctx context.Context, d *destination.Dest, host string, t Target, reuse bool, slot *destination.Slot) (*session, *Result, error) {
	// A kept connection comes with its slot; one not to be reused is closed
	// before another is opened in its slot.
	if c, n := slot.Conn(); c != nil {
		if reuse {
			return &session{c: c, rcpts: n}, nil, nil
		}
		c.Quit(ctx)
	}
	cfg := v.cfg.SMTP
	cfg.Trace = t.Trace
	if cfg.StartTLS && d.TLSOff() {
		cfg.StartTLS = false
		t.Trace.Add(host, "*", "plaintext: the host refused STARTTLS or failed its handshake lately")
	}
	s, fail, fault := v.dial(ctx, host, t, cfg)
	if fail != nil && fail.tlsFailed && !cfg.TLSVerify {
		// Opportunistic TLS that failed its handshake: the session state is
		// unknown, so a new connection carries on in plaintext, and the host
		// is spoken to in plaintext for a while. Verified TLS never falls back.
		d.NoTLS()
		cfg.StartTLS = false
		s, fail, fault = v.dial(ctx, host, t, cfg)
	}
	if s != nil && s.c.TLSRefused().Code != 0 {
		d.NoTLS()
	}
	if fail != nil {
		if a := fail.Address; a.Code != 0 {
			noteReply(d, smtpprobe.Reply{Code: a.Code, Enhanced: a.Enhanced, Lines: []string{a.Text}})
		}
		return nil, &fail.Result, fault
	}
	return s, nil, nil
}

// dialFail is a failed dial with what the caller needs to decide on a retry.
type dialFail struct {
	Result
	tlsFailed bool
}

func (v *Verifier) dial(ctx context.Context, host string, t Target, cfg smtpprobe.Config) (*session, *dialFail, error) {
	c, banner, err := smtpprobe.Dial(ctx, host, cfg)
	if err != nil {
		r, fault := v.failErr(t, host, err)
		return nil, &dialFail{Result: r}, fault
	}
	if c == nil {
		return nil, &dialFail{Result: *v.refusedReply(t, host, banner, verdict.ReasonRefusedBanner)}, faultIf421(banner)
	}
	rep, err := c.Hello(ctx)
	if err != nil {
		c.Close()
		r, fault := v.failErr(t, host, err)
		return nil, &dialFail{Result: r, tlsFailed: errors.Is(err, smtpprobe.ErrTLS)}, fault
	}
	if rep.Class() != 2 {
		c.Quit(ctx)
		return nil, &dialFail{Result: *v.refusedReply(t, host, rep, verdict.ReasonRefusedHelo)}, faultIf421(rep)
	}
	return &session{c: c}, nil, nil
}

// refusedReply is the result of a non-2xx banner or HELO: 4xx is
// temporary; 5xx means this host refuses us, a domain fact.
func (v *Verifier) refusedReply(t Target, host string, rep smtpprobe.Reply, reason verdict.Reason) *Result {
	if rep.Class() == 4 {
		r := v.fail(t, host, verdict.TempFail, verdict.ReasonDeferred, rep)
		return &r
	}
	r := v.fail(t, host, verdict.Unverifiable, reason, rep)
	r.Facts = append(r.Facts, v.fact(t, host, kvkey.FactAccess, verdict.Unverifiable, reason, rep))
	return &r
}

// dialogue runs the callout on one host's connection; finish ends the
// connection (RSET to keep it, or QUIT) once called. A traced callout ends
// it before it returns, so that its transcript shows the whole dialogue.
// err is nil when the host answered; it wraps errNextHost when the host
// could not be spoken to, and destination.ErrUnhealthy when the failure
// counts against its breaker.
func (v *Verifier) dialogue(ctx context.Context, d *destination.Dest, host string, t Target, slot *destination.Slot) (res Result, finish func(), err error) {
	finish = func() {}
	ctx, cancel := context.WithTimeout(ctx, v.cfg.DialogueTimeout)
	defer cancel()
	// A traced callout opens its own connection and keeps none: the
	// transcript shows the whole dialogue, and no later callout records into it.
	s, fail, fault := v.open(ctx, d, host, t, d.ReuseEnabled() && t.Trace == nil, slot)
	if fail != nil {
		return *fail, finish, errors.Join(errNextHost, fault)
	}
	reused := s.rcpts > 0
	res, keep, fault := v.transaction(ctx, d, host, t, s)
	if !keep && reused && s.c.Broken() && res.Address.Status == verdict.TempFail && res.Rcpts == 0 {
		// The idle connection had died under us, or failed the RSET sent
		// ahead of this callout: close it, one fresh try. A failed RSET
		// turns reuse off for the host, wherever it was sent.
		if s.c.ResetFailed() {
			d.DisableReuse()
		}
		s.c.Close()
		s, fail, fault = v.open(ctx, d, host, t, false, slot)
		if fail != nil {
			return *fail, finish, errors.Join(errNextHost, fault)
		}
		res, keep, fault = v.transaction(ctx, d, host, t, s)
		reused = false
	}
	res.Reused = reused
	keep = keep && t.Trace == nil
	finish = func() {
		// Not the dialogue's deadline, which has ended by now: the RSET or
		// QUIT, if any, is bounded by its own command timeout.
		v.finish(context.WithoutCancel(ctx), d, s, keep, slot)
	}
	if t.Trace != nil {
		finish()
		finish = func() {}
	}
	return res, finish, fault
}

// finish keeps the connection, with its slot, after RSET, or closes it.
func (v *Verifier) finish(ctx context.Context, d *destination.Dest, s *session, keep bool, slot *destination.Slot) {
	if s.c.Broken() {
		s.c.Close()
		return
	}
	// Reuse only within what real servers tolerate: this RSET and the next
	// callout's two (after the random RCPT, and at its end) stay under the
	// host's non-mail command limit.
	if keep && d.ReuseEnabled() && s.c.NonMail()+3 <= d.MaxNonMail() {
		// With PIPELINING the RSET leaves with the next callout's MAIL
		// and RCPT, in one write: a kept connection costs no round trip
		// of its own. Without, it is sent now, as Exim and Postfix do.
		if s.c.ResetLater() || s.c.Reset(ctx) {
			d.Keep(ctx, s.c, s.rcpts, slot)
			return
		}
		d.DisableReuse()
		s.c.Close()
		return
	}
	s.c.Quit(ctx)
	if keep {
		d.KeepSlot(slot) // the connection is spent, not its slot (KeepSlot checks that reuse is on)
	}
}
