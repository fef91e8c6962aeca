// Package domains holds the per-domain policy: whether and how recipients of
// a domain are verified. Policies live as JSON in a KV bucket keyed by
// domain, so every instance sees changes at once, without restart.
package domains

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
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
}

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

// Parse reads a stored JSON policy of domain, normalizes and checks it.
func Parse(domain string, data []byte) (Policy, error) {
	var p Policy
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("%w: %v", ErrPolicy, err)
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
		in := m
		if !strings.Contains(m, "@") || strings.HasPrefix(m, `"`) && strings.HasSuffix(m, `"`) {
			in = m + "@" + d
		}
		a, err := address.Parse(in)
		if err != nil {
			return nil, fieldErr(field, "%q: %v", m, err)
		}
		if a.Domain != d {
			return nil, fieldErr(field, "%q is not an address of %s", m, d)
		}
		out = append(out, a.Local)
	}
	return out, nil
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
	if p.Mode == ModeStatic && len(p.Mailboxes) == 0 {
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

// Table is the current set of policies, kept up to date from the bucket.
type Table struct {
	mu       sync.RWMutex
	policies map[string]Policy // normalized domain -> the policy served
	senders  map[string]bool   // every probe sender of every policy, lower-case
	bad      map[string]error  // keys whose stored policy is not used as written
	// stored is every key read from the bucket: a domain may be stored
	// under a key that is not its normal form (Example.org), and the key
	// in normal form wins over such others.
	stored map[string]storedPolicy
}

// storedPolicy is the policy one key of the bucket gives its domain.
type storedPolicy struct {
	domain string // normalized
	p      Policy
}

// NewTable returns a table holding the given policies (for tests and tools).
func NewTable(p map[string]Policy) *Table {
	t := &Table{policies: map[string]Policy{}, bad: map[string]error{}, stored: map[string]storedPolicy{}}
	for d, pol := range p {
		t.policies[d] = pol
	}
	t.indexSenders()
	return t
}

// Lookup returns the policy of domain (in normal form, as address.Parse
// gives it).
func (t *Table) Lookup(domain string) (Policy, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	p, ok := t.policies[domain]
	return p, ok
}

// Errors is the number of keys whose stored policy is not served as
// written: it does not parse, or its key is not a domain in normal form.
func (t *Table) Errors() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.bad)
}

// Problems maps each such key to why.
func (t *Table) Problems() map[string]string {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make(map[string]string, len(t.bad))
	for d, err := range t.bad {
		out[d] = err.Error()
	}
	return out
}

// Set replaces the policy of a domain in memory.
func (t *Table) Set(domain string, p Policy) {
	t.set(domain, domain, p, nil)
}

// set stores p as what key says of domain; bad is why the stored policy
// is not used as written (nil: it is).
func (t *Table) set(key, domain string, p Policy, bad error) {
	t.mu.Lock()
	t.stored[key] = storedPolicy{domain: domain, p: p}
	if bad != nil {
		t.bad[key] = bad
	} else {
		delete(t.bad, key)
	}
	t.resolve(domain)
	t.indexSenders()
	t.mu.Unlock()
}

func (t *Table) remove(key string) {
	t.mu.Lock()
	sp, ok := t.stored[key]
	delete(t.stored, key)
	delete(t.bad, key)
	if ok {
		t.resolve(sp.domain)
	} else {
		delete(t.policies, key)
	}
	t.indexSenders()
	t.mu.Unlock()
}

// resolve serves domain the policy of its key in normal form, else of the
// first other key that names it, else none.
func (t *Table) resolve(domain string) {
	if sp, ok := t.stored[domain]; ok {
		t.policies[domain] = sp.p
		return
	}
	best := ""
	for k, sp := range t.stored {
		if sp.domain == domain && (best == "" || k < best) {
			best = k
		}
	}
	if best == "" {
		delete(t.policies, domain)
		return
	}
	t.policies[domain] = t.stored[best].p
}

// indexSenders rebuilds the probe-sender set; policies change rarely.
func (t *Table) indexSenders() {
	t.senders = map[string]bool{}
	for _, p := range t.policies {
		for _, s := range []string{p.Sender, p.FallbackSender} {
			if s != "" {
				t.senders[strings.ToLower(s)] = true
			}
		}
	}
}

// IsProbeSender reports whether addr is a sender some policy probes with:
// such an address is never verified itself, or callouts would loop.
func (t *Table) IsProbeSender(addr string) bool {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.senders[strings.ToLower(addr)]
}

// Bucket opens (creating if missing) the policy bucket of names.
func Bucket(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (jetstream.KeyValue, error) {
	name := n.DomainsBucket()
	kv, err := js.CreateKeyValue(ctx, streams.DomainsConfig(n, replicas))
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, name)
	}
	if err != nil {
		return nil, fmt.Errorf("domain policy bucket %s: %w", name, err)
	}
	return kv, nil
}

// Put checks and stores the policy of a domain: a policy that does not
// pass is refused here, where it is written, with a message naming the field.
func Put(ctx context.Context, kv jetstream.KeyValue, domain string, p Policy) error {
	_, err := PutRevision(ctx, kv, domain, p, AnyRevision)
	return err
}

// AnyRevision as the expected revision writes whatever is stored.
const AnyRevision = ^uint64(0)

