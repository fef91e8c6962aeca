package destination

// Connection slots and rate tokens: how a callout gets to talk to a host, here and across the fleet.

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/callout-mail/callout/services/prober/smtpprobe"
)

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
