// Package verdict holds what a callout found and the one function that turns
// it into the MTA's decision.
package verdict

import (
	"fmt"
	"strings"
	"time"
)

// Status is what is known about an address or a domain.
type Status string

const (
	Valid        Status = "valid"         // the destination accepted RCPT
	Invalid      Status = "invalid"       // a definite "no such user"
	CatchAll     Status = "catch_all"     // the domain accepts any local part
	NotCatchAll  Status = "not_catch_all" // domain fact: a random local part was refused
	TempFail     Status = "tempfail"      // 4xx, timeout, connection trouble
	Unverifiable Status = "unverifiable"  // the destination refuses us or will not say
	Skipped      Status = "skipped"       // policy off: no callout
	RelayDenied  Status = "relay_denied"  // recipient domain not served here
	Malformed    Status = "malformed"     // the address itself is bad
)

// Statuses lists every status, in the order of their compact codes
// (StatusIndex): stored entries and the near cache keep the index.
var Statuses = []Status{Valid, Invalid, CatchAll, NotCatchAll, TempFail, Unverifiable, Skipped, RelayDenied, Malformed}

// StatusIndex is s's index in Statuses, or -1 for an unknown status.
func StatusIndex(s Status) int {
	for i, x := range Statuses {
		if x == s {
			return i
		}
	}
	return -1
}

// Kind tells what a verdict is about.
type Kind string

const (
	KindAddress Kind = "address"
	KindDomain  Kind = "domain"
)

// Source tells where a verdict came from.
type Source string

const (
	SourceProbe  Source = "probe"
	SourceCache  Source = "cache"
	SourceStatic Source = "static" // the operator's mailbox list or policy
)

// Verdict is one finding. Domain facts (catch_all, null sender refused) are
// verdicts with Kind domain and Fact set.
type Verdict struct {
	Kind      Kind      `msgpack:"kind" json:"kind"`
	Address   string    `msgpack:"address,omitempty" json:"address,omitempty"`
	Domain    string    `msgpack:"domain" json:"domain"`
	Purpose   Purpose   `msgpack:"purpose,omitempty" json:"purpose,omitempty"` // the view: recipient (by route) or sender (by MX) check
	Sender    string    `msgpack:"sender,omitempty" json:"sender,omitempty"`   // MAIL FROM used; "" is <>
	Fact      string    `msgpack:"fact,omitempty" json:"fact,omitempty"`       // domain facts: kvkey.FactCatchAll, kvkey.FactAccess
	Status    Status    `msgpack:"status" json:"status"`
	Reason    Reason    `msgpack:"reason,omitempty" json:"reason,omitempty"` // short machine-readable cause: one of Reasons
	Code      int       `msgpack:"code,omitempty" json:"code,omitempty"`
	Enhanced  string    `msgpack:"enhanced,omitempty" json:"enhanced,omitempty"`
	Text      string    `msgpack:"text,omitempty" json:"text,omitempty"` // the destination's words, cleaned
	Host      string    `msgpack:"host,omitempty" json:"host,omitempty"`
	CheckedAt time.Time `msgpack:"checked_at" json:"checked_at"` // when the callout started
	ExpiresAt time.Time `msgpack:"expires_at,omitempty" json:"expires_at,omitzero"`
	Source    Source    `msgpack:"source" json:"source"`
}

// MaxText bounds the destination's text kept in a verdict.
const MaxText = 512

// CleanText makes a destination's reply text safe to store and show: control
// characters become spaces, and it is cut to MaxText bytes.
func CleanText(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= MaxText {
			break
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\uFFFD' {
			r = ' '
		}
		b.WriteRune(r)
	}
	return strings.TrimSpace(b.String())
}

// Action is what the MTA is told to do.
type Action string

const (
	Accept Action = "accept"
	Reject Action = "reject"
	Defer  Action = "defer"
)

// Purpose tells whether a recipient or a sender is being verified.
type Purpose string

const (
	Recipient Purpose = "recipient"
	Sender    Purpose = "sender"
)

// Policy is the part of a domain's settings that shapes the decision.
type Policy struct {
	Purpose        Purpose
	OnTempfail     Action // Defer (default) or Accept
	OnUnverifiable Action // Accept (default) or Defer
	Monitor        bool   // monitor mode: decide, but accept (the service reports what it would have done)
}

