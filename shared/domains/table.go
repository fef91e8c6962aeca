package domains

// The table of policies every instance keeps, and how it follows the bucket.

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
)

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
	// chunks are the list chunks read from the lists bucket, by key:
	// a stored policy whose lists are chunked is served loaded once
	// every chunk it names is here, and not Complete until then.
	chunks map[string][]string
}

// storedPolicy is the policy one key of the bucket gives its domain.
type storedPolicy struct {
	domain string // normalized
	p      Policy
}

// NewTable returns a table holding the given policies (for tests and tools).
func NewTable(p map[string]Policy) *Table {
	t := &Table{policies: map[string]Policy{}, bad: map[string]error{}, stored: map[string]storedPolicy{}, chunks: map[string][]string{}}
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
	t.stored[key] = storedPolicy{domain: domain, p: t.attach(domain, p)}
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

// attach returns p with its chunked lists in its indexes, when every
// chunk it names has been read; otherwise p as it is (not Complete).
func (t *Table) attach(domain string, p Policy) Policy {
	if len(p.refs) == 0 || p.loaded {
		return p
	}
	sets := map[string]map[string]struct{}{}
	for field, ref := range p.refs {
		set := make(map[string]struct{}, ref.Count)
		for _, h := range ref.Chunks {
			entries, ok := t.chunks[chunkKey(domain, field, h)]
			if !ok {
				return p
			}
			for _, e := range entries {
				set[strings.ToLower(e)] = struct{}{}
			}
		}
		sets[field] = set
	}
	if set, ok := sets["mailboxes"]; ok {
		p.index = set
	}
	if set, ok := sets["bypass"]; ok {
		p.bindex = set
	}
	p.loaded = true
	return p
}

// takeChunk applies one change of the lists bucket: a chunk read in may
// complete a policy that waited for it.
func (t *Table) takeChunk(e jetstream.KeyValueEntry, log *slog.Logger) {
	key := e.Key()
	t.mu.Lock()
	defer t.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(t.chunks, key)
		return
	}
	domain, _, hash, ok := parseChunkKey(key)
	if !ok {
		log.Error("list chunk under a key that is not a chunk's: ignored", "key", key)
		return
	}
	entries, err := decodeChunk(e.Value(), hash)
	if err != nil {
		log.Error("list chunk does not hold what its name says: ignored", "key", key, "err", err)
		return
	}
	t.chunks[key] = entries
	for k, sp := range t.stored {
		if sp.domain == domain && !sp.p.Complete() {
			sp.p = t.attach(domain, sp.p)
			t.stored[k] = sp
			if sp.p.Complete() {
				t.resolve(domain)
				log.Info("domain policy lists loaded", "domain", domain, "mailboxes", sp.p.Count("mailboxes"), "bypass", sp.p.Count("bypass"))
			}
		}
	}
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

// Watch fills a table from the buckets and keeps it current until ctx
// ends. It returns once the initial values are loaded.
func Watch(ctx context.Context, st *Store, log *slog.Logger) (*Table, error) {
	t := NewTable(nil)
	return t, t.Watch(ctx, st, log)
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
//
// The chunks of long lists are read first (st.Lists; nil: lists are not
// read, and policies with chunked lists are never Complete), then the
// policies; a policy whose chunks arrive later is served as not
// Complete until they do.
func (t *Table) Watch(ctx context.Context, st *Store, log *slog.Logger) error {
	if st.Lists != nil {
		if err := follow(ctx, st.Lists, "list chunks", func(e jetstream.KeyValueEntry) { t.takeChunk(e, log) }); err != nil {
			return err
		}
	}
	return follow(ctx, st.KeyValue, "domain policies", func(e jetstream.KeyValueEntry) { t.take(ctx, st, e, log) })
}

// follow applies every value of kv, then every change, with take until
// ctx ends; it returns once the values there were at the start are applied.
func follow(ctx context.Context, kv jetstream.KeyValue, what string, take func(jetstream.KeyValueEntry)) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", what, err)
	}
	ready := make(chan struct{})
	go func() {
		defer func() { _ = w.Stop() }()
		loaded := false
		for e := range w.Updates() {
			if e == nil {
				if !loaded {
					loaded = true
					close(ready)
				}
				continue
			}
			take(e)
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
	if _, ok := p.refs["mailboxes"]; ok {
		refs := maps.Clone(p.refs)
		delete(refs, "mailboxes")
		p.refs = refs
	}
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
