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

	"github.com/callout-mail/callout/services/prober/smtpprobe"
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
}

// Pool holds one Dest per host.
type Pool struct {
	cfg     Config
	onState func(host string, from, to gobreaker.State)
	mu      sync.Mutex
	dests   map[string]*Dest
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
	return &Pool{cfg: cfg, onState: onState, dests: map[string]*Dest{}}
}

// Dest is one destination host.
type Dest struct {
	host     string
	cfg      Config
	cb       *gobreaker.CircuitBreaker[struct{}]
	sem      chan struct{}
	lim      *rate.Limiter
	mu       sync.Mutex
	idle     []idleConn
	noReuse  bool
	lastUsed time.Time
	plainTil time.Time // STARTTLS refused or failed: plaintext until then
}

type idleConn struct {
	c     *smtpprobe.Conn
	rcpts int
	since time.Time
}

// Get returns the Dest of host, creating it.
func (p *Pool) Get(host string) *Dest {
	p.mu.Lock()
	defer p.mu.Unlock()
	d, ok := p.dests[host]
	if !ok {
		d = &Dest{
			host: host, cfg: p.cfg,
			sem: make(chan struct{}, p.cfg.MaxConns),
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
		for _, ic := range idle {
			ic.c.Quit(ctx)
		}
	}
}

// Acquire waits for a connection slot and a rate token. Jobs wait; none are dropped.
func (d *Dest) Acquire(ctx context.Context) (release func(), err error) {
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if err := d.lim.Wait(ctx); err != nil {
		<-d.sem
		return nil, err
	}
	return func() { <-d.sem }, nil
}

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

// TakeIdle returns an idle connection, or nil.
func (d *Dest) TakeIdle() (*smtpprobe.Conn, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.idle) > 0 {
		ic := d.idle[len(d.idle)-1]
		d.idle = d.idle[:len(d.idle)-1]
		if time.Since(ic.since) <= d.cfg.IdleTimeout && !ic.c.Broken() {
			return ic.c, ic.rcpts
		}
		go ic.c.Quit(context.Background())
	}
	return nil, 0
}

// PutIdle keeps c for the next callout, unless reuse is off for this
// destination or c has served its share of RCPTs; then it says QUIT.
func (d *Dest) PutIdle(ctx context.Context, c *smtpprobe.Conn, rcpts int) {
	d.mu.Lock()
	keep := !d.noReuse && d.cfg.ReuseMaxRcpts > 0 && rcpts < d.cfg.ReuseMaxRcpts && d.cfg.IdleTimeout > 0 && len(d.idle) < d.cfg.MaxConns
	if keep {
		d.idle = append(d.idle, idleConn{c: c, rcpts: rcpts, since: time.Now()})
	}
	d.mu.Unlock()
	if !keep {
		c.Quit(ctx)
	}
}

// DisableReuse turns reuse off for this destination (its RSET failed).
func (d *Dest) DisableReuse() {
	d.mu.Lock()
	d.noReuse = true
	d.mu.Unlock()
}

// NoTLS remembers that the host refused STARTTLS or failed its handshake:
// it is spoken to in plaintext for a while, without asking again.
func (d *Dest) NoTLS() {
	d.mu.Lock()
	d.plainTil = time.Now().Add(d.cfg.TLSFallback)
	d.mu.Unlock()
}

// TLSOff reports whether STARTTLS is skipped for the host now.
func (d *Dest) TLSOff() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return time.Now().Before(d.plainTil)
}

// ReuseEnabled reports whether connections to d may be reused.
func (d *Dest) ReuseEnabled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.noReuse
}

func (d *Dest) expireIdle(ctx context.Context, now time.Time) {
	d.mu.Lock()
	var keep, drop []idleConn
	for _, ic := range d.idle {
		if now.Sub(ic.since) > d.cfg.IdleTimeout {
			drop = append(drop, ic)
		} else {
			keep = append(keep, ic)
		}
	}
	d.idle = keep
	d.mu.Unlock()
	for _, ic := range drop {
		ic.c.Quit(ctx)
	}
}
