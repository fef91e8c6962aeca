package destination

// Back-off: a throttling host gets less rate and fewer RCPTs per connection.

import (
	"time"

	"golang.org/x/time/rate"
)

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

// MaxRcpts is the RCPTs one connection may carry now (halved while throttled).
func (d *Dest) MaxRcpts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.maxRcptsLocked()
}

// MaxNonMail is how many non-mail commands one connection may carry.
func (d *Dest) MaxNonMail() int { return d.cfg.MaxNonMail }
