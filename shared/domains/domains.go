// Package domains holds the per-domain policy: whether and how recipients of
// a domain are verified. Policies live as JSON in a KV bucket keyed by
// domain, so every instance sees changes at once, without restart.
package domains

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/verdict"
)

// Mode says how a domain's recipients are checked.
type Mode string

const (
	ModeCallout Mode = "callout" // ask the destination (default)
	ModeOff     Mode = "off"     // accept everything, no callout
	ModeStatic  Mode = "static"  // only the listed mailboxes exist
	ModeMonitor Mode = "monitor" // call out and cache as in callout mode, but always accept
)

// RouteMX as the route means: find the destination by MX lookup.
const RouteMX = "mx"

// Policy is one domain's settings.
type Policy struct {
	Mode           Mode           `json:"mode,omitempty"`
	Route          []string       `json:"route,omitempty"`           // host:port in preference order, or ["mx"]
	Mailboxes      []string       `json:"mailboxes,omitempty"`       // static mode: local parts
	Bypass         []string       `json:"bypass,omitempty"`          // local parts always accepted without a callout
	OnTempfail     verdict.Action `json:"on_tempfail,omitempty"`     // defer (default) or accept
	OnUnverifiable verdict.Action `json:"on_unverifiable,omitempty"` // accept (default) or defer
	Sender         string         `json:"sender,omitempty"`          // probe MAIL FROM; empty is <>
	FallbackSender string         `json:"fallback_sender,omitempty"` // used when <> is refused
	// ControlProbe "off" stops the control probe (RCPT postmaster) for a
	// hosted domain that provisions no postmaster; "" or "on": probed.
	ControlProbe string `json:"control_probe,omitempty"`

	index  map[string]struct{} // lower-case mailboxes, built by Normalize
	bindex map[string]struct{} // lower-case bypass list
	// refs are the lists a stored policy keeps in chunks (lists.go), by
	// field; loaded says the Table has put them in the indexes.
	refs   map[string]ListRef
	loaded bool
}

// list is the list named field (one of listFields).
func (p *Policy) list(field string) *[]string {
	if field == "bypass" {
		return &p.Bypass
	}
	return &p.Mailboxes
}

// Count is the number of entries of the list field ("mailboxes" or
// "bypass"), whether it is in memory or not.
func (p Policy) Count(field string) int {
	if r, ok := p.refs[field]; ok {
		return r.Count
	}
	return len(*p.list(field))
}

// Complete reports whether every list of p is in memory. A policy read
// from the bucket whose lists are kept in chunks is not, until the
// chunks are read (Table, Store.Load): until then no answer may rest on
// its lists, since an entry may be in a chunk not yet read.
func (p Policy) Complete() bool { return len(p.refs) == 0 || p.loaded }

// ErrPolicy is returned for a policy that cannot be used.
var ErrPolicy = errors.New("bad domain policy")

// FieldError names the policy field that is wrong, so that a form can show
// the message beside it. It is an ErrPolicy.
type FieldError struct {
	Field string // the JSON name: mode, route, mailboxes, bypass, ...
	Msg   string
}

func (e *FieldError) Error() string { return ErrPolicy.Error() + ": " + e.Field + ": " + e.Msg }

// Unwrap makes a FieldError an ErrPolicy.
func (e *FieldError) Unwrap() error { return ErrPolicy }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Parse reads a stored JSON policy of domain, normalizes and checks it. A
// list kept in chunks is named, not read (see Complete, Store.Load).
func Parse(domain string, data []byte) (Policy, error) {
	var rec record
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return Policy{}, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	if dec.More() {
		return Policy{}, fmt.Errorf("%w: data after the policy", ErrPolicy)
	}
	p := rec.Policy
	for field, ref := range rec.Lists {
		if !slices.Contains(listFields, field) {
			return Policy{}, fieldErr("lists", "%q is not a list (want mailboxes or bypass)", field)
		}
		if len(*p.list(field)) > 0 {
			return Policy{}, fieldErr(field, "both inline and in chunks")
		}
		if ref.Count < 1 || ref.Count > MaxListEntries || len(ref.Chunks) == 0 || len(ref.Chunks) > ref.Count {
			return Policy{}, fieldErr(field, "chunked list of %d entries in %d chunks", ref.Count, len(ref.Chunks))
		}
		for _, h := range ref.Chunks {
			if len(h) != hashLen || strings.Trim(h, "0123456789abcdef") != "" {
				return Policy{}, fieldErr(field, "chunk name %q", h)
			}
		}
		if p.refs == nil {
			p.refs = map[string]ListRef{}
		}
		p.refs[field] = ref
	}
	return p.Normalize(domain)
}

// Normalize returns p with its mailbox list in normal form (local parts of
// domain; full addresses of domain are cut to their local part), after
// checking every field.
func (p Policy) Normalize(domain string) (Policy, error) {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return Policy{}, fieldErr("domain", "%v", err)
	}
	if p.Mailboxes, err = localParts("mailboxes", d, p.Mailboxes); err != nil {
		return Policy{}, err
	}
	if p.Bypass, err = localParts("bypass", d, p.Bypass); err != nil {
		return Policy{}, err
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	p.index, p.bindex = lowerSet(p.Mailboxes), lowerSet(p.Bypass)
	return p, nil
}

