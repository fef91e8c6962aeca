package verdict

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Reason is a verdict's short machine-readable cause. Every reason any
// service gives is a constant here and a row of the table Reasons returns:
// operators see them in logs, the console and the API, and
// docs/troubleshooting.md is rendered from the table.
type Reason string

// Reasons the ingest gives itself, before or instead of a callout.
const (
	ReasonNullSender  Reason = "null_sender"
	ReasonPostmaster  Reason = "postmaster"
	ReasonProbeSender Reason = "probe_sender"
	ReasonBypass      Reason = "bypass"
	ReasonPolicyOff   Reason = "policy_off"
	ReasonListed      Reason = "listed"
	ReasonNotListed   Reason = "not_listed"
	ReasonListLoading Reason = "list_incomplete"
	ReasonNotServed   Reason = "not_served"
	ReasonSyntax      Reason = "syntax"
	ReasonUnprobeable Reason = "unprobeable_form"
	ReasonDeadline    Reason = "deadline"
	ReasonQueue       Reason = "queue_unavailable"
	ReasonUnconfirmed Reason = "cache_unconfirmed"
	ReasonBraked      Reason = "too_many_unknown_recipients"
	ReasonShed        Reason = "shed"
	ReasonBadRequest  Reason = "bad_request"
)

// Reasons the prober gives from DNS and its job queue.
const (
	ReasonDNS      Reason = "dns_temporary"
	ReasonNoMail   Reason = "domain_accepts_no_mail"
	ReasonNullMX   Reason = "null_mx"
	ReasonNoDomain Reason = "no_domain"
	ReasonGaveUp   Reason = "gave_up"
)

// Reasons from the dialogue, before or around the RCPT.
const (
	ReasonNoDestination      Reason = "no_destination"
	ReasonConnect            Reason = "connect_failed"
	ReasonTimeout            Reason = "timeout"
	ReasonProtocolError      Reason = "protocol_error"
	ReasonBreakerOpen        Reason = "breaker_open"
	ReasonRefusedBanner      Reason = "refused_at_banner"
	ReasonRefusedHelo        Reason = "refused_at_helo"
	ReasonNullSenderRejected Reason = "null_sender_rejected"
	ReasonSenderRejected     Reason = "sender_rejected"
	ReasonDeferred           Reason = "deferred"
	ReasonRandomAccepted     Reason = "random_accepted"
	ReasonRandomRefused      Reason = "random_refused"
	ReasonRandomDeferred     Reason = "random_deferred"
	ReasonRefusesVerifier    Reason = "destination_refuses_verifier"
	ReasonControlAccepted    Reason = "postmaster_accepted"
)

// Reasons from the destination's reply to RCPT (package classify).
const (
	ReasonAccepted        Reason = "accepted"
	ReasonCannotVerify    Reason = "cannot_verify"
	ReasonUserUnknown     Reason = "user_unknown"
	ReasonMailboxDisabled Reason = "mailbox_disabled"
	ReasonOverQuota       Reason = "over_quota"
	ReasonPolicy          Reason = "policy"
	ReasonRcptProtocol    Reason = "protocol"
	ReasonTemporary       Reason = "temporary"
	ReasonUnexpected      Reason = "unexpected_reply"
)

// ReasonInfo is one row of the reason table.
type ReasonInfo struct {
	Reason Reason
	// By is the service that gives it: ingest or prober.
	By string
	// Statuses are those an answer about an address carries with it.
	// Empty for a reason only domain facts carry.
	Statuses []Status
	// Fact: the reason is also, or only, recorded as a domain fact.
	Fact bool
	// MayReject: some policy answers a verdict with this reason with a
	// 5xx. Only these can lose mail when they are wrong.
	MayReject bool
	// Meaning says what happened; Action what an operator does about it.
	Meaning, Action string
}

