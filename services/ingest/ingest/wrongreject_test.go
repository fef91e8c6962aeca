package ingest

import (
	"bufio"
	"context"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callout-mail/callout/services/ingest/policyd"
	"github.com/callout-mail/callout/shared/dnstest"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

func sender(a string) wire.VerifyRequest {
	return wire.VerifyRequest{Address: a, Purpose: verdict.Sender, ClientAddress: "192.0.2.10"}
}

// mxSystem runs the pipeline with a local DNS server that knows the given
// records; hosts found by MX are reached on mxPort.
func mxSystem(t *testing.T, icfg Config, mxPort string, records ...string) *system {
	t.Helper()
	pcfg := proberConfig()
	pcfg.DNSServer = dnstest.Start(t, records...)
	pcfg.MXPort, _ = strconv.Atoi(mxPort)
	return startSystemWith(t, icfg, pcfg)
}

// drained waits until every verdict published so far has been handled by a
// cachekeeper: the verdict stream is a work queue, so it is then empty.
// (The consumer's pending counts can lag a message the stream just took.)
func (s *system) drained(t *testing.T) {
	t.Helper()
	js := natstest.JetStream(t, s.nc)
	n := subjects.New("")
	waitfor.Cond(t, 15*time.Second, func() bool {
		st, err := js.Stream(context.Background(), n.VerdictStream())
		if err != nil {
			return false
		}
		info, err := st.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	})
}

// A sender check of a served domain goes by MX (here: a null MX, the
// domain's public DNS says it takes no mail) and is refused. That must
// never answer a recipient check, which goes by the domain's route.
func TestSenderFactsNeverAnswerRecipients(t *testing.T) {
	dest := destination(t, smtptest.Config{Mailboxes: []string{"user@corp.example", "other@corp.example"}, Delay: 20 * time.Millisecond})
	_, port, _ := net.SplitHostPort(dest.Addr())
	sys := mxSystem(t, ingestConfig(), port, "corp.example. 60 IN MX 0 .")
	sys.policy(t, "corp.example", domains.Policy{Route: []string{dest.Addr()}})

	t.Run("sequential", func(t *testing.T) {
		expect(t, sys.verify(t, sender("user@corp.example")), verdict.Reject, 550, verdict.SourceProbe)
		sys.drained(t)
		expect(t, sys.verify(t, sender("user@corp.example")), verdict.Reject, 550, verdict.SourceCache)
		rep := sys.verify(t, rcpt("user@corp.example"))
		expect(t, rep, verdict.Accept, 250, verdict.SourceProbe)
		if dest.RcptsFor("user@corp.example") != 1 {
			t.Fatalf("%d RCPTs for the recipient, want 1", dest.RcptsFor("user@corp.example"))
		}
	})
	t.Run("concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		var snd, rcv wire.VerifyReply
		wg.Add(2)
		go func() { defer wg.Done(); snd = sys.verify(t, sender("other@corp.example")) }()
		go func() { defer wg.Done(); rcv = sys.verify(t, rcpt("other@corp.example")) }()
		wg.Wait()
		if snd.Decision.Action != verdict.Reject || rcv.Decision.Action != verdict.Accept {
			t.Fatalf("sender %+v, recipient %+v", snd.Decision, rcv.Decision)
		}
	})
}

// A sender check through the public MX (here a filter that accepts every
// address) must not mark the served domain as a catch-all for recipients.
func TestCatchAllThroughMXStaysApart(t *testing.T) {
	filter := destination(t, smtptest.Config{CatchAll: []string{"served.example"}})
	real := destination(t, smtptest.Config{Mailboxes: []string{"alice@served.example"}})
	_, port, _ := net.SplitHostPort(filter.Addr())
	sys := mxSystem(t, ingestConfig(), port,
		"served.example. 60 IN MX 10 mx.served.example.", "mx.served.example. 60 IN A 127.0.0.1")
	sys.policy(t, "served.example", domains.Policy{Route: []string{real.Addr()}})
	expect(t, sys.verify(t, sender("someone@served.example")), verdict.Accept, 250, verdict.SourceProbe)
	sys.drained(t)
	rep := sys.verify(t, rcpt("bob@served.example"))
	expect(t, rep, verdict.Reject, 550, verdict.SourceProbe)
	if real.RcptsFor("bob@served.example") != 1 {
		t.Fatal("the route was not asked")
	}
}

