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
// Memory is bounded by a number of entries; the least recently used go
// first. An entry keeps only what an answer needs (the destination's text
// and host only when asked to), in one slice with its links: the LRU, its
// domain's entries and its address's, so that a drop by domain or by
// address walks only what it drops.
package nearcache

// Over 400 lines on purpose: one structure, an LRU whose entries are also
// linked by domain and by address, whose list operations belong together.

import (
	"strings"
	"sync"
	"time"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/revision"
	"github.com/callout-mail/callout/shared/verdict"
)

// none ends a list of entries.
const none = -1

// Cache is a bounded LRU of cached verdicts.
type Cache struct {
	mu      sync.Mutex
	max     int
	details bool // keep the destination's text and host
	now     func() time.Time
	ents    []entry
	free    int32            // first free slot (linked by next), or none
	byKey   map[string]int32 // near key -> slot
	doms    map[string]int32 // domain -> first slot of its entries
	addrs   map[string]int32 // lower-case address -> first slot of its entries
	head    int32            // most recently used
	tail    int32            // least recently used
	n       int
	interns map[string]string // reasons, codes, senders: few values, kept once
	applied revision.Mark     // highest bucket revision applied
	hits    uint64
	misses  uint64
}

// entry is one cached verdict: the near key holds the address, view and
// senders; the rest is what the answer needs.
type entry struct {
	key      string // near key; key[:alen] is the address
	alen, at uint16 // the address's length in key and its @
	view     uint8
	status   uint8 // index in verdict.Statuses
	kind     uint8 // 0 address, 1 domain
	source   uint8 // 0 cache, 1 probe, 2 static
	code     int16
	reason   verdict.Reason
	enhanced string
	sender   string
	details  *[2]string // the destination's text and host, when kept
	checked  int64      // unix nanoseconds
	expires  int64
	// Links: the LRU (prev, next), the domain's entries (dprev, dnext)
	// and the address's (aprev, anext).
	prev, next, dprev, dnext, aprev, anext int32
}

// New returns a cache of at most max entries (0: off). details keeps the
// destination's text and host of each verdict (replies that show them).
func New(max int, details bool) *Cache {
	c := &Cache{max: max, details: details, now: time.Now}
	c.reset()
	return c
}

func (c *Cache) reset() {
	c.ents, c.free, c.head, c.tail, c.n = nil, none, none, none, 0
	c.byKey, c.doms, c.addrs, c.interns = map[string]int32{}, map[string]int32{}, map[string]int32{}, map[string]string{}
}

// Key is the cache key of a lookup: address, view and probe senders.
func Key(addr string, purpose verdict.Purpose, senders []string) string {
	return addr + "\x00" + kvkey.View(purpose) + "\x00" + strings.Join(senders, "\x00")
}

var sources = []verdict.Source{verdict.SourceCache, verdict.SourceProbe, verdict.SourceStatic}

