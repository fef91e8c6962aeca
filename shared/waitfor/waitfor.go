// Package waitfor lets tests wait on a condition with a deadline instead of
// sleeping and hoping.
package waitfor

import (
	"testing"
	"time"
)

// Cond polls cond until it holds, failing the test after d.
func Cond(t testing.TB, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
