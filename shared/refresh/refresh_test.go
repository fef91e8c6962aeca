package refresh

import (
	"fmt"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/verdict"
)

func TestDue(t *testing.T) {
	now := time.Now()
	old := &verdict.Verdict{Kind: verdict.KindAddress, Status: verdict.Valid, CheckedAt: now.Add(-2 * time.Hour)}
	for _, tc := range []struct {
		name string
		age  time.Duration
		v    verdict.Verdict
		want bool
	}{
		{"old valid", time.Hour, *old, true},
		{"young valid", 3 * time.Hour, *old, false},
		{"off", 0, *old, false},
		{"invalid", time.Hour, verdict.Verdict{Kind: verdict.KindAddress, Status: verdict.Invalid, CheckedAt: old.CheckedAt}, false},
		{"domain fact", time.Hour, verdict.Verdict{Kind: verdict.KindDomain, Status: verdict.Valid, CheckedAt: old.CheckedAt}, false},
	} {
		r := Ahead{Age: tc.age}
		if got := r.Due(&tc.v, now, func() string { return "k" }); got != tc.want {
			t.Errorf("%s: %v", tc.name, got)
		}
	}
	// Once per key per Age.
	r := Ahead{Age: time.Hour}
	key := func(k string) func() string { return func() string { return k } }
	if !r.Due(old, now, key("a")) || r.Due(old, now.Add(time.Minute), key("a")) || !r.Due(old, now, key("b")) || !r.Due(old, now.Add(time.Hour), key("a")) {
		t.Fatal("not once per key per period")
	}
	// Bounded: past maxKeys the record starts afresh.
	for i := 0; i < maxKeys+10; i++ {
		r.Due(old, now, func() string { return fmt.Sprint(i) })
	}
	if len(r.last) > maxKeys {
		t.Fatalf("%d keys remembered", len(r.last))
	}
}
