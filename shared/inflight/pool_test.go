package inflight

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/waitfor"
)

// At most n tasks run at once; beyond, TryDo declines and Do waits; the
// goroutines are reused, not started per task.
func TestPoolLimit(t *testing.T) {
	p := NewPool(2)
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	for i := 0; i < 2; i++ {
		if !p.Do(func() { started <- struct{}{}; <-release }) {
			t.Fatal("an open pool refused work")
		}
	}
	<-started
	<-started
	if ok, taken := p.TryDo(func() {}); !ok || taken {
		t.Fatalf("TryDo on a full pool: ok %v taken %v, want true false", ok, taken)
	}
	third := make(chan struct{})
	go func() { p.Do(func() { close(third) }) }()
	select {
	case <-third:
		t.Fatal("a third task ran while two held the pool")
	default:
	}
	close(release)
	<-third
	for i := 0; i < 100; i++ {
		done := make(chan struct{})
		p.Do(func() { close(done) })
		<-done
	}
	p.mu.Lock()
	n := p.n
	p.mu.Unlock()
	if n != 2 {
		t.Fatalf("%d goroutines started for 103 tasks at most 2 at once, want 2", n)
	}
	p.Close()
}

// Goroutines idle for a while end; the pool starts new ones as work comes.
func TestPoolIdleGoroutinesEnd(t *testing.T) {
	p := NewPool(4)
	p.idle = time.Millisecond
	var ran atomic.Int32
	for i := 0; i < 4; i++ {
		p.Do(func() { ran.Add(1) })
	}
	waitfor.Cond(t, 5*time.Second, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.n == 0
	})
	done := make(chan struct{})
	if !p.Do(func() { close(done) }) {
		t.Fatal("refused after its goroutines ended")
	}
	<-done
	p.Close()
	if ran.Load() != 4 {
		t.Fatalf("ran %d of 4", ran.Load())
	}
}

func TestPoolCloseWaitsAndRefuses(t *testing.T) {
	p := NewPool(4)
	release := make(chan struct{})
	var done atomic.Int32
	p.Do(func() { <-release; done.Add(1) })
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a task was running")
	default:
	}
	close(release)
	<-closed
	if done.Load() != 1 {
		t.Fatal("the task taken before Close did not finish")
	}
	if p.Do(func() { done.Add(1) }) {
		t.Fatal("a closed pool took work")
	}
	if ok, _ := p.TryDo(func() {}); ok {
		t.Fatal("a closed pool took work by TryDo")
	}
}

// Work handed in while the pool closes either runs or is refused, never
// lost, and never races Close's wait (go test -race).
func TestPoolConcurrentWithClose(t *testing.T) {
	for i := 0; i < 50; i++ {
		p := NewPool(3)
		submitWhileClosing(t, p.Do, p.Close)
	}
}
