// Package classify turns an SMTP reply to RCPT TO into what it says about
// the mailbox. Only a definite "user unknown" becomes Invalid: anything that
// may mean "you are refused" is Unverifiable, anything temporary TempFail.
package classify

import (
	"strings"

	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/verdict"
)

// Result is the classification of one RCPT reply.
type Result struct {
	Status verdict.Status
	Reason verdict.Reason
}

// Texts that mean the destination refuses us, not the address. They win over
// a user-unknown code: a verifier that took "listed at Spamhaus" for "no such
// user" rejected real mail.
var policyWords = []string{
	"block", "blacklist", "blocklist", "denylist", "spamhaus", "spamcop", "barracuda",
	"not permitted", "not allowed", "policy", "rbl", "dnsbl", "reputation", "spam",
	"banned", "relay", "authenticat", "spf", "dmarc", "dkim", "ptr", "reverse dns",
	"rdns", "rate limit", "too many", "sender", "helo", "client host", "your ip",
	"listed", "abuse", "prohibited", "unauthorized", "unauthorised",
}

// Texts that say the mailbox does not exist. Not "mailbox unavailable":
// that is RFC 5321's generic 550 text, also used for policy refusals.
var unknownWords = []string{
	"user unknown", "unknown user", "no such user", "no such mailbox", "no such recipient",
	"does not exist", "doesn't exist", "not exist", "unknown recipient", "recipient unknown",
	"mailbox not found", "recipient not found", "user not found", "address not found",
	"invalid recipient", "invalid mailbox", "no mailbox",
	"unknown local part", "address unknown", "unrouteable address", "no longer available",
	"user doesn't", "account does not", "not a valid recipient", "unknown address",
}

// withoutAddresses drops <...> paths and words holding an @ from a reply
// text: an address such as <bob@sender.example> or <x@blocked.example> must
// not read as a policy word. Host names stay: "blocked using zen.spamhaus.org".
func withoutAddresses(text string) string {
	var b strings.Builder
	depth := 0
	for _, r := range text {
		switch {
		case r == '<':
			depth++
		case r == '>' && depth > 0:
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	words := strings.Fields(b.String())
	kept := words[:0]
	for _, w := range words {
		if !strings.Contains(w, "@") {
			kept = append(kept, w)
		}
	}
	return strings.Join(kept, " ")
}

// tablePhrases are Postfix's user-unknown replies, naming the table.
var tablePhrases = []string{
	"recipient address rejected: user unknown in local recipient table",
	"recipient address rejected: user unknown in virtual mailbox table",
	"recipient address rejected: user unknown in virtual alias table",
	"recipient address rejected: user unknown in relay recipient table",
}

func cutTablePhrase(text string) (string, bool) {
	for _, p := range tablePhrases {
		if i := strings.Index(text, p); i >= 0 {
			return text[:i] + " " + text[i+len(p):], true
		}
	}
	return text, false
}

func has(text string, words []string) bool {
	for _, w := range words {
		if strings.Contains(text, w) {
			return true
		}
	}
	return false
}

// Rcpt classifies the reply to RCPT TO.
func Rcpt(r smtpprobe.Reply) Result {
	text := strings.ToLower(r.Text())
	subject, detail := enhancedParts(r.Enhanced)
	switch r.Class() {
	case 2:
		if r.Code == 250 || r.Code == 251 {
			return Result{verdict.Valid, verdict.ReasonAccepted}
		}
		return Result{verdict.Unverifiable, verdict.ReasonCannotVerify} // 252 and other 2xx
	case 3:
		return Result{verdict.TempFail, verdict.ReasonUnexpected}
	case 4:
		// Over quota: the mailbox exists. 452 4.5.3 (too many recipients) does not say so.
		if subject == 2 && detail == 2 || r.Enhanced == "" && r.Code == 452 && has(text, []string{"quota", "mailbox full", "mailbox is full", "insufficient"}) {
			return Result{verdict.Valid, verdict.ReasonOverQuota}
		}
		return Result{verdict.TempFail, verdict.ReasonTemporary}
	case 5:
		return permanent(r, text)
	}
	return Result{verdict.TempFail, verdict.ReasonUnexpected}
}

func permanent(r smtpprobe.Reply, text string) Result {
	if r.Code == 500 || r.Code == 501 || r.Code == 502 || r.Code == 503 || r.Code == 504 {
		return Result{verdict.Unverifiable, verdict.ReasonRcptProtocol}
	}
	switch {
	case r.Enhanced == "5.2.2":
		return Result{verdict.Valid, verdict.ReasonOverQuota}
	case r.Enhanced == "5.4.1" && strings.Contains(text, "recipient address rejected: access denied"):
		// Microsoft 365 directory-based edge blocking: the mailbox is not in the directory.
		return Result{verdict.Invalid, verdict.ReasonUserUnknown}
	}
	// Postfix names the table that does not know the user; "relay" in
	// "relay recipient table" is not a relay denial. Such a phrase is taken
	// out before looking for policy words, so words elsewhere still count.
	rest, named := cutTablePhrase(withoutAddresses(text))
	if has(rest, policyWords) {
		return Result{verdict.Unverifiable, verdict.ReasonPolicy}
	}
	if named && (r.Enhanced == "5.1.1" || r.Enhanced == "") {
		return Result{verdict.Invalid, verdict.ReasonUserUnknown}
	}
	switch {
	case r.Enhanced == "5.1.1" || r.Enhanced == "5.1.10" || r.Enhanced == "5.1.6":
		return Result{verdict.Invalid, verdict.ReasonUserUnknown}
	case r.Enhanced == "5.2.1":
		return Result{verdict.Invalid, verdict.ReasonMailboxDisabled}
	case r.Enhanced == "5.5.0" && strings.Contains(text, "mailbox unavailable") && outlookUnknown(text):
		// outlook.com: "Requested action not taken: mailbox unavailable
		// (S2017062302)". The same words without outlook's own marker are
		// RFC 5321's generic 550 text, which policy refusals use too.
		return Result{verdict.Invalid, verdict.ReasonUserUnknown}
	case r.Enhanced == "5.0.0" && has(rest, unknownWords):
		return Result{verdict.Invalid, verdict.ReasonUserUnknown}
	case r.Enhanced == "" && r.Code >= 550 && r.Code <= 553 && has(rest, unknownWords):
		// The words are matched with addresses taken out: "550 User
		// <x@example.org> unknown" is "user unknown".
		return Result{verdict.Invalid, verdict.ReasonUserUnknown}
	}
	// 5.7.x, 5.1.7/5.1.8, 5.3.x, 5.4.x, 5.5.x and bare codes say nothing about the mailbox.
	return Result{verdict.Unverifiable, verdict.ReasonPolicy}
}

// outlookUnknown reports outlook.com's own form of its not-found reply:
// its S-code for an unknown mailbox, from an outlook.com host.
func outlookUnknown(text string) bool {
	return strings.Contains(text, "(s2017062302)")
}

func enhancedParts(e string) (subject, detail int) {
	if e == "" {
		return -1, -1
	}
	parts := strings.SplitN(e, ".", 3)
	if len(parts) != 3 {
		return -1, -1
	}
	return atoi(parts[1]), atoi(parts[2])
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}