// Decision is the answer for the MTA. Text never names the destination.
type Decision struct {
	Action   Action `msgpack:"action" json:"action"`
	Code     int    `msgpack:"code" json:"code"`
	Enhanced string `msgpack:"enhanced" json:"enhanced"`
	Text     string `msgpack:"text" json:"text"`
}

// String is the SMTP reply line, e.g. "550 5.1.1 <a@b>: Recipient address rejected: User unknown".
func (d Decision) String() string { return fmt.Sprintf("%d %s %s", d.Code, d.Enhanced, d.Text) }

// Definite reports whether v is a "user unknown" strong enough to reject on:
// the destination said 5xx for this address, or the operator's own list
// (static mode) or routing said so. Anything else must never reject.
func Definite(v Verdict) bool {
	if v.Status != Invalid || v.Kind != KindAddress {
		return false
	}
	return v.Source == SourceStatic || (v.Code >= 500 && v.Code <= 599)
}

// Decide turns a verdict into the MTA's decision. It is pure: the same
// verdict and policy always give the same decision. (Only the text of the
// decision returned is built: this runs for every request.)
func Decide(v Verdict, p Policy) Decision {
	what := "Recipient"
	if p.Purpose == Sender {
		what = "Sender"
	}
	accept := func() Decision {
		d := Decision{Action: Accept, Code: 250, Enhanced: "2.1.5", Text: "<" + v.Address + ">: " + what + " OK"}
		if p.Purpose == Sender {
			d.Enhanced = "2.1.0"
		}
		return d
	}
	deferred := func() Decision {
		return Decision{Action: Defer, Code: 450, Enhanced: "4.4.3", Text: "<" + v.Address + ">: " + what + " address verification failed temporarily, try again later"}
	}
	if v.AboutRequest() {
		switch v.Reason {
		case ReasonBraked:
			return Decision{Action: Defer, Code: 450, Enhanced: "4.7.1", Text: "<" + v.Address + ">: Too many unknown recipients, try again later"}
		case ReasonShed:
			return Decision{Action: Defer, Code: 451, Enhanced: "4.3.2", Text: "System busy, try again later"}
		case ReasonBadRequest:
			return Decision{Action: Defer, Code: 451, Enhanced: "4.3.5", Text: "Verify request not understood"}
		}
	}
	switch v.Status {
	case Valid, CatchAll, Skipped:
		return accept()
	case Invalid:
		if !Definite(v) {
			return deferred()
		}
		if p.Purpose == Sender {
			if v.Enhanced == EnhancedNullMX {
				return Decision{Action: Reject, Code: 550, Enhanced: EnhancedNullMX, Text: "<" + v.Address + ">: Sender address has null MX"}
			}
			return Decision{Action: Reject, Code: 550, Enhanced: "5.1.0", Text: "<" + v.Address + ">: Sender address rejected: undeliverable address"}
		}
		return Decision{Action: Reject, Code: 550, Enhanced: "5.1.1", Text: "<" + v.Address + ">: Recipient address rejected: User unknown"}
	case TempFail:
		if p.OnTempfail == Accept {
			return accept()
		}
		return deferred()
	case Unverifiable:
		if p.OnUnverifiable == Defer {
			return deferred()
		}
		return accept()
	case RelayDenied:
		if p.Purpose == Sender {
			return accept()
		}
		return Decision{Action: Reject, Code: 550, Enhanced: "5.7.1", Text: "<" + v.Address + ">: Relay access denied"}
	case Malformed:
		return Decision{Action: Reject, Code: 501, Enhanced: "5.1.3", Text: "<" + v.Address + ">: Bad address syntax"}
	}
	// NotCatchAll is a domain fact, never an answer; unknown statuses defer.
	return deferred()
}

// EnhancedNullMX is RFC 7505's code for a sender domain that publishes a
// null MX: it says it takes no mail.
const EnhancedNullMX = "5.7.27"

// AboutRequest reports a verdict about the request, not the address (the
// brake, shedding, a request not understood): always deferred, with its
// own code and text, whatever the policy says of tempfails.
func (v Verdict) AboutRequest() bool {
	return v.Status == TempFail && (v.Reason == ReasonBraked || v.Reason == ReasonShed || v.Reason == ReasonBadRequest)
}

// SenderSpecific reports whether a domain fact concerns only the sender it
// was learnt with, so that another sender may still get through.
func SenderSpecific(v Verdict) bool {
	return v.Reason == ReasonNullSenderRejected || v.Reason == ReasonSenderRejected
}
