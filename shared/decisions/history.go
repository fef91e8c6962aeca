package decisions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/verdict"
)

// AllDomains is the key part of the counts of every domain together.
const AllDomains = "_all"

// Counts are one domain's answers in one hour.
type Counts struct {
	Accept int64 `json:"accept"`
	Reject int64 `json:"reject"`
	Defer  int64 `json:"defer"`
	// Callouts: answers for which a callout was made; Hits: answers
	// from a cache (the cachekeeper's or an ingest's near cache).
	Callouts int64 `json:"callouts"`
	Hits     int64 `json:"hits"`
	// Reasons counts rejects and defers by "<action>/<reason>".
	Reasons map[string]int64 `json:"reasons,omitempty"`
}

// Total is every answer counted.
func (c *Counts) Total() int64 { return c.Accept + c.Reject + c.Defer }

// Add adds o to c.
func (c *Counts) Add(o *Counts) {
	c.Accept += o.Accept
	c.Reject += o.Reject
	c.Defer += o.Defer
	c.Callouts += o.Callouts
	c.Hits += o.Hits
	for k, v := range o.Reasons {
		if c.Reasons == nil {
			c.Reasons = map[string]int64{}
		}
		c.Reasons[k] += v
	}
}

func (c *Counts) count(r *Record) {
	switch r.Action {
	case verdict.Accept:
		c.Accept++
	case verdict.Reject:
		c.Reject++
	case verdict.Defer:
		c.Defer++
	}
	switch r.Source {
	case verdict.SourceProbe:
		c.Callouts++
	case verdict.SourceCache, SourceNear:
		c.Hits++
	}
	if r.Action == verdict.Reject || r.Action == verdict.Defer {
		if c.Reasons == nil {
			c.Reasons = map[string]int64{}
		}
		c.Reasons[string(r.Action)+"/"+string(r.Reason)]++
	}
}

// HourKey is the history key of a domain's hour.
func HourKey(at time.Time, domain string) string {
	return at.UTC().Format("20060102.15") + "." + domain
}

// ParseHourKey reads a history key.
func ParseHourKey(key string) (time.Time, string, error) {
	if len(key) < 13 || key[11] != '.' {
		return time.Time{}, "", fmt.Errorf("history key %q", key)
	}
	at, err := time.Parse("20060102.15", key[:11])
	return at, key[12:], err
}

// Counter counts answers per domain per hour in memory (at the source,
// so that sampling the log's accepts changes no count) and adds them to
// the history bucket now and then.
type Counter struct {
	mu  sync.Mutex
	cur map[hourOf]*Counts
}

// hourOf is a counter's key: the key is only written out at a flush.
type hourOf struct {
	hour   int64 // unix hours
	domain string
}

func (h hourOf) key() string { return HourKey(time.Unix(h.hour*3600, 0), h.domain) }

// NewCounter returns an empty counter.
func NewCounter() *Counter { return &Counter{cur: map[hourOf]*Counts{}} }

// Count counts one answer, under its domain and under AllDomains.
func (c *Counter) Count(r *Record) {
	d := r.Recipient
	if i := strings.LastIndexByte(d, '@'); i >= 0 && plain(d[i+1:]) {
		d = d[i+1:] // the usual case: no copy
	} else {
		d = Token(r.Domain())
	}
	h := r.At.Unix() / 3600
	c.mu.Lock()
	for _, k := range [2]hourOf{{h, d}, {h, AllDomains}} {
		n := c.cur[k]
		if n == nil {
			n = &Counts{}
			c.cur[k] = n
		}
		n.count(r)
	}
	c.mu.Unlock()
}

// Flush adds what was counted to the bucket (compare-and-set, so that
// every ingest's counts add up); what could not be added is kept for the
// next flush.
func (c *Counter) Flush(ctx context.Context, kv jetstream.KeyValue) error {
	c.mu.Lock()
	taken := c.cur
	c.cur = map[hourOf]*Counts{}
	c.mu.Unlock()
	var errs []error
	keys := slices.SortedFunc(maps.Keys(taken), func(a, b hourOf) int {
		if a.hour != b.hour {
			return int(a.hour - b.hour)
		}
		return strings.Compare(a.domain, b.domain)
	})
	for _, k := range keys {
		if err := merge(ctx, kv, k.key(), taken[k]); err != nil {
			errs = append(errs, err)
			c.mu.Lock()
			if n := c.cur[k]; n != nil {
				taken[k].Add(n)
			}
			c.cur[k] = taken[k]
			c.mu.Unlock()
			if ctx.Err() != nil {
				break
			}
		}
	}
	return errors.Join(errs...)
}

func merge(ctx context.Context, kv jetstream.KeyValue, key string, add *Counts) error {
	for try := 0; try < 20; try++ {
		e, err := kv.Get(ctx, key)
		var sum Counts
		var rev uint64
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			rev = e.Revision()
			if json.Unmarshal(e.Value(), &sum) != nil {
				sum = Counts{} // a broken entry is replaced
			}
		}
		sum.Add(add)
		b, _ := json.Marshal(&sum)
		if rev == 0 {
			_, err = kv.Create(ctx, key, b)
		} else {
			_, err = kv.Update(ctx, key, b, rev)
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !strings.Contains(err.Error(), "wrong last sequence") {
			return err
		}
	}
	return fmt.Errorf("history %s: too many concurrent updates", key)
}

// Hour is one hour's counts of a domain.
type Hour struct {
	At time.Time `json:"at"`
	Counts
}

// History reads a domain's hours (AllDomains: every domain together)
// since a time, oldest first.
func History(ctx context.Context, kv jetstream.KeyValue, domain string, since time.Time) ([]Hour, error) {
	if domain != AllDomains && !plain(domain) {
		return nil, bad("domain", "%q is not a domain", domain)
	}
	w, err := kv.Watch(ctx, "*.*."+domain, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	out := []Hour{}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		at, d, err := ParseHourKey(e.Key())
		if err != nil || d != domain || at.Before(since.Truncate(time.Hour)) {
			continue
		}
		var h Hour
		if json.Unmarshal(e.Value(), &h.Counts) != nil {
			continue
		}
		h.At = at
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b Hour) int { return a.At.Compare(b.At) })
	return out, nil
}

// Day sums each domain's hours of one day (UTC).
func Day(ctx context.Context, kv jetstream.KeyValue, day time.Time) (map[string]*Counts, error) {
	w, err := kv.Watch(ctx, day.UTC().Format("20060102")+".>", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	out := map[string]*Counts{}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		_, d, err := ParseHourKey(e.Key())
		if err != nil {
			continue
		}
		var c Counts
		if json.Unmarshal(e.Value(), &c) != nil {
			continue
		}
		if out[d] == nil {
			out[d] = &Counts{}
		}
		out[d].Add(&c)
	}
	return out, nil
}
