package main

import "testing"

func TestShownValue(t *testing.T) {
	for _, c := range []struct {
		v, bound float64
		want     string
	}{
		{0.7507889, 0.6, "0.751"},
		{0.5997748649312445, 0.6, "0.5998"}, // missed: never "0.600"
		{0.60004, 0.6, "0.60004"},           // met by a hair: says so
		{0.6, 0.6, "0.600"},
		{25256.24694936662, 15000, "25256.247"},
		{1.9999999999, 2, "1.9999999999"},
	} {
		if got := shownValue(c.v, c.bound); got != c.want {
			t.Errorf("shownValue(%v, %v) = %q, want %q", c.v, c.bound, got, c.want)
		}
	}
}

func TestCheckTargets(t *testing.T) {
	rows := []row{
		{Section: "11 regions", Name: "c=16 verify/echo rate ratio", Value: 0.5998},
		{Section: "1 cache hit", Name: "c=16 verify p99", Value: 2},
	}
	got := map[string]bool{}
	for _, c := range checkTargets(rows) {
		got[c.Name] = c.Met
	}
	want := map[string]bool{"regions: hit ratio, 16 requesters": false, "hit p99, 16 requesters": true}
	if len(got) != len(want) {
		t.Fatalf("checked %v, want only %v (a section that did not run is left out)", got, want)
	}
	for name, met := range want {
		if got[name] != met {
			t.Errorf("%s: met %v, want %v", name, got[name], met)
		}
	}
}
