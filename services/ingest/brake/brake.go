// Package brake slows dictionary attacks: after Limit unknown recipients from
// one client address within Window, that client's further unknown
// recipients are deferred without callouts.
package brake

import (
	"sync"
	"time"
)

// maxClients bounds memory; beyond it, expired windows are swept.
const maxClients = 100000

// Brake counts invalid recipients per client in fixed windows.
type Brake struct {
	limit  int
	window time.Duration
	now    func() time.Time
	mu     sync.Mutex
	counts map[string]*entry
}

type entry struct {
	start time.Time
	n     int
}

// New returns a brake; limit 0 turns it off.
func New(limit int, window time.Duration) *Brake {
	return &Brake{limit: limit, window: window, now: time.Now, counts: map[string]*entry{}}
}

// Invalid records an unknown recipient from client.
func (b *Brake) Invalid(client string) {
	if b.limit <= 0 || client == "" {
		return
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.counts[client]
	if !ok || now.Sub(e.start) > b.window {
		if len(b.counts) >= maxClients {
			b.sweep(now)
		}
		e = &entry{start: now}
		b.counts[client] = e
	}
	e.n++
}

// Braked reports whether client is over its limit.
func (b *Brake) Braked(client string) bool {
	if b.limit <= 0 || client == "" {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.counts[client]
	return ok && b.now().Sub(e.start) <= b.window && e.n >= b.limit
}

func (b *Brake) sweep(now time.Time) {
	for c, e := range b.counts {
		if now.Sub(e.start) > b.window {
			delete(b.counts, c)
		}
	}
}
