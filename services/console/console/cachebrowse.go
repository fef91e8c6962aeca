package console

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// CacheQuery selects cache entries. Entries come in the order they were
// stored (by check time) from a cursor, the stream sequence to go on from,
// so a page costs what it reads, not the size of the cache. Sorting by
// another column is done in memory, and so only for one domain.
type CacheQuery struct {
	Domain        string
	Status        verdict.Status
	Q             string // address substring, or a wildcard pattern with * and ?
	CheckedAfter  time.Time
	CheckedBefore time.Time
	ExpiresBefore time.Time
	Sort          string // checked (default), address, status, expires
	Desc          bool
	Limit         int
	Cursor        uint64 // stored order: the sequence to start at; sorted: the offset
}

// CacheEntry is one entry as the console shows it.
type CacheEntry struct {
	Key      string          `json:"key"`
	Revision uint64          `json:"revision"`
	Verdict  verdict.Verdict `json:"verdict"`
}

// CachePage is one page of entries.
type CachePage struct {
	Entries []CacheEntry `json:"entries"`
	// Next is the cursor of the next page; empty at the end.
	Next string `json:"next,omitempty"`
	// Scanned is how many stored entries were read for this page.
	Scanned int `json:"scanned"`
}

// Paging limits.
const (
	maxPage        = 500
	maxScan        = 20000 // entries read for one page before it is returned short, with a cursor
	maxSortedScope = 10000 // entries of one domain sorted in memory
)

// errQuery is a query that cannot be answered; the message names the field.
type errQuery struct{ field, msg string }

func (e *errQuery) Error() string { return e.field + ": " + e.msg }

func (q *CacheQuery) check() error {
	if q.Limit <= 0 {
		q.Limit = 50
	}
	if q.Limit > maxPage {
		return &errQuery{"limit", fmt.Sprintf("at most %d", maxPage)}
	}
	switch q.Status {
	case "", verdict.Valid, verdict.Invalid, verdict.Unverifiable, verdict.TempFail, verdict.CatchAll, verdict.NotCatchAll, verdict.Skipped, verdict.RelayDenied, verdict.Malformed:
	default:
		return &errQuery{"status", fmt.Sprintf("unknown status %q", q.Status)}
	}
	switch q.Sort {
	case "", "checked":
		q.Sort = "checked"
	case "address", "status", "expires":
	default:
		return &errQuery{"sort", "checked, address, status or expires"}
	}
	if q.Domain != "" {
		d, err := address.NormalizeDomain(q.Domain)
		if err != nil {
			return &errQuery{"domain", err.Error()}
		}
		q.Domain = d
	}
	if (q.Sort != "checked" || q.Desc) && q.Domain == "" {
		return &errQuery{"sort", "sorting other than oldest check first needs a domain filter (entries of all domains come in the order they were stored)"}
	}
	if len(q.Q) > 320 {
		return &errQuery{"q", "too long"}
	}
	if _, err := path.Match(strings.ToLower(q.Q), ""); err != nil {
		return &errQuery{"q", "bad pattern"}
	}
	return nil
}

func (q *CacheQuery) match(e *CacheEntry, now time.Time) bool {
	v := &e.Verdict
	if !v.ExpiresAt.IsZero() && !now.Before(v.ExpiresAt) {
		return false
	}
	if q.Status != "" && v.Status != q.Status {
		return false
	}
	if !q.CheckedAfter.IsZero() && v.CheckedAt.Before(q.CheckedAfter) {
		return false
	}
	if !q.CheckedBefore.IsZero() && !v.CheckedAt.Before(q.CheckedBefore) {
		return false
	}
	if !q.ExpiresBefore.IsZero() && (v.ExpiresAt.IsZero() || !v.ExpiresAt.Before(q.ExpiresBefore)) {
		return false
	}
	if q.Q != "" {
		name := strings.ToLower(v.Address)
		if name == "" {
			name = strings.ToLower(v.Domain)
		}
		pat := strings.ToLower(q.Q)
		if strings.ContainsAny(pat, "*?") {
			if ok, _ := path.Match(pat, name); !ok {
				return false
			}
		} else if !strings.Contains(name, pat) {
			return false
		}
	}
	return true
}

// browser reads the cache bucket's stream.
type browser struct {
	js     jetstream.JetStream
	bucket string
}

func (b *browser) filters(domain string) []string {
	f := kvkey.EntryFilters()
	if domain != "" {
		f = kvkey.DomainFilters(domain)
	}
	for i := range f {
		f[i] = "$KV." + b.bucket + "." + f[i]
	}
	return f
}

