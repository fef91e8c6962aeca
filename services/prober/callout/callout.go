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

	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/verdict"
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
	return v.VerifyWithSlot(ctx, t, nil)
}

// VerifyWithSlot is Verify with the first host's slot already taken: the
// scheduler takes it without waiting, so that a job whose host is busy
// waits without a worker. The slot is given back (or kept with its
// connection for reuse) when the callout ends.
func (v *Verifier) VerifyWithSlot(ctx context.Context, t Target, slot *destination.Slot) Result {
	res, end := v.VerifyResultFirst(ctx, t, slot)
	end()
	return res
}

// VerifyResultFirst is VerifyWithSlot that returns as soon as the result is known:
// end (to be called once) then ends the last host's connection (RSET to
// keep it, or QUIT) and gives its slot back, so that the verdict need not
// wait for the destination's reply to RSET or QUIT.
func (v *Verifier) VerifyResultFirst(ctx context.Context, t Target, slot *destination.Slot) (Result, func()) {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.Budget)
	res := v.fail(t, "", verdict.TempFail, verdict.ReasonNoDestination, smtpprobe.Reply{})
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
		return v.fail(t, host, verdict.TempFail, verdict.ReasonBreakerOpen, smtpprobe.Reply{}), true, end
	}
	if held == nil {
		var err error
		if held, err = d.Acquire(ctx, t.Trace == nil); err != nil {
			return v.fail(t, host, verdict.TempFail, verdict.ReasonTimeout, smtpprobe.Reply{}), false, end
		}
		own := held
		end = own.Release
	}
	// The breaker counts the errors that wrap destination.ErrUnhealthy.
	err := d.Do(func() error {
		start := time.Now()
		var finish func()
		var err error
		res, finish, err = v.dialogue(ctx, d, host, t, held)
		d.Observe(time.Since(start))
		release := end
		end = func() { finish(); release() }
		return err
	})
	if errors.Is(err, destination.ErrOpen) {
		return v.fail(t, host, verdict.TempFail, verdict.ReasonBreakerOpen, smtpprobe.Reply{}), true, end
	}
	return res, errors.Is(err, errNextHost), end
}
