package brake

import (
	"testing"
	"time"
)

func TestBrake(t *testing.T) {
	now := time.Unix(1000, 0)
	b := New(3, time.Minute)
	b.now = func() time.Time { return now }
	for i := 0; i < 2; i++ {
		b.Invalid("192.0.2.1")
	}
	if b.Braked("192.0.2.1") {
		t.Fatal("braked below the limit")
	}
	b.Invalid("192.0.2.1")
	if !b.Braked("192.0.2.1") || b.Braked("192.0.2.2") || b.Braked("") {
		t.Fatal("brake state wrong at the limit")
	}
	now = now.Add(2 * time.Minute)
	if b.Braked("192.0.2.1") {
		t.Fatal("brake outlived its window")
	}
	off := New(0, time.Minute)
	for i := 0; i < 10; i++ {
		off.Invalid("x")
	}
	if off.Braked("x") {
		t.Fatal("disabled brake braked")
	}
}
