package main

// The figures the project holds itself to.

import (
	_ "net/http/pprof"
	"strconv"
	"strings"
)

// target is one of the figures the project holds itself to: the median of
// the row whose section and name (a prefix: some names carry a count) match.
type target struct {
	Name    string  `json:"name"`
	Section string  `json:"section"`
	Row     string  `json:"row"`
	Op      string  `json:"op"` // ">=" or "<="
	Bound   float64 `json:"bound"`
	Unit    string  `json:"unit"`
	Value   float64 `json:"value"`
	Met     bool    `json:"met"`
}

var targets = []target{
	{Name: "hit ratio, 1 requester", Section: "1 cache hit", Row: "c=1 verify/echo rate ratio", Op: ">=", Bound: 0.6},
	{Name: "hit ratio, 16 requesters", Section: "1 cache hit", Row: "c=16 verify/echo rate ratio", Op: ">=", Bound: 0.5},
	{Name: "hit ratio, 64 requesters", Section: "1 cache hit", Row: "c=64 verify/echo rate ratio", Op: ">=", Bound: 0.4},
	{Name: "hit p99, 16 requesters", Section: "1 cache hit", Row: "c=16 verify p99", Op: "<=", Bound: 2, Unit: "ms"},
	{Name: "miss overhead p50", Section: "2 miss", Row: "overhead p50", Op: "<=", Bound: 1, Unit: "ms"},
	{Name: "saturation", Section: "5 saturation", Row: "verifies/s", Op: ">=", Bound: 15000, Unit: "req/s"},
	{Name: "storage, 1M entries", Section: "4 storage", Row: "KV bytes on disk", Op: "<=", Bound: 150, Unit: "MiB"},
	{Name: "full flush", Section: "4 storage", Row: "full flush", Op: "<=", Bound: 1000, Unit: "ms"},
	{Name: "domain flush", Section: "4 storage", Row: "domain flush", Op: "<=", Bound: 10, Unit: "ms"},
	{Name: "ingest memory per near-cache entry", Section: "4 storage", Row: "ingest heap per near-cache entry", Op: "<=", Bound: 400, Unit: "B"},
	{Name: "ingest memory per known key", Section: "4 storage", Row: "ingest heap per known key", Op: "<=", Bound: 48, Unit: "B"},
	// The MTAs' own paths: a Postfix policy request answered from the
	// near cache at 16 connections, against a bare server with the same
	// framing.
	{Name: "policy protocol hit ratio, 16 connections", Section: "7 policy", Row: "c=16 hit/bare rate ratio", Op: ">=", Bound: 0.7},
	// Through a real Postfix, cached recipients: callout's policy service
	// against Postfix's own verify(8) and against no check at all.
	{Name: "postfix: callout/verify(8) RCPT rate", Section: "9 postfix", Row: "known: callout/verify(8) rate ratio", Op: ">=", Bound: 0.97},
	{Name: "postfix: callout/no check RCPT rate", Section: "9 postfix", Row: "known: callout/no check rate ratio", Op: ">=", Bound: 0.8},
	{Name: "postfix: callout/verify(8) p99", Section: "9 postfix", Row: "known: callout/verify(8) p99 ratio", Op: "<=", Bound: 1.1},
	{Name: "postfix: callout/verify(8) CPU per RCPT", Section: "9 postfix", Row: "known: callout/verify(8) CPU per RCPT ratio", Op: "<=", Bound: 1},
	// Static mode: a list of 100,000 answers as fast as one of 10, and
	// imports in seconds.
	{Name: "static: 100,000 listed / 10 listed verify rate", Section: "10 static lists", Row: "c=16 100,000/10 listed rate ratio", Op: ">=", Bound: 0.9},
	{Name: "static: import of 100,000 mailboxes", Section: "10 static lists", Row: "import of 100,000 mailboxes", Op: "<=", Bound: 10000, Unit: "ms"},
	// A fleet over regions: hits in a region as close to the echo as in
	// one cluster.
	{Name: "regions: hit ratio, 16 requesters", Section: "11 regions", Row: "c=16 verify/echo rate ratio", Op: ">=", Bound: 0.6},
	// The callout economy: at most one RCPT per distinct address plus two
	// per domain (the catch-all probe and the control probe), and at
	// least five RCPTs per connection.
	{Name: "economy: RCPTs within the budget", Section: "3 economy", Row: "RCPTs past the budget", Op: "<=", Bound: 0},
	{Name: "economy: connections per RCPT", Section: "3 economy", Row: "connections per RCPT", Op: "<=", Bound: 0.2},
	// The decision log: recording every decision costs at most a tenth
	// of saturation; a search over 7 days of 10 million records answers
	// in 2 s.
	{Name: "decision log: on/off saturation", Section: "12 decision log", Row: "log on / log off", Op: ">=", Bound: 0.9},
	{Name: "decision log: saturation with every decision recorded", Section: "12 decision log", Row: "verifies/s, log on", Op: ">=", Bound: 15000, Unit: "req/s"},
	{Name: "decision search: one recipient, 10M records", Section: "12s decision search", Row: "one recipient, 7 days, every record (first)", Op: "<=", Bound: 2, Unit: "s"},
	{Name: "decision search: one domain and action, 10M records", Section: "12s decision search", Row: "one domain and action, newest 50 (first)", Op: "<=", Bound: 2, Unit: "s"},
}

// checkTargets holds the rows to the targets; a target whose section did
// not run is left out.
func checkTargets(rows []row) []target {
	var out []target
	for _, t := range targets {
		for _, r := range rows {
			if r.Section != t.Section || !strings.HasPrefix(r.Name, t.Row) {
				continue
			}
			t.Value = r.Value
			t.Met = (t.Op == ">=" && r.Value >= t.Bound) || (t.Op == "<=" && r.Value <= t.Bound)
			out = append(out, t)
			break
		}
	}
	return out
}

// shownValue is a target's value with three decimals, or as many more as
// it takes to tell it from its bound: 0.5998 against 0.6 is not shown as
// "0.600 no".
func shownValue(v, bound float64) string {
	for prec := 3; prec < 10; prec++ {
		s := strconv.FormatFloat(v, 'f', prec, 64)
		if v == bound || s != strconv.FormatFloat(bound, 'f', prec, 64) {
			return s
		}
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
