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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/verdict"
)

// Mode says how a domain's recipients are checked.
type Mode string

const (
	ModeCallout Mode = "callout" // ask the destination (default)
	ModeOff     Mode = "off"     // accept everything, no callout
	ModeStatic  Mode = "static"  // only the listed mailboxes exist
)

// RouteMX as the route means: find the destination by MX lookup.
const RouteMX = "mx"

// Policy is one domain's settings.
type Policy struct {
	Mode           Mode           `json:"mode,omitempty"`
	Route          []string       `json:"route,omitempty"`           // host:port in preference order, or ["mx"]
	Mailboxes      []string       `json:"mailboxes,omitempty"`       // static mode: local parts
	OnTempfail     verdict.Action `json:"on_tempfail,omitempty"`     // defer (default) or accept
	OnUnverifiable verdict.Action `json:"on_unverifiable,omitempty"` // accept (default) or defer
	Sender         string         `json:"sender,omitempty"`          // probe MAIL FROM; empty is <>
	FallbackSender string         `json:"fallback_sender,omitempty"` // used when <> is refused
}

// ErrPolicy is returned for a policy that cannot be used.
var ErrPolicy = errors.New("bad domain policy")

// Parse reads and checks a JSON policy.
func Parse(data []byte) (Policy, error) {
	var p Policy
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	return p, p.Validate()
}

// Validate checks every field.
func (p Policy) Validate() error {
	switch p.Mode {
	case "", ModeCallout, ModeOff, ModeStatic:
	default:
		return fmt.Errorf("%w: mode %q (want callout, off or static)", ErrPolicy, p.Mode)
	}
	for _, r := range p.Route {
		if r == RouteMX {
			continue
		}
		if _, _, err := net.SplitHostPort(r); err != nil {
			return fmt.Errorf("%w: route %q: want host:port or mx", ErrPolicy, r)
		}
	}
	switch p.OnTempfail {
	case "", verdict.Defer, verdict.Accept:
	default:
		return fmt.Errorf("%w: on_tempfail %q (want defer or accept)", ErrPolicy, p.OnTempfail)
	}
	switch p.OnUnverifiable {
	case "", verdict.Defer, verdict.Accept:
	default:
		return fmt.Errorf("%w: on_unverifiable %q (want defer or accept)", ErrPolicy, p.OnUnverifiable)
	}
	for _, s := range []string{p.Sender, p.FallbackSender} {
		if s == "" {
			continue
		}
		if _, err := address.Parse(s); err != nil {
			return fmt.Errorf("%w: sender: %v", ErrPolicy, err)
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

// Listed reports whether local is one of the static mailboxes.
func (p Policy) Listed(local string) bool {
	for _, m := range p.Mailboxes {
		if strings.EqualFold(m, local) {
			return true
		}
	}
	return false
}

// Decision is the verdict.Policy part of p.
func (p Policy) Decision(purpose verdict.Purpose) verdict.Policy {
	return verdict.Policy{Purpose: purpose, OnTempfail: p.OnTempfail, OnUnverifiable: p.OnUnverifiable}
}

// Table is the current set of policies, kept up to date from the bucket.
type Table struct {
	mu       sync.RWMutex
	policies map[string]Policy
	senders  map[string]bool // every probe sender of every policy, lower-case
}

// NewTable returns a table holding the given policies (for tests and tools).
func NewTable(p map[string]Policy) *Table {
	t := &Table{policies: map[string]Policy{}}
	for d, pol := range p {
		t.policies[d] = pol
	}
	t.indexSenders()
	return t
}

// Lookup returns the policy of domain.
func (t *Table) Lookup(domain string) (Policy, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	p, ok := t.policies[domain]
	return p, ok
}

// Set replaces the policy of a domain in memory.
func (t *Table) Set(domain string, p Policy) {
	t.mu.Lock()
	t.policies[domain] = p
	t.indexSenders()
	t.mu.Unlock()
}

func (t *Table) remove(domain string) {
	t.mu.Lock()
	delete(t.policies, domain)
	t.indexSenders()
	t.mu.Unlock()
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

// Bucket opens (creating if needed) the policy bucket.
func Bucket(ctx context.Context, js jetstream.JetStream, name string, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: name, History: 5, Replicas: max(replicas, 1),
		Description: "callout per-domain policy (JSON)",
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, name)
	}
	if err != nil {
		return nil, fmt.Errorf("domain policy bucket %s: %w", name, err)
	}
	return kv, nil
}

// Put stores the policy of a domain.
func Put(ctx context.Context, kv jetstream.KeyValue, domain string, p Policy) error {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, d, b)
	return err
}

// Watch fills a table from the bucket and keeps it current until ctx ends.
// It returns once the initial values are loaded.
func Watch(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) (*Table, error) {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("watch domain policies: %w", err)
	}
	t := NewTable(nil)
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
			if e.Operation() != jetstream.KeyValuePut {
				t.remove(e.Key())
				log.Info("domain policy removed", "domain", e.Key())
				continue
			}
			p, err := Parse(e.Value())
			if err != nil {
				// Keep the last good policy rather than none.
				log.Error("domain policy ignored", "domain", e.Key(), "err", err)
				continue
			}
			t.Set(e.Key(), p)
			log.Info("domain policy loaded", "domain", e.Key(), "mode", p.EffectiveMode())
		}
	}()
	select {
	case <-ready:
		return t, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
