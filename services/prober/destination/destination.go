// Package destination keeps what the prober knows about each destination
// host: its circuit breaker, its concurrency and rate limits, and idle
// connections that can serve the next callout after RSET.
package destination

import (
	"context"
	"errors"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"

	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/wire"
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

// idleConn is a connection kept for the next callout. It keeps the slot
// of the callout that used it (a local token and the fleet-wide lease):
// an open connection always counts against MAX_CONNS.
type idleConn struct {
	c     *smtpprobe.Conn
	rcpts int
	since time.Time
	free  func() // gives the fleet-wide lease back; nil without a fleet
}

// Slot is one connection slot of a host held by a callout: a token of the
// host's local limit and, with a fleet, its fleet-wide lease. It may come
// with the idle connection that kept it. A Slot belongs to one goroutine
// at a time.
type Slot struct {
	d     *Dest
	free  func()
	conn  *smtpprobe.Conn
	rcpts int
	done  bool
}

// Conn hands over the idle connection that came with the slot, once (nil
// when none did).
func (s *Slot) Conn() (*smtpprobe.Conn, int) {
	if s == nil {
		return nil, 0
	}
	c, n := s.conn, s.rcpts
	s.conn = nil
	return c, n
}

// Release gives the slot back, unless Keep left it with an idle
// connection. A connection that came with it and was not taken is closed.
func (s *Slot) Release() {
	if s == nil || s.done {
		return
	}
	s.done = true
	if s.conn != nil {
		s.conn.Quit(context.Background()) // closed before its slot is free
		s.conn = nil
	}
	s.d.mu.Lock()
	s.d.inUse--
	s.d.mu.Unlock()
	s.d.freeSlot(s.free)
}

// freeSlot gives back a local token and its fleet-wide lease.
func (d *Dest) freeSlot(free func()) {
	if free != nil {
		free()
	}
	<-d.sem
}

// newSlot records a slot taken for a callout.
func (d *Dest) newSlot(free func(), ic *idleConn) *Slot {
	d.mu.Lock()
	d.inUse++
	d.mu.Unlock()
	s := &Slot{d: d, free: free}
	if ic != nil {
		s.conn, s.rcpts = ic.c, ic.rcpts
	}
	return s
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

// Acquire waits for a connection slot and a rate token, here and across
// the fleet. With reuse, a connection kept idle comes with its slot and
// needs only a rate token; without (a traced callout opens its own), an
// idle connection that holds the last local slot is closed to free it.
// Jobs wait; none are dropped.
func (d *Dest) Acquire(ctx context.Context, reuse bool) (*Slot, error) {
	wait := 20 * time.Millisecond
	for {
		d.ease()
		if !reuse && len(d.sem) == cap(d.sem) {
			d.Yield(ctx)
		}
		var ic *idleConn
		if reuse {
			ic = d.takeIdle()
		}
		if ic != nil {
			if err := d.lim.Wait(ctx); err != nil {
				d.putBack(*ic)
				return nil, err
			}
			if d.fleetRate(ctx) {
				return d.newSlot(ic.free, ic), nil
			}
			d.putBack(*ic)
		} else {
			select {
			case d.sem <- struct{}{}:
			case <-d.kept:
				continue // a connection was kept idle: take it with its slot
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			if err := d.lim.Wait(ctx); err != nil {
				<-d.sem
				return nil, err
			}
			fleet, ok := d.fleetSlot(ctx)
			if ok {
				return d.newSlot(fleet, nil), nil
			}
			<-d.sem
		}
		// Another prober holds the host's slots: look again a little later.
		select {
		case <-time.After(wait + rand.N(wait)):
		case <-d.kept:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// TryAcquire takes a connection slot (an idle connection's, or a new one)
// and a rate token if both are free now, here and across the fleet;
// otherwise it takes nothing. A job that cannot start waits without a
// worker.
func (d *Dest) TryAcquire(ctx context.Context) (*Slot, bool) {
	d.ease()
	if ic := d.takeIdle(); ic != nil {
		if d.lim.Allow() && d.fleetRate(ctx) {
			return d.newSlot(ic.free, ic), true
		}
		d.putBack(*ic)
		return nil, false
	}
	select {
	case d.sem <- struct{}{}:
	default:
		return nil, false
	}
	if !d.lim.Allow() {
		<-d.sem
		return nil, false
	}
	fleet, ok := d.fleetSlot(ctx)
	if !ok {
		<-d.sem
		return nil, false
	}
	return d.newSlot(fleet, nil), true
}

// fleetRate takes a fleet-wide rate token, when there is a fleet; false
// only when the host is at its fleet-wide rate.
func (d *Dest) fleetRate(ctx context.Context) bool {
	f := d.pool.fleetNow()
	return f == nil || !d.fleetBusy(f, f.TryRate(ctx, d.host))
}

// fleetSlot takes the host's fleet-wide slot, when there is a fleet. ok is
// false only when the host is at its fleet-wide limit; then the probers
// that may keep its slots with idle connections are asked for one (at most
// every 50 ms per host).
func (d *Dest) fleetSlot(ctx context.Context) (release func(), ok bool) {
	f := d.pool.fleetNow()
	if f == nil {
		return nil, true
	}
	release, err := f.TryAcquire(ctx, d.host)
	if !d.fleetBusy(f, err) {
		return release, true
	}
	d.mu.Lock()
	ask := time.Since(d.wanted) >= 50*time.Millisecond
	if ask {
		d.wanted = time.Now()
	}
	d.mu.Unlock()
	if ask {
		f.Want(d.host)
	}
	return nil, false
}

// fleetBusy reads the fleet's answer: true when the host is at its
// fleet-wide limit. Any other failure to ask is reported and counts as not
// busy (fail open: this prober's own limits apply).
func (d *Dest) fleetBusy(f Fleet, err error) bool {
	if err == nil {
		return false
	}
	if f.Busy(err) {
		return true
	}
	d.pool.mu.Lock()
	onErr := d.pool.onFleetErr
	d.pool.mu.Unlock()
	if onErr != nil {
		onErr(d.host, err)
	}
	return false
}

// fleetNow is the pool's fleet, or nil.
func (p *Pool) fleetNow() Fleet {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fleet
}

// Open reports whether the breaker refuses calls now: a job for the host
// is answered at once, without waiting for a slot.
func (d *Dest) Open() bool { return d.cb.State() == gobreaker.StateOpen }

// Throttled records a reply that says the host is overloaded or limits us
// (421, 451 4.7.x, 450 4.7.1 too many connections, 452 4.5.3): its rate and
// RCPTs per connection halve.
func (d *Dest) Throttled(reply string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastThrottle = time.Now()
	d.lastReply = reply
	if d.level < 6 {
		d.level++
	}
	d.setRateLocked()
}

// setRateLocked sets the rate for the back-off level in force.
func (d *Dest) setRateLocked() {
	d.lim.SetLimit(rate.Limit(d.cfg.Rate / float64(int(1)<<d.level)))
}

// maxRcptsLocked is the RCPTs one connection may carry at the back-off
// level in force.
func (d *Dest) maxRcptsLocked() int { return max(1, d.cfg.ReuseMaxRcpts>>d.level) }

// reuseLocked reports whether connections may be reused now.
func (d *Dest) reuseLocked(now time.Time) bool {
	return !now.Before(d.noReuse) && d.cfg.ReuseMaxRcpts > 0
}

// ease steps the back-off down once per quiet period.
func (d *Dest) ease() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for d.level > 0 && time.Since(d.lastThrottle) >= d.cfg.BackoffQuiet {
		d.level--
		d.lastThrottle = d.lastThrottle.Add(d.cfg.BackoffQuiet)
		d.setRateLocked()
	}
}

// Replied records the host's last reply, for operators.
func (d *Dest) Replied(reply string) {
	d.mu.Lock()
	d.lastReply = reply
	d.mu.Unlock()
}

// MaxRcpts is the RCPTs one connection may carry now (halved while throttled).
func (d *Dest) MaxRcpts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.maxRcptsLocked()
}

// MaxNonMail is how many non-mail commands one connection may carry.
func (d *Dest) MaxNonMail() int { return d.cfg.MaxNonMail }

// Info is what an operator sees of a host.
type Info = wire.HostInfo

// Observe records one dialogue with the host and how long it took.
func (d *Dest) Observe(took time.Duration) {
	d.mu.Lock()
	d.took[d.calls%uint64(len(d.took))] = took
	d.calls++
	d.mu.Unlock()
}

// RefusesVerifier records what the control probe of domain said on this
// host: refused (postmaster refused too) or not.
func (d *Dest) RefusesVerifier(domain string, refused bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case refused:
		d.refusing = domain
	case d.refusing == domain:
		d.refusing = ""
	}
}

// Info describes the host now.
func (d *Dest) Info() Info {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	in := Info{Host: d.host, Breaker: d.cb.State().String(), Rate: float64(d.lim.Limit()), Backoff: d.level,
		InUse: d.inUse, Idle: d.idleConnsLocked(), Reuse: d.reuseLocked(now), PlainText: now.Before(d.plainTil), LastReply: d.lastReply, Calls: d.calls,
		RefusesVerifier: d.refusing}
	if n := min(d.calls, uint64(len(d.took))); n > 0 {
		lat := append([]time.Duration(nil), d.took[:n]...)
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		ms := func(p float64) float64 { return float64(lat[int(p*float64(n-1))].Microseconds()) / 1000 }
		in.P50MS, in.P99MS = ms(0.50), ms(0.99)
	}
	return in
}

// Hosts describes every host the pool knows, busiest first, at most n.
func (p *Pool) Hosts(n int) []Info {
	p.mu.Lock()
	dests := make([]*Dest, 0, len(p.dests))
	for _, d := range p.dests {
		dests = append(dests, d)
	}
	p.mu.Unlock()
	out := make([]Info, 0, len(dests))
	for _, d := range dests {
		out = append(out, d.Info())
	}
	// The busiest first: connections in use, then back-off, then calls.
	sort.Slice(out, func(i, j int) bool {
		if out[i].InUse != out[j].InUse {
			return out[i].InUse > out[j].InUse
		}
		if out[i].Backoff != out[j].Backoff {
			return out[i].Backoff > out[j].Backoff
		}
		if out[i].Calls != out[j].Calls {
			return out[i].Calls > out[j].Calls
		}
		return out[i].Host < out[j].Host
	})
	if n > 0 && len(out) > n {
		out = out[:n]
	}
	return out
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

// takeIdle takes a live idle connection with its slot, when reuse is on,
// else a slot kept without its connection (KeepSlot); dead or stale ones
// are closed and their slots given back.
func (d *Dest) takeIdle() *idleConn {
	var drop []idleConn
	defer func() { d.closeIdle(context.Background(), drop) }()
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.reuseLocked(time.Now()) {
		drop, d.idle = d.idle, nil
		return nil
	}
	now := time.Now()
	live := d.idle[:0]
	for _, ic := range d.idle {
		if now.Sub(ic.since) <= d.cfg.IdleTimeout && (ic.c == nil || !ic.c.Broken()) {
			live = append(live, ic)
		} else {
			drop = append(drop, ic)
		}
	}
	if len(live) == 0 {
		d.idle = live
		return nil
	}
	// The most recent connection, else the most recent bare slot.
	pick := len(live) - 1
	for i := len(live) - 1; i >= 0; i-- {
		if live[i].c != nil {
			pick = i
			break
		}
	}
	ic := live[pick]
	d.idle = append(live[:pick], live[pick+1:]...)
	return &ic
}

// idleConnsLocked counts the idle connections (not the slots kept
// without one).
func (d *Dest) idleConnsLocked() int {
	n := 0
	for _, ic := range d.idle {
		if ic.c != nil {
			n++
		}
	}
	return n
}

// putBack returns a connection taken by takeIdle that found no rate token
// (no signal: the waiters would only find no token either).
func (d *Dest) putBack(ic idleConn) {
	d.mu.Lock()
	d.idle = append(d.idle, ic)
	d.mu.Unlock()
}

func (d *Dest) signalKept() {
	select {
	case d.kept <- struct{}{}:
	default:
	}
}

// closeIdle says QUIT on idle connections and gives their slots back.
func (d *Dest) closeIdle(ctx context.Context, idle []idleConn) {
	for _, ic := range idle {
		if ic.c != nil {
			ic.c.Quit(ctx)
		}
		d.freeSlot(ic.free)
	}
}

// Keep keeps c, with the callout's slot, for the next callout, unless
// reuse is off for this destination or c has served its share of RCPTs;
// then it says QUIT, and the slot is kept alone (KeepSlot) or given back by
// Release.
func (d *Dest) Keep(ctx context.Context, c *smtpprobe.Conn, rcpts int, s *Slot) {
	d.mu.Lock()
	keep := d.keepableLocked(s) && rcpts < d.maxRcptsLocked()
	if keep {
		d.idle = append(d.idle, idleConn{c: c, rcpts: rcpts, since: time.Now(), free: s.free})
		s.done = true
		d.inUse--
	}
	d.mu.Unlock()
	if !keep {
		c.Quit(ctx)
		d.KeepSlot(s)
		return
	}
	d.signalKept()
}

// keepableLocked reports whether s may be kept for the next callout.
func (d *Dest) keepableLocked(s *Slot) bool {
	return s != nil && s.d == d && !s.done && d.reuseLocked(time.Now()) && d.cfg.IdleTimeout > 0
}

// KeepSlot keeps the slot of a connection closed at its limits (RCPTs or
// non-mail commands) for the next callout, which opens a new connection in
// it without asking the fleet for a slot again. Like an idle connection's,
// the slot is given back after IDLE_TIMEOUT, or when another prober wants
// one.
func (d *Dest) KeepSlot(s *Slot) {
	d.mu.Lock()
	keep := d.keepableLocked(s)
	if keep {
		d.idle = append(d.idle, idleConn{since: time.Now(), free: s.free})
		s.done = true
		d.inUse--
	}
	d.mu.Unlock()
	if keep {
		d.signalKept()
	}
}

// Yield closes one idle connection, giving its slot back: another prober
// waits for one.
func (d *Dest) Yield(ctx context.Context) {
	d.mu.Lock()
	if len(d.idle) == 0 {
		d.mu.Unlock()
		return
	}
	ic := d.idle[0] // the oldest
	d.idle = d.idle[1:]
	d.mu.Unlock()
	d.closeIdle(ctx, []idleConn{ic})
}

// Yield closes one idle connection to host, if this prober keeps one.
func (p *Pool) Yield(ctx context.Context, host string) {
	p.mu.Lock()
	d := p.dests[host]
	p.mu.Unlock()
	if d != nil {
		d.Yield(ctx)
	}
}

// DisableReuse turns reuse off for this destination (its RSET failed) for
// ReuseRetry; then it is tried again.
func (d *Dest) DisableReuse() {
	d.mu.Lock()
	d.noReuse = time.Now().Add(d.cfg.ReuseRetry)
	idle := d.idle
	d.idle = nil
	d.mu.Unlock()
	d.closeIdle(context.Background(), idle)
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

// ReuseEnabled reports whether connections to d may be reused now.
func (d *Dest) ReuseEnabled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reuseLocked(time.Now())
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
	d.closeIdle(ctx, drop)
}