// localParts normalizes a list of local parts or addresses of domain d.
func localParts(field, d string, list []string) ([]string, error) {
	if len(list) == 0 {
		return list, nil
	}
	out := make([]string, 0, len(list))
	for _, m := range list {
		m = strings.TrimSpace(m)
		if m == "" {
			continue
		}
		local, err := entryLocal(d, m)
		if err != nil {
			return nil, fieldErr(field, "%v", err)
		}
		out = append(out, local)
	}
	return out, nil
}

// entryLocal is the local part a list entry of domain d stands for: a
// local part, or an address of d.
func entryLocal(d, m string) (string, error) {
	in := m
	if !strings.Contains(m, "@") || strings.HasPrefix(m, `"`) && strings.HasSuffix(m, `"`) {
		in = m + "@" + d
	}
	a, err := address.Parse(in)
	if err != nil {
		return "", fmt.Errorf("%q: %v", m, err)
	}
	if a.Domain != d {
		return "", fmt.Errorf("%q is not an address of %s", m, d)
	}
	return a.Local, nil
}

// EntryKey is how the ingests compare a list entry of domain: its local
// part, lower-case (an entry that does not parse is its own key).
func EntryKey(domain, entry string) string {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return entry
	}
	local, err := entryLocal(d, strings.TrimSpace(entry))
	if err != nil {
		return entry
	}
	return strings.ToLower(local)
}

func lowerSet(list []string) map[string]struct{} {
	m := make(map[string]struct{}, len(list))
	for _, l := range list {
		m[strings.ToLower(l)] = struct{}{}
	}
	return m
}

// Validate checks every field.
func (p Policy) Validate() error {
	switch p.Mode {
	case "", ModeCallout, ModeOff, ModeStatic, ModeMonitor:
	default:
		return fieldErr("mode", "%q (want callout, monitor, off or static)", p.Mode)
	}
	if p.Mode == ModeStatic && p.Count("mailboxes") == 0 {
		return fieldErr("mailboxes", "static mode needs at least one mailbox")
	}
	for _, r := range p.Route {
		if r == RouteMX {
			continue
		}
		host, port, err := net.SplitHostPort(r)
		if err != nil || host == "" || port == "" {
			return fieldErr("route", "%q: want host:port or mx", r)
		}
	}
	switch p.OnTempfail {
	case "", verdict.Defer, verdict.Accept:
	default:
		return fieldErr("on_tempfail", "%q (want defer or accept)", p.OnTempfail)
	}
	switch p.OnUnverifiable {
	case "", verdict.Defer, verdict.Accept:
	default:
		return fieldErr("on_unverifiable", "%q (want defer or accept)", p.OnUnverifiable)
	}
	switch p.ControlProbe {
	case "", "on", "off":
	default:
		return fieldErr("control_probe", "%q (want on or off)", p.ControlProbe)
	}
	for name, s := range map[string]string{"sender": p.Sender, "fallback_sender": p.FallbackSender} {
		if s == "" {
			continue
		}
		if _, err := address.Parse(s); err != nil {
			return fieldErr(name, "%v", err)
		}
	}
	return nil
}

// EffectiveMode is the mode with its default.
func (p Policy) EffectiveMode() Mode {
	if p.Mode == "" {
		return ModeCallout
	}
	return p.Mode
}

// UsesMX reports whether the destination is found by MX lookup.
func (p Policy) UsesMX() bool {
	return len(p.Route) == 0 || (len(p.Route) == 1 && p.Route[0] == RouteMX)
}

// Senders lists the probe senders whose results count, in the order tried.
func (p Policy) Senders() []string {
	s := []string{p.Sender}
	if p.FallbackSender != "" && p.FallbackSender != p.Sender {
		s = append(s, p.FallbackSender)
	}
	return s
}

// Listed reports whether local is one of the static mailboxes, compared
// without case. With recipient delimiters (Postfix's recipient_delimiter,
// e.g. "+"), alice+tag is listed when alice is.
func (p Policy) Listed(local, delimiters string) bool {
	return inList(p.index, p.Mailboxes, local, delimiters)
}

// Bypassed reports whether local is on the bypass list (same rules).
func (p Policy) Bypassed(local, delimiters string) bool {
	return inList(p.bindex, p.Bypass, local, delimiters)
}

func inList(index map[string]struct{}, list []string, local, delimiters string) bool {
	if has(index, list, local) {
		return true
	}
	if delimiters != "" {
		if i := strings.IndexAny(local, delimiters); i > 0 {
			return has(index, list, local[:i])
		}
	}
	return false
}

func has(index map[string]struct{}, list []string, local string) bool {
	if index != nil {
		_, ok := index[strings.ToLower(local)]
		return ok
	}
	for _, m := range list {
		if strings.EqualFold(m, local) {
			return true
		}
	}
	return false
}

// Decision is the verdict.Policy part of p.
func (p Policy) Decision(purpose verdict.Purpose) verdict.Policy {
	return verdict.Policy{Purpose: purpose, OnTempfail: p.OnTempfail, OnUnverifiable: p.OnUnverifiable,
		Monitor: p.Mode == ModeMonitor && purpose == verdict.Recipient}
}
