package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
	"github.com/callout-mail/callout/tools/stack"
)

// A destination that is down opens its breaker; later verifies defer at
// once without a connection; once it is back, verifies succeed.
func TestBreaker(t *testing.T) {
	s := newSystem(t, options{env: map[string][]string{"prober": {"CALLOUT_PROBER_BREAKER_FAILURES=3", "CALLOUT_PROBER_BREAKER_OPEN=2s"}}})
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	s.setPolicy("example.org", domains.Policy{Route: []string{addr}})
	for i := 0; i < 3; i++ {
		rep := s.verify(fmt.Sprintf("down%d@example.org", i))
		must(t, rep, verdict.Defer, 450)
		if rep.Verdict.Reason != "connect_failed" {
			t.Fatalf("attempt %d: reason %s", i, rep.Verdict.Reason)
		}
	}
	rep := s.verify("open@example.org")
	must(t, rep, verdict.Defer, 450)
	if rep.Verdict.Reason != "breaker_open" {
		t.Fatalf("breaker not open: %s", rep.Verdict.Reason)
	}
	dest, err := smtptest.Start(addr, smtptest.Config{Mailboxes: []string{"back@example.org"}})
	if err != nil {
		t.Skipf("port %d taken meanwhile: %v", port, err)
	}
	defer dest.Close()
	if rep := s.verify("open2@example.org"); rep.Verdict.Reason == "breaker_open" && dest.Conns() != 0 {
		t.Fatal("a connection was made while the breaker was open")
	}
	waitFor(t, 15*time.Second, func() bool { return s.verify("back@example.org").Decision.Action == verdict.Accept })
}

// kill -9 a prober mid-callout: the job finishes on a second prober and the
// MTA gets the right verdict.
func TestKillProberMidCallout(t *testing.T) {
	s := newSystem(t, options{})
	var calls atomic.Int32
	reached := make(chan struct{})
	dest := destination(t, smtptest.Config{Rcpt: func(from, to string) string {
		if calls.Add(1) == 1 {
			close(reached)
			time.Sleep(4 * time.Second) // the prober dies while waiting here
		}
		return smtptest.Mailboxes([]string{"alice@example.org"}, nil)(from, to)
	}})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	answer := make(chan wire.VerifyReply, 1)
	go func() { answer <- s.verify("alice@example.org") }()
	select {
	case <-reached:
	case <-time.After(10 * time.Second):
		t.Fatal("callout never reached RCPT")
	}
	s.start("prober")
	s.procs["prober"][0].Kill()
	select {
	case rep := <-answer:
		must(t, rep, verdict.Accept, 250)
		if rep.Verdict.Source != verdict.SourceProbe || rep.Verdict.Status != verdict.Valid {
			t.Fatalf("verdict %+v", rep.Verdict)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no answer")
	}
	if calls.Load() < 3 {
		t.Fatalf("%d RCPTs: the job was not redone", calls.Load())
	}
}

// Restart the cachekeeper while verdicts flow: every verdict ends up in KV.
func TestCachekeeperRestart(t *testing.T) {
	s := newSystem(t, options{env: map[string][]string{"ingest": {"CALLOUT_INGEST_LOOKUP_TIMEOUT=200ms"}}})
	var boxes []string
	for i := 0; i < 60; i++ {
		boxes = append(boxes, fmt.Sprintf("u%d@example.org", i))
	}
	dest := destination(t, smtptest.Config{Mailboxes: boxes, Delay: 5 * time.Millisecond})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	var wg sync.WaitGroup
	for i, b := range boxes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			must(t, s.verify(b), verdict.Accept, 250)
		}()
		if i == 20 {
			_ = s.procs["cachekeeper"][0].Stop(10 * time.Second)
		}
		if i == 40 {
			s.start("cachekeeper")
		}
	}
	wg.Wait()
	waitFor(t, 30*time.Second, func() bool {
		for _, b := range boxes {
			local, _, _ := strings.Cut(b, "@")
			if _, err := s.cacheEntry(kvkey.Address("example.org", local, verdict.Recipient, "")); err != nil {
				return false
			}
		}
		return true
	})
}

