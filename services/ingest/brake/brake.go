// Package brake slows dictionary attacks: after Limit unknown recipients from
// one client within Window, that client's further cache misses are deferred
// without callouts.
//
// Every call is O(1) and memory is bounded: clients live in a fixed number
// of shards, each a map with a least-recently-used list, and the least
// recently seen client is forgotten when a shard is full. IPv6 clients are
// counted by prefix (/64 by default), since one host gets a whole /64 and
// new addresses would otherwise escape the brake for free.
package brake

import (
	"container/list"
	"hash/maphash"
	"net/netip"
	"sync"
	"time"
)

const shards = 32

// Config sets a brake.
type Config struct {
	Limit      int           // unknown recipients within Window that brake a client (0: off)
	Window     time.Duration // counting window
	MaxClients int           // clients remembered at most (memory bound)
	IPv6Prefix int           // IPv6 clients are counted per prefix of this length
}

// Brake counts invalid recipients per client in fixed windows.
type Brake struct {
	cfg    Config
	now    func() time.Time
	seed   maphash.Seed
	shards [shards]shard
}

type shard struct {
	mu    sync.Mutex
	max   int
	byKey map[string]*list.Element
	lru   list.List // front: most recently seen
}

type entry struct {
	key   string
	start time.Time
	n     int
}

// New returns a brake.
func New(cfg Config) *Brake {
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = 100000
	}
	if cfg.IPv6Prefix <= 0 || cfg.IPv6Prefix > 128 {
		cfg.IPv6Prefix = 64
	}
	b := &Brake{cfg: cfg, now: time.Now, seed: maphash.MakeSeed()}
	per := max(1, cfg.MaxClients/shards)
	for i := range b.shards {
		b.shards[i].max = per
		b.shards[i].byKey = make(map[string]*list.Element, per)
	}
	return b
}

// Key is what a client is counted by: the address, or its prefix for IPv6.
func (b *Brake) Key(client string) string {
	a, err := netip.ParseAddr(client)
	if err != nil {
		if len(client) > 64 {
			client = client[:64] // not an IP: still bounded
		}
		return client
	}
	a = a.Unmap()
	if a.Is6() {
		p, err := a.WithZone("").Prefix(b.cfg.IPv6Prefix)
		if err == nil {
			return p.String()
		}
	}
	return a.String()
}

func (b *Brake) shard(key string) *shard {
	return &b.shards[maphash.String(b.seed, key)%shards]
}

// Invalid records an unknown recipient from client.
func (b *Brake) Invalid(client string) {
	if b.cfg.Limit <= 0 || client == "" {
		return
	}
	key := b.Key(client)
	now := b.now()
	sh := b.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if el, ok := sh.byKey[key]; ok {
		e := el.Value.(*entry)
		if now.Sub(e.start) > b.cfg.Window {
			e.start, e.n = now, 0
		}
		e.n++
		sh.lru.MoveToFront(el)
		return
	}
	if sh.lru.Len() >= sh.max {
		old := sh.lru.Back()
		sh.lru.Remove(old)
		delete(sh.byKey, old.Value.(*entry).key)
	}
	sh.byKey[key] = sh.lru.PushFront(&entry{key: key, start: now, n: 1})
}

// Braked reports whether client is over its limit.
func (b *Brake) Braked(client string) bool {
	if b.cfg.Limit <= 0 || client == "" {
		return false
	}
	key := b.Key(client)
	sh := b.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	el, ok := sh.byKey[key]
	if !ok {
		return false
	}
	e := el.Value.(*entry)
	return b.now().Sub(e.start) <= b.cfg.Window && e.n >= b.cfg.Limit
}

// Len is the number of clients remembered.
func (b *Brake) Len() int {
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		n += sh.lru.Len()
		sh.mu.Unlock()
	}
	return n
}
