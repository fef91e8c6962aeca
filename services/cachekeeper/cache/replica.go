package cache

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/backoff"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/revision"
	"github.com/callout-mail/callout/shared/verdict"
)

// replica is this cachekeeper's copy of the bucket's few small keys, kept
// by a watch of the whole bucket: the flush records and the domain facts.
//
// A Put checks the records instead of reading three before its write and
// three after: after its write it waits until the watch has passed the
// write's revision, and so every record written before it. A lookup that
// says which revision its ingest had applied takes the domain facts from
// here once the watch has passed that revision (so it never answers with
// a fact that ingest saw flushed), and reads only the address's own key.
type replica struct {
	mu      sync.Mutex
	records map[string]flushRecord
	facts   map[string]heldFact // domain fact key -> stored entry
	mark    *revision.Mark      // how far the running watch has come; nil while it does not run
}

// heldFact is a domain fact as stored (decoded when read) and its revision.
type heldFact struct {
	data []byte
	rev  uint64
}

func newReplica() replica {
	return replica{records: map[string]flushRecord{}, facts: map[string]heldFact{}}
}

// flushWait bounds how long a Put (or a lookup) waits for the watch to see its write
// before it reads the records from the bucket instead.
const flushWait = 500 * time.Millisecond

// running returns the mark of the running watch, or nil.
func (f *replica) running() *revision.Mark {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mark
}

// covers reports whether a record held here removes v.
func (f *replica) covers(v verdict.Verdict) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range flushRecords(v) {
		if r, ok := f.records[k]; ok && r.covers(v) {
			return true
		}
	}
	return false
}

// merge takes a record in: records only move forward, so the later of each
// slot wins whatever the order they are seen in. A record of a flush of
// everything (not only valid or invalid) at revision rev drops the facts
// of its scope stored before it: the flush purged them.
func (f *replica) merge(key string, data []byte, rev uint64) {
	var r flushRecord
	if json.Unmarshal(data, &r) != nil {
		return // garbage reads as no flush, as in flushRecord
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := f.records[key]
	purged := r.Any.After(cur.Any)
	for _, only := range []verdict.Status{"", verdict.Valid, verdict.Invalid} {
		if t := *r.slot(only); t.After(*cur.slot(only)) {
			*cur.slot(only) = t
		}
	}
	f.records[key] = cur
	if !purged || rev == 0 {
		return
	}
	prefix := ""
	switch {
	case key == kvkey.FlushAll:
	case strings.HasPrefix(key, "flush.domain."):
		prefix = "domain." + strings.TrimPrefix(key, "flush.domain.") + "."
	default:
		return // an address flush leaves the domain facts
	}
	for k, h := range f.facts {
		if h.rev < rev && strings.HasPrefix(k, prefix) {
			delete(f.facts, k)
		}
	}
}

// fact takes a domain fact's change in; one older than what is held (the
// watch replays from before the load read) is ignored. The watch replays
// in order, so nothing older comes after a delete.
func (f *replica) fact(key string, data []byte, rev uint64, deleted bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if h, ok := f.facts[key]; ok && h.rev >= rev {
		return
	}
	if deleted {
		delete(f.facts, key)
		return
	}
	f.facts[key] = heldFact{data: data, rev: rev}
}

// heldFacts returns the stored entries of keys ("" for a key not held).
func (f *replica) heldFacts(keys ...string) [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i] = f.facts[k].data
	}
	return out
}

// prune drops records no verdict still storable can be older than.
func (f *replica) prune(now time.Time, longest time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	all := f.records[kvkey.FlushAll].Any
	for k, r := range f.records {
		latest := r.Any
		for _, t := range []time.Time{r.Valid, r.Invalid} {
			if t.After(latest) {
				latest = t
			}
		}
		// A full flush covers every older record (and purged them).
		if now.Sub(latest) > longest || (k != kvkey.FlushAll && !latest.After(all)) {
			delete(f.records, k)
		}
	}
}

// Watch keeps the store's copy of the flush records and domain facts until
// ctx ends. Until it runs (and while it restarts) Put and Lookup read the
// bucket.
func (s *Store) Watch(ctx context.Context, log *slog.Logger) {
	_ = backoff.Retry(ctx, log, "bucket watch", 5*time.Second, func(ctx context.Context) error {
		return s.watch(ctx)
	})
}

func (s *Store) watch(ctx context.Context) error {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return err
	}
	start := info.State.LastSeq
	// Every change from start on, in order; then the records and facts
	// stored up to start, read after it (records merge in any order, a
	// fact keeps its latest revision).
	w, err := s.kv.WatchAll(ctx, jetstream.IncludeHistory(), jetstream.ResumeFromRevision(start+1))
	if err != nil {
		return err
	}
	defer w.Stop()
	if err := s.load(ctx); err != nil {
		return err
	}
	mark := &revision.Mark{}
	mark.Set(start)
	s.fl.mu.Lock()
	s.fl.mark = mark
	s.fl.mu.Unlock()
	defer func() {
		s.fl.mu.Lock()
		s.fl.mark = nil
		s.fl.mu.Unlock()
	}()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-prune.C:
			s.fl.prune(s.now(), s.ttls.longest())
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("bucket watch ended")
			}
			if e == nil {
				continue
			}
			s.apply(e)
			mark.Set(e.Revision())
		}
	}
}

// apply takes one change of the bucket into the copy.
func (s *Store) apply(e jetstream.KeyValueEntry) {
	deleted := e.Operation() != jetstream.KeyValuePut
	switch k := e.Key(); {
	case strings.HasPrefix(k, "flush."):
		if !deleted {
			s.fl.merge(k, e.Value(), e.Revision())
		}
	case strings.HasPrefix(k, "domain."):
		s.fl.fact(k, e.Value(), e.Revision(), deleted)
	}
}

// load reads every flush record and domain fact in the bucket into the copy.
func (s *Store) load(ctx context.Context) error {
	w, err := s.kv.WatchFiltered(ctx, []string{"flush.>", "domain.>"}, jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("bucket load ended")
			}
			if e == nil {
				return nil // everything read
			}
			s.apply(e)
		}
	}
}