// ErrRevision is returned when the stored policy is not the revision the
// writer read: somebody else changed it in between.
var ErrRevision = errors.New("the domain policy was changed by someone else")

// PutRevision is Put with a compare-and-set: rev is the revision the
// writer read (0: the domain must have no policy; AnyRevision: no check).
// It returns the new revision.
func PutRevision(ctx context.Context, kv jetstream.KeyValue, domain string, p Policy, rev uint64) (uint64, error) {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return 0, fieldErr("domain", "%v", err)
	}
	if p, err = p.Normalize(d); err != nil {
		return 0, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return 0, err
	}
	var n uint64
	switch rev {
	case AnyRevision:
		n, err = kv.Put(ctx, d, b)
	case 0:
		n, err = kv.Create(ctx, d, b)
		if errors.Is(err, jetstream.ErrKeyExists) {
			err = fmt.Errorf("%w: %s already has a policy", ErrRevision, d)
		}
	default:
		n, err = kv.Update(ctx, d, b, rev)
	}
	if streams.WrongLastSequence(err) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		err = fmt.Errorf("%w (%s)", ErrRevision, d)
	}
	return n, err
}

// Watch fills a table from the bucket and keeps it current until ctx ends.
// It returns once the initial values are loaded.
func Watch(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) (*Table, error) {
	t := NewTable(nil)
	return t, t.Watch(ctx, kv, log)
}

// Watch keeps t current from the bucket until ctx ends; it returns once the
// initial values are loaded.
//
// A stored policy that does not parse (written around the checks, say with
// `nats kv put`) must never turn a served domain into an unserved one,
// whose recipients would be refused, nor reject what the operator meant to
// accept: the domain is served by its newest good revision from the
// bucket's history, or, with none, by the default policy, in either case
// in monitor mode (called out, never refused; off stays off). Every
// instance reads the same history, so all decide alike, whenever they
// started. A policy stored under a key that is not its domain's normal
// form (Example.org) serves the normal form, unless that has a key of its
// own. Such keys are counted (Errors) and logged.
func (t *Table) Watch(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch domain policies: %w", err)
	}
	ready := make(chan struct{})
	go func() {
		defer w.Stop()
		loaded := false
		for e := range w.Updates() {
			if e == nil {
				if !loaded {
					loaded = true
					close(ready)
				}
				continue
			}
			t.take(ctx, kv, e, log)
		}
	}()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// take applies one change of the bucket.
func (t *Table) take(ctx context.Context, kv jetstream.KeyValue, e jetstream.KeyValueEntry, log *slog.Logger) {
	key := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		t.remove(key)
		log.Info("domain policy removed", "key", key)
		return
	}
	domain, err := address.NormalizeDomain(key)
	if err != nil {
		t.mu.Lock()
		t.bad[key] = fmt.Errorf("%w: key %q is not a domain: %v", ErrPolicy, key, err)
		t.mu.Unlock()
		log.Error("domain policy under a key that is not a domain: ignored", "key", key, "err", err)
		return
	}
	var keyErr error
	if domain != key {
		keyErr = fmt.Errorf("%w: stored under %q, the domain is %q", ErrPolicy, key, domain)
		log.Error("domain policy stored under a key that is not the domain's normal form: it serves the normal form", "key", key, "domain", domain)
	}
	p, err := Parse(domain, e.Value())
	if err == nil {
		t.set(key, domain, p, keyErr)
		log.Info("domain policy loaded", "domain", domain, "mode", p.EffectiveMode())
		return
	}
	p, rev := lastGood(ctx, kv, key, domain, e.Revision())
	p = p.failSafe()
	t.set(key, domain, p, err)
	if rev == 0 {
		log.Error("domain policy does not parse: domain served in monitor mode with default settings until it is fixed",
			"domain", domain, "revision", e.Revision(), "err", err)
	} else {
		log.Error("domain policy does not parse: domain keeps its last good policy, in monitor mode, until it is fixed",
			"domain", domain, "revision", e.Revision(), "good_revision", rev, "mode", p.EffectiveMode(), "err", err)
	}
}

// failSafe is p as served in place of a policy that does not parse: no
// answer of it may reject, since the operator's intent is not known. A
// static list may lack the mailbox the broken write added, so it is not
// used; callouts go on (monitor mode: called out and cached, accepted).
func (p Policy) failSafe() Policy {
	if p.EffectiveMode() == ModeOff {
		return p
	}
	p.Mode = ModeMonitor
	p.Mailboxes, p.index = nil, nil
	return p
}

// lastGood returns the newest revision of key before rev that parses, or
// the default policy and 0. A delete in between ends the search: what came
// before it was removed on purpose.
func lastGood(ctx context.Context, kv jetstream.KeyValue, key, domain string, rev uint64) (Policy, uint64) {
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	hist, err := kv.History(hctx, key)
	if err != nil {
		return Policy{}, 0
	}
	for i := len(hist) - 1; i >= 0; i-- {
		e := hist[i]
		if e.Revision() >= rev {
			continue
		}
		if e.Operation() != jetstream.KeyValuePut {
			break
		}
		if p, err := Parse(domain, e.Value()); err == nil {
			return p, e.Revision()
		}
	}
	return Policy{}, 0
}
