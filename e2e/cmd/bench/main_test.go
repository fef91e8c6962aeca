package main

import "testing"

func TestSettingList(t *testing.T) {
	for _, c := range []struct {
		v  string
		ok bool
	}{
		{"CALLOUT_INGEST_DECISION_LOG=false", true},
		{"GOGC=400", true},
		{"GODEBUG=gctrace=1", true}, // the value may hold '='
		{"GOMEMLIMIT=1GiB", true},
		{"GOMAXPROCS=1", true},
		{"PATH=/tmp", false}, // not a service's setting
		{"CALLOUT_INGEST_DECISION_LOG", false},
		{"LD_PRELOAD=x.so", false},
	} {
		var l settingList
		err := l.Set(c.v)
		if (err == nil) != c.ok {
			t.Errorf("Set(%q): err %v, want ok %v", c.v, err, c.ok)
		}
		if c.ok && (len(l) != 1 || l[0] != c.v) {
			t.Errorf("Set(%q): list %q", c.v, l)
		}
	}
}
