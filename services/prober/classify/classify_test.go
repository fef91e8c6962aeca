package classify

import (
	"bufio"
	"strings"
	"testing"

	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/verdict"
)

func reply(t *testing.T, raw string) smtpprobe.Reply {
	t.Helper()
	r, err := smtpprobe.ParseReply(bufio.NewReader(strings.NewReader(raw + "\r\n")))
	if err != nil {
		t.Fatalf("parse %q: %v", raw, err)
	}
	return r
}

// One row per line of the classification table in the project's notes.
func TestRcpt(t *testing.T) {
	tests := []struct {
		raw    string
		status verdict.Status
		reason verdict.Reason
	}{
		{"250 2.1.5 Ok", verdict.Valid, verdict.ReasonAccepted},
		{"250 OK", verdict.Valid, verdict.ReasonAccepted},
		{"251 2.1.5 User not local; will forward", verdict.Valid, verdict.ReasonAccepted},
		{"252 2.1.5 Cannot VRFY user, but will accept message", verdict.Unverifiable, verdict.ReasonCannotVerify},
		{"550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in local recipient table", verdict.Invalid, verdict.ReasonUserUnknown},
		{"550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", verdict.Invalid, verdict.ReasonUserUnknown},
		{"550 5.1.6 Recipient addresses moved", verdict.Invalid, verdict.ReasonUserUnknown},
		{"550 User unknown", verdict.Invalid, verdict.ReasonUserUnknown},
		{"550 <x@example.org>... No such user here", verdict.Invalid, verdict.ReasonUserUnknown},
		{"553 sorry, that domain isn't in my list of allowed rcpthosts", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 Requested action not taken", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 Requested action not taken: mailbox unavailable", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", verdict.Invalid, verdict.ReasonUserUnknown},
		{"550 5.4.1 Relay Access Denied", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [BN8NAM12FT001.eop-nam12.prod.protection.outlook.com]", verdict.Invalid, verdict.ReasonUserUnknown},
		{"550 5.5.0 Requested action not taken: mailbox unavailable", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 5.2.1 Mailbox disabled, not accepting messages", verdict.Invalid, verdict.ReasonMailboxDisabled},
		{"552 5.2.2 Mailbox full", verdict.Valid, verdict.ReasonOverQuota},
		{"452 4.2.2 The email account that you tried to reach is over quota", verdict.Valid, verdict.ReasonOverQuota},
		{"452 Mailbox full", verdict.Valid, verdict.ReasonOverQuota},
		{"452 4.5.3 Too many recipients", verdict.TempFail, verdict.ReasonTemporary},
		{"550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using Spamhaus", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 5.7.1 <x@example.org>: Relay access denied", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550-5.7.1 [192.0.2.1] The IP you're using to send mail is not authorized\r\n550 5.7.1 to send email directly to our servers.", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 5.7.25 The IP address sending this message does not have a PTR record setup", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 5.7.26 Unauthenticated email is not accepted due to DMARC", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 5.1.1 Your IP is listed at Spamhaus: user unknown", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 User unknown (blocked by policy)", verdict.Unverifiable, verdict.ReasonPolicy},
		// Words inside the quoted address are not policy words.
		{"550 5.1.1 <bob@sender.example>: Recipient address rejected: User unknown", verdict.Invalid, verdict.ReasonUserUnknown},
		{"550 5.1.1 <spam@blocked-relay.example>: User unknown", verdict.Invalid, verdict.ReasonUserUnknown},
		{"550 No such user spamtrap@policy.example", verdict.Invalid, verdict.ReasonUserUnknown},
		{"550 5.7.1 <x@example.org>: blocked using zen.spamhaus.org", verdict.Unverifiable, verdict.ReasonPolicy},
		{"553 5.1.7 The sender address is invalid", verdict.Unverifiable, verdict.ReasonPolicy},
		{"553 5.1.8 Domain of sender address does not exist", verdict.Unverifiable, verdict.ReasonPolicy},
		{"550 5.4.4 Unable to route", verdict.Unverifiable, verdict.ReasonPolicy},
		{"554 5.3.4 Message too big for system", verdict.Unverifiable, verdict.ReasonPolicy},
		{"554 5.5.1 Error: no valid recipients", verdict.Unverifiable, verdict.ReasonPolicy},
		{"501 5.1.3 Bad recipient address syntax", verdict.Unverifiable, verdict.ReasonRcptProtocol},
		{"503 5.5.1 Error: need MAIL command", verdict.Unverifiable, verdict.ReasonRcptProtocol},
		{"554 Transaction failed", verdict.Unverifiable, verdict.ReasonPolicy},
		{"421 4.7.0 Too many connections, try again later", verdict.TempFail, verdict.ReasonTemporary},
		{"450 4.2.1 The user you are trying to contact is receiving mail too quickly", verdict.TempFail, verdict.ReasonTemporary},
		{"451 4.7.500 Access denied, please try again later", verdict.TempFail, verdict.ReasonTemporary},
		{"450 4.7.1 <x@example.org>: Recipient address rejected: Greylisted", verdict.TempFail, verdict.ReasonTemporary},
		{"451 4.3.0 Multiple destination domains per transaction is unsupported", verdict.TempFail, verdict.ReasonTemporary},
		{"450 4.1.1 <x@example.org>: Recipient address rejected: unverified address", verdict.TempFail, verdict.ReasonTemporary},
		{"354 go ahead", verdict.TempFail, verdict.ReasonUnexpected},
	}
	for _, tt := range tests {
		got := Rcpt(reply(t, tt.raw))
		if got.Status != tt.status || got.Reason != tt.reason {
			t.Errorf("Rcpt(%q) = %+v, want %s/%s", tt.raw, got, tt.status, tt.reason)
		}
	}
}

// Nothing but a 5xx reply may ever be classified invalid.
func TestOnlyPermanentIsInvalid(t *testing.T) {
	for code := 200; code <= 599; code++ {
		for _, text := range []string{"user unknown", "5.1.1 user unknown", "4.1.1 user unknown", "ok"} {
			raw := strings.TrimSpace(strings.Join([]string{itoa(code), text}, " "))
			r, err := smtpprobe.ParseReply(bufio.NewReader(strings.NewReader(raw + "\r\n")))
			if err != nil {
				continue
			}
			if got := Rcpt(r); got.Status == verdict.Invalid && code/100 != 5 {
				t.Errorf("%q classified invalid", raw)
			}
		}
	}
}

func itoa(n int) string {
	return string([]byte{byte('0' + n/100), byte('0' + n/10%10), byte('0' + n%10)})
}
