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
	"hash/maphash"
	"strings"
	"sync"

	"github.com/callout-mail/callout/shared/revision"
	"github.com/callout-mail/callout/shared/verdict"
)

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