// Get returns the verdict stored under key, if it has not expired.
func (c *Cache) Get(key string) (verdict.Verdict, bool) {
	if c == nil || c.max == 0 {
		return verdict.Verdict{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.byKey[key]
	if !ok {
		c.misses++
		return verdict.Verdict{}, false
	}
	e := &c.ents[i]
	if c.now().UnixNano() >= e.expires {
		c.remove(i)
		c.misses++
		return verdict.Verdict{}, false
	}
	c.touch(i)
	c.hits++
	return e.verdict(), true
}

// verdict is the entry as the lookup gave it.
func (e *entry) verdict() verdict.Verdict {
	addr := e.key[:e.alen]
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: addr, Domain: addr[e.at+1:], Purpose: verdict.Recipient,
		Sender: e.sender, Status: verdict.Statuses[e.status], Reason: e.reason, Code: int(e.code), Enhanced: e.enhanced,
		CheckedAt: time.Unix(0, e.checked), ExpiresAt: time.Unix(0, e.expires), Source: sources[e.source]}
	if e.details != nil {
		v.Text, v.Host = e.details[0], e.details[1]
	}
	if e.kind == 1 {
		v.Kind = verdict.KindDomain
	}
	if e.view == 1 {
		v.Purpose = verdict.Sender
	}
	return v
}

// Put keeps a hit's verdict (one without an expires_at is not kept). rev
// is the bucket revision the ingest had applied when it asked: a change
// applied since may have been missed by the lookup's answer, so the reply
// is then dropped rather than kept stale. key is Key of the address
// domain and local make.
func (c *Cache) Put(key, domain, local string, purpose verdict.Purpose, v verdict.Verdict, rev uint64) {
	if c == nil || c.max == 0 || v.ExpiresAt.IsZero() {
		return
	}
	alen := len(local) + 1 + len(domain)
	if alen >= len(key) || alen > 0xffff || key[len(local)] != '@' || key[alen] != 0 {
		return // not a key of this address: never served wrong
	}
	st := verdict.StatusIndex(v.Status)
	src := 0
	for j, s := range sources {
		if s == v.Source {
			src = j
		}
	}
	code := v.Code
	if st < 0 || code < -32768 || code > 32767 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applied.Get() != rev {
		return
	}
	if i, ok := c.byKey[key]; ok {
		c.remove(i)
	}
	for c.n >= c.max {
		c.remove(c.tail)
	}
	i := c.alloc()
	e := &c.ents[i]
	*e = entry{key: key, alen: uint16(alen), at: uint16(len(local)), status: uint8(st), source: uint8(src), code: int16(code),
		reason: verdict.Reason(c.intern(string(v.Reason))), enhanced: c.intern(v.Enhanced), sender: c.intern(v.Sender),
		checked: v.CheckedAt.UnixNano(), expires: v.ExpiresAt.UnixNano(), prev: none, next: none}
	if v.Kind == verdict.KindDomain {
		e.kind = 1
	}
	if purpose == verdict.Sender {
		e.view = 1
	}
	if c.details {
		e.details = &[2]string{v.Text, v.Host}
	}
	c.byKey[key] = i
	c.pushFront(i)
	c.linkTo(c.doms, domain, i, byDomain)
	c.linkTo(c.addrs, strings.ToLower(key[:alen]), i, byAddress) // no copy for the usual lower-case address
	c.n++
}

// intern returns s, kept once: a reason, a code or a sender repeats over
// many entries.
func (c *Cache) intern(s string) string {
	if s == "" {
		return ""
	}
	if k, ok := c.interns[s]; ok {
		return k
	}
	if len(c.interns) < 4096 {
		c.interns[s] = s
	}
	return s
}

func (c *Cache) alloc() int32 {
	if c.free != none {
		i := c.free
		c.free = c.ents[i].next
		return i
	}
	c.ents = append(c.ents, entry{})
	return int32(len(c.ents) - 1)
}

func (c *Cache) pushFront(i int32) {
	e := &c.ents[i]
	e.prev, e.next = none, c.head
	if c.head != none {
		c.ents[c.head].prev = i
	}
	c.head = i
	if c.tail == none {
		c.tail = i
	}
}

func (c *Cache) unlink(i int32) {
	e := &c.ents[i]
	if e.prev != none {
		c.ents[e.prev].next = e.next
	} else {
		c.head = e.next
	}
	if e.next != none {
		c.ents[e.next].prev = e.prev
	} else {
		c.tail = e.prev
	}
}

func (c *Cache) touch(i int32) {
	if c.head == i {
		return
	}
	c.unlink(i)
	c.pushFront(i)
}

// The lists of entries by domain and by address: their links in an entry.
func byDomain(e *entry) (prev, next *int32)  { return &e.dprev, &e.dnext }
func byAddress(e *entry) (prev, next *int32) { return &e.aprev, &e.anext }

// linkTo puts slot i first in the list headed in heads[k].
func (c *Cache) linkTo(heads map[string]int32, k string, i int32, links func(*entry) (prev, next *int32)) {
	prev, next := links(&c.ents[i])
	*prev, *next = none, none
	if h, ok := heads[k]; ok {
		*next = h
		hp, _ := links(&c.ents[h])
		*hp = i
	}
	heads[k] = i
}

// unlinkFrom takes slot i out of the list headed in heads[k].
func (c *Cache) unlinkFrom(heads map[string]int32, k string, i int32, links func(*entry) (prev, next *int32)) {
	prev, next := links(&c.ents[i])
	switch {
	case *prev != none:
		_, pn := links(&c.ents[*prev])
		*pn = *next
	case *next != none:
		heads[k] = *next
	default:
		delete(heads, k)
	}
	if *next != none {
		np, _ := links(&c.ents[*next])
		*np = *prev
	}
}

// remove drops slot i from every list and map and frees it.
func (c *Cache) remove(i int32) {
	e := &c.ents[i]
	c.unlink(i)
	delete(c.byKey, e.key)
	addr := e.key[:e.alen]
	domain := addr[e.at+1:]
	c.unlinkFrom(c.doms, domain, i, byDomain)
	c.unlinkFrom(c.addrs, strings.ToLower(addr), i, byAddress)
	*e = entry{next: c.free}
	c.free = i
	c.n--
}

// Revision is the highest bucket revision applied; pass it to Put.
func (c *Cache) Revision() uint64 {
	if c == nil {
		return 0
	}
	return c.applied.Get()
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
		c.reset()
		return
	case strings.HasPrefix(key, "flush.domain."):
		if d, err := kvkey.ParseToken(strings.TrimPrefix(key, "flush.domain.")); err == nil {
			c.dropDomain(d, -1)
		}
		return
	case strings.HasPrefix(key, "flush.addr."):
		parts := strings.Split(strings.TrimPrefix(key, "flush.addr."), ".")
		if len(parts) == 2 {
			d, err1 := kvkey.ParseToken(parts[0])
			l, err2 := kvkey.ParseToken(parts[1])
			if err1 == nil && err2 == nil {
				c.dropAddress(d, l, -1)
			}
		}
		return
	}
	k, err := kvkey.Parse(key)
	if err != nil {
		return // legacy or foreign keys are never served from here
	}
	view := 0
	if k.Purpose == verdict.Sender {
		view = 1
	}
	if k.Kind == "domain" {
		if k.Fact == kvkey.FactControl {
			return // never an answer: the entries held stay as they are
		}
		c.dropDomain(k.Domain, view)
		return
	}
	c.dropAddress(k.Domain, k.Local, view)
}

// dropDomain drops the domain's entries of one view (-1 for all).
func (c *Cache) dropDomain(domain string, view int) {
	i, ok := c.doms[domain]
	for ok && i != none {
		next := c.ents[i].dnext
		if view < 0 || int(c.ents[i].view) == view {
			c.remove(i)
		}
		i = next
	}
}

// dropAddress drops the entries of an address of one view (-1 for all),
// its local part in any case: an address flush covers them all, and a
// verdict's change drops at most a few more than it needs to.
func (c *Cache) dropAddress(domain, local string, view int) {
	i, ok := c.addrs[strings.ToLower(local+"@"+domain)]
	for ok && i != none {
		next := c.ents[i].anext
		if view < 0 || int(c.ents[i].view) == view {
			c.remove(i)
		}
		i = next
	}
}

// Clear drops everything (after a reconnection).
func (c *Cache) Clear() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.reset()
	c.mu.Unlock()
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
	return c.n, c.hits, c.misses
}
