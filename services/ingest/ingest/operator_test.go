package ingest

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

// Monitor mode: callouts run and are cached, the MTA is always told to
// accept, and what callout mode would have done is in the reply and counted
// per domain.
func TestMonitorMode(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@watch.example"}, Rcpt: func(_, to string) string {
		switch {
		case strings.HasPrefix(to, "alice@"), strings.HasPrefix(to, "postmaster@"):
			return "250 2.1.5 Ok"
		case strings.HasPrefix(to, "grey@"):
			return "450 4.2.0 Greylisted"
		}
		return "550 5.1.1 <" + to + ">: Recipient address rejected: User unknown in local recipient table"
	}})
	sys.policy(t, "watch.example", domains.Policy{Mode: domains.ModeMonitor, Route: []string{dest.Addr()}})
	rep := sys.verify(t, rcpt("alice@watch.example"))
	if rep.Decision.Action != verdict.Accept || rep.Would != nil || rep.WouldReject {
		t.Fatalf("valid: %+v would %+v", rep.Decision, rep.Would)
	}
	for i := 0; i < 2; i++ {
		rep = sys.verify(t, rcpt("nobody@watch.example"))
		if rep.Decision.Action != verdict.Accept || !rep.WouldReject || rep.Would == nil || rep.Would.Code != 550 || rep.Verdict.Status != verdict.Invalid {
			t.Fatalf("unknown user: %+v would %+v %+v", rep.Decision, rep.Would, rep.Verdict)
		}
	}
	rep = sys.verify(t, rcpt("grey@watch.example"))
	if rep.Decision.Action != verdict.Accept || rep.WouldReject || rep.Would == nil || rep.Would.Action != verdict.Defer {
		t.Fatalf("greylisted: %+v would %+v", rep.Decision, rep.Would)
	}
	if n := testutil.ToFloat64(sys.ingest.m.monitored.WithLabelValues("watch.example", "reject")); n != 2 {
		t.Fatalf("%v would-rejects counted, want 2", n)
	}
	if n := testutil.ToFloat64(sys.ingest.m.monitored.WithLabelValues("watch.example", "defer")); n != 1 {
		t.Fatalf("%v would-defers counted, want 1", n)
	}
	// Switched to callout mode, the cached invalid now rejects.
	sys.policy(t, "watch.example", domains.Policy{Mode: domains.ModeCallout, Route: []string{dest.Addr()}})
	expect(t, sys.verify(t, rcpt("nobody@watch.example")), verdict.Reject, 550, "")
}

// The bypass list is accepted without a callout, case-insensitively and
// with sub-addresses.
func TestBypassList(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}, Bypass: []string{"abuse", "Sales@example.org"}})
	for _, a := range []string{"abuse@example.org", "ABUSE@example.org", "sales+eu@example.org"} {
		rep := sys.verify(t, rcpt(a))
		if rep.Decision.Action != verdict.Accept || rep.Verdict.Reason != verdict.ReasonBypass {
			t.Fatalf("%s: %+v %+v", a, rep.Decision, rep.Verdict)
		}
	}
	if dest.Conns() != 0 {
		t.Fatalf("%d connections for bypassed addresses", dest.Conns())
	}
	expect(t, sys.verify(t, rcpt("other@example.org")), verdict.Reject, 550, verdict.SourceProbe)
}

// A traced verify runs a fresh callout (the cache is not read), returns the
// dialogue the destination saw, stores the verdict like any, and is never
// run or returned on the MTA subject.
func TestTracedCallout(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	sys.policy(t, "example.org", domains.Policy{Route: []string{dest.Addr()}})
	expect(t, sys.verify(t, rcpt("alice@example.org")), verdict.Accept, 250, verdict.SourceProbe)
	waitfor.Cond(t, 15*time.Second, func() bool { return sys.verify(t, rcpt("alice@example.org")).Verdict.Source == verdict.SourceCache })
	if rep := sys.verify(t, rcpt("alice@example.org")); len(rep.Transcript) != 0 {
		t.Fatal("a transcript in an MTA's reply")
	}
	before := len(dest.Lines())
	req := rcpt("alice@example.org")
	req.Trace = true
	b, _ := wire.Encode(&req)
	// On the MTA subject a trace is refused.
	m, err := sys.nc.Request(subjects.New("").Verify(), b, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var refused wire.VerifyReply
	if err := wire.Decode(m.Data, &refused); err != nil || len(refused.Transcript) != 0 || refused.Error == "" {
		t.Fatalf("trace on the MTA subject: %+v %v", refused, err)
	}
	m, err = sys.nc.Request(subjects.New("").VerifyTrace(), b, 15*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rep wire.VerifyReply
	if err := wire.Decode(m.Data, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Decision.Action != verdict.Accept || rep.Verdict.Source != verdict.SourceProbe {
		t.Fatalf("traced: %+v %+v", rep.Decision, rep.Verdict)
	}
	// The commands in the transcript are what the destination received.
	var sent []string
	for _, l := range rep.Transcript {
		if l.Kind == "C" {
			sent = append(sent, l.Text)
		}
	}
	got := dest.Lines()[before:]
	if strings.Join(sent, "|") != strings.Join(got, "|") {
		t.Fatalf("transcript commands\n%q\ndestination saw\n%q", sent, got)
	}
	var replies, notes int
	for _, l := range rep.Transcript {
		switch l.Kind {
		case "S":
			replies++
		case "*":
			notes++
		}
	}
	text := ""
	for _, l := range rep.Transcript {
		text += l.Text + "\n"
	}
	if replies < len(sent) || !strings.Contains(text, "hosts by the domain's route") || !strings.Contains(text, "RCPT reply classified valid") || !strings.Contains(text, "connected to") {
		t.Fatalf("transcript lacks replies or notes:\n%s", text)
	}
}
