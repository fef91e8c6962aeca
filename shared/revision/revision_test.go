package revision

import (
	"sync"
	"testing"
	"time"
)

func TestMark(t *testing.T) {
	var m Mark
	if !m.Wait(0, time.Millisecond) {
		t.Fatal("revision 0 is always applied")
	}
	if m.Wait(1, 10*time.Millisecond) {
		t.Fatal("revision 1 reported before it was set")
	}
	m.Set(5)
	m.Set(3) // never back
	if got := m.Get(); got != 5 {
		t.Fatalf("Get = %d, want 5", got)
	}
	var wg sync.WaitGroup
	results := make([]bool, 8)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = m.Wait(7, 30*time.Second)
		}()
	}
	m.Set(6)
	m.Set(7)
	wg.Wait()
	for i, ok := range results {
		if !ok {
			t.Fatalf("waiter %d did not see revision 7", i)
		}
	}
}
