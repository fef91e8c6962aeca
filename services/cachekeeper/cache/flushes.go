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
	"github.com/callout-mail/callout/shared/revision"
	"github.com/callout-mail/callout/shared/verdict"
)

// flushes is this cachekeeper's copy of the bucket's flush records, kept by
// a watch of the whole bucket. A Put checks it instead of reading three
// records before its write and three after: after its write it waits until
// the watch has passed the write's revision, and so every record written
// before it.
type flushes struct {
	mu      sync.Mutex
	records map[string]flushRecord
	mark    *revision.Mark // how far the running watch has come; nil while it does not run
}

// flushWait bounds how long a Put waits for the watch to see its write
// before it reads the records from the bucket instead.
const flushWait = 500 * time.Millisecond

// running returns the mark of the running watch, or nil.
func (f *flushes) running() *revision.Mark {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mark
}

// covers reports whether a record held here removes v.
func (f *flushes) covers(v verdict.Verdict) bool {
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
// slot wins whatever the order they are seen in.
func (f *flushes) merge(key string, data []byte) {
	var r flushRecord
	if json.Unmarshal(data, &r) != nil {
		return // garbage reads as no flush, as in flushRecord
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	cur := f.records[key]
	for _, only := range []verdict.Status{"", verdict.Valid, verdict.Invalid} {
		if t := *r.slot(only); t.After(*cur.slot(only)) {
			*cur.slot(only) = t
		}
	}
	f.records[key] = cur
}

// prune drops records no verdict still storable can be older than.
func (f *flushes) prune(now time.Time, longest time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	all := f.records["flush.all"].Any
	for k, r := range f.records {
		latest := r.Any
		for _, t := range []time.Time{r.Valid, r.Invalid} {
			if t.After(latest) {
				latest = t
			}
		}
		// A full flush covers every older record (and purged them).
		if now.Sub(latest) > longest || (k != "flush.all" && !latest.After(all)) {
			delete(f.records, k)
		}
	}
}

// Watch keeps the store's copy of the flush records until ctx ends. Until
// it runs (and while it restarts) a Put reads the records from the bucket.
func (s *Store) Watch(ctx context.Context, log *slog.Logger) {
	_ = backoff.Retry(ctx, log, "flush record watch", 5*time.Second, func(ctx context.Context) error {
		return s.watch(ctx)
	})
}

func (s *Store) watch(ctx context.Context) error {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return err
	}
	start := info.State.LastSeq
	// Every write from start on, in order; then the records written up to
	// start, read after it (records merge in any order).
	w, err := s.kv.WatchAll(ctx, jetstream.IncludeHistory(), jetstream.ResumeFromRevision(start+1), jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	defer w.Stop()
	if err := s.loadFlushes(ctx); err != nil {
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
			if strings.HasPrefix(e.Key(), "flush.") {
				s.fl.merge(e.Key(), e.Value())
			}
			mark.Set(e.Revision())
		}
	}
}

// loadFlushes reads every flush record in the bucket into the copy.
func (s *Store) loadFlushes(ctx context.Context) error {
	w, err := s.kv.Watch(ctx, "flush.>", jetstream.IgnoreDeletes())
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
				return errors.New("flush record watch ended")
			}
			if e == nil {
				return nil // every record read
			}
			s.fl.merge(e.Key(), e.Value())
		}
	}
}
