// Package stats publishes a small message of a service's counters every
// few seconds on <prefix>.stats.<service>.<instance>, for dashboards and
// `calloutctl stats`. It reads the service's Prometheus registry, so the
// figures are the metrics' own; Prometheus scraping stays as it is.
package stats

import (
	"context"
	"encoding/json"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Message is one service instance's figures at one time.
type Message struct {
	Service  string             `json:"service"`
	Instance string             `json:"instance"`
	At       time.Time          `json:"at"`
	Interval float64            `json:"interval_s"`
	Counters map[string]float64 `json:"counters"` // name{label="value",...}: counters, gauges, histogram counts and sums
	Extra    any                `json:"extra,omitempty"`
}

// Snapshot reads every counter and gauge of g.
func Snapshot(g prometheus.Gatherer) map[string]float64 {
	out := map[string]float64{}
	mfs, err := g.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "go_") || strings.HasPrefix(mf.GetName(), "process_") {
			continue
		}
		for _, m := range mf.GetMetric() {
			name := mf.GetName() + labels(m.GetLabel())
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[name] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[name] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[mf.GetName()+"_count"+labels(m.GetLabel())] = float64(m.GetHistogram().GetSampleCount())
				out[mf.GetName()+"_sum"+labels(m.GetLabel())] = m.GetHistogram().GetSampleSum()
			}
		}
	}
	return out
}

func labels(ls []*dto.LabelPair) string {
	if len(ls) == 0 {
		return ""
	}
	parts := make([]string, 0, len(ls))
	for _, l := range ls {
		parts = append(parts, l.GetName()+`="`+l.GetValue()+`"`)
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

// Publish sends a Message every interval until ctx ends. extra, when not
// nil, adds service-specific figures (the prober's busiest hosts).
func Publish(ctx context.Context, nc *nats.Conn, subject, service, instance string, g prometheus.Gatherer, interval time.Duration, extra func() any, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m := Message{Service: service, Instance: instance, At: time.Now().UTC(), Interval: interval.Seconds(), Counters: Snapshot(g)}
		if extra != nil {
			m.Extra = extra()
		}
		b, err := json.Marshal(m)
		if err != nil {
			continue
		}
		if err := nc.Publish(subject, b); err != nil {
			log.Debug("stats not published", "err", err)
		}
	}
}

// Sum adds the counters whose name (without labels) is name and whose
// labels contain every one of want (`key="value"`).
func Sum(c map[string]float64, name string, want ...string) float64 {
	var total float64
	for k, v := range c {
		base, lbl, _ := strings.Cut(k, "{")
		if base != name {
			continue
		}
		ok := true
		for _, w := range want {
			if !strings.Contains(lbl, w) {
				ok = false
				break
			}
		}
		if ok {
			total += v
		}
	}
	return total
}
