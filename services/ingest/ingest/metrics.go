package ingest

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/ingest/milterd"
	"github.com/callout-mail/callout/services/ingest/nearcache"
	"github.com/callout-mail/callout/shared/cachecopy"
	"github.com/callout-mail/callout/shared/decisions"
)

type metrics struct {
	requests  *prometheus.CounterVec
	latency   prometheus.Histogram
	coalesced prometheus.Counter
	deadlines prometheus.Counter
	braked    prometheus.Counter
	shed      prometheus.Counter
	monitored *prometheus.CounterVec
	known     prometheus.Counter
	// unconfirmed: near-cache rejects deferred while a flush may not be
	// applied here; flushedVerdicts: verdicts a known flush covers, refused.
	unconfirmed     prometheus.Counter
	cutOff          prometheus.Gauge
	flushedVerdicts prometheus.Counter
	refreshes       prometheus.Counter
	// The decision log (record.go).
	decisionsDropped *prometheus.CounterVec
	decisionsSampled prometheus.Counter
	historyErrors    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, policyErrors func() int, near *nearcache.Cache, index *cachecopy.Copy) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callout_ingest_requests_total", Help: "Verify requests by action and verdict source (cache, probe, static, error).",
		}, []string{"action", "source"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "callout_ingest_request_seconds", Help: "Time to answer a verify request.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 25},
		}),
		coalesced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "callout_ingest_coalesced_total", Help: "Requests that joined a callout already under way in this instance.",
		}),
		deadlines: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "callout_ingest_deadlines_total", Help: "Requests answered with a defer because no verdict came in time.",
		}),
		braked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "callout_ingest_braked_total", Help: "Unknown recipients deferred by the dictionary-attack brake.",
		}),
	}
	m.known = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callout_ingest_known_misses_total", Help: "Near cache misses answered from this ingest's copy of the bucket's keys and domain facts, without a lookup.",
	})
	m.unconfirmed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callout_ingest_unconfirmed_rejects_total", Help: "Cached rejects answered with a defer instead, while this ingest was cut off from NATS, or its region from the fleet's others.",
	})
	m.cutOff = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "callout_ingest_region_cut_off", Help: "In a fleet over regions: 1 while this ingest takes its region for cut off from the others, or for not having applied every flush (cached rejects are deferred).",
	})
	m.flushedVerdicts = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callout_ingest_flushed_verdicts_total", Help: "Verdicts of callouts that started before a flush of their scope, refused as an answer (a fresh callout is asked instead).",
	})
	m.refreshes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callout_ingest_refreshes_total", Help: "Background re-probes queued for old valid entries the near cache answered.",
	})
	m.shed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callout_ingest_shed_total", Help: "Requests answered 451 4.3.2 at once because every worker was busy.",
	})
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "callout_ingest_near_cache_entries", Help: "Cache hits held in this ingest."},
			func() float64 { n, _, _ := near.Stats(); return float64(n) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "callout_ingest_near_cache_hits_total", Help: "Lookups answered by the near cache."},
			func() float64 { _, h, _ := near.Stats(); return float64(h) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "callout_ingest_near_cache_misses_total", Help: "Lookups the near cache could not answer."},
			func() float64 { _, _, m := near.Stats(); return float64(m) }))
	m.monitored = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "callout_ingest_monitor_would_total", Help: "Monitor-mode domains: requests accepted that callout mode would have rejected or deferred, per domain (domains with a policy only).",
	}, []string{"domain", "action"})
	m.decisionsDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "callout_ingest_decisions_dropped_total", Help: "Decision records not recorded, by why: buffer (the log slower than the answers), publish, stream (the log missing, full or down), encode. Answers went on.",
	}, []string{"why"})
	m.decisionsSampled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callout_ingest_decisions_sampled_out_total", Help: "Accepts from a cache left out of the decision log by DECISION_LOG_CACHED_ACCEPTS (counted per domain all the same).",
	})
	m.historyErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callout_ingest_history_errors_total", Help: "Failed writes of the counts per domain per hour (kept and tried again).",
	})
	for _, why := range []string{decisions.DropBuffer, decisions.DropPublish, decisions.DropStream} {
		m.decisionsDropped.WithLabelValues(why)
	}
	reg.MustRegister(m.decisionsDropped, m.decisionsSampled, m.historyErrors)
	reg.MustRegister(m.known, m.unconfirmed, m.cutOff, m.flushedVerdicts, m.refreshes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "callout_ingest_known_keys", Help: "Address keys of the cache bucket indexed in this ingest."},
			func() float64 { return float64(index.Keys()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "callout_ingest_known_keys_complete", Help: "1 when the index holds every address key of the bucket (misses are known without a lookup)."},
			func() float64 {
				if index.Complete() {
					return 1
				}
				return 0
			}))
	reg.MustRegister(m.requests, m.latency, m.coalesced, m.deadlines, m.braked, m.shed, m.monitored,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "callout_ingest_domain_policy_errors",
			Help: "Keys of the policy bucket not served as written: the policy does not parse (its domain is served by its last good policy or the defaults, in monitor mode), or the key is not the domain's normal form.",
		}, func() float64 { return float64(policyErrors()) }))
	return m
}

// milter registers the milter listener's figures.
func (m *metrics) milter(reg prometheus.Registerer, s *milterd.Server) {
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "callout_ingest_milter_connections", Help: "Milter connections open (one per SMTP session of the MTAs)."},
			func() float64 { return float64(s.C.Conns.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "callout_ingest_milter_refused_total", Help: "Milter connections closed at once at MILTER_MAX_CONNS: those sessions got the MTA's default action."},
			func() float64 { return float64(s.C.Refused.Load()) }))
}