// Forms that an MTA has accepted are never rejected for their form.
func TestAcceptedForms(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	sys.policy(t, "static.example", domains.Policy{Mode: domains.ModeStatic, Mailboxes: []string{"listed"}})

	t.Run("null sender", func(t *testing.T) {
		for _, a := range []string{"", "<>", " <> "} {
			rep := sys.verify(t, sender(a))
			if rep.Decision.Action != verdict.Accept || rep.Verdict.Reason != verdict.ReasonNullSender {
				t.Fatalf("%q: %+v %+v", a, rep.Decision, rep.Verdict)
			}
		}
	})
	t.Run("postmaster", func(t *testing.T) {
		before := dest.Rcpts()
		for _, a := range []string{"postmaster", "<Postmaster>", "postmaster@example.org", "POSTMASTER@static.example", "postmaster@elsewhere.example"} {
			rep := sys.verify(t, rcpt(a))
			if rep.Decision.Action != verdict.Accept || rep.Verdict.Reason != verdict.ReasonPostmaster {
				t.Fatalf("%q: %+v %+v", a, rep.Decision, rep.Verdict)
			}
		}
		if dest.Rcpts() != before {
			t.Fatal("postmaster was called out")
		}
	})
	t.Run("trailing dot", func(t *testing.T) {
		rep := sys.verify(t, rcpt("alice@example.org."))
		expect(t, rep, verdict.Accept, 250, "")
		if rep.Verdict.Address != "alice@example.org" {
			t.Fatalf("address %q", rep.Verdict.Address)
		}
		expect(t, sys.verify(t, rcpt("nobody@Example.ORG.")), verdict.Reject, 550, "")
	})
	t.Run("odd domains are unverifiable", func(t *testing.T) {
		for _, a := range []string{"a@host_name.example", "a@localhost", "a@-x.example"} {
			for _, p := range []verdict.Purpose{verdict.Recipient, verdict.Sender} {
				rep := sys.verify(t, wire.VerifyRequest{Address: a, Purpose: p})
				if rep.Decision.Action != verdict.Accept || rep.Verdict.Status != verdict.Unverifiable {
					t.Fatalf("%q as %s: %+v %+v", a, p, rep.Decision, rep.Verdict)
				}
			}
		}
	})
	t.Run("unknown recipient domain is accepted by default", func(t *testing.T) {
		rep := sys.verify(t, rcpt("x@not-served.example"))
		expect(t, rep, verdict.Accept, 250, verdict.SourceStatic)
		if rep.Verdict.Status != verdict.Unverifiable || rep.Verdict.Reason != verdict.ReasonNotServed {
			t.Fatalf("verdict %+v", rep.Verdict)
		}
	})
}

// Through the Postfix policy protocol nothing is rejected for its form:
// Postfix parsed it already. Input that could inject gets the malformed
// answer (DUNNO or a defer), never a 5xx.
func TestPolicyProtocolForms(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	for _, deferMalformed := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := policyd.New(policyd.Config{Senders: true, MalformedDefer: deferMalformed}, sys.ingest.Verify, quiet)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = srv.Serve(ctx, ln); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		ask := func(attrs string) string {
			t.Helper()
			_ = c.SetDeadline(time.Now().Add(15 * time.Second))
			if _, err := io.WriteString(c, "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.7\n"+attrs+"\n"); err != nil {
				t.Fatal(err)
			}
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			_, _ = r.ReadString('\n')
			return strings.TrimSuffix(line, "\n")
		}
		for _, rc := range []string{"postmaster", "user@[192.0.2.1]", "a@host_name.example", "a@localhost", "alice@example.org.", "taro..yamada@example.org", "x@not-served.example"} {
			if got := ask("sender=\nrecipient=" + rc + "\n"); got != "action=DUNNO" {
				t.Fatalf("recipient %q: %s", rc, got)
			}
		}
		// The null sender and odd senders pass too.
		if got := ask("sender=<>\nrecipient=alice@example.org\n"); got != "action=DUNNO" {
			t.Fatalf("null sender: %s", got)
		}
		// Not an address at all: the malformed answer.
		want := "action=DUNNO"
		if deferMalformed {
			want = "action=451 4.3.5 Policy request not understood"
		}
		for _, rc := range []string{"no-at-sign", "@example.org"} {
			if got := ask("recipient=" + rc + "\n"); got != want {
				t.Fatalf("recipient %q: %s, want %s", rc, got, want)
			}
		}
		// A real unknown user is still rejected.
		if got := ask("recipient=nobody@example.org\n"); !strings.HasPrefix(got, "action=550 5.1.1") {
			t.Fatalf("unknown user: %s", got)
		}
		c.Close()
	}
}

