// Package callout carries out one address verification against a list of
// destination hosts: the catch-all check with a stable random local part,
// the real RCPT, sender fallback, failover between hosts, all within one
// time budget and behind each host's breaker and limits.
package callout

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"strings"
	"time"

	"github.com/callout-mail/callout/services/prober/classify"
	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Reasons for verdicts that come from the dialogue rather than a RCPT reply.
const (
	ReasonConnect            = "connect_failed"
	ReasonTimeout            = "timeout"
	ReasonProtocol           = "protocol_error"
	ReasonBreakerOpen        = "breaker_open"
	ReasonRefusedBanner      = "refused_at_banner"
	ReasonRefusedHelo        = "refused_at_helo"
	ReasonNullSenderRejected = verdict.ReasonNullSenderRejected
	ReasonSenderRejected     = verdict.ReasonSenderRejected
	ReasonDeferred           = "deferred"
	ReasonRandomAccepted     = "random_accepted"
	ReasonRandomRefused      = "random_refused"
	ReasonRandomDeferred     = "random_deferred"
	// ReasonRefusesVerifier: the destination refused postmaster too (the
	// control probe), so its 5xx is a refusal of the verifier.
	ReasonRefusesVerifier = "destination_refuses_verifier"
	ReasonControlAccepted = "postmaster_accepted"
	ReasonNoDestination   = "no_destination"
)

// Config is the verifier's settings.
type Config struct {
	SMTP            smtpprobe.Config
	DialogueTimeout time.Duration // one host, connect to QUIT
	Budget          time.Duration // all hosts of one callout
	RandomSecret    []byte        // derives each domain's random local part
	// TarpitAfter is how long a refused RCPT may take before its
	// connection counts as a tarpit's (default 2 s).
	TarpitAfter time.Duration
}

// Verifier runs callouts.
type Verifier struct {
	cfg  Config
	pool *destination.Pool
	now  func() time.Time
}

// New returns a verifier using pool for per-host state.
func New(cfg Config, pool *destination.Pool) *Verifier {
	if cfg.DialogueTimeout == 0 {
		cfg.DialogueTimeout = 60 * time.Second
	}
	if cfg.Budget == 0 {
		cfg.Budget = 120 * time.Second
	}
	if cfg.TarpitAfter == 0 {
		cfg.TarpitAfter = 2 * time.Second
	}
	return &Verifier{cfg: cfg, pool: pool, now: time.Now}
}

// Target is one callout to make.
type Target struct {
	Address        address.Address
	Hosts          []string              // host:port in preference order
	Sender         string                // MAIL FROM; "" is <>
	FallbackSender string                // used when the sender is refused
	SkipRandom     bool                  // the domain is known not to be a catch-all
	Control        string                // what is known of the control probe (wire.Control*; "": nothing)
	Trace          *smtpprobe.Transcript // when set, the dialogue is recorded
}

// Result is the address verdict and the domain facts learnt on the way.
type Result struct {
	Address verdict.Verdict
	Facts   []verdict.Verdict
	Rcpts   int  // RCPT commands sent
	Reused  bool // whether an open connection served it
}

// Started stamps every verdict of r with the callout's start: a verdict
// is as old as its callout, so that a flush between start and finish wins
// over it (see the cache).
func (r *Result) Started(at time.Time) {
	r.Address.CheckedAt = at
	for i := range r.Facts {
		r.Facts[i].CheckedAt = at
	}
}

// RandomLocal is the catch-all probe local part of domain: it looks random
// but stays the same for a domain, so a greylister sees it again.
func RandomLocal(secret []byte, domain string) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(domain))
	s := base32.StdEncoding.EncodeToString(m.Sum(nil)[:10])
	return "x" + strings.ToLower(s)
}

// Verify runs the callout. It always returns a verdict; it never returns
// Invalid unless a destination said 5xx "user unknown" to this address.
func (v *Verifier) Verify(ctx context.Context, t Target) Result {
	return v.VerifyHeld(ctx, t, nil)
}

// VerifyHeld is Verify with the first host's slot already taken: the
// scheduler takes it without waiting, so that a job whose host is busy
// waits without a worker. The slot is given back (or kept with its
// connection for reuse) when the callout ends.
func (v *Verifier) VerifyHeld(ctx context.Context, t Target, slot *destination.Slot) Result {
	res, end := v.VerifyThen(ctx, t, slot)
	end()
	return res
}

