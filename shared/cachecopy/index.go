package cachecopy

// The index of address keys and the domain facts, and the answers a complete index gives alone.

import (
	"hash/maphash"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

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