// Rejecting recipient domains without a policy stays available.
func TestUnknownDomainsRejectSetting(t *testing.T) {
	cfg := ingestConfig()
	cfg.UnknownDomains = "reject"
	sys := startSystem(t, cfg)
	rep := sys.verify(t, rcpt("x@not-served.example"))
	expect(t, rep, verdict.Reject, 550, verdict.SourceStatic)
	if rep.Decision.Enhanced != "5.7.1" {
		t.Fatalf("decision %+v", rep.Decision)
	}
	// Postmaster is still accepted.
	expect(t, sys.verify(t, rcpt("postmaster@not-served.example")), verdict.Accept, 250, verdict.SourceStatic)
}

// A stored policy that does not parse never leads to a reject: the domain
// keeps its last good policy from the bucket's history, or is called out
// with defaults.
func TestBadStoredPolicyNeverRejects(t *testing.T) {
	cfg := ingestConfig()
	cfg.UnknownDomains = "reject"
	sys := startSystem(t, cfg)
	dest := destination(t, smtptest.Config{Rcpt: func(_, to string) string {
		if strings.HasPrefix(to, "alice@") {
			return "250 2.1.5 Ok"
		}
		return "550 5.1.1 User unknown"
	}})
	good := `{"route":["` + dest.Addr() + `"]}`
	for i, bad := range []string{
		`{"route":["` + dest.Addr() + `"],"unknown_field":1}`,
		`{"route":["127.0.0.1"]}`,
		`{"route":["` + dest.Addr() + `"],"on_tempfail":"Accept"}`,
	} {
		domain := "bad" + strconv.Itoa(i) + ".example"
		if _, err := sys.kv.Put(context.Background(), domain, []byte(good)); err != nil {
			t.Fatal(err)
		}
		waitfor.Cond(t, 15*time.Second, func() bool { _, ok := sys.ingest.domains.Lookup(domain); return ok })
		if _, err := sys.kv.Put(context.Background(), domain, []byte(bad)); err != nil {
			t.Fatal(err)
		}
		waitfor.Cond(t, 15*time.Second, func() bool { return sys.ingest.domains.Errors() == i+1 })
		// A fresh instance, started after the bad write, decides the same.
		fresh, err := domains.Watch(context.Background(), sys.kv, quiet)
		if err != nil {
			t.Fatal(err)
		}
		p1, _ := sys.ingest.domains.Lookup(domain)
		p2, _ := fresh.Lookup(domain)
		if len(p1.Route) != 1 || len(p2.Route) != 1 || p1.Route[0] != p2.Route[0] {
			t.Fatalf("%s: instances disagree: %+v vs %+v", bad, p1, p2)
		}
		// The last good policy's route is asked.
		expect(t, sys.verify(t, rcpt("alice@"+domain)), verdict.Accept, 250, verdict.SourceProbe)
	}
	// Without any good revision the domain is still not rejected as unserved.
	if _, err := sys.kv.Put(context.Background(), "never-good.example", []byte(`{"mode":"Static"}`)); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 15*time.Second, func() bool { return sys.ingest.domains.Errors() == 4 })
	rep := sys.verify(t, rcpt("someone@never-good.example"))
	if rep.Decision.Action == verdict.Reject {
		t.Fatalf("rejected: %+v %+v", rep.Decision, rep.Verdict)
	}
	// Fixing the policy clears the error.
	if _, err := sys.kv.Put(context.Background(), "never-good.example", []byte(`{"mode":"off"}`)); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 15*time.Second, func() bool { return sys.ingest.domains.Errors() == 3 })
}

// Static mode: sub-addresses are checked by their base, local parts compare
// case-insensitively.
func TestStaticSubaddress(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	sys.policy(t, "static.example", domains.Policy{Mode: domains.ModeStatic, Mailboxes: []string{"Alice", "bob@static.example"}})
	for a, want := range map[string]verdict.Action{
		"alice@static.example":       verdict.Accept,
		"ALICE+news@static.example":  verdict.Accept,
		"bob+x+y@static.example":     verdict.Accept,
		"carol+alice@static.example": verdict.Reject,
		"+alice@static.example":      verdict.Reject,
	} {
		if rep := sys.verify(t, rcpt(a)); rep.Decision.Action != want {
			t.Fatalf("%s: %+v, want %s", a, rep.Decision, want)
		}
	}
}

