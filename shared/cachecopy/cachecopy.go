// Package cachecopy is a copy of part of the cache bucket, kept by a
// watch of the whole bucket: the flush records and the domain facts (small
// and few), and optionally an index of which address keys exist.
//
// A cachekeeper checks flush records and reads domain facts from its copy
// instead of the bucket. An ingest keeps the index too: once its watch has
// read the whole bucket, an address none of whose keys exist is a miss
// known without asking, and its callout is queued at once (Copy.Answer).
//
// The index errs only one way: a key it holds may be gone (a flush of only
// valid or only invalid entries, or of one address's sender-specific keys,
// removes entries without a marker the watch would see), which costs a
// lookup; a key is held from the moment the watch delivers its write, so
// the index never takes a stored entry for a missing one once the watch
// has passed its revision.
package cachecopy

import (
	"encoding/json"
	"hash/maphash"
	"strings"
	"sync"
	"time"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/revision"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Record is when a scope was last flushed, per status filter. It is JSON,
// readable with `nats kv get`.
type Record struct {
	Any     time.Time `json:"any,omitzero"`
	Valid   time.Time `json:"valid,omitzero"`
	Invalid time.Time `json:"invalid,omitzero"`
}

// Slot is the time of one status filter ("" for everything).
func (r *Record) Slot(only verdict.Status) *time.Time {
	switch only {
	case verdict.Valid:
		return &r.Valid
	case verdict.Invalid:
		return &r.Invalid
	}
	return &r.Any
}

// Covers reports whether a flush recorded in r removes v: one of v's
// status (address verdicts), or of everything, at or after v's callout
// started.
func (r Record) Covers(v verdict.Verdict) bool {
	at := r.Any
	if v.Kind == verdict.KindAddress && (v.Status == verdict.Valid || v.Status == verdict.Invalid) {
		if t := *r.Slot(v.Status); t.After(at) {
			at = t
		}
	}
	return !at.IsZero() && !v.CheckedAt.After(at)
}

// Records are the keys of the records whose flushes cover v.
func Records(v verdict.Verdict) []string {
	keys := []string{kvkey.FlushAll, kvkey.FlushDomain(v.Domain)}
	if v.Kind == verdict.KindAddress {
		if a, err := address.Parse(v.Address); err == nil {
			keys = append(keys, kvkey.FlushAddress(a.Domain, a.Local))
		}
	}
	return keys
}

// Copy is the copy. Its zero value is not ready: use New.
type Copy struct {
	mu      sync.Mutex
	records map[string]Record
	recRevs map[string]uint64 // record key -> revision of the last record message seen
	// Domains with records of their own (of the domain or of an address):
	// a verdict of any other needs only the flush of everything looked at.
	recDomains map[string]int
	facts      map[string]held // domain fact key -> stored entry
	mark       *revision.Mark  // how far the running watch has come; nil while it does not run

	// The address index (maxKeys > 0): domain token -> key hash -> the
	// revision of the key's last write.
	maxKeys  int
	seed     maphash.Seed
	keys     map[string]map[uint64]uint64
	nkeys    int
	loaded   bool // the watch has read the whole bucket since the last Reset
	overflow bool // more address keys than maxKeys: the index is dropped until Reset
}

// held is a stored entry and its revision; a domain fact comes decoded
// too (ok false: garbage), so that answering a miss decodes nothing.
type held struct {
	data []byte
	rev  uint64
	v    verdict.Verdict
	ok   bool
}

// New returns an empty copy; maxKeys > 0 keeps an index of at most that
// many address keys.
func New(maxKeys int) *Copy {
	c := &Copy{maxKeys: maxKeys, seed: maphash.MakeSeed()}
	c.reset()
	return c
}

func (c *Copy) reset() {
	c.records, c.recRevs, c.recDomains, c.facts = map[string]Record{}, map[string]uint64{}, map[string]int{}, map[string]held{}
	c.keys, c.nkeys, c.loaded, c.overflow = map[string]map[uint64]uint64{}, 0, false, false
}

// Reset forgets everything (before a watch reads the bucket again).
func (c *Copy) Reset() {
	c.mu.Lock()
	c.reset()
	c.mu.Unlock()
}

// Loaded says the watch has read the whole bucket: from now on the index
// knows every address key (unless it overflowed).
func (c *Copy) Loaded() {
	c.mu.Lock()
	c.loaded = true
	c.mu.Unlock()
}

// Complete reports whether the index knows every address key.
func (c *Copy) Complete() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.completeLocked()
}