// VerifyThen is VerifyHeld that returns as soon as the result is known:
// end (to be called once) then ends the last host's connection (RSET to
// keep it, or QUIT) and gives its slot back, so that the verdict need not
// wait for the destination's reply to RSET or QUIT.
func (v *Verifier) VerifyThen(ctx context.Context, t Target, slot *destination.Slot) (Result, func()) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.Budget)
	res := v.fail(t, "", verdict.TempFail, ReasonNoDestination, smtpprobe.Reply{})
	end := func() {}
	for i, host := range t.Hosts {
		if ctx.Err() != nil {
			break
		}
		var held *destination.Slot
		if i == 0 {
			held = slot
		}
		t.Trace.Add(host, "*", "host %d of %d", i+1, len(t.Hosts))
		r, next, hostEnd := v.onHost(ctx, host, t, held)
		t.Trace.Add(host, "*", "result: %s (%s)", r.Address.Status, r.Address.Reason)
		res = r
		if !next {
			end = hostEnd
			break
		}
		hostEnd()
	}
	return res, func() {
		end()
		slot.Release()
		cancel()
	}
}

// onHost runs the dialogue on one host; next says whether the next host
// should be tried; end ends its connection and gives back a slot taken
// here. An open breaker answers at once, before any wait.
func (v *Verifier) onHost(ctx context.Context, host string, t Target, held *destination.Slot) (res Result, next bool, end func()) {
	end = func() {}
	d := v.pool.Get(host)
	if d.Open() {
		t.Trace.Add(host, "*", "breaker open: not asked")
		return v.fail(t, host, verdict.TempFail, ReasonBreakerOpen, smtpprobe.Reply{}), true, end
	}
	if held == nil {
		var err error
		if held, err = d.Acquire(ctx, t.Trace == nil); err != nil {
			return v.fail(t, host, verdict.TempFail, ReasonTimeout, smtpprobe.Reply{}), false, end
		}
		own := held
		end = own.Release
	}
	err := d.Do(func() error {
		var unhealthy bool
		var finish func()
		start := time.Now()
		res, next, unhealthy, finish = v.dialogue(ctx, d, host, t, held)
		d.Observe(time.Since(start))
		release := end
		end = func() { finish(); release() }
		if unhealthy {
			return destination.ErrUnhealthy
		}
		return nil
	})
	if errors.Is(err, destination.ErrOpen) {
		return v.fail(t, host, verdict.TempFail, ReasonBreakerOpen, smtpprobe.Reply{}), true, end
	}
	return res, next, end
}

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
// past banner and EHLO. On failure it returns the result to report.
func (v *Verifier) open(ctx context.Context, d *destination.Dest, host string, t Target, reuse bool, slot *destination.Slot) (*session, *Result, bool, bool) {
	// A kept connection comes with its slot; one not to be reused is closed
	// before another is opened in its slot.
	if c, n := slot.Conn(); c != nil {
		if reuse {
			return &session{c: c, rcpts: n}, nil, false, false
		}
		c.Quit(ctx)
	}
	cfg := v.cfg.SMTP
	cfg.Trace = t.Trace
	if cfg.StartTLS && d.TLSOff() {
		cfg.StartTLS = false
		t.Trace.Add(host, "*", "plaintext: the host refused STARTTLS or failed its handshake lately")
	}
	s, fail, next, unhealthy := v.dial(ctx, host, t, cfg)
	if fail != nil && fail.tlsFailed && !cfg.TLSVerify {
		// Opportunistic TLS that failed its handshake: the session state is
		// unknown, so a new connection carries on in plaintext, and the host
		// is spoken to in plaintext for a while. Verified TLS never falls back.
		d.NoTLS()
		cfg.StartTLS = false
		s, fail, next, unhealthy = v.dial(ctx, host, t, cfg)
	}
	if s != nil && s.c.TLSRefused().Code != 0 {
		d.NoTLS()
	}
	if fail != nil {
		if a := fail.Address; a.Code != 0 {
			noteReply(d, smtpprobe.Reply{Code: a.Code, Enhanced: a.Enhanced, Lines: []string{a.Text}})
		}
		return nil, &fail.Result, next, unhealthy
	}
	return s, nil, false, false
}

// dialFail is a failed dial with what the caller needs to decide on a retry.
type dialFail struct {
	Result
	tlsFailed bool
}

