package cache

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/backoff"
	"github.com/callout-mail/callout/shared/revision"
)

// The store's copy (cachecopy, without the address index) holds the
// bucket's flush records and domain facts, kept by a watch of the whole
// bucket.
//
// A Put checks the records instead of reading three before its write and
// three after: after its write it waits until the watch has passed the
// write's revision, and so every record written before it. A lookup that
// says which revision its ingest had applied takes the domain facts from
// the copy once the watch has passed that revision (so it never answers
// with a fact that ingest saw flushed), and reads only the address's own
// key.

// flushWait bounds how long a Put (or a lookup) waits for the watch to see its write
// before it reads the records from the bucket instead.
const flushWait = 500 * time.Millisecond

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
	// Read afresh: a purge while the watch was down left no marker.
	s.fl.Reset()
	if err := s.load(ctx); err != nil {
		return err
	}
	s.fl.Loaded()
	mark := &revision.Mark{}
	mark.Set(start)
	s.fl.SetMark(mark)
	defer s.fl.SetMark(nil)
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-prune.C:
			s.fl.Prune(s.now(), s.ttls.longest())
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
	s.fl.Apply(e.Key(), e.Value(), e.Revision(), e.Operation() != jetstream.KeyValuePut)
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
