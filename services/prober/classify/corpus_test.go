package classify

import (
	"bufio"
	"strings"
	"testing"

	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/verdict"
)

// Real RCPT replies, as destinations send them, with their source. Only a
// definite user unknown may come out invalid; blocks, policy, sender
// problems and relay denials are unverifiable; every 4xx is a tempfail
// (a full mailbox aside: it exists). Addresses and IPs are the
// documentation ones; the texts are the products' own.
var corpus = []struct {
	source string
	raw    string
	want   verdict.Status
}{
	// Postfix (smtpd, local/virtual/relay recipient tables, access maps).
	{"Postfix local_recipient_maps", "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in local recipient table", verdict.Invalid},
	{"Postfix virtual_mailbox_maps", "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in virtual mailbox table", verdict.Invalid},
	{"Postfix virtual_alias_maps", "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in virtual alias table", verdict.Invalid},
	{"Postfix relay_recipient_maps", "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in relay recipient table", verdict.Invalid},
	{"Postfix reject_unverified_recipient", "550 5.1.1 <x@example.org>: Recipient address rejected: undeliverable address: host mx.example.org[192.0.2.1] said: 550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in virtual mailbox table (in reply to RCPT TO command)", verdict.Invalid},
	{"Postfix local(8) unknown user", "550 5.1.1 <x@example.org>: Recipient address rejected: undeliverable address: unknown user: \"x\"", verdict.Invalid},
	{"Postfix reject_unverified_recipient, pending", "450 4.1.1 <x@example.org>: Recipient address rejected: unverified address: Address verification in progress", verdict.TempFail},
	{"Postfix reject_unauth_destination", "554 5.7.1 <x@example.org>: Relay access denied", verdict.Unverifiable},
	{"Postfix check_recipient_access", "554 5.7.1 <x@example.org>: Recipient address rejected: Access denied", verdict.Unverifiable},
	{"Postfix reject_unknown_reverse_client_hostname", "450 4.7.1 Client host rejected: cannot find your reverse hostname, [192.0.2.1]", verdict.TempFail},
	{"Postfix reject_rbl_client", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1", verdict.Unverifiable},
	{"Postfix reject_unlisted_sender", "553 5.1.0 <verify@gw.example>: Sender address rejected: User unknown in local recipient table", verdict.Unverifiable},
	{"Postfix reject_unknown_sender_domain", "450 4.1.8 <verify@gw.example>: Sender address rejected: Domain not found", verdict.TempFail},
	{"Postfix reject_non_fqdn_recipient", "504 5.5.2 <x>: Recipient address rejected: need fully-qualified address", verdict.Unverifiable},
	{"Postfix queue file system full", "452 4.3.1 Insufficient system storage", verdict.TempFail},
	{"Postfix smtpd_recipient_limit", "452 4.5.3 Error: too many recipients", verdict.TempFail},
	{"Postfix policy service failure", "451 4.3.5 Server configuration problem", verdict.TempFail},
	{"Postfix transport lookup failure", "451 4.3.0 <x@example.org>: Temporary lookup failure", verdict.TempFail},
	{"Postfix reject_unknown_helo_hostname", "450 4.7.1 <verifier.example>: Helo command rejected: Host not found", verdict.TempFail},
	{"Postfix smtpd_client_connection_rate_limit", "421 4.7.0 mx.example.org Error: too many connections from 192.0.2.1", verdict.TempFail},
	// Exim.
	{"Exim unrouteable", "550 Unrouteable address", verdict.Invalid},
	{"Exim ACL verify = recipient", "550 Unknown user", verdict.Invalid},
	{"Exim 4.9x unrouteable with code", "550 5.1.1 <x@example.org>: Unrouteable address", verdict.Invalid},
	// The address between the words: matched with addresses taken out
	// (before, the words did not match and it read as a refusal, so
	// nothing at such a destination was ever verified).
	{"unknown user, address between the words", "550 User <x@example.org> unknown", verdict.Invalid},
	{"no such user, address between the words", "550 No such user <x@example.org> here", verdict.Invalid},
	{"Exim relay not permitted", "550 relay not permitted", verdict.Unverifiable},
	{"Exim sender verify", "550-Verification failed for <verify@gw.example>\r\n550-Unrouteable address\r\n550 Sender verify failed", verdict.Unverifiable},
	{"Exim administrative prohibition", "550 Administrative prohibition", verdict.Unverifiable},
	{"Exim temporary", "451 Temporary local problem - please try later", verdict.TempFail},
	{"Exim greylistd", "451-192.0.2.1 is not yet authorized to deliver mail from\r\n451 <> to <x@example.org>. Please try later.", verdict.TempFail},
	{"Exim rate limit", "451 4.7.1 Too many connections - try again later", verdict.TempFail},
	{"Exim DNSBL", "550 5.7.1 Rejected because 192.0.2.1 is in a black list at zen.spamhaus.org", verdict.Unverifiable},
	// Sendmail.
	{"Sendmail", "550 5.1.1 <x@example.org>... User unknown", verdict.Invalid},
	{"Sendmail relaying denied", "550 5.7.1 <x@example.org>... Relaying denied", verdict.Unverifiable},
	{"Sendmail relaying denied, no PTR", "550 5.7.1 <x@example.org>... Relaying denied. IP name lookup failed [192.0.2.1]", verdict.Unverifiable},
	{"Sendmail sender domain", "451 4.1.8 Domain of sender address verify@gw.example does not resolve", verdict.TempFail},
	{"Sendmail disk", "452 4.4.5 Insufficient disk space; try again later", verdict.TempFail},
	{"Sendmail disabled", "550 5.2.1 <x@example.org>... Mailbox disabled for this recipient", verdict.Invalid},
	// qmail and vpopmail.
	{"qmail rcpthosts", "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", verdict.Unverifiable},
	{"qmail chkuser", "550 sorry, no mailbox here by that name. (#5.1.1)", verdict.Invalid},
	{"qmail badmailfrom", "553 sorry, your envelope sender has been denied (#5.7.1)", verdict.Unverifiable},
	{"qmail DNS", "451 DNS temporary failure (#4.3.0)", verdict.TempFail},
	// Exchange on-premises.
	{"Exchange recipient validation", "550 5.1.1 User unknown", verdict.Invalid},
	{"Exchange resolver", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", verdict.Invalid},
	{"Exchange relay", "550 5.7.1 Unable to relay", verdict.Unverifiable},
	{"Exchange auth required", "550 5.7.1 RESOLVER.RST.AuthRequired; authentication required", verdict.Unverifiable},
	{"Exchange group restriction", "550 5.7.133 RESOLVER.RST.SenderNotAuthenticatedForGroup; authentication required", verdict.Unverifiable},
	{"Exchange back pressure", "452 4.3.1 Insufficient system resources", verdict.TempFail},
	{"Exchange recipient limit", "452 4.5.3 Too many recipients", verdict.TempFail},
	{"Exchange shutting down", "421 4.3.2 Service not available, closing transmission channel", verdict.TempFail},
	// Microsoft 365 / Exchange Online.
	{"Microsoft 365 DBEB", "550 5.4.1 Recipient address rejected: Access denied. For more information see https://aka.ms/EXOSmtpErrors [AM0PR01MB1234.eurprd01.prod.exchangelabs.com]", verdict.Invalid},
	{"Microsoft 365 DBEB, AS code", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DM6NAM11FT012.eop-nam11.prod.protection.outlook.com]", verdict.Invalid},
	{"Microsoft 365 tenant relay", "550 5.4.1 Relay Access Denied", verdict.Unverifiable},
	{"Microsoft 365 banned IP", "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/ and follow the directions.", verdict.Unverifiable},
	{"Microsoft 365 IP blocked", "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.", verdict.Unverifiable},
	{"Microsoft 365 Spamhaus", "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.1 (AS3130)", verdict.Unverifiable},
	{"Microsoft 365 throttling", "451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719)", verdict.TempFail},
	{"Microsoft 365 new sender throttling", "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.", verdict.TempFail},
	{"Microsoft 365 recipients", "452 4.5.3 Too many recipients (AS780090)", verdict.TempFail},
	{"Microsoft 365 TLS", "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.", verdict.TempFail},
	{"Microsoft 365 resolver", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient x@example.org not found by SMTP address lookup", verdict.Invalid},
	// outlook.com consumer.
	{"outlook.com unknown", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [BN8NAM12FT001.eop-nam12.prod.protection.outlook.com]", verdict.Invalid},
	// RFC 5321's generic text with 5.5.0 and no provider marker: a policy
	// refusal as likely as an unknown user (a destination answering it to
	// every RCPT had every recipient rejected).
	{"generic 5.5.0 mailbox unavailable", "550 5.5.0 Requested action not taken: mailbox unavailable", verdict.Unverifiable},
	{"generic 5.5.0 mailbox unavailable, host named", "550 5.5.0 Requested action not taken: mailbox unavailable [mx.example.org]", verdict.Unverifiable},
	{"outlook.com block list", "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).", verdict.Unverifiable},
	{"outlook.com rate", "421 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.", verdict.TempFail},
	// Gmail and Google Workspace.
	{"Gmail unknown", "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n550-5.1.1 double-checking the recipient's email address for typos or\r\n550-5.1.1 unnecessary spaces. For more information, go to\r\n550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1-20020a170902 - gsmtp", verdict.Invalid},
	{"Gmail disabled", "550-5.2.1 The email account that you tried to reach is disabled. Learn more at\r\n550 5.2.1  https://support.google.com/mail/?p=DisabledUser a1-20020a170902 - gsmtp", verdict.Invalid},
	{"Gmail receiving rate", "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\r\n450-4.2.1 prevents additional messages from being delivered. Please resend your\r\n450 4.2.1 message at a later time. https://support.google.com/mail/?p=ReceivingRate a1 - gsmtp", verdict.TempFail},
	{"Gmail over quota", "452-4.2.2 The recipient's inbox is out of storage space. Please direct the\r\n452-4.2.2 recipient to\r\n452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp a1 - gsmtp", verdict.Valid},
	{"Gmail domains per transaction", "451 4.3.0 Multiple destination domains per transaction is unsupported. Please try again. a1 - gsmtp", verdict.TempFail},
	{"Gmail not authorized IP", "550-5.7.1 [192.0.2.1] The IP you're using to send mail is not authorized to\r\n550-5.7.1 send email directly to our servers. Please use the SMTP relay at your\r\n550 5.7.1 service provider instead. https://support.google.com/mail/?p=NotAuthorizedError a1 - gsmtp", verdict.Unverifiable},
	{"Gmail unsolicited rate", "421-4.7.0 [192.0.2.1      15] Our system has detected an unusual rate of\r\n421-4.7.0 unsolicited mail originating from your IP address. To protect our\r\n421 4.7.0 users from spam, mail sent from your IP address has been temporarily rate limited. a1 - gsmtp", verdict.TempFail},
	{"Gmail DMARC", "550-5.7.26 Unauthenticated email from example.org is not accepted due to\r\n550-5.7.26 domain's DMARC policy. Please contact the administrator of example.org\r\n550 5.7.26 domain if this was a legitimate mail. a1 - gsmtp", verdict.Unverifiable},
	{"Google Workspace relay", "550 5.7.0 Mail relay denied [192.0.2.1]. Invalid credentials for relay for one of the domains in: example.org (as obtained from HELO and MAIL FROM). a1 - gsmtp", verdict.Unverifiable},
	{"Google Workspace compliance", "550 5.7.1 The user or domain that you are sending to (or from) has a policy that prohibited the mail that you sent. a1 - gsmtp", verdict.Unverifiable},
	// Yahoo (accepts every RCPT; refuses on reputation).
	{"Yahoo accept", "250 recipient <x@yahoo.com> ok", verdict.Valid},
	{"Yahoo Spamhaus", "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list; see https://www.spamhaus.org/query/ip/192.0.2.1", verdict.Unverifiable},
	{"Yahoo deferral", "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", verdict.TempFail},
	{"Yahoo policy", "554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes", verdict.Unverifiable},
	// Zimbra (Postfix with LDAP lookups).
	{"Zimbra unknown", "550 5.1.1 <x@example.org>: Recipient address rejected: example.org", verdict.Invalid},
	{"Zimbra LDAP down", "451 4.3.0 <x@example.org>: Temporary lookup failure", verdict.TempFail},
	// Dovecot LMTP behind Postfix.
	{"Dovecot LMTP unknown", "550 5.1.1 <x@example.org> User doesn't exist: x@example.org", verdict.Invalid},
	{"Dovecot LMTP quota", "552 5.2.2 <x@example.org> Quota exceeded (mailbox for user is full)", verdict.Valid},
	{"Dovecot LMTP temporary quota", "452 4.2.2 <x@example.org> Quota exceeded (mailbox for user is full)", verdict.Valid},
	{"Dovecot LMTP internal", "451 4.3.0 <x@example.org> Temporary internal error", verdict.TempFail},
	// Proofpoint.
	{"Proofpoint Essentials unknown", "550 5.1.1 User Unknown", verdict.Invalid},
	{"Proofpoint relay", "554 5.7.1 <x@example.org>: Relay access denied", verdict.Unverifiable},
	{"Proofpoint dynamic reputation", "554 Blocked - see https://ipcheck.proofpoint.com/?ip=192.0.2.1", verdict.Unverifiable},
	// Mimecast.
	{"Mimecast invalid recipient", "550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550 [a1b2c3.uk12]", verdict.Invalid},
	{"Mimecast envelope blocked", "550 Administrative prohibition - envelope blocked - https://community.mimecast.com/docs/DOC-1369#550 [a1b2c3.uk12]", verdict.Unverifiable},
	{"Mimecast open relay", "451 Open relay not allowed - https://community.mimecast.com/docs/DOC-1369#451 [a1b2c3.uk12]", verdict.TempFail},
	{"Mimecast security policy", "554 Email rejected due to security policies - https://community.mimecast.com/docs/DOC-1369#554 [a1b2c3.uk12]", verdict.Unverifiable},
	{"Mimecast internal", "451 Internal resource temporarily unavailable - https://community.mimecast.com/docs/DOC-1369#451 [a1b2c3.uk12]", verdict.TempFail},
	// Barracuda.
	{"Barracuda LDAP unknown", "550 No such user (x@example.org)", verdict.Invalid},
	{"Barracuda reputation", "554 Service unavailable; Client host [192.0.2.1] blocked using Barracuda Reputation; http://www.barracudanetworks.com/reputation/?r=1&ip=192.0.2.1", verdict.Unverifiable},
	{"Barracuda connections", "421 Too many concurrent SMTP connections; please try again later.", verdict.TempFail},
	// Cisco Secure Email (IronPort): a rejected address may be a directory
	// miss or the harvest-prevention limit; nothing definite.
	{"Cisco LDAP accept / DHAP", "550 #5.1.0 Address rejected.", verdict.Unverifiable},
	{"Cisco HAT reject", "554 #5.7.1 Your access to submit messages to this e-mail system has been rejected.", verdict.Unverifiable},
	{"Cisco rate limit", "452 #4.3.0 Too many recipients", verdict.TempFail},
	// Blocklists.
	{"SpamCop", "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using bl.spamcop.net; Blocked - see https://www.spamcop.net/bl.shtml?192.0.2.1", verdict.Unverifiable},
	{"Barracuda BRBL", "550 5.7.1 Rejected because 192.0.2.1 is in a black list at b.barracudacentral.org", verdict.Unverifiable},
	{"Spamhaus SBL", "550 5.7.1 Mail from 192.0.2.1 refused - see https://www.spamhaus.org/sbl/", verdict.Unverifiable},
	{"Spamhaus under a user-unknown code", "550 5.1.1 Recipient rejected: 192.0.2.1 is listed at zen.spamhaus.org", verdict.Unverifiable},
	// Greylisting.
	{"postgrey", "450 4.2.0 <x@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.org.html", verdict.TempFail},
	{"milter-greylist", "451 4.7.1 Greylisting in action, please come back in 00:05:00", verdict.TempFail},
	{"sqlgrey", "450 4.7.1 Greylisted for 5 minutes (3)", verdict.TempFail},
	{"rspamd greylist", "451 4.7.1 Try again later", verdict.TempFail},
}

func TestCorpus(t *testing.T) {
	if len(corpus) < 80 {
		t.Fatalf("corpus has %d replies, want at least 80", len(corpus))
	}
	for _, c := range corpus {
		if got := Rcpt(reply(t, c.raw)); got.Status != c.want {
			t.Errorf("%s: Rcpt(%q) = %s/%s, want %s", c.source, c.raw, got.Status, got.Reason, c.want)
		}
	}
}

// FuzzRcpt: whatever a destination answers, nothing but a 5xx reply is
// ever classified invalid, and a reply that names a block never is.
func FuzzRcpt(f *testing.F) {
	for _, c := range corpus {
		f.Add(c.raw + "\r\n")
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r, err := smtpprobe.ParseReply(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return
		}
		got := Rcpt(r)
		if got.Status == verdict.Invalid && r.Class() != 5 {
			t.Fatalf("%q classified invalid", raw)
		}
		if got.Status == verdict.Invalid && strings.Contains(strings.ToLower(withoutAddresses(r.Text())), "spamhaus") {
			t.Fatalf("%q: a blocklist reply classified invalid", raw)
		}
	})
}