// policyAsk sends one Postfix policy request and returns the action line.
func policyAsk(t *testing.T, addr, rcpt string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.5\nrecipient="+rcpt+"\n\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// Restart nats-server: requests during the outage defer; afterwards the
// services reconnect by themselves.
func TestNATSRestart(t *testing.T) {
	s := newSystem(t, options{env: map[string][]string{"ingest": {"CALLOUT_INGEST_TIMEOUT=2s"}}})
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org", "bob@example.org"}})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	must(t, s.verify("alice@example.org"), verdict.Accept, 250)
	if err := s.nats.Stop(10 * time.Second); err != nil {
		t.Logf("nats-server stop: %v", err)
	}
	// An MTA on the Postfix adapter still gets an answer: a defer.
	action, err := policyAsk(t, s.policy, "bob@example.org", 10*time.Second)
	if err != nil {
		t.Fatalf("no answer during the outage: %v", err)
	}
	if !strings.HasPrefix(action, "action=4") {
		t.Fatalf("answer during the outage: %q", action)
	}
	s.startNATS() // same port, same store
	waitFor(t, 30*time.Second, func() bool {
		a, err := policyAsk(t, s.policy, "bob@example.org", 5*time.Second)
		return err == nil && a == "action=DUNNO"
	})
	waitFor(t, 30*time.Second, func() bool { return s.nc.IsConnected() })
	must(t, s.verify("alice@example.org"), verdict.Accept, 250)
	// The server forgot the lease stream (memory): bob's callout made it
	// again, and the fleet-wide limits held without a failure.
	if _, err := s.js.Stream(context.Background(), subjects.New("").LeaseStream()); err != nil {
		t.Errorf("lease stream after the restart: %v", err)
	}
	log, _ := os.ReadFile(filepath.Join(s.dir, "prober-0.log"))
	if strings.Contains(string(log), "fleet-wide limits unavailable") {
		t.Errorf("the prober fell back to its own limits after the restart")
	}
}

// Three nodes, replicas 3: kill one node while verifying; every request is
// answered and every verdict stored.
func TestClusterNodeLoss(t *testing.T) {
	dir := t.TempDir()
	var ports, routes [3]int
	for i := range ports {
		ports[i], routes[i] = freePort(t), freePort(t)
	}
	var routeURLs []string
	for _, r := range routes {
		routeURLs = append(routeURLs, fmt.Sprintf("nats-route://127.0.0.1:%d", r))
	}
	var nodes []*stack.Proc
	var urls []string
	for i := range ports {
		conf, _ := filepath.Abs(fmt.Sprintf("../deploy/nats/cluster/n%d.conf", i+1))
		p, err := stack.StartIn(dir, dir, fmt.Sprintf("nats-n%d", i+1), filepath.Join(binDir, "nats-server"), []string{
			"-c", conf, "-p", strconv.Itoa(ports[i]), "-m", strconv.Itoa(freePort(t)),
			"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", routes[i]), "--routes", strings.Join(routeURLs, ","),
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, p)
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
		t.Cleanup(func() { _ = p.Stop(10 * time.Second) })
	}
	for _, u := range urls {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := stack.WaitNATS(ctx, u)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	url := strings.Join(urls, ",")
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// JetStream is ready when the meta leader is elected.
	waitFor(t, 30*time.Second, func() bool {
		_, err := js.AccountInfo(context.Background())
		return err == nil
	})
	s := &system{t: t, dir: dir, url: url, procs: map[string][]*stack.Proc{}, nc: nc, js: js, names: newNames(),
		policy: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		env: map[string][]string{
			"cachekeeper": {"CALLOUT_CACHEKEEPER_REPLICAS=3"},
			"prober":      {"CALLOUT_PROBER_REPLICAS=3"},
			"ingest":      {"CALLOUT_INGEST_REPLICAS=3", "CALLOUT_INGEST_TIMEOUT=10s"},
		}}
	s.nats = nodes[0]
	s.startServices()
	var boxes []string
	for i := 0; i < 40; i++ {
		boxes = append(boxes, fmt.Sprintf("c%d@example.org", i))
	}
	dest := destination(t, smtptest.Config{Mailboxes: boxes, Delay: 10 * time.Millisecond})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	var wg sync.WaitGroup
	var answered atomic.Int32
	for i, b := range boxes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bs, _ := wire.Encode(&wire.VerifyRequest{Address: b})
			// An MTA retries a request lost with a node, as Postfix retries
			// its policy service: a moment later, not at once (while the
			// ingest's connection moves to another node, a request can
			// find no responder at once).
			for end := time.Now().Add(40 * time.Second); time.Now().Before(end); {
				m, err := nc.Request(s.names.Verify(), bs, 15*time.Second)
				if err != nil {
					time.Sleep(500 * time.Millisecond)
					continue
				}
				var rep wire.VerifyReply
				if err := wire.Decode(m.Data, &rep); err != nil {
					t.Errorf("%s: %v", b, err)
					return
				}
				if rep.Decision.Action == verdict.Reject {
					t.Errorf("%s rejected", b)
				}
				answered.Add(1)
				return
			}
			t.Errorf("%s: no answer", b)
		}()
		if i == 15 {
			nodes[2].Kill()
		}
		time.Sleep(20 * time.Millisecond) // a steady flow, not a burst
	}
	wg.Wait()
	if int(answered.Load()) != len(boxes) {
		t.Fatalf("%d of %d answered", answered.Load(), len(boxes))
	}
	// Every address is eventually stored as valid (deferred ones on a retry).
	waitFor(t, 60*time.Second, func() bool {
		for _, b := range boxes {
			local, _, _ := strings.Cut(b, "@")
			if v, err := s.cacheEntry(kvkey.Address("example.org", local, verdict.Recipient, "")); err != nil || v.Status != verdict.Valid {
				s.verify(b)
				return false
			}
		}
		return true
	})
}
