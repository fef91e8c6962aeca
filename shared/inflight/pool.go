package inflight

import (
	"sync"
	"time"
)

// Pool runs tasks on at most n goroutines that outlive one task: a
// message handler's stack grows once, not for every message (on a fresh
// goroutine each message decoded paid for copying its stack as it grew).
// A goroutine idle for a while ends, so a burst leaves none behind. The
// zero value is not usable; see NewPool.
type Pool struct {
	max  int
	work chan func()
	stop chan struct{}
	mu   sync.Mutex
	n    int // goroutines running
	idle time.Duration
	done bool
	wg   sync.WaitGroup
}

// NewPool returns a pool of at most n goroutines, started as work comes.
func NewPool(n int) *Pool {
	return &Pool{max: max(n, 1), work: make(chan func()), stop: make(chan struct{}), idle: 30 * time.Second}
}

// Do runs fn on an idle goroutine, or a new one below the limit, or waits
// for one to be free. It reports false, without running fn, once Close has
// been called.
func (p *Pool) Do(fn func()) bool {
	if ok, taken := p.TryDo(fn); taken || !ok {
		return ok
	}
	select {
	case p.work <- fn:
		return true
	case <-p.stop:
		return false
	}
}

// TryDo is Do without the wait: taken is false when every goroutine is
// busy at the limit; ok is false once Close has been called.
func (p *Pool) TryDo(fn func()) (ok, taken bool) {
	select {
	case p.work <- fn:
		return true, true
	default:
	}
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return false, false
	}
	if p.n < p.max {
		p.n++
		p.wg.Add(1)
		p.mu.Unlock()
		go p.run(fn)
		return true, true
	}
	p.mu.Unlock()
	return true, false
}

func (p *Pool) run(fn func()) {
	defer p.wg.Done()
	idle := time.NewTimer(p.idle)
	defer idle.Stop()
	for {
		fn()
		idle.Reset(p.idle)
		select {
		case fn = <-p.work:
		case <-p.stop:
			return
		case <-idle.C:
			p.mu.Lock()
			p.n--
			p.mu.Unlock()
			return
		}
	}
}

// Close refuses new work and waits for every task taken.
func (p *Pool) Close() {
	p.mu.Lock()
	if !p.done {
		p.done = true
		close(p.stop)
	}
	p.mu.Unlock()
	p.wg.Wait()
}
