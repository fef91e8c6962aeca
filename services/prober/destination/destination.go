// Package destination keeps what the prober knows about each destination
// host: its circuit breaker, its concurrency and rate limits, and idle
// connections that can serve the next callout after RSET.
package destination

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"
)

// ErrUnhealthy marks a failure that counts against a destination's breaker:
// connection refused, timeout, 421.
var ErrUnhealthy = errors.New("destination unhealthy")

// ErrOpen is returned while a destination's breaker refuses calls.
var ErrOpen = errors.New("destination breaker open")

// Config bounds how hard one destination is used.
type Config struct {
	MaxConns        int           // concurrent connections per host
	Rate            float64       // callouts per second per host
	BreakerFailures uint32        // consecutive failures that open the breaker
	BreakerOpen     time.Duration // how long it stays open before one trial
	ReuseMaxRcpts   int           // RCPT commands on one connection before it is closed
	IdleTimeout     time.Duration // how long an idle connection is kept
	TLSFallback     time.Duration // how long a host that refused or failed STARTTLS is spoken to in plaintext
	MaxNonMail      int           // non-mail commands (EHLO, RSET, ...) on one connection at most (Exim drops after 10)
	ReuseRetry      time.Duration // after reuse was switched off for a host, try it again after this
	BackoffQuiet    time.Duration // a throttled host recovers one step per quiet period
}

// Fleet holds a host's limits across every prober (package lease). It
// returns ErrBusy-like errors (Busy reports them) when the host is at its
// limit.
type Fleet interface {
	// TryAcquire takes a connection slot and a rate token.
	TryAcquire(ctx context.Context, host string) (release func(), err error)
	// TryRate takes a rate token alone (a kept connection has its slot).
	TryRate(ctx context.Context, host string) error
	// Want asks the probers that keep idle connections to host to close
	// one: this prober waits for a slot.
	Want(host string)
	Busy(err error) bool
}

// Pool holds one Dest per host.
type Pool struct {
	cfg        Config
	onState    func(host string, from, to gobreaker.State)
	mu         sync.Mutex
	dests      map[string]*Dest
	fleet      Fleet
	onFleetErr func(host string, err error)
}

// SetFleet makes every host's limits hold across the fleet. onErr hears
// failures to ask it; then the local limits alone apply (fail open: the
// callouts go on, within this prober's limits).
func (p *Pool) SetFleet(f Fleet, onErr func(host string, err error)) {
	p.mu.Lock()
	p.fleet, p.onFleetErr = f, onErr
	p.mu.Unlock()
}

// NewPool returns an empty pool. onState (may be nil) hears breaker changes.
func NewPool(cfg Config, onState func(host string, from, to gobreaker.State)) *Pool {
	if cfg.MaxConns < 1 {
		cfg.MaxConns = 1
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 10
	}
	if cfg.BreakerFailures == 0 {
		cfg.BreakerFailures = 5
	}
	if cfg.BreakerOpen == 0 {
		cfg.BreakerOpen = 30 * time.Second
	}
	if onState == nil {
		onState = func(string, gobreaker.State, gobreaker.State) {}
	}
	if cfg.MaxNonMail <= 0 {
		cfg.MaxNonMail = 8
	}
	if cfg.ReuseRetry <= 0 {
		cfg.ReuseRetry = 10 * time.Minute
	}
	if cfg.BackoffQuiet <= 0 {
		cfg.BackoffQuiet = time.Minute
	}
	return &Pool{cfg: cfg, onState: onState, dests: map[string]*Dest{}}
}

// Dest is one destination host.
type Dest struct {
	pool     *Pool
	host     string
	cfg      Config
	cb       *gobreaker.CircuitBreaker[struct{}]
	sem      chan struct{}
	kept     chan struct{} // a connection was kept idle: a waiter may take it
	lim      *rate.Limiter
	mu       sync.Mutex
	idle     []idleConn
	noReuse  time.Time // reuse off until then (a failed RSET)
	lastUsed time.Time
	plainTil time.Time // STARTTLS refused or failed: plaintext until then
	wanted   time.Time // when this prober last asked the fleet for a slot

	// Adaptive back-off: each throttling reply halves the rate and the RCPTs
	// per connection; each quiet period after the last one doubles them
	// back, up to the configured values.
	level        int // halvings in force
	lastThrottle time.Time
	lastReply    string // the host's last reply, for operators
	refusing     string // the last domain whose control probe (postmaster) the host refused, for operators
	inUse        int
	calls        uint64
	took         [128]time.Duration // the last dialogues' durations, a ring
}

// Get returns the Dest of host, creating it.
func (p *Pool) Get(host string) *Dest {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.dests[host]
	if !ok {
		d = &Dest{
			host: host, cfg: p.cfg, pool: p,
			sem: make(chan struct{}, p.cfg.MaxConns), kept: make(chan struct{}, 1),
			lim: rate.NewLimiter(rate.Limit(p.cfg.Rate), max(1, p.cfg.MaxConns)),
		}
		d.cb = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
			Name:        host,
			MaxRequests: 1,
			Timeout:     p.cfg.BreakerOpen,
			ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= p.cfg.BreakerFailures },
			IsSuccessful: func(err error) bool {
				return !errors.Is(err, ErrUnhealthy)
			},
			OnStateChange: func(name string, from, to gobreaker.State) { p.onState(name, from, to) },
		})
		p.dests[host] = d
	}
	d.mu.Lock()
	d.lastUsed = time.Now()
	d.mu.Unlock()
	return d
}

// States counts destinations by breaker state.
func (p *Pool) States() map[gobreaker.State]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	m := map[gobreaker.State]int{}
	for _, d := range p.dests {
		m[d.cb.State()]++
	}
	return m
}

// Sweep closes idle connections past their time and forgets destinations
// unused for forgetAfter whose breaker is closed.
func (p *Pool) Sweep(ctx context.Context, forgetAfter time.Duration) {
	now := time.Now()
	p.mu.Lock()
	var all []*Dest
	for h, d := range p.dests {
		d.mu.Lock()
		stale := now.Sub(d.lastUsed) > forgetAfter && len(d.idle) == 0
		d.mu.Unlock()
		if stale && d.cb.State() == gobreaker.StateClosed && len(d.sem) == 0 {
			delete(p.dests, h)
			continue
		}
		all = append(all, d)
	}
	p.mu.Unlock()
	for _, d := range all {
		d.expireIdle(ctx, now)
	}
}

// Close says QUIT on every idle connection.
func (p *Pool) Close(ctx context.Context) {
	p.mu.Lock()
	dests := p.dests
	p.dests = map[string]*Dest{}
	p.mu.Unlock()
	for _, d := range dests {
		d.mu.Lock()
		idle := d.idle
		d.idle = nil
		d.mu.Unlock()
		d.closeIdle(ctx, idle)
	}
}

// Open reports whether the breaker refuses calls now: a job for the host
// is answered at once, without waiting for a slot.
func (d *Dest) Open() bool { return d.cb.State() == gobreaker.StateOpen }

// Do runs fn behind the breaker. While the breaker is open (or half-open
// with its one trial in flight) it returns ErrOpen without calling fn.
func (d *Dest) Do(fn func() error) error {
	_, err := d.cb.Execute(func() (struct{}, error) { return struct{}{}, fn() })
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return ErrOpen
	}
	return err
}

// State is the breaker's state.
func (d *Dest) State() gobreaker.State { return d.cb.State() }