func (v *Verifier) dial(ctx context.Context, host string, t Target, cfg smtpprobe.Config) (*session, *dialFail, bool, bool) {
	c, banner, err := smtpprobe.Dial(ctx, host, cfg)
	if err != nil {
		r, unhealthy := v.failErr(t, host, err)
		return nil, &dialFail{Result: r}, true, unhealthy
	}
	if c == nil {
		return nil, &dialFail{Result: *v.refusedReply(t, host, banner, ReasonRefusedBanner)}, true, banner.Code == 421
	}
	rep, err := c.Hello(ctx)
	if err != nil {
		c.Close()
		r, unhealthy := v.failErr(t, host, err)
		return nil, &dialFail{Result: r, tlsFailed: errors.Is(err, smtpprobe.ErrTLS)}, true, unhealthy
	}
	if rep.Class() != 2 {
		c.Quit(ctx)
		return nil, &dialFail{Result: *v.refusedReply(t, host, rep, ReasonRefusedHelo)}, true, rep.Code == 421
	}
	return &session{c: c}, nil, false, false
}

// refusedReply is the result of a non-2xx banner or HELO: 4xx is
// temporary; 5xx means this host refuses us, a domain fact.
func (v *Verifier) refusedReply(t Target, host string, rep smtpprobe.Reply, reason string) *Result {
	if rep.Class() == 4 {
		r := v.fail(t, host, verdict.TempFail, ReasonDeferred, rep)
		return &r
	}
	r := v.fail(t, host, verdict.Unverifiable, reason, rep)
	r.Facts = append(r.Facts, v.fact(t, host, kvkey.FactAccess, verdict.Unverifiable, reason, rep))
	return &r
}

// dialogue runs the callout on one host's connection; finish ends the
// connection (RSET to keep it, or QUIT) once called. A traced callout ends
// it before it returns, so that its transcript shows the whole dialogue.
func (v *Verifier) dialogue(ctx context.Context, d *destination.Dest, host string, t Target, slot *destination.Slot) (res Result, next, unhealthy bool, finish func()) {
	finish = func() {}
	ctx, cancel := context.WithTimeout(ctx, v.cfg.DialogueTimeout)
	defer cancel()
	// A traced callout opens its own connection and keeps none: the
	// transcript shows the whole dialogue, and no later callout records into it.
	s, fail, next, unhealthy := v.open(ctx, d, host, t, d.ReuseEnabled() && t.Trace == nil, slot)
	if fail != nil {
		return *fail, next, unhealthy, finish
	}
	reused := s.rcpts > 0
	res, next, unhealthy, keep := v.transaction(ctx, d, host, t, s)
	if !keep && reused && s.c.Broken() && res.Address.Status == verdict.TempFail && res.Rcpts == 0 {
		// The idle connection had died under us, or failed the RSET sent
		// ahead of this callout: close it, one fresh try. A failed RSET
		// turns reuse off for the host, wherever it was sent.
		if s.c.ResetFailed() {
			d.DisableReuse()
		}
		s.c.Close()
		s, fail, next, unhealthy = v.open(ctx, d, host, t, false, slot)
		if fail != nil {
			return *fail, next, unhealthy, finish
		}
		res, next, unhealthy, keep = v.transaction(ctx, d, host, t, s)
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
	return res, next, unhealthy, finish
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
func (v *Verifier) mail(ctx context.Context, d *destination.Dest, host string, t Target, s *session, rcpt string) (string, firstRcpt, *Result, []verdict.Verdict, bool) {
	sender, first, fail, facts, unhealthy := v.mailOnce(ctx, d, host, t, s, rcpt)
	if len(facts) > 1 {
		facts = facts[len(facts)-1:]
	}
	return sender, first, fail, facts, unhealthy
}

func (v *Verifier) mailOnce(ctx context.Context, d *destination.Dest, host string, t Target, s *session, rcpt string) (string, firstRcpt, *Result, []verdict.Verdict, bool) {
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
			return sender, firstRcpt{rep: *rrep, err: err, wasted: wasted}, nil, facts, false
		}
		if atRcpt {
			rep = *rrep // the refusal, given at the RCPT
		}
		if sent {
			wasted++
			s.rcpts++
		}
		if err != nil {
			r, unhealthy := v.failErr(t, host, err)
			r.Rcpts = wasted
			return "", firstRcpt{}, &r, facts, unhealthy
		}
		if rep.Class() == 4 {
			noteReply(d, rep)
			r := v.fail(t, host, verdict.TempFail, ReasonDeferred, rep)
			r.Rcpts = wasted
			return "", firstRcpt{}, &r, facts, rep.Code == 421
		}
		reason := ReasonSenderRejected
		if sender == "" {
			reason = ReasonNullSenderRejected
		}
		f := v.fact(t, host, kvkey.FactAccess, verdict.Unverifiable, reason, rep)
		f.Sender = sender
		facts = append(facts, f)
		if t.FallbackSender == "" || sender == t.FallbackSender {
			r := v.fail(t, host, verdict.Unverifiable, reason, rep)
			r.Address.Sender = sender
			r.Rcpts = wasted
			return "", firstRcpt{}, &r, facts, false
		}
		sender = t.FallbackSender
		if !s.c.Reset(ctx) {
			s.c.Close()
			ns, fail, _, unhealthy := v.open(ctx, d, host, t, false, nil)
			if fail != nil {
				fail.Rcpts = wasted
				return "", firstRcpt{}, fail, facts, unhealthy
			}
			*s = *ns
		}
	}
}

