// Package nearcache keeps cache hits inside an ingest, so that a hit in
// steady state is answered with no further hop. The cachekeeper stays the
// one writer of the cache bucket; the near cache only holds what lookups
// returned, and is kept coherent from the bucket itself:
//
//   - Every change of the bucket (a new verdict, a domain fact, a flush
//     record) drops the entries it concerns: the ingest watches the bucket,
//     so a change is seen once it is stored, never before.
//   - An entry is never served past its verdict's expires_at.
//   - A flush is recorded in the bucket before it purges (see the cache), so
//     the record's arrival drops what it covers; the cachekeeper waits for
//     every ingest to confirm the record before it answers the flush.
//   - After a reconnection (invalidations may have been missed) everything
//     is dropped.
//
// Memory is bounded by a number of entries; the least recently used go first.
package nearcache

import (
	"container/list"
	"strings"
	"sync"
	"time"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/revision"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Cache is a bounded LRU of lookup replies.
type Cache struct {
	mu       sync.Mutex
	max      int
	now      func() time.Time
	entries  map[string]*list.Element
	lru      list.List
	byDomain map[string]map[string]struct{} // domain -> keys, for domain facts and flushes
	byAddr   map[string][]string            // domain NUL lower-case local -> keys (one or a few): a verdict or an address flush drops its address's entries in O(1)
	applied  revision.Mark                  // highest bucket revision applied
	hits     uint64
	misses   uint64
}

type entry struct {
	key     string
	domain  string
	local   string
	view    string
	reply   wire.LookupReply
	expires time.Time
}

// New returns a cache of at most max entries (0: off).
func New(max int) *Cache {
	return &Cache{max: max, now: time.Now, entries: map[string]*list.Element{}, byDomain: map[string]map[string]struct{}{}, byAddr: map[string][]string{}}
}

// Key is the cache key of a lookup: address, view and probe senders.
func Key(addr string, purpose verdict.Purpose, senders []string) string {
	return addr + "\x00" + kvkey.View(purpose) + "\x00" + strings.Join(senders, "\x00")
}

// Get returns the reply stored under key, if it has not expired.
func (c *Cache) Get(key string) (wire.LookupReply, bool) {
	if c == nil || c.max == 0 {
		return wire.LookupReply{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[key]
	if !ok {
		c.misses++
		return wire.LookupReply{}, false
	}
	e := el.Value.(*entry)
	if !c.now().Before(e.expires) {
		c.remove(el)
		c.misses++
		return wire.LookupReply{}, false
	}
	c.lru.MoveToFront(el)
	c.hits++
	return e.reply, true
}

// Put keeps a hit (replies without an expiring verdict are not kept).
// rev is the bucket revision the ingest had applied when it asked: a
// change applied since may have been missed by the lookup's answer, so the
// reply is then dropped rather than kept stale.
func (c *Cache) Put(key, domain, local string, purpose verdict.Purpose, r wire.LookupReply, rev uint64) {
	if c == nil || c.max == 0 || !r.Hit || r.Verdict == nil || r.Verdict.ExpiresAt.IsZero() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applied.Get() != rev {
		return
	}
	if el, ok := c.entries[key]; ok {
		c.remove(el)
	}
	for len(c.entries) >= c.max {
		c.remove(c.lru.Back())
	}
	e := &entry{key: key, domain: domain, local: local, view: kvkey.View(purpose), reply: r, expires: r.Verdict.ExpiresAt}
	c.entries[key] = c.lru.PushFront(e)
	index(c.byDomain, domain, key)
	a := addrIndex(domain, local)
	c.byAddr[a] = append(c.byAddr[a], key)
}

func index(m map[string]map[string]struct{}, k, key string) {
	if m[k] == nil {
		m[k] = map[string]struct{}{}
	}
	m[k][key] = struct{}{}
}

func unindex(m map[string]map[string]struct{}, k, key string) {
	if set := m[k]; set != nil {
		delete(set, key)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

// Revision is the highest bucket revision applied; pass it to Put.
func (c *Cache) Revision() uint64 {
	if c == nil {
		return 0
	}
	return c.applied.Get()
}

func (c *Cache) remove(el *list.Element) {
	e := el.Value.(*entry)
	c.lru.Remove(el)
	delete(c.entries, e.key)
	unindex(c.byDomain, e.domain, e.key)
	a := addrIndex(e.domain, e.local)
	keys := c.byAddr[a]
	for i, k := range keys {
		if k == e.key {
			keys[i] = keys[len(keys)-1]
			keys = keys[:len(keys)-1]
			break
		}
	}
	if len(keys) == 0 {
		delete(c.byAddr, a)
	} else {
		c.byAddr[a] = keys
	}
}

// Apply takes one change of the bucket (its key and revision) and drops
// what it concerns.
func (c *Cache) Apply(key string, rev uint64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	// Under the lock: a Put that checks the revision sees the drops too.
	defer func() {
		c.applied.Set(rev)
		c.mu.Unlock()
	}()
	switch {
	case key == kvkey.FlushAll:
		c.clearLocked()
		return
	case strings.HasPrefix(key, "flush.domain."):
		if d, err := kvkey.ParseToken(strings.TrimPrefix(key, "flush.domain.")); err == nil {
			c.dropDomain(d, "")
		}
		return
	case strings.HasPrefix(key, "flush.addr."):
		parts := strings.Split(strings.TrimPrefix(key, "flush.addr."), ".")
		if len(parts) == 2 {
			d, err1 := kvkey.ParseToken(parts[0])
			l, err2 := kvkey.ParseToken(parts[1])
			if err1 == nil && err2 == nil {
				c.dropAddress(d, l, "")
			}
		}
		return
	}
	k, err := kvkey.Parse(key)
	if err != nil {
		return // legacy or foreign keys are never served from here
	}
	if k.Kind == "domain" {
		if k.Fact == kvkey.FactControl {
			return // never an answer: the entries held stay as they are
		}
		c.dropDomain(k.Domain, kvkey.View(k.Purpose))
		return
	}
	c.dropAddress(k.Domain, k.Local, kvkey.View(k.Purpose))
}

// dropDomain drops the domain's entries of one view ("" for all).
func (c *Cache) dropDomain(domain, view string) {
	for key := range c.byDomain[domain] {
		if el, ok := c.entries[key]; ok && (view == "" || el.Value.(*entry).view == view) {
			c.remove(el)
		}
	}
}

// dropAddress drops the entries of an address of one view ("" for all),
// its local part in any case: an address flush covers them all, and a
// verdict's change drops at most a few more than it needs to.
func (c *Cache) dropAddress(domain, local, view string) {
	// A copy: remove edits the index.
	for _, key := range append([]string(nil), c.byAddr[addrIndex(domain, local)]...) {
		el, ok := c.entries[key]
		if !ok {
			continue
		}
		if e := el.Value.(*entry); strings.EqualFold(e.local, local) && (view == "" || e.view == view) {
			c.remove(el)
		}
	}
}

// addrIndex is the byAddr key of an address.
func addrIndex(domain, local string) string { return domain + "\x00" + strings.ToLower(local) }

// Clear drops everything (after a reconnection).
func (c *Cache) Clear() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.clearLocked()
	c.mu.Unlock()
}

func (c *Cache) clearLocked() {
	c.entries = map[string]*list.Element{}
	c.byDomain = map[string]map[string]struct{}{}
	c.byAddr = map[string][]string{}
	c.lru.Init()
}

// WaitApplied waits until changes up to rev are applied, or until timeout.
func (c *Cache) WaitApplied(rev uint64, timeout time.Duration) bool {
	if c == nil {
		return true
	}
	return c.applied.Wait(rev, timeout)
}

// Stats returns the entries held, hits and misses.
func (c *Cache) Stats() (entries int, hits, misses uint64) {
	if c == nil {
		return 0, 0, 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.hits, c.misses
}
