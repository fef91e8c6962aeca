package verify

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
)

// Monitor mode: callouts run and are cached, the MTA is always told to
// accept, and what callout mode would have done is in the reply and counted
// per domain.
func TestMonitorMode(t *testing.T) {
	sys := startSystem(t, ingestConfig())
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@watch.example"}, Rcpt: func(_, to string) string {
		switch {
		case strings.HasPrefix(to, "alice@"):
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
		if rep.Decision.Action != verdict.Accept || rep.Verdict.Reason != ReasonBypass {
			t.Fatalf("%s: %+v %+v", a, rep.Decision, rep.Verdict)
		}
	}
	if dest.Conns() != 0 {
		t.Fatalf("%d connections for bypassed addresses", dest.Conns())
	}
	expect(t, sys.verify(t, rcpt("other@example.org")), verdict.Reject, 550, verdict.SourceProbe)
}
