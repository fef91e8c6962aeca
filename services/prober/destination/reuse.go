package destination

// Connections kept idle for the next callout, and when a host loses reuse.

import (
	"context"
	"time"

	"github.com/callout-mail/callout/services/prober/smtpprobe"
)

// idleConn is a connection kept for the next callout. It keeps the slot
// of the callout that used it (a local token and the fleet-wide lease):
// an open connection always counts against MAX_CONNS.
type idleConn struct {
	c     *smtpprobe.Conn
	rcpts int
	since time.Time
	free  func() // gives the fleet-wide lease back; nil without a fleet
}

// reuseLocked reports whether connections may be reused now.
func (d *Dest) reuseLocked(now time.Time) bool {
	return !now.Before(d.noReuse) && d.cfg.ReuseMaxRcpts > 0
}

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
