package ingest

// The watch of the cache bucket: the near cache's and the index's coherence, flush confirmations.

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/backoff"
)

// watchCache keeps the near cache coherent: every change of the cache
// bucket drops what it concerns. Until the watch runs, nothing is kept.
// The same watch reads the whole bucket first, into the index of its keys
// and domain facts; after a reconnection it starts again.
func (s *Service) watchCache(ctx context.Context, id string) {
	_ = backoff.Retry(ctx, s.log, "near cache watch", 5*time.Second, func(ctx context.Context) error {
		for {
			if err := s.watchOnce(ctx, id); !errors.Is(err, errRewatch) {
				return err
			}
			s.log.Info("reconnected: reading the cache bucket afresh")
		}
	})
}

var errRewatch = errors.New("reconnected")

func (s *Service) watchOnce(ctx context.Context, id string) error {
	kv, err := s.js.KeyValue(ctx, s.names.CacheBucket())
	if err != nil {
		return err
	}
	// Every entry, values and deletes included: the flush records and
	// domain facts always (a flight needs the records), the address keys
	// when the index is on.
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	select {
	case <-s.rewatch: // this watch starts after the reconnection
	default:
	}
	s.near.Clear()
	s.index.Reset()
	// Cachekeepers wait for this ingest's confirmation of a flush from
	// now on (before it keeps anything).
	s.id.Store(id)
	if err := s.nc.Publish(s.names.NearCacheHello(), []byte(id)); err != nil {
		return err
	}
	if err := s.nc.Flush(); err != nil {
		return err
	}
	s.nearOn.Store(true)
	defer s.nearOn.Store(false)
	defer s.index.Reset()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.rewatch:
			return errRewatch
		case e, ok := <-w.Updates():
			if !ok {
				s.near.Clear()
				return errors.New("cache watch ended")
			}
			if e == nil {
				s.index.Loaded() // the whole bucket is read
				continue
			}
			// The index first: the near cache's mark, which a flush's
			// confirmation waits for, then covers both.
			s.index.Apply(e.Key(), e.Value(), e.Revision(), e.Operation() != jetstream.KeyValuePut)
			s.near.Apply(e.Key(), e.Revision())
		}
	}
}

// answerSync confirms to a cachekeeper that a flush record (a bucket
// revision) is applied here, so that the flush is answered only once no
// ingest can serve what it removed.
//
// The ingest is fenced from the moment it is asked: until its watch has
// applied rev it serves nothing from its near cache, so that a flush
// answered without its confirmation (too slow) still holds here.
func (s *Service) answerSync(m *nats.Msg) {
	rev, err := strconv.ParseUint(string(m.Data), 10, 64)
	if err != nil {
		return
	}
	s.raiseFence(rev)
	ok := s.near.WaitApplied(rev, 2*time.Second)
	id, _ := s.id.Load().(string)
	_ = m.Respond([]byte(strconv.FormatBool(ok) + " " + id))
}

// fenced reports whether a flush this ingest was asked to confirm is not
// applied here yet.
func (s *Service) fenced() bool {
	f := s.fence.Load()
	if f == 0 {
		return false // the steady state: one atomic load
	}
	if s.near.Revision() < f {
		return true
	}
	s.fence.CompareAndSwap(f, 0) // caught up (a later ask sets it again)
	return false
}

// seen is the bucket revision whose changes this ingest must not miss
// in a lookup's answer: what it applied, or the flush it was asked to
// confirm, if later.
func (s *Service) seen() uint64 { return max(s.near.Revision(), s.fence.Load()) }