func (c *Copy) completeLocked() bool { return c.maxKeys > 0 && c.loaded && !c.overflow }

// Keys is the number of address keys indexed.
func (c *Copy) Keys() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nkeys
}

// SetMark installs the mark of the running watch (nil: none runs) and
// returns the one it replaces.
func (c *Copy) SetMark(m *revision.Mark) *revision.Mark {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.mark
	c.mark = m
	return old
}

// Running returns the mark of the running watch, or nil.
func (c *Copy) Running() *revision.Mark {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mark
}

// uncovered is v unless a record held here covers it (nil stays nil).
func (c *Copy) uncovered(v *verdict.Verdict) *verdict.Verdict {
	if v == nil || c.coversLocked(*v) {
		return nil
	}
	return v
}

// Covers reports whether a record held here removes v: a flush of its
// scope (and status) at or after its callout started.
func (c *Copy) Covers(v verdict.Verdict) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.coversLocked(v)
}

func (c *Copy) coversLocked(v verdict.Verdict) bool {
	if r, ok := c.records[kvkey.FlushAll]; ok && r.Covers(v) {
		return true
	}
	if c.recDomains[v.Domain] == 0 {
		return false // the common case: no keys made, no address parsed
	}
	for _, k := range Records(v)[1:] { // the first is FlushAll's, looked at above
		if r, ok := c.records[k]; ok && r.Covers(v) {
			return true
		}
	}
	return false
}

// RecordAt returns the flush record held under key and the revision of
// its last message (zero values when none is held): what a writer of the
// next record expects to find, unless the copy is behind.
func (c *Copy) RecordAt(key string) (Record, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.records[key], c.recRevs[key]
}

// RecordCount is the number of flush records held.
func (c *Copy) RecordCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.records)
}

// Apply takes one change of the bucket in: key, the value written (nil
// for a delete, purge or expiry marker: deleted), its revision.
func (c *Copy) Apply(key string, data []byte, rev uint64, deleted bool) {
	switch {
	case strings.HasPrefix(key, "flush."):
		if !deleted {
			c.Merge(key, data, rev)
		}
	case strings.HasPrefix(key, "domain."):
		c.fact(key, data, rev, deleted)
	case strings.HasPrefix(key, "addr."):
		c.address(key, rev, deleted)
	}
}

