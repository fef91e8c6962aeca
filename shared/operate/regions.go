package operate

// Regions as operators see them: each region's beat, how far its cache
// is behind the verdicts and the flushes, its instances.

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/wire"
)

// RegionStatus is one region of a fleet over regions.
type RegionStatus struct {
	Region string `json:"region"`
	// Heard: a beat of the region's cachekeepers came within the wait;
	// a region not heard is down or cut off from this side.
	Heard bool `json:"heard"`
	// CaughtUp: the region has applied every flush of the flush log.
	CaughtUp bool `json:"caught_up"`
	// VerdictLag is the verdicts its cache has not stored yet; FlushLag
	// the flushes it has not applied (-1: not known, the stream did not
	// answer).
	VerdictLag int64 `json:"verdict_lag"`
	FlushLag   int64 `json:"flush_lag"`
	// Instances counts the region's running ingests and cachekeepers.
	Instances map[string]int `json:"instances"`
}

// RegionStatuses gathers the status of every region of the fleet, waiting
// up to wait for beats and instances (none for a fleet in one region).
func (c *Client) RegionStatuses(ctx context.Context, wait time.Duration) ([]RegionStatus, error) {
	regions, err := c.Regions(ctx)
	if err != nil || len(regions) == 0 {
		return nil, err
	}
	slices.Sort(regions)
	var mu sync.Mutex
	heard := map[string]wire.RegionBeat{}
	beats, err := c.NC.Subscribe(c.Names.RegionBeatAll(), func(m *nats.Msg) {
		var b wire.RegionBeat
		if json.Unmarshal(m.Data, &b) == nil {
			mu.Lock()
			heard[b.Region] = b
			mu.Unlock()
		}
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = beats.Unsubscribe() }()
	instances := map[string]map[string]int{}
	for _, svc := range []string{"callout-ingest", "callout-cache"} {
		for _, region := range c.pingRegions(svc, wait) {
			if instances[region] == nil {
				instances[region] = map[string]int{}
			}
			instances[region][svc]++
		}
	}
	// Beats come every second: wait for one round at least.
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(max(0, 1200*time.Millisecond-wait)):
	}
	mu.Lock()
	defer mu.Unlock()
	out := make([]RegionStatus, 0, len(regions))
	for _, r := range regions {
		b, ok := heard[r]
		n := subjects.NewIn(c.Names.Prefix, r)
		st := RegionStatus{Region: r, Heard: ok, CaughtUp: ok && b.CaughtUp, Instances: instances[r],
			VerdictLag: c.consumerLag(ctx, n.VerdictStream(), n.VerdictConsumer()),
			FlushLag:   c.consumerLag(ctx, n.FlushLogStream(), n.FlushLogConsumer())}
		if st.Instances == nil {
			st.Instances = map[string]int{}
		}
		out = append(out, st)
	}
	return out, nil
}

// consumerLag is a consumer's messages not yet delivered or acknowledged,
// or -1 when it cannot be read.
func (c *Client) consumerLag(ctx context.Context, stream, consumer string) int64 {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	cons, err := c.JS.Consumer(cctx, stream, consumer)
	if err != nil {
		return -1
	}
	info := cons.CachedInfo()
	return int64(info.NumPending) + int64(info.NumAckPending)
}

// pingRegions pings a micro service and returns the region of each
// instance that answers within wait.
func (c *Client) pingRegions(service string, wait time.Duration) []string {
	inbox := c.NC.NewRespInbox()
	sub, err := c.NC.SubscribeSync(inbox)
	if err != nil {
		return nil
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.NC.PublishRequest("$SRV.PING."+service, inbox, nil); err != nil {
		return nil
	}
	var out []string
	deadline := time.Now().Add(wait)
	for {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			return out
		}
		var ping struct {
			Metadata map[string]string `json:"metadata"`
		}
		if json.Unmarshal(m.Data, &ping) == nil {
			out = append(out, ping.Metadata["region"])
		}
	}
}