// transaction runs MAIL FROM, the catch-all check and the real RCPT on s.
// keep says whether the connection is fit for reuse. The first RCPT (the
// random address, or the real one when the domain is known not to be a
// catch-all) goes with MAIL FROM.
func (v *Verifier) transaction(ctx context.Context, d *destination.Dest, host string, t Target, s *session) (res Result, next, unhealthy, keep bool) {
	random := RandomLocal(v.cfg.RandomSecret, t.Address.Domain) + "@" + t.Address.Domain
	first := random
	if t.SkipRandom {
		first = t.Address.String()
	}
	asked := time.Now()
	sender, firstRep, fail, facts, unhealthy := v.mail(ctx, d, host, t, s, first)
	s.refusedSlowly(firstRep.rep, time.Since(asked), v.cfg.TarpitAfter)
	if fail != nil {
		fail.Facts = append(fail.Facts, facts...)
		return *fail, false, unhealthy, false
	}
	rcpts := firstRep.wasted
	if !t.SkipRandom {
		rep, err := firstRep.rep, firstRep.err
		rcpts++
		s.rcpts++
		if err != nil {
			r, unhealthy := v.failErr(t, host, err)
			r.Rcpts = rcpts
			return r, false, unhealthy, false
		}
		if tooManyRecipients(rep) {
			// As for the real RCPT: no answer about the address.
			var fail *Result
			var unhealthy bool
			if rep, fail, unhealthy, err = v.askAgainFresh(ctx, d, host, t, s, sender, facts, &rcpts, random, rep); fail != nil {
				return *fail, false, unhealthy, false
			}
			if err != nil {
				r, unhealthy := v.failErr(t, host, err)
				r.Rcpts = rcpts
				return r, false, unhealthy, false
			}
		}
		c := classify.Rcpt(rep)
		t.Trace.Add(host, "*", "random address: %s (%s)", c.Status, c.Reason)
		switch {
		case c.Status == verdict.Valid:
			r := v.result(t, host, sender, verdict.CatchAll, ReasonRandomAccepted, rep)
			r.Facts = append(facts, v.fact(t, host, kvkey.FactCatchAll, verdict.CatchAll, ReasonRandomAccepted, rep))
			r.Rcpts = rcpts
			return r, false, false, true
		case c.Status == verdict.Invalid:
			facts = append(facts, v.fact(t, host, kvkey.FactCatchAll, verdict.NotCatchAll, ReasonRandomRefused, rep))
		case c.Status == verdict.TempFail && (throttling(rep) || rep.Code == 421):
			// The host limits us: back off, ask nothing more now.
			noteReply(d, rep)
			r := v.result(t, host, sender, verdict.TempFail, ReasonRandomDeferred, rep)
			r.Facts, r.Rcpts = facts, rcpts
			return r, false, rep.Code == 421, false
		case c.Reason == classify.ReasonProtocol:
			r := v.result(t, host, sender, c.Status, c.Reason, rep)
			r.Facts, r.Rcpts = facts, rcpts
			return r, false, false, false
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
		if fail, unhealthy := v.nextTransaction(ctx, d, host, t, s, sender, facts, rcpts); fail != nil {
			return *fail, false, unhealthy, false
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
		var unhealthy bool
		if rep, fail, unhealthy, err = v.askAgainFresh(ctx, d, host, t, s, sender, facts, &rcpts, t.Address.String(), rep); fail != nil {
			return *fail, false, unhealthy, false
		}
	}
	if err != nil {
		r, unhealthy := v.failErr(t, host, err)
		r.Facts, r.Rcpts = facts, rcpts
		return r, false, unhealthy, false
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
			c = classify.Result{Status: verdict.Unverifiable, Reason: ReasonRefusesVerifier}
		}
	}
	r := v.result(t, host, sender, c.Status, c.Reason, rep)
	r.Facts, r.Rcpts = facts, rcpts
	return r, false, rep.Code == 421, rep.Code != 421 && !s.c.Broken() && !s.tarpit
}

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
		f := v.fact(t, host, kvkey.FactControl, verdict.Valid, ReasonControlAccepted, rep)
		f.Sender = sender
		return false, []verdict.Verdict{f}
	case 5:
		f := v.fact(t, host, kvkey.FactControl, verdict.Invalid, ReasonRefusesVerifier, rep)
		f.Sender = sender
		return true, []verdict.Verdict{f}
	}
	return false, nil
}

