package cachekeeper

import (
	"encoding/json"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/wire"
)

type metrics struct {
	lookups   *prometheus.CounterVec
	written   *prometheus.CounterVec
	flushes   *prometheus.CounterVec
	removed   prometheus.Counter
	refreshes prometheus.Counter
	queued    *prometheus.CounterVec
	// In a fleet over regions: how far this region's cache is behind.
	verdictLag prometheus.Gauge
	flushLag   prometheus.Gauge
	searches   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, index *decisions.Index) *metrics {
	m := &metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callout_cache_lookups_total", Help: "Lookups by result: miss, error, or the status of the hit.",
		}, []string{"result"}),
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callout_cache_verdicts_total", Help: "Verdicts received by outcome: written, not_cached, older, kept_valid, already_gone, garbage, error.",
		}, []string{"outcome"}),
		flushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callout_cache_flushes_total", Help: "Flush commands applied by scope.",
		}, []string{"scope"}),
		removed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "callout_cache_flushed_entries_total", Help: "Entries removed by flushes.",
		}),
		refreshes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "callout_cache_refreshes_total", Help: "Background re-probes of old valid entries.",
		}),
		queued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callout_cache_jobs_queued_total", Help: "Ingests' jobs queued on a lookup's miss, by outcome: queued, pending (one for the target was queued already), error (the ingest queues it).",
		}, []string{"outcome"}),
	}
	m.verdictLag = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "callout_cache_region_verdict_lag", Help: "In a fleet over regions: verdicts made anywhere that this region's cache has not stored yet (its consumer's pending and unacknowledged messages).",
	})
	m.flushLag = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "callout_cache_region_flush_lag", Help: "In a fleet over regions: flushes of the flush log this region has not applied yet.",
	})
	m.searches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "callout_cache_decision_searches_total", Help: "Searches of the region's decision log by result: ok, bad (a malformed filter), too_broad, error.",
	}, []string{"result"})
	reg.MustRegister(m.lookups, m.written, m.flushes, m.removed, m.refreshes, m.queued, m.verdictLag, m.flushLag, m.searches,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "callout_cache_decision_index_records", Help: "Records of the region's decision log in this cachekeeper's index (9 bytes each).",
		}, func() float64 { return float64(index.Len()) }))
	return m
}

func jsonReply(r *wire.FlushReply) ([]byte, error) {
	r.V = wire.Version
	return json.Marshal(r)
}