// Merge takes a record in: records only move forward, so the later of each
// slot wins whatever the order they are seen in. Once the bucket is read
// (Loaded), a record of a new flush of everything (not only valid or
// invalid) at revision rev drops the facts and indexed keys of its scope
// written before it: the flush covers them and purges them.
func (c *Copy) Merge(key string, data []byte, rev uint64) {
	var r Record
	if json.Unmarshal(data, &r) != nil {
		return // garbage reads as no flush
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	cur, had := c.records[key]
	if d, ok := kvkey.FlushDomainOf(key); !had && ok {
		c.recDomains[d]++
	}
	purged := r.Any.After(cur.Any)
	for _, only := range []verdict.Status{"", verdict.Valid, verdict.Invalid} {
		if t := *r.Slot(only); t.After(*cur.Slot(only)) {
			*cur.Slot(only) = t
		}
	}
	c.records[key] = cur
	if rev > c.recRevs[key] {
		c.recRevs[key] = rev
	}
	// While the bucket is read (before Loaded), rev is the record's last
	// write, which may be a later flush of only valid or only invalid
	// entries: keys and facts read before it may have been written after
	// the flush of everything it also records, so none is dropped. Those
	// the flush covers still go by Covers, and its purge removes them.
	if !purged || rev == 0 || !c.loaded {
		return
	}
	prefix := ""
	switch {
	case key == kvkey.FlushAll:
		for d := range c.keys {
			c.dropKeys(d, rev, nil)
		}
	case strings.HasPrefix(key, "flush.domain."):
		d := strings.TrimPrefix(key, "flush.domain.")
		prefix = "domain." + d + "."
		c.dropKeys(d, rev, nil)
	default:
		// An address flush leaves the domain facts; its keys with the
		// null sender go from the index (sender-specific ones stay held,
		// which costs a lookup at most).
		parts := strings.Split(strings.TrimPrefix(key, "flush.addr."), ".")
		if len(parts) == 2 {
			var ks []uint64
			for _, view := range []string{kvkey.ViewRecipient, kvkey.ViewSender} {
				ks = append(ks, c.hash("addr."+parts[0]+"."+parts[1]+"."+view))
			}
			c.dropKeys(parts[0], rev, ks)
		}
		return
	}
	for k, h := range c.facts {
		if h.rev < rev && strings.HasPrefix(k, prefix) {
			delete(c.facts, k)
		}
	}
}

// dropKeys drops the domain's indexed keys (only those of hashes, when
// given) written before rev.
func (c *Copy) dropKeys(domainToken string, rev uint64, hashes []uint64) {
	m := c.keys[domainToken]
	drop := func(h uint64) {
		if r, ok := m[h]; ok && r < rev {
			delete(m, h)
			c.nkeys--
		}
	}
	if hashes != nil {
		for _, h := range hashes {
			drop(h)
		}
	} else {
		for h := range m {
			drop(h)
		}
	}
	if len(m) == 0 {
		delete(c.keys, domainToken)
	}
}

func (c *Copy) hash(key string) uint64 { return maphash.String(c.seed, key) }

// domainToken is the domain token of an addr.<domain>.… key.
func domainToken(key string) string {
	rest := strings.TrimPrefix(key, "addr.")
	d, _, _ := strings.Cut(rest, ".")
	return d
}

func (c *Copy) address(key string, rev uint64, deleted bool) {
	if c.maxKeys <= 0 {
		return
	}
	d, h := domainToken(key), c.hash(key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.overflow {
		return
	}
	m := c.keys[d]
	if deleted {
		if _, ok := m[h]; ok {
			delete(m, h)
			c.nkeys--
			if len(m) == 0 {
				delete(c.keys, d)
			}
		}
		return
	}
	if m == nil {
		m = map[uint64]uint64{}
		c.keys[d] = m
	}
	if _, ok := m[h]; !ok {
		if c.nkeys >= c.maxKeys {
			// Too many to know them all: give the index up (and its
			// memory) until the watch reads the bucket afresh.
			c.keys, c.nkeys, c.overflow = map[string]map[uint64]uint64{}, 0, true
			return
		}
		c.nkeys++
	}
	m[h] = rev
}

// fact takes a domain fact's change in; one older than what is held (a
// watch may replay from before a load) is ignored.
func (c *Copy) fact(key string, data []byte, rev uint64, deleted bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.facts[key]; ok && h.rev >= rev {
		return
	}
	if deleted {
		delete(c.facts, key)
		return
	}
	v, err := wire.DecodeEntry(key, data)
	if err == nil {
		v.Source = verdict.SourceCache
	}
	c.facts[key] = held{data: data, rev: rev, v: v, ok: err == nil}
}

// HeldFacts returns the stored entries of keys (nil for a key not held).
func (c *Copy) HeldFacts(keys ...string) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = c.facts[k].data
	}
	return out
}

// Prune drops records no verdict still storable can be older than.
func (c *Copy) Prune(now time.Time, longest time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	all := c.records[kvkey.FlushAll].Any
	for k, r := range c.records {
		latest := r.Any
		for _, t := range []time.Time{r.Valid, r.Invalid} {
			if t.After(latest) {
				latest = t
			}
		}
		// A full flush covers every older record (and purged them).
		if now.Sub(latest) > longest || (k != kvkey.FlushAll && !latest.After(all)) {
			delete(c.records, k)
			delete(c.recRevs, k)
			if d, ok := kvkey.FlushDomainOf(k); ok {
				if c.recDomains[d]--; c.recDomains[d] <= 0 {
					delete(c.recDomains, d)
				}
			}
		}
	}
}

