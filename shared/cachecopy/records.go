package cachecopy

// Flush records: when a scope was last flushed, and what they cover.

import (
	"encoding/json"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
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
