package inflight

import (
	"sync"
	"sync/atomic"
	"testing"
)

func TestCloseWaitsAndRefuses(t *testing.T) {
	var g Group
	release := make(chan struct{})
	var done atomic.Int32
	if !g.Go(func() { <-release; done.Add(1) }) {
		t.Fatal("an open group refused work")
	}
	closed := make(chan struct{})
	go func() { g.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while work was running")
	default:
	}
	close(release)
	<-closed
	if done.Load() != 1 {
		t.Fatalf("done = %d, want 1", done.Load())
	}
	if g.Go(func() { done.Add(1) }) {
		t.Fatal("a closed group took work")
	}
}

// Callbacks that keep arriving while the group closes never race its
// Wait (go test -race reports it if they do).
func TestGoConcurrentWithClose(t *testing.T) {
	for i := 0; i < 50; i++ {
		var g Group
		submitWhileClosing(t, g.Go, g.Close)
		if g.Go(func() {}) {
			t.Fatal("a closed group took work")
		}
	}
}

// submitWhileClosing hands 160 tasks in from 8 goroutines while stop
// runs: each task either runs or is refused, none is lost.
func submitWhileClosing(t *testing.T, submit func(func()) bool, stop func()) {
	t.Helper()
	var wg sync.WaitGroup
	var ran, refused atomic.Int32
	for j := 0; j < 8; j++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; k < 20; k++ {
				if submit(func() { ran.Add(1) }) {
					continue
				}
				refused.Add(1)
			}
		}()
	}
	stop()
	wg.Wait()
	if got := ran.Load() + refused.Load(); got != 160 {
		t.Fatalf("ran+refused = %d, want 160", got)
	}
}
