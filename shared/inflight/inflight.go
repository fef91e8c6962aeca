// Package inflight tracks the goroutines a stopping service must wait for.
//
// A sync.WaitGroup may not be added to while Wait runs with a zero count,
// yet a NATS callback can still be running after Unsubscribe or a
// consumer's Stop returns. A Group refuses new work once it is closing, so
// a late callback leaves its message to redelivery instead of racing Wait.
package inflight

import "sync"

// Group runs goroutines until it is closed. The zero value is ready.
type Group struct {
	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// Go runs fn on its own goroutine and reports true, or reports false
// without running it once Close has been called.
func (g *Group) Go(fn func()) bool {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return false
	}
	g.wg.Add(1)
	g.mu.Unlock()
	go func() {
		defer g.wg.Done()
		fn()
	}()
	return true
}

// Close refuses new work and waits for every goroutine Go started.
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.wg.Wait()
}
