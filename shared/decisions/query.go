package decisions

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/verdict"
)

// Query is a search of the decision log. Every field is optional and
// compared as text: nothing in it ever becomes a subject or a pattern,
// so a recipient "*" or ">" looks for that text.
type Query struct {
	Recipient string          `json:"recipient,omitempty"` // one address (without case)
	Domain    string          `json:"domain,omitempty"`    // the recipient's domain
	Sender    string          `json:"sender,omitempty"`    // one address; "<>" is the null sender
	Client    string          `json:"client,omitempty"`    // an address or a network (192.0.2.0/24)
	Action    verdict.Action  `json:"action,omitempty"`
	Reason    verdict.Reason  `json:"reason,omitempty"`
	Since     time.Time       `json:"since,omitzero"`
	Until     time.Time       `json:"until,omitzero"`
	Limit     int             `json:"limit,omitempty"`  // results per page (default 50, at most MaxLimit)
	Before    uint64          `json:"before,omitempty"` // paging: records older than this record ID
	Domains   []string        `json:"domains,omitempty"`
	Purpose   verdict.Purpose `json:"purpose,omitempty"`

	client netip.Prefix
}

// Page sizes.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
)

// FieldError names the filter that is wrong.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// ErrBadFilter is every malformed filter (errors.Is).
var ErrBadFilter = errors.New("malformed filter")

func bad(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf("%w: "+format, append([]any{ErrBadFilter}, args...)...)}
}

// Check validates and normalizes the query. Domains, when set, is the
// scope of a tenant's user: only records of those domains are found.
func (q *Query) Check() error {
	for _, f := range []struct{ name, v string }{{"recipient", q.Recipient}, {"domain", q.Domain}, {"sender", q.Sender}, {"client", q.Client}} {
		if len(f.v) > maxAddress {
			return bad(f.name, "longer than %d bytes", maxAddress)
		}
		if strings.ContainsFunc(f.v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return bad(f.name, "control characters")
		}
	}
	q.Recipient = strings.TrimSpace(q.Recipient)
	q.Domain = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(q.Domain), "."))
	if q.Recipient != "" && !strings.Contains(q.Recipient, "@") {
		return bad("recipient", "%q is not an address (search a domain with domain=)", q.Recipient)
	}
	if q.Domain != "" && strings.Contains(q.Domain, "@") {
		return bad("domain", "%q is an address (search it with recipient=)", q.Domain)
	}
	if q.Recipient != "" && q.Domain != "" && DomainOf(q.Recipient) != q.Domain {
		return bad("domain", "the recipient %q is not in %q", q.Recipient, q.Domain)
	}
	if q.Client != "" {
		p, err := netip.ParsePrefix(q.Client)
		if err != nil {
			a, aerr := netip.ParseAddr(q.Client)
			if aerr != nil {
				return bad("client", "%q is neither an address nor a network", q.Client)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		q.client = p.Masked()
	}
	switch q.Action {
	case "", verdict.Accept, verdict.Reject, verdict.Defer:
	default:
		return bad("action", "%q (want accept, reject or defer)", q.Action)
	}
	switch q.Purpose {
	case "", verdict.Recipient, verdict.Sender:
	default:
		return bad("purpose", "%q (want recipient or sender)", q.Purpose)
	}
	if q.Reason != "" && !knownReason(q.Reason) {
		return bad("reason", "%q is not a reason (see docs/troubleshooting.md)", q.Reason)
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && q.Until.Before(q.Since) {
		return bad("until", "before since")
	}
	switch {
	case q.Limit < 0 || q.Limit > MaxLimit:
		return bad("limit", "%d (1 to %d)", q.Limit, MaxLimit)
	case q.Limit == 0:
		q.Limit = DefaultLimit
	}
	for i, d := range q.Domains {
		q.Domains[i] = strings.ToLower(d)
	}
	return nil
}

// indexed reports whether every filter of the query is answered by the
// index alone (recipient, domain, action, time), so that each record the
// index finds is a result.
func (q *Query) indexed() bool {
	return q.Sender == "" && q.Client == "" && q.Reason == "" && q.Purpose == ""
}

// Match reports whether a record answers the query (the query checked).
func (q *Query) Match(r *Record) bool {
	switch {
	case q.Recipient != "" && !strings.EqualFold(r.Recipient, q.Recipient),
		q.Domain != "" && r.Domain() != q.Domain,
		q.Action != "" && r.Action != q.Action,
		q.Reason != "" && r.Reason != q.Reason,
		q.Purpose != "" && r.Purpose != q.Purpose,
		!q.Since.IsZero() && r.At.Before(q.Since),
		!q.Until.IsZero() && r.At.After(q.Until):
		return false
	}
	if q.Sender != "" {
		want := q.Sender
		if want == "<>" {
			want = ""
		}
		if !strings.EqualFold(strings.Trim(r.Sender, "<>"), strings.Trim(want, "<>")) {
			return false
		}
	}
	if q.client.IsValid() {
		a, err := netip.ParseAddr(r.Client)
		if err != nil || !q.client.Contains(a.Unmap()) && !q.client.Contains(a) {
			return false
		}
	}
	if len(q.Domains) > 0 {
		d := r.Domain()
		for _, s := range q.Domains {
			if d == s {
				return true
			}
		}
		return false
	}
	return true
}

func knownReason(r verdict.Reason) bool { _, ok := verdict.About(r); return ok }

// ParseWhen reads a search's time as people write it: RFC 3339, a
// minute or a day (UTC), or a duration back from now ("24h").
func ParseWhen(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return time.Now().Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: a time (2026-12-01, 2026-12-01T10:00, 2026-12-01T10:00:00Z) or a duration back from now (24h)", s)
}
