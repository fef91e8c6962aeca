package cachekeeper

// Regions. In a fleet spread over regions each region keeps its own cache
// bucket, so a flush must reach every region's. It reaches the running
// cachekeepers live (every cachekeeper of every region gets the flush
// request); and it is also kept in the flush log, a stream replicated
// over the regions, that each region's cachekeepers follow with a durable
// consumer of their own: a region that was away (its servers down, or
// cut off) applies the flushes it missed when it is back, before it
// answers a lookup.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/wire"
)

// joinRegion puts the region in the fleet's list of regions and opens
// the region's consumer of the flush log.
func (s *Service) joinRegion(ctx context.Context) (jetstream.Consumer, error) {
	kv, err := s.js.CreateKeyValue(ctx, streams.RegionsConfig(s.names, s.cfg.Replicas))
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = s.js.KeyValue(ctx, s.names.RegionsBucket())
	}
	if err != nil {
		return nil, fmt.Errorf("regions bucket: %w", err)
	}
	if err := streams.RegisterRegion(ctx, kv, s.names.Prefix, s.names.Region); err != nil {
		return nil, err
	}
	if _, err := streams.Ensure(ctx, s.js, streams.FlushLogConfig(s.names, s.cfg.Replicas)); streams.Warn(s.log, err) != nil {
		return nil, err
	}
	return s.js.CreateOrUpdateConsumer(ctx, s.names.FlushLogStream(), jetstream.ConsumerConfig{
		Durable:       s.names.FlushLogConsumer(),
		Description:   "flushes region " + s.names.Region + " applies",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       2 * time.Minute,
		MaxAckPending: 1, // in order
		Replicas:      s.cfg.Replicas,
	})
}

// catchUp applies every flush of the log the region has not applied yet,
// and returns when none is left: the region then answers nothing a flush
// removed. A region away longer than the log keeps flushes flushes its
// whole cache.
func (s *Service) catchUp(ctx context.Context, cons jetstream.Consumer) error {
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("flush log: %w", err)
	}
	if st := info.Delivered.Stream; st > 0 {
		str, err := s.js.Stream(ctx, s.names.FlushLogStream())
		if err != nil {
			return fmt.Errorf("flush log: %w", err)
		}
		if first := str.CachedInfo().State.FirstSeq; first > st+1 && info.NumAckPending == 0 {
			s.log.Warn("flush log: this region was away longer than the log keeps flushes: flushing its whole cache")
			if _, _, err := s.store.FlushOnRecord(ctx, wire.FlushCommand{Scope: wire.ScopeAll}, nil); err != nil {
				return err
			}
		}
	}
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			return fmt.Errorf("flush log: %w", err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			return nil
		}
		batch, err := cons.Fetch(16, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("flush log: %w", err)
		}
		for m := range batch.Messages() {
			s.applyLogged(ctx, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return fmt.Errorf("flush log: %w", err)
		}
	}
}

// followLog applies the flushes of the log as they come, skipping those
// applied live, until ctx ends. A fresh pull every few seconds at most:
// after a cut between regions is mended (the consumer's leader may have
// moved, the region's JetStream been resyncing), the next pull gets the
// flushes it missed, with no state of a long-lived subscription to
// recover.
func (s *Service) followLog(ctx context.Context, cons jetstream.Consumer) {
	for ctx.Err() == nil {
		batch, err := cons.Fetch(16, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		for m := range batch.Messages() {
			s.applyLogged(ctx, m)
		}
	}
}

func (s *Service) applyLogged(ctx context.Context, m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		_ = m.Term()
		return
	}
	if s.takeLive(meta.Sequence.Stream) {
		_ = m.Ack()
		return
	}
	var cmd wire.FlushCommand
	if err := wire.Decode(m.Data(), &cmd); err != nil {
		s.log.Error("flush log: garbage refused", "seq", meta.Sequence.Stream, "err", err)
		_ = m.Term()
		return
	}
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	n, rev, err := s.store.FlushOnRecord(fctx, cmd, nil)
	if err != nil {
		s.log.Error("flush log: flush failed, retried", "seq", meta.Sequence.Stream, "err", err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	s.logRev.Set(rev)
	s.m.flushes.WithLabelValues(cmd.Scope).Inc()
	s.m.removed.Add(float64(n))
	s.log.Info("flush from the log", "seq", meta.Sequence.Stream, "scope", cmd.Scope, "domain", cmd.Domain, "address", cmd.Address, "removed", n)
	_ = m.Ack()
}

// beat says, every second until ctx ends, that the region is there and
// whether it has applied the whole flush log.
func (s *Service) beat(ctx context.Context, cons, verdicts jetstream.Consumer) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, time.Second)
		info, err := cons.Info(ictx)
		if err == nil {
			s.m.flushLag.Set(float64(info.NumPending + uint64(info.NumAckPending)))
		}
		if vi, err := verdicts.Info(ictx); err == nil {
			s.m.verdictLag.Set(float64(vi.NumPending + uint64(vi.NumAckPending)))
		}
		cancel()
		b := wire.RegionBeat{Region: s.names.Region, Rev: s.logRev.Get(),
			CaughtUp: err == nil && info.NumPending == 0 && info.NumAckPending == 0}
		data, _ := json.Marshal(&b)
		_ = s.nc.Publish(s.names.RegionBeat(s.names.Region), data)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// appliedLive notes that the flush of log sequence seq was applied live.
func (s *Service) appliedLive(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live == nil {
		s.live = map[uint64]time.Time{}
	}
	s.live[seq] = time.Now()
	for k, at := range s.live {
		if time.Since(at) > time.Hour {
			delete(s.live, k) // its log entry went to another cachekeeper
		}
	}
}

// takeLive reports whether seq was applied live, and forgets it.
func (s *Service) takeLive(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.live[seq]
	delete(s.live, seq)
	return ok
}