// scan reads entries in stored order from start, calling fn for each live
// one until fn returns false, the budget is spent or the end is reached.
// It returns the sequence to go on from (0 at the end) and how many it read.
func (b *browser) scan(ctx context.Context, domain string, start uint64, after time.Time, budget int, fn func(CacheEntry) bool) (uint64, int, error) {
	s, err := b.js.Stream(ctx, "KV_"+b.bucket)
	if err != nil {
		return 0, 0, fmt.Errorf("cache bucket: %w", err)
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: b.filters(domain), DeliverPolicy: jetstream.DeliverAllPolicy}
	switch {
	case start > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	case !after.IsZero():
		// An entry checked after T was stored after T.
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &after
	}
	c, err := s.OrderedConsumer(ctx, cfg)
	if err != nil {
		return 0, 0, err
	}
	prefix := "$KV." + b.bucket + "."
	read := 0
	for {
		batch, err := c.FetchNoWait(min(budget-read, 1000))
		if err != nil {
			return 0, read, err
		}
		got := 0
		for m := range batch.Messages() {
			got++
			read++
			md, err := m.Metadata()
			if err != nil {
				return 0, read, err
			}
			stop := false
			if m.Headers().Get("KV-Operation") == "" { // not a delete or purge marker
				key := strings.TrimPrefix(m.Subject(), prefix)
				if v, err := wire.DecodeEntry(key, m.Data()); err == nil {
					stop = !fn(CacheEntry{Key: key, Revision: md.Sequence.Stream, Verdict: v})
				}
			}
			if md.NumPending == 0 {
				return 0, read, nil
			}
			if stop || read >= budget {
				return md.Sequence.Stream + 1, read, nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return 0, read, err
		}
		if got == 0 {
			return 0, read, nil
		}
	}
}

// Page answers a query.
func (b *browser) Page(ctx context.Context, q CacheQuery, now time.Time) (CachePage, error) {
	if err := q.check(); err != nil {
		return CachePage{}, err
	}
	page := CachePage{Entries: []CacheEntry{}}
	if q.Sort == "checked" && !q.Desc {
		next, read, err := b.scan(ctx, q.Domain, q.Cursor, q.CheckedAfter, maxScan, func(e CacheEntry) bool {
			if q.match(&e, now) {
				page.Entries = append(page.Entries, e)
			}
			return len(page.Entries) < q.Limit
		})
		page.Scanned = read
		if next > 0 {
			page.Next = strconv.FormatUint(next, 10)
		}
		return page, err
	}
	var all []CacheEntry
	_, read, err := b.scan(ctx, q.Domain, 0, q.CheckedAfter, maxSortedScope+1, func(e CacheEntry) bool {
		if q.match(&e, now) {
			all = append(all, e)
		}
		return true
	})
	page.Scanned = read
	if err != nil {
		return page, err
	}
	if read > maxSortedScope {
		return page, &errQuery{"sort", fmt.Sprintf("this domain has more than %d entries: narrow it or sort by check time", maxSortedScope)}
	}
	less := map[string]func(a, b *CacheEntry) bool{
		"checked": func(a, b *CacheEntry) bool { return a.Verdict.CheckedAt.Before(b.Verdict.CheckedAt) },
		"address": func(a, b *CacheEntry) bool { return a.Key < b.Key },
		"status":  func(a, b *CacheEntry) bool { return a.Verdict.Status < b.Verdict.Status },
		"expires": func(a, b *CacheEntry) bool { return a.Verdict.ExpiresAt.Before(b.Verdict.ExpiresAt) },
	}[q.Sort]
	sort.SliceStable(all, func(i, j int) bool {
		if q.Desc {
			return less(&all[j], &all[i])
		}
		return less(&all[i], &all[j])
	})
	off := min(int(q.Cursor), len(all))
	end := min(off+q.Limit, len(all))
	page.Entries = append(page.Entries, all[off:end]...)
	if end < len(all) {
		page.Next = strconv.Itoa(end)
	}
	return page, nil
}

// Entry returns one entry by key.
func (b *browser) Entry(ctx context.Context, key string) (CacheEntry, error) {
	if _, err := kvkey.Parse(key); err != nil {
		return CacheEntry{}, &errQuery{"key", err.Error()}
	}
	kv, err := b.js.KeyValue(ctx, b.bucket)
	if err != nil {
		return CacheEntry{}, fmt.Errorf("cache bucket: %w", err)
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		return CacheEntry{}, err
	}
	v, err := wire.DecodeEntry(key, e.Value())
	if err != nil {
		return CacheEntry{}, err
	}
	return CacheEntry{Key: key, Revision: e.Revision(), Verdict: v}, nil
}
