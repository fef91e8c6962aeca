// Package revision tracks how far a watch of a stream has come, so that a
// writer (or a peer) can wait until a given revision, and so everything
// before it, has been seen.
package revision

import (
	"sync"
	"time"
)

// Mark is the highest revision applied. The zero Mark is ready to use.
type Mark struct {
	mu   sync.Mutex
	cond *sync.Cond
	rev  uint64
}

func (m *Mark) init() {
	if m.cond == nil {
		m.cond = sync.NewCond(&m.mu)
	}
}

// Set moves the mark to rev (never back) and wakes the waiters.
func (m *Mark) Set(rev uint64) {
	m.mu.Lock()
	m.init()
	if rev > m.rev {
		m.rev = rev
	}
	m.cond.Broadcast()
	m.mu.Unlock()
}

// Get returns the highest revision applied.
func (m *Mark) Get() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rev
}

// Wait waits until rev is applied, or until timeout; it reports whether
// rev was reached.
func (m *Mark) Wait(rev uint64, timeout time.Duration) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rev >= rev {
		return true
	}
	m.init()
	deadline := time.Now().Add(timeout)
	t := time.AfterFunc(timeout, func() {
		m.mu.Lock()
		m.cond.Broadcast()
		m.mu.Unlock()
	})
	defer t.Stop()
	for m.rev < rev {
		if !time.Now().Before(deadline) {
			return false
		}
		m.cond.Wait()
	}
	return true
}