// nextTransaction readies s for another transaction with sender. Some
// servers take one recipient per transaction, some drop the connection
// after an unknown one: RSET, or reconnect (also when one more RSET would
// pass the host's non-mail command limit).
func (v *Verifier) nextTransaction(ctx context.Context, d *destination.Dest, host string, t Target, s *session, sender string, facts []verdict.Verdict, rcpts int) (*Result, bool) {
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
func (v *Verifier) askAgainFresh(ctx context.Context, d *destination.Dest, host string, t Target, s *session, sender string, facts []verdict.Verdict, rcpts *int, rcpt string, rep smtpprobe.Reply) (smtpprobe.Reply, *Result, bool, error) {
	d.Throttled(rep.String())
	s.c.Quit(ctx)
	if fail, unhealthy := v.reopen(ctx, d, host, t, s, sender, facts, *rcpts); fail != nil {
		return smtpprobe.Reply{}, fail, unhealthy, nil
	}
	again, err := s.c.Rcpt(ctx, rcpt)
	*rcpts++
	s.rcpts++
	return again, nil, false, err
}

// reopen replaces s (closed by the caller) with a new connection past
// MAIL FROM. On failure it returns the result to report.
func (v *Verifier) reopen(ctx context.Context, d *destination.Dest, host string, t Target, s *session, sender string, facts []verdict.Verdict, rcpts int) (*Result, bool) {
	ns, fail, _, unhealthy := v.open(ctx, d, host, t, false, nil)
	if fail != nil {
		fail.Facts = append(fail.Facts, facts...)
		fail.Rcpts = rcpts
		return fail, unhealthy
	}
	*s = *ns
	return v.mailAgain(ctx, host, t, s, sender, facts, rcpts)
}

// mailAgain starts a new transaction on s with sender.
func (v *Verifier) mailAgain(ctx context.Context, host string, t Target, s *session, sender string, facts []verdict.Verdict, rcpts int) (*Result, bool) {
	rep, err := s.c.Mail(ctx, sender)
	if err == nil && rep.Class() == 2 {
		return nil, false
	}
	var r Result
	unhealthy := false
	if err != nil {
		r, unhealthy = v.failErr(t, host, err)
	} else {
		r = v.fail(t, host, verdict.TempFail, ReasonDeferred, rep)
	}
	r.Facts, r.Rcpts = facts, rcpts
	return &r, unhealthy
}

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

func (v *Verifier) result(t Target, host, sender string, st verdict.Status, reason string, rep smtpprobe.Reply) Result {
	r := v.fail(t, host, st, reason, rep)
	r.Address.Sender = sender
	return r
}

func (v *Verifier) fail(t Target, host string, st verdict.Status, reason string, rep smtpprobe.Reply) Result {
	return Result{Address: verdict.Verdict{
		Kind: verdict.KindAddress, Address: t.Address.String(), Domain: t.Address.Domain,
		Sender: t.Sender, Status: st, Reason: reason,
		Code: rep.Code, Enhanced: rep.Enhanced, Text: verdict.CleanText(rep.Text()),
		Host: host, CheckedAt: v.now(), Source: verdict.SourceProbe,
	}}
}

func (v *Verifier) fact(t Target, host, fact string, st verdict.Status, reason string, rep smtpprobe.Reply) verdict.Verdict {
	return verdict.Verdict{
		Kind: verdict.KindDomain, Domain: t.Address.Domain, Fact: fact, Sender: t.Sender,
		Status: st, Reason: reason, Code: rep.Code, Enhanced: rep.Enhanced,
		Text: verdict.CleanText(rep.Text()), Host: host, CheckedAt: v.now(), Source: verdict.SourceProbe,
	}
}

// failErr turns a network or protocol error into a tempfail; timeouts and
// refused connections count against the breaker.
func (v *Verifier) failErr(t Target, host string, err error) (Result, bool) {
	var se *smtpprobe.Error
	reason, unhealthy := ReasonProtocol, false
	if errors.As(err, &se) {
		switch {
		case se.Timeout():
			reason, unhealthy = ReasonTimeout, true
		case se.Stage == smtpprobe.StageConnect:
			reason, unhealthy = ReasonConnect, true
		}
	}
	r := v.fail(t, host, verdict.TempFail, reason, smtpprobe.Reply{})
	r.Address.Text = verdict.CleanText(err.Error())
	return r, unhealthy
}