// LookupKeys are the keys a lookup reads: the address's, one per probe
// sender, then the domain's catch-all, access and control facts.
func LookupKeys(a address.Address, purpose verdict.Purpose, senders []string) []string {
	keys := make([]string, 0, len(senders)+3)
	for _, snd := range senders {
		keys = append(keys, kvkey.Address(a.Domain, a.Local, purpose, snd))
	}
	return append(keys, kvkey.Domain(a.Domain, purpose, kvkey.FactCatchAll), kvkey.Domain(a.Domain, purpose, kvkey.FactAccess),
		kvkey.Domain(a.Domain, purpose, kvkey.FactControl))
}

// live is the fact held, if it is one and has not expired.
func (h held) live(now time.Time) *verdict.Verdict {
	if !h.ok || !h.v.ExpiresAt.After(now) {
		return nil
	}
	v := h.v
	return &v
}

// Fresh decodes a stored entry. An entry past its expires_at is never
// served, even if the server has not removed it yet.
func Fresh(key string, data []byte, now time.Time) (verdict.Verdict, bool) {
	v, err := wire.DecodeEntry(key, data)
	if err != nil || !v.ExpiresAt.After(now) {
		return verdict.Verdict{}, false
	}
	v.Source = verdict.SourceCache
	return v, true
}

// Reply is what the cache answers for a: its own entry (own, for one of
// the senders), else the domain's catch-all fact, else a domain access
// fact that covers the senders (the last one is the one a callout would
// use). On a miss it carries the facts the callout needs (control: the
// control probe's; it never answers for an address).
func Reply(a address.Address, senders []string, own, catchAll, access, control *verdict.Verdict) wire.LookupReply {
	if own != nil {
		return wire.LookupReply{Hit: true, Verdict: own}
	}
	if catchAll != nil && catchAll.Status == verdict.CatchAll {
		return wire.LookupReply{Hit: true, Verdict: forAddress(*catchAll, a), CatchAll: catchAll}
	}
	// A refused sender does not cover a fallback sender still to be tried.
	if access != nil && (!verdict.SenderSpecific(*access) || access.Sender == senders[len(senders)-1]) {
		return wire.LookupReply{Hit: true, Verdict: forAddress(*access, a)}
	}
	return wire.LookupReply{CatchAll: catchAll, Refused: access, Control: control}
}

// forAddress is a domain fact answering for one address of the domain.
func forAddress(fact verdict.Verdict, a address.Address) *verdict.Verdict {
	fact.Kind, fact.Address, fact.Fact = verdict.KindAddress, a.String(), ""
	return &fact
}

// Answer is the cache's answer for a, known from this copy alone: ok only
// when the index is complete and none of a's keys exists, so that only
// the domain facts (held here) can answer. senders are the probe senders
// ("" the null sender; none means the null sender alone).
func (c *Copy) Answer(a address.Address, purpose verdict.Purpose, senders []string, now time.Time) (wire.LookupReply, bool) {
	if len(senders) == 0 {
		senders = []string{""}
	}
	keys := LookupKeys(a, purpose, senders)
	hashes := make([]uint64, len(senders))
	for i := range senders {
		hashes[i] = c.hash(keys[i])
	}
	d := kvkey.Token(a.Domain)
	c.mu.Lock()
	if !c.completeLocked() {
		c.mu.Unlock()
		return wire.LookupReply{}, false
	}
	m := c.keys[d]
	for _, h := range hashes {
		if _, ok := m[h]; ok {
			c.mu.Unlock()
			return wire.LookupReply{}, false
		}
	}
	ca, acc := c.uncovered(c.facts[keys[len(senders)]].live(now)), c.uncovered(c.facts[keys[len(senders)+1]].live(now))
	ctl := c.uncovered(c.facts[keys[len(senders)+2]].live(now))
	c.mu.Unlock()
	return Reply(a, senders, nil, ca, acc, ctl), true
}
