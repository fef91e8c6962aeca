package ingest

// Regions. In a fleet over regions, a region whose routes to the others
// are cut keeps its own servers: its ingests see no disconnect, and its
// cache holds what a flush made elsewhere removed. So an ingest watches
// the beats of every region's cachekeepers: while it hears fewer than a
// majority of the fleet's regions (its own included), or its region's
// cachekeepers have not applied the whole flush log, its region is cut
// off, and it answers no reject from the cache (a defer, reason
// cache_unconfirmed). A flush waits RegionWait (10 s) for a region
// before naming it unconfirmed, longer than FenceAfter: by then a region
// that did not answer has fenced its cached rejects.

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/wire"
)

// FenceAfter is how long without a majority of regions' beats an ingest
// waits before it takes its region for cut off.
const FenceAfter = 3 * time.Second

// regionView is what an ingest knows of the fleet's regions.
type regionView struct {
	mu      sync.Mutex
	regions []string             // the fleet's, from the regions bucket
	heard   map[string]time.Time // last beat of each region
	ready   bool                 // own region: flush log applied (last beat)
}

// followRegions keeps s.cutOff until ctx ends.
func (s *Service) followRegions(ctx context.Context) {
	s.cutOff.Store(true) // until beats say otherwise: a region coming back has not caught up yet
	s.m.cutOff.Set(1)
	rv := &regionView{heard: map[string]time.Time{}}
	sub, err := s.nc.Subscribe(s.names.RegionBeatAll(), func(m *nats.Msg) {
		var b wire.RegionBeat
		if json.Unmarshal(m.Data, &b) != nil || b.Region == "" {
			return
		}
		rv.mu.Lock()
		rv.heard[b.Region] = time.Now()
		if b.Region == s.names.Region {
			rv.ready = b.CaughtUp
			if b.Rev > 0 {
				s.raiseFence(b.Rev) // its flushes applied here before the near cache serves
			}
		}
		rv.mu.Unlock()
	})
	if err != nil {
		s.log.Error("region beats: not followed", "err", err)
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var listed time.Time
	for {
		// The list again every 10 s; every tick until it is known.
		rv.mu.Lock()
		known := len(rv.regions) > 0
		rv.mu.Unlock()
		if time.Since(listed) > 10*time.Second || !known {
			if regions, err := s.fleetRegions(ctx); err == nil && len(regions) > 0 {
				rv.mu.Lock()
				rv.regions = regions
				rv.mu.Unlock()
				listed = time.Now()
			}
		}
		rv.mu.Lock()
		heard := 0
		for _, r := range rv.regions {
			if time.Since(rv.heard[r]) < FenceAfter {
				heard++
			}
		}
		cut := len(rv.regions) == 0 || heard < len(rv.regions)/2+1 || !rv.ready
		rv.mu.Unlock()
		if cut != s.cutOff.Load() {
			s.cutOff.Store(cut)
			s.m.cutOff.Set(map[bool]float64{false: 0, true: 1}[cut])
			if cut {
				s.log.Warn("region cut off from the fleet, or its flushes not applied: cached rejects deferred", "region", s.names.Region, "regions_heard", heard)
			} else {
				s.log.Info("region in touch with the fleet: cached rejects answered again", "region", s.names.Region, "regions_heard", heard)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// fleetRegions reads the fleet's regions from the regions bucket.
func (s *Service) fleetRegions(ctx context.Context) ([]string, error) {
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	kv, err := s.js.KeyValue(lctx, s.names.RegionsBucket())
	if err != nil {
		return nil, err
	}
	keys, err := kv.Keys(lctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	return keys, err
}

// raiseFence asks that the near cache serve nothing until the bucket's
// changes up to rev are applied (see fenced).
func (s *Service) raiseFence(rev uint64) {
	for {
		cur := s.fence.Load()
		if cur >= rev || s.fence.CompareAndSwap(cur, rev) {
			return
		}
	}
}
