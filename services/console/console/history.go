package console

import (
	"context"
	"sync"
	"time"

	"github.com/callout-mail/callout/shared/stats"
)

// Sample is one point of the dashboard's charts.
type Sample struct {
	At        time.Time          `json:"at"`
	Verifies  float64            `json:"verifies_per_s"`
	Accept    float64            `json:"accept_per_s"`
	Reject    float64            `json:"reject_per_s"`
	Defer     float64            `json:"defer_per_s"`
	HitRatio  float64            `json:"hit_ratio"`
	Callouts  float64            `json:"callouts_per_s"`
	ByResult  map[string]float64 `json:"callouts_by_result_per_s"`
	Deadlines float64            `json:"deadlines_per_s"`
	Shed      float64            `json:"shed_per_s"`
}

// history keeps the last samples of the fleet's figures in a ring.
type history struct {
	mu    sync.Mutex
	ring  []Sample
	next  int
	full  bool
	every time.Duration
}

func newHistory(size int, every time.Duration) *history {
	return &history{ring: make([]Sample, size), every: every}
}

func (h *history) add(f stats.Fleet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = Sample{At: f.At.UTC(), Verifies: f.Verifies, Accept: f.Accept, Reject: f.Reject, Defer: f.Defer, HitRatio: f.HitRatio,
		Callouts: f.Callouts, ByResult: f.ByResult, Deadlines: f.Deadlines, Shed: f.Shed}
	h.next = (h.next + 1) % len(h.ring)
	if h.next == 0 {
		h.full = true
	}
}

// samples returns the samples, oldest first.
func (h *history) samples() []Sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.full {
		return append([]Sample{}, h.ring[:h.next]...)
	}
	return append(append([]Sample{}, h.ring[h.next:]...), h.ring[:h.next]...)
}

// run samples the collector until ctx ends.
func (h *history) run(ctx context.Context, col *stats.Collector) {
	t := time.NewTicker(h.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			h.add(col.Fleet(now, 0))
		}
	}
}
