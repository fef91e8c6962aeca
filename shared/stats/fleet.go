package stats

import (
	"encoding/json"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/shared/wire"
)

// Fleet is the whole fleet's figures from the latest stats messages: what
// `calloutctl stats` prints and the console charts.
type Fleet struct {
	At        time.Time          `json:"at"`
	Instances map[string]int     `json:"instances"`
	Verifies  float64            `json:"verifies_per_s"`
	Accept    float64            `json:"accept_per_s"`
	Reject    float64            `json:"reject_per_s"`
	Defer     float64            `json:"defer_per_s"`
	HitRatio  float64            `json:"hit_ratio"`
	NearHits  float64            `json:"near_cache_hits_per_s"`
	Deadlines float64            `json:"deadlines_per_s"`
	Shed      float64            `json:"shed_per_s"`
	Coalesced float64            `json:"coalesced_per_s"`
	Callouts  float64            `json:"callouts_per_s"`
	ByResult  map[string]float64 `json:"callouts_by_result_per_s"`
	Waiting   int64              `json:"jobs_waiting"`
	Totals    map[string]float64 `json:"totals"`
	// Would counts, per monitor-mode domain, the requests accepted that
	// callout mode would have rejected or deferred (since the ingests started).
	Would map[string]float64 `json:"monitor_would"`
	Hosts []wire.HostInfo    `json:"hosts"`
}

// Collector keeps the latest two stats messages of every instance.
type Collector struct {
	mu    sync.Mutex
	seen  map[string]*pair
	stale time.Duration
}

type pair struct{ prev, last *Message }

// NewCollector returns a collector that forgets an instance silent for stale.
func NewCollector(stale time.Duration) *Collector {
	return &Collector{seen: map[string]*pair{}, stale: stale}
}

// Subscribe feeds the collector from subject (the names' StatsAll).
func (c *Collector) Subscribe(nc *nats.Conn, subject string) (*nats.Subscription, error) {
	return nc.Subscribe(subject, func(m *nats.Msg) {
		var sm Message
		if json.Unmarshal(m.Data, &sm) == nil {
			c.Add(&sm)
		}
	})
}

// Add takes one message.
func (c *Collector) Add(sm *Message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := sm.Service + "/" + sm.Instance
	p := c.seen[k]
	if p == nil {
		p = &pair{}
		c.seen[k] = p
	}
	p.prev, p.last = p.last, sm
}

// Fleet sums what the live instances said, with rates per second from each
// instance's last two messages and at most topHosts destination hosts.
func (c *Collector) Fleet(now time.Time, topHosts int) Fleet {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Fleet{At: now, Instances: map[string]int{}, ByResult: map[string]float64{}, Totals: map[string]float64{}, Would: map[string]float64{}, Hosts: []wire.HostInfo{}}
	var hits, total float64
	for k, p := range c.seen {
		if p.last == nil || now.Sub(p.last.At) > c.stale {
			delete(c.seen, k)
			continue
		}
		prev, last := p.prev, p.last
		s.Instances[last.Service]++
		rate := func(name string, want ...string) float64 {
			if prev == nil {
				return 0
			}
			dt := last.At.Sub(prev.At).Seconds()
			if dt <= 0 {
				return 0
			}
			return (Sum(last.Counters, name, want...) - Sum(prev.Counters, name, want...)) / dt
		}
		switch last.Service {
		case "ingest":
			s.Totals["verifies"] += Sum(last.Counters, "callout_ingest_requests_total")
			s.Verifies += rate("callout_ingest_requests_total")
			s.Accept += rate("callout_ingest_requests_total", `action="accept"`)
			s.Reject += rate("callout_ingest_requests_total", `action="reject"`)
			s.Defer += rate("callout_ingest_requests_total", `action="defer"`)
			hits += rate("callout_ingest_requests_total", `source="cache"`)
			total += rate("callout_ingest_requests_total")
			s.NearHits += rate("callout_ingest_near_cache_hits_total")
			s.Deadlines += rate("callout_ingest_deadlines_total")
			s.Shed += rate("callout_ingest_shed_total")
			s.Coalesced += rate("callout_ingest_coalesced_total")
			for name, v := range last.Counters {
				if d, ok := label(name, "callout_ingest_monitor_would_total", "domain"); ok {
					s.Would[d] += v
				}
			}
		case "prober":
			s.Totals["callouts"] += Sum(last.Counters, "callout_prober_callouts_total")
			s.Callouts += rate("callout_prober_callouts_total")
			for name := range last.Counters {
				if r, ok := label(name, "callout_prober_callouts_total", "result"); ok {
					s.ByResult[r] += rate("callout_prober_callouts_total", `result="`+r+`"`)
				}
			}
			var extra wire.HostsReply
			if b, err := json.Marshal(last.Extra); err == nil && json.Unmarshal(b, &extra) == nil {
				s.Waiting += extra.Waiting
				s.Hosts = append(s.Hosts, extra.Hosts...)
			}
		case "cachekeeper":
			s.Totals["lookups"] += Sum(last.Counters, "callout_cache_lookups_total")
		}
	}
	if total > 0 {
		s.HitRatio = hits / total
	}
	sort.Slice(s.Hosts, func(i, j int) bool {
		if s.Hosts[i].InUse != s.Hosts[j].InUse {
			return s.Hosts[i].InUse > s.Hosts[j].InUse
		}
		return s.Hosts[i].Calls > s.Hosts[j].Calls
	})
	if len(s.Hosts) > topHosts {
		s.Hosts = s.Hosts[:topHosts]
	}
	return s
}

// label returns the value of one label of a counter key name{a="b",...}
// when the key is of metric base.
func label(key, base, name string) (string, bool) {
	b, rest, ok := strings.Cut(key, "{")
	if !ok || b != base {
		return "", false
	}
	for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return strings.Trim(v, `"`), true
		}
	}
	return "", false
}
