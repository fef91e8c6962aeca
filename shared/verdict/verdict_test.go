package verdict

import (
	"strings"
	"testing"
)

func TestDecide(t *testing.T) {
	rcpt := Policy{Purpose: Recipient}
	lenient := Policy{Purpose: Recipient, OnTempfail: Accept, OnUnverifiable: Accept}
	strict := Policy{Purpose: Recipient, OnTempfail: Defer, OnUnverifiable: Defer}
	snd := Policy{Purpose: Sender}
	a := func(s Status, src Source, code int) Verdict {
		return Verdict{Kind: KindAddress, Address: "a@example.org", Domain: "example.org", Status: s, Source: src, Code: code}
	}
	tests := []struct {
		name     string
		v        Verdict
		p        Policy
		action   Action
		code     int
		enhanced string
	}{
		{"valid", a(Valid, SourceProbe, 250), rcpt, Accept, 250, "2.1.5"},
		{"valid from cache", a(Valid, SourceCache, 250), rcpt, Accept, 250, "2.1.5"},
		{"invalid 550", a(Invalid, SourceProbe, 550), rcpt, Reject, 550, "5.1.1"},
		{"invalid cached 550", a(Invalid, SourceCache, 550), rcpt, Reject, 550, "5.1.1"},
		{"invalid static list", a(Invalid, SourceStatic, 0), rcpt, Reject, 550, "5.1.1"},
		{"invalid without 5xx code never rejects", a(Invalid, SourceProbe, 0), rcpt, Defer, 450, "4.4.3"},
		{"invalid with 4xx code never rejects", a(Invalid, SourceProbe, 450), rcpt, Defer, 450, "4.4.3"},
		{"invalid domain fact never rejects", Verdict{Kind: KindDomain, Status: Invalid, Code: 550, Source: SourceProbe}, rcpt, Defer, 450, "4.4.3"},
		{"invalid sender", a(Invalid, SourceProbe, 550), snd, Reject, 550, "5.1.0"},
		{"catch_all", a(CatchAll, SourceCache, 250), rcpt, Accept, 250, "2.1.5"},
		{"not_catch_all is no answer", a(NotCatchAll, SourceCache, 550), rcpt, Defer, 450, "4.4.3"},
		{"tempfail defers", a(TempFail, SourceProbe, 451), rcpt, Defer, 450, "4.4.3"},
		{"tempfail accept by policy", a(TempFail, SourceProbe, 451), lenient, Accept, 250, "2.1.5"},
		{"tempfail strict", a(TempFail, SourceProbe, 451), strict, Defer, 450, "4.4.3"},
		{"unverifiable accepts by default", a(Unverifiable, SourceProbe, 550), rcpt, Accept, 250, "2.1.5"},
		{"unverifiable strict defers", a(Unverifiable, SourceProbe, 550), strict, Defer, 450, "4.4.3"},
		{"skipped", a(Skipped, SourceStatic, 0), rcpt, Accept, 250, "2.1.5"},
		{"relay denied", a(RelayDenied, SourceStatic, 0), rcpt, Reject, 550, "5.7.1"},
		{"relay denied is no sender fault", a(RelayDenied, SourceStatic, 0), snd, Accept, 250, "2.1.0"},
		{"malformed", a(Malformed, SourceStatic, 0), rcpt, Reject, 501, "5.1.3"},
		{"unknown status defers", a(Status("weird"), SourceProbe, 550), rcpt, Defer, 450, "4.4.3"},
		{"empty status defers", a("", SourceProbe, 550), rcpt, Defer, 450, "4.4.3"},
	}
	covered := map[Status]bool{}
	for _, tt := range tests {
		covered[tt.v.Status] = true
		d := Decide(tt.v, tt.p)
		if d.Action != tt.action || d.Code != tt.code || d.Enhanced != tt.enhanced {
			t.Errorf("%s: Decide = %+v, want %s %d %s", tt.name, d, tt.action, tt.code, tt.enhanced)
		}
		if d.Action == Reject && tt.v.Status != Invalid && tt.v.Status != RelayDenied && tt.v.Status != Malformed {
			t.Errorf("%s: rejected on %s", tt.name, tt.v.Status)
		}
	}
	for _, s := range Statuses {
		if !covered[s] {
			t.Errorf("status %s has no row in the decision table", s)
		}
	}
}

// Only a definite invalid may reject, whatever else the verdict holds.
func TestNothingButInvalidRejects(t *testing.T) {
	for _, s := range Statuses {
		for _, code := range []int{0, 250, 252, 421, 450, 550, 554} {
			for _, src := range []Source{SourceProbe, SourceCache, SourceStatic} {
				for _, p := range []Policy{{Purpose: Recipient}, {Purpose: Sender}, {Purpose: Recipient, OnTempfail: Accept, OnUnverifiable: Defer}} {
					v := Verdict{Kind: KindAddress, Address: "x@y.org", Status: s, Code: code, Source: src}
					d := Decide(v, p)
					if d.Action != Reject {
						continue
					}
					ok := s == Invalid && Definite(v) || s == RelayDenied && p.Purpose == Recipient || s == Malformed
					if !ok {
						t.Errorf("reject for %+v with %+v", v, p)
					}
				}
			}
		}
	}
}

func TestDecisionTextHidesDestination(t *testing.T) {
	v := Verdict{Kind: KindAddress, Address: "a@example.org", Status: TempFail, Host: "10.1.2.3:25", Text: "mx1.internal says no", Code: 451}
	for _, p := range []Policy{{Purpose: Recipient}, {Purpose: Sender}} {
		d := Decide(v, p)
		if strings.Contains(d.Text, "10.1.2.3") || strings.Contains(d.Text, "internal") {
			t.Errorf("decision text leaks the destination: %q", d.Text)
		}
	}
}

func TestCleanText(t *testing.T) {
	if got := CleanText("User\r\nunknown\x00 \x1b[31m"); got != "User  unknown   [31m" {
		t.Errorf("CleanText = %q", got)
	}
	if got := CleanText(strings.Repeat("x", 5000)); len(got) > MaxText {
		t.Errorf("CleanText kept %d bytes", len(got))
	}
}

// Reasons about the request, not the address, are always deferred, with
// their own codes, whatever the policy says of tempfails.
func TestDecideRequestReasons(t *testing.T) {
	for _, tc := range []struct {
		reason   Reason
		code     int
		enhanced string
	}{{ReasonBraked, 450, "4.7.1"}, {ReasonShed, 451, "4.3.2"}, {ReasonBadRequest, 451, "4.3.5"}} {
		for _, pol := range []Policy{{}, {OnTempfail: Accept}} {
			d := Decide(Verdict{Address: "a@example.org", Status: TempFail, Reason: tc.reason}, pol)
			if d.Action != Defer || d.Code != tc.code || d.Enhanced != tc.enhanced {
				t.Errorf("%s under %+v: %+v", tc.reason, pol, d)
			}
		}
	}
}
