package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
)

// Three probers hold a destination's limits together: MAX_CONNS=2 and
// RATE=5 are what the destination sees, not three times that.
func TestFleetLimits(t *testing.T) {
	s := newSystem(t, options{env: map[string][]string{"prober": {
		"CALLOUT_PROBER_MAX_CONNS=2", "CALLOUT_PROBER_RATE=5", "CALLOUT_PROBER_LEASE_TTL=3s",
		"CALLOUT_PROBER_REUSE_MAX_RCPTS=0", "CALLOUT_PROBER_WORKERS=8",
	}}})
	s.start("prober")
	s.start("prober")
	dest := destination(t, smtptest.Config{Mailboxes: []string{"a0@example.org"}, Delay: 50 * time.Millisecond})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	var wg sync.WaitGroup
	for i := 0; i < 30; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := s.verify(fmt.Sprintf("a%d@example.org", i))
			if rep.Decision.Action == verdict.Reject && i == 0 {
				t.Errorf("a0 rejected")
			}
		}()
	}
	wg.Wait()
	if p := dest.Peak(); p > 2 {
		t.Fatalf("the destination saw %d connections at once, MAX_CONNS=2", p)
	}
	// New callouts (one connection each: no reuse) in any one second: at
	// most RATE, plus 1 for the server's coarse TTL expiry.
	times := dest.Accepted()
	if len(times) < 10 {
		t.Fatalf("only %d callouts", len(times))
	}
	// calloutctl hosts: every prober answers; the host is listed.
	out, err := exec.Command(filepath.Join(binDir, "calloutctl"), "-server", s.url, "hosts").CombinedOutput()
	if err != nil || !strings.Contains(string(out), dest.Addr()) || strings.Count(string(out), "jobs waiting for busy hosts") != 3 {
		t.Fatalf("calloutctl hosts: %v\n%s", err, out)
	}
	for i := range times {
		n := 0
		for j := i; j < len(times) && times[j].Sub(times[i]) < time.Second; j++ {
			n++
		}
		if n > 6 {
			t.Fatalf("%d callouts within one second from %v, RATE=5", n, times[i])
		}
	}
}

// With reuse on, a kept idle connection holds its slot: the destination
// never sees more than MAX_CONNS connections, idle ones included, and a
// prober waiting for a slot that another keeps idle gets it (the other
// closes the connection when asked), so no verify waits to its deadline.
func TestFleetLimitsWithReuse(t *testing.T) {
	s := newSystem(t, options{env: map[string][]string{"prober": {
		"CALLOUT_PROBER_MAX_CONNS=2", "CALLOUT_PROBER_RATE=1000", "CALLOUT_PROBER_LEASE_TTL=3s",
		"CALLOUT_PROBER_IDLE_TIMEOUT=30s", "CALLOUT_PROBER_WORKERS=8",
	}}})
	s.start("prober")
	s.start("prober")
	var boxes []string
	for i := 0; i < 60; i += 2 {
		boxes = append(boxes, fmt.Sprintf("b%d@example.net", i))
	}
	dest := destination(t, smtptest.Config{Mailboxes: boxes, Delay: 10 * time.Millisecond})
	s.setPolicy("example.net", domains.Policy{Route: []string{dest.Addr()}})
	var wg sync.WaitGroup
	for round := 0; round < 3; round++ {
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := round*20 + i
				rep := s.verify(fmt.Sprintf("b%d@example.net", n))
				want := verdict.Accept
				if n%2 == 1 {
					want = verdict.Reject
				}
				if rep.Decision.Action != want {
					t.Errorf("b%d: %s %s, want %s", n, rep.Decision.Action, rep.Decision, want)
				}
			}()
		}
		wg.Wait()
	}
	if p := dest.Peak(); p > 2 {
		t.Fatalf("the destination saw %d connections at once (idle ones included), MAX_CONNS=2", p)
	}
	if c := dest.Conns(); c >= 60 {
		t.Fatalf("%d connections for 60 callouts: none was reused", c)
	}
}

// A prober killed in the middle of callouts keeps its share of a host at
// most its lease time: the others then take the slots.
func TestFleetLeaseFreedOnKill(t *testing.T) {
	s := newSystem(t, options{env: map[string][]string{"prober": {
		"CALLOUT_PROBER_MAX_CONNS=2", "CALLOUT_PROBER_LEASE_TTL=3s", "CALLOUT_PROBER_REUSE_MAX_RCPTS=0",
	}}})
	release := make(chan struct{})
	var once sync.Once
	dest := destination(t, smtptest.Config{Rcpt: func(_, to string) string {
		<-release
		return "250 2.1.5 Ok"
	}})
	t.Cleanup(func() { once.Do(func() { close(release) }) }) // before the destination closes
	s.setPolicy("hold.example", domains.Policy{Route: []string{dest.Addr()}})
	for i := 0; i < 2; i++ {
		go func() { s.verify(fmt.Sprintf("h%d@hold.example", i)) }()
	}
	waitFor(t, 10*time.Second, func() bool { return dest.Active() == 2 })
	s.procs["prober"][0].Kill() // holds both slots (the test server, blocked in RCPT, does not see the sockets close)
	s.start("prober")
	// The new prober gets the redelivered jobs and, once the dead one's
	// leases expire, the slots: two new connections.
	waitFor(t, 15*time.Second, func() bool { return dest.Conns() >= 4 })
	// And the new prober keeps to the limit while it holds the slots past
	// their TTL (it renews its leases): no third connection.
	time.Sleep(4 * time.Second)
	if n := dest.Conns(); n != 4 {
		t.Fatalf("%d connections: the new prober went past MAX_CONNS=2", n)
	}
	once.Do(func() { close(release) })
}