var reasonTable = []ReasonInfo{
	// The ingest's own.
	{ReasonNullSender, "ingest", []Status{Skipped}, false, false, "The sender is the null sender <>: bounces are never verified.", "Nothing."},
	{ReasonPostmaster, "ingest", []Status{Skipped}, false, false, "postmaster is never verified (RFC 5321 requires every domain to take it).", "Nothing."},
	{ReasonProbeSender, "ingest", []Status{Skipped}, false, false, "The sender is another verifier's probe sender (PROBE_SENDERS): verifying it back would loop.", "Nothing."},
	{ReasonBypass, "ingest", []Status{Skipped}, false, false, "The domain's policy lists the address under bypass.", "Nothing; remove it from bypass to verify it."},
	{ReasonPolicyOff, "ingest", []Status{Skipped}, false, false, "The domain's policy turns callouts off.", "Nothing; set the mode back to callout to verify."},
	{ReasonListed, "ingest", []Status{Valid}, false, false, "Static mode: the address is in the domain's list of mailboxes.", "Nothing."},
	{ReasonNotListed, "ingest", []Status{Invalid}, false, true, "Static mode: the address is not in the domain's list of mailboxes.", "Add the mailbox to the domain's list, or switch the domain back to callout mode."},
	{ReasonListLoading, "ingest", []Status{TempFail}, false, false, "The domain's mailbox or bypass list is stored in chunks and this ingest has not read every chunk yet (start-up, reconnect, a change on its way): no answer rests on part of a list, so the recipient is deferred (or accepted, as on_tempfail says).", "Nothing if it passes within seconds; otherwise check the ingest's access to the callout_lists bucket and its log."},
	{ReasonNotServed, "ingest", []Status{RelayDenied, Unverifiable}, false, true, "The recipient domain has no policy: UNKNOWN_DOMAINS decides (reject: 550 5.7.1 relay denied; accept: unverifiable).", "Add a policy for the domain if it is yours; relay control otherwise stays with the MTA."},
	{ReasonSyntax, "ingest", []Status{Malformed}, false, true, "The address does not parse (RFC 5321), or carries bytes that may never reach an SMTP line (CR, LF, NUL).", "Nothing, unless a real address is refused: then report it with the address as sent."},
	{ReasonUnprobeable, "ingest", []Status{Unverifiable}, false, false, "The address is valid but has a form a callout cannot send safely (a quoted local part, an address literal).", "Nothing: accepted unverified, or deferred as the policy's on_unverifiable says."},
	{ReasonDeadline, "ingest", []Status{TempFail}, false, false, "No verdict before the request's deadline (TIMEOUT): the callout is still under way or the probers are behind.", "Check callout_prober_jobs_waiting and the destination's latency (calloutctl hosts); the MTA retries."},
	{ReasonQueue, "ingest", []Status{TempFail}, false, false, "The probe job could not be queued (JetStream unavailable, or the trace prober did not answer).", "Check NATS and the CALLOUT_PROBES stream (nats stream info)."},
	{ReasonUnconfirmed, "ingest", []Status{TempFail}, false, false, "The near cache holds a reject, but this ingest is cut off from NATS and cannot know that no flush removed it: deferred.", "Restore the ingest's NATS connection; callout_ingest_unconfirmed_rejects_total counts these."},
	{ReasonBraked, "ingest", []Status{TempFail}, false, false, "The client sent more unknown recipients than BRAKE_LIMIT within BRAKE_WINDOW (a dictionary attack): its further unknown recipients are deferred with 4.7.1.", "Nothing for an attack; for a real sender, raise BRAKE_LIMIT."},
	{ReasonShed, "ingest", []Status{TempFail}, false, false, "Every worker was busy (WORKERS): the request was deferred with 4.3.2 rather than queued.", "Add ingests or raise WORKERS; callout_ingest_shed_total counts these."},
	{ReasonBadRequest, "ingest", []Status{TempFail}, false, false, "The verify request itself was not understood (bad JSON or msgpack): deferred with 4.3.5.", "Fix the client that sends it; the reply's error says what is wrong."},
	// The prober's, from DNS and the job queue.
	{ReasonDNS, "prober", []Status{TempFail}, false, false, "The MX lookup failed for a while (SERVFAIL, timeout).", "Check the prober's resolver; the MTA retries."},
	{ReasonNoMail, "prober", []Status{Unverifiable}, false, false, "The recipient domain publishes a null MX or no address: our own set-up is wrong, not the user's address.", "Give the domain a route in its policy."},
	{ReasonNullMX, "prober", []Status{Invalid}, false, true, "The sender domain publishes a null MX (RFC 7505): it sends no mail; refused with 550 5.7.27.", "Nothing: the domain says it takes no mail."},
	{ReasonNoDomain, "prober", []Status{Invalid}, false, true, "DNS says the sender domain does not exist: deferred with 450 4.1.8, or refused with 550 5.1.8 when SENDER_NXDOMAIN is reject.", "Nothing; a newly registered domain gets through once DNS knows it."},
	{ReasonGaveUp, "prober", []Status{TempFail}, false, false, "The job was delivered MAX_DELIVER times and never finished (probers died mid-callout).", "Look at the probers' logs for crashes around the address."},
	// The dialogue's.
	{ReasonNoDestination, "prober", []Status{TempFail}, false, false, "No host of the destination could be tried (every one skipped or backing off).", "calloutctl hosts shows each host's state."},
	{ReasonConnect, "prober", []Status{TempFail}, false, false, "The TCP connection to the destination failed.", "Check the route and the destination; counted against its breaker."},
	{ReasonTimeout, "prober", []Status{TempFail}, false, false, "The destination did not answer in time (a tarpit, or an overloaded server).", "Counted against its breaker; see calloutctl hosts."},
	{ReasonProtocolError, "prober", []Status{TempFail}, false, false, "The dialogue broke: a reply that is not SMTP, or the connection closed mid-dialogue.", "Trace a callout (calloutctl verify ADDRESS -trace) to see the dialogue."},
	{ReasonBreakerOpen, "prober", []Status{TempFail}, false, false, "The destination's breaker is open after repeated failures: no callout until it half-opens.", "calloutctl hosts shows when; it closes by itself once the destination answers."},
	{ReasonRefusedBanner, "prober", []Status{Unverifiable}, true, false, "The destination refused us at its banner with a 5xx: it refuses the verifier, not the address.", "Ask the destination to allow the prober's address, or set the domain to static mode."},
	{ReasonRefusedHelo, "prober", []Status{Unverifiable}, true, false, "The destination refused our EHLO/HELO with a 5xx.", "Check HELO_NAME and the prober's reverse DNS."},
	{ReasonNullSenderRejected, "prober", []Status{Unverifiable}, true, false, "The destination refused MAIL FROM:<> (the null sender), and no fallback sender got through.", "Set the policy's fallback_sender to an address the destination accepts."},
	{ReasonSenderRejected, "prober", []Status{Unverifiable}, true, false, "The destination refused the configured MAIL FROM sender.", "Use another fallback_sender."},
	{ReasonDeferred, "prober", []Status{TempFail}, false, false, "The destination answered 4xx before or at RCPT (greylisting, busy).", "Nothing: the next verify retries; see calloutctl hosts for repeated ones."},
	{ReasonRandomAccepted, "prober", []Status{CatchAll}, true, false, "The destination accepted a random address: it is a catch-all, so RCPT answers say nothing.", "Nothing: mail is accepted; static mode is the way to check such a domain."},
	{ReasonRandomRefused, "prober", nil, true, false, "The destination refused a random address: not a catch-all, so its RCPT answers count.", "Nothing."},
	{ReasonRandomDeferred, "prober", []Status{TempFail}, false, false, "The destination deferred the random address (greylisting) and the real RCPT could not decide.", "Nothing: the next verify retries."},
	{ReasonRefusesVerifier, "prober", []Status{Unverifiable}, true, false, "The destination refused postmaster too (the control probe): its 5xx refuses the verifier, not the address.", "callout_prober_verifier_refused_total counts these; ask the destination to allow the prober."},
	{ReasonControlAccepted, "prober", nil, true, false, "The destination accepted postmaster (the control probe): its user-unknown replies are believed.", "Nothing."},
	// The RCPT reply's.
	{ReasonAccepted, "prober", []Status{Valid}, false, false, "The destination accepted the RCPT (2xx).", "Nothing."},
	{ReasonCannotVerify, "prober", []Status{Unverifiable}, false, false, "The destination answered 252 (cannot verify, will try to deliver) or another 2xx that does not confirm.", "Nothing: accepted unverified, or as the policy's on_unverifiable says."},
	{ReasonUserUnknown, "prober", []Status{Invalid}, false, true, "The destination said the mailbox does not exist (550 5.1.1 and its kin).", "If the mailbox exists now, flush the address (calloutctl flush -address, the console); the destination said so."},
	{ReasonMailboxDisabled, "prober", []Status{Invalid}, false, true, "The destination said the mailbox is disabled (5.2.1): cached for the shorter TTL_DISABLED.", "Flush the address once the mailbox is enabled again."},
	{ReasonOverQuota, "prober", []Status{Valid}, false, false, "The destination said the mailbox is full (5.2.2, 452/552): it exists.", "Nothing."},
	{ReasonPolicy, "prober", []Status{Unverifiable}, false, false, "The destination refused the RCPT for a reason that is not about the mailbox (policy, blocklist, relay, spam).", "Trace a callout to read the reply; it is never taken for user unknown."},
	{ReasonRcptProtocol, "prober", []Status{Unverifiable}, false, false, "The destination answered the RCPT with 500-504 (it did not understand the command).", "Trace a callout to see the dialogue."},
	{ReasonTemporary, "prober", []Status{TempFail}, false, false, "The destination answered the RCPT with a 4xx.", "Nothing: the next verify retries."},
	{ReasonUnexpected, "prober", []Status{TempFail}, false, false, "The destination answered the RCPT with a code outside SMTP's (1xx, 3xx, 6xx and up).", "Trace a callout to see the reply."},
}

// Reasons is every reason, in the order of the table.
func Reasons() []ReasonInfo { return slices.Clone(reasonTable) }

// About returns the row of reason r.
func About(r Reason) (ReasonInfo, bool) {
	for _, ri := range reasonTable {
		if ri.Reason == r {
			return ri, true
		}
	}
	return ReasonInfo{}, false
}

// ReasonsMarkdown writes the reason table as the rows of a Markdown table
// (reason, given by, statuses, may reject, meaning, what to do), the form
// docs/troubleshooting.md shows.
func ReasonsMarkdown(w io.Writer) error {
	for _, ri := range reasonTable {
		var st []string
		for _, s := range ri.Statuses {
			st = append(st, string(s))
		}
		if ri.Fact {
			st = append(st, "domain fact")
		}
		reject := "no"
		if ri.MayReject {
			reject = "**yes**"
		}
		if _, err := fmt.Fprintf(w, "| `%s` | %s | %s | %s | %s | %s |\n", ri.Reason, ri.By, strings.Join(st, ", "), reject, ri.Meaning, ri.Action); err != nil {
			return err
		}
	}
	return nil
}
