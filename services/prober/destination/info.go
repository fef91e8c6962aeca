package destination

// What an operator sees of a host.

import (
	"sort"
	"time"

	"github.com/callout-mail/callout/shared/wire"
)

// Replied records the host's last reply, for operators.
func (d *Dest) Replied(reply string) {
	d.mu.Lock()
	d.lastReply = reply
	d.mu.Unlock()
}

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