// A verdict whose callout started before a flush, and arrives after it, is
// not stored: the operator's fix is not undone.
func TestFlushNotUndoneByOlderVerdict(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	hold := make(chan struct{})
	var mu sync.Mutex
	exists := false
	dest := destination(t, smtptest.Config{Rcpt: func(_, to string) string {
		if strings.HasPrefix(to, "postmaster@") {
			return "250 2.1.5 Ok"
		}
		if to != "fixed@example.org" {
			return "550 5.1.1 User unknown"
		}
		mu.Lock()
		ok := exists
		mu.Unlock()
		if ok {
			return "250 2.1.5 Ok"
		}
		<-hold
		return "550 5.1.1 <fixed@example.org>: Recipient address rejected: User unknown"
	}})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	// Learn the domain fact first, so the held callout is the only one.
	expect(t, sys.verify(t, rcpt("nobody@example.org")), verdict.Reject, 550, verdict.SourceProbe)
	sys.drained(t)

	done := make(chan wire.VerifyReply, 1)
	go func() { done <- sys.verify(t, rcpt("fixed@example.org")) }()
	waitfor.Cond(t, 10*time.Second, func() bool { return dest.RcptsFor("fixed@example.org") == 1 })
	for _, cmd := range []wire.FlushCommand{
		{Scope: wire.ScopeAddress, Address: "fixed@example.org"},
		{Scope: wire.ScopeDomain, Domain: "example.org", Only: verdict.Invalid},
		{Scope: wire.ScopeAll},
	} {
		b, _ := wire.Encode(&cmd)
		if _, err := sys.nc.Request(subjects.New("").Flush(), b, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	exists = true
	mu.Unlock()
	close(hold)
	// The request that was waiting does not take the old answer either:
	// its flight refuses a verdict the flushes cover and asks afresh...
	expect(t, <-done, verdict.Accept, 250, verdict.SourceProbe)
	sys.drained(t)
	// ...and the cache did not keep the old one.
	expect(t, sys.verify(t, rcpt("fixed@example.org")), verdict.Accept, 250, "")
}

// Once the destination is known to refuse MAIL FROM:<>, callouts start with
// the fallback sender instead of asking to be refused again.
func TestFallbackSenderFirst(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	var mu sync.Mutex
	nulls := 0
	dest := destination(t, smtptest.Config{Mailboxes: []string{"a@nonull.example", "b@nonull.example"}, Mail: func(from string) string {
		if from == "" {
			mu.Lock()
			nulls++
			mu.Unlock()
			return "550 5.7.1 we do not take mail from <>"
		}
		return "250 2.1.0 Ok"
	}})
	sys.policy(t, "nonull.example", domains.Policy{Route: []string{dest.Addr()}, FallbackSender: "verify@gw.example"})
	expect(t, sys.verify(t, rcpt("a@nonull.example")), verdict.Accept, 250, verdict.SourceProbe)
	sys.drained(t)
	expect(t, sys.verify(t, rcpt("b@nonull.example")), verdict.Accept, 250, verdict.SourceProbe)
	expect(t, sys.verify(t, rcpt("c@nonull.example")), verdict.Reject, 550, verdict.SourceProbe)
	mu.Lock()
	defer mu.Unlock()
	if nulls != 1 {
		t.Fatalf("MAIL FROM:<> sent %d times, want once", nulls)
	}
}

// A destination that answers a relay refusal with the bare "550 Invalid
// recipient" it uses for unknown users refuses postmaster too (the
// control probe): none of its 5xx is a reject, the fact is cached (the
// next unknown address asks no postmaster), and a policy that turns the
// control probe off gets the rejects back.
func TestControlProbeCatchesRelayRefusal(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{Rcpt: func(_, to string) string {
		if strings.HasPrefix(to, "alice@") {
			return "250 2.1.5 Ok"
		}
		return "550 Invalid recipient"
	}})
	sys.policy(t, "relay.example", domains.Policy{Route: []string{dest.Addr()}})
	sys.policy(t, "hosted.example", domains.Policy{Route: []string{dest.Addr()}, ControlProbe: "off"})
	for _, a := range []string{"bob@relay.example", "carol@relay.example"} {
		rep := sys.verify(t, rcpt(a))
		if rep.Decision.Action != verdict.Accept || rep.Verdict.Reason != "destination_refuses_verifier" {
			t.Fatalf("%s: %+v (%s/%s)", a, rep.Decision, rep.Verdict.Status, rep.Verdict.Reason)
		}
		sys.drained(t)
	}
	if n := dest.RcptsFor("postmaster@relay.example"); n != 1 {
		t.Fatalf("postmaster asked %d times, want once", n)
	}
	expect(t, sys.verify(t, rcpt("alice@relay.example")), verdict.Accept, 250, verdict.SourceProbe)
	expect(t, sys.verify(t, rcpt("bob@hosted.example")), verdict.Reject, 550, verdict.SourceProbe)
	if n := dest.RcptsFor("postmaster@hosted.example"); n != 0 {
		t.Fatalf("postmaster of a domain with the control probe off asked %d times", n)
	}
}
