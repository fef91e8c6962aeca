package prober

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"

	"github.com/callout-mail/callout/services/prober/destination"
)

type metrics struct {
	callouts    *prometheus.CounterVec
	duration    prometheus.Histogram
	connections *prometheus.CounterVec
	inFlight    prometheus.Gauge
	jobs        *prometheus.CounterVec
	leaseErrors prometheus.Counter
	refusing    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, pool *destination.Pool, policyErrors func() int, waiting func() float64) *metrics {
	m := &metrics{
		callouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callout_prober_callouts_total", Help: "Callouts by result status.",
		}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "callout_prober_dialogue_seconds", Help: "Duration of one callout, all hosts.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callout_prober_connections_total", Help: "SMTP connections used, opened or reused.",
		}, []string{"kind"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "callout_prober_jobs_in_flight", Help: "Callouts under way.",
		}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "callout_prober_jobs_total", Help: "Jobs by outcome: done, answered (delivered again, its verdict was in the cache: published again, no callout), garbage, gave_up, requeued.",
		}, []string{"outcome"}),
	}
	m.refusing = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callout_prober_verifier_refused_total", Help: "User unknowns not taken as such because the destination refused postmaster too (the control probe): it refuses the verifier.",
	})
	reg.MustRegister(m.refusing)
	m.leaseErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "callout_prober_lease_errors_total", Help: "Fleet-wide limits that could not be asked (the prober's own limits applied).",
	})
	reg.MustRegister(m.callouts, m.duration, m.connections, m.inFlight, m.jobs, m.leaseErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "callout_prober_jobs_waiting", Help: "Jobs waiting for a busy destination host, without a worker.",
		}, waiting),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "callout_prober_domain_policy_errors",
			Help: "Domains whose stored policy does not parse (served by their last good policy, or callout with defaults).",
		}, func() float64 { return float64(policyErrors()) }))
	// Breaker state as a count of destinations per state: bounded cardinality.
	for _, st := range []gobreaker.State{gobreaker.StateClosed, gobreaker.StateHalfOpen, gobreaker.StateOpen} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "callout_prober_breakers", Help: "Destination hosts by breaker state.",
			ConstLabels: prometheus.Labels{"state": st.String()},
		}, func() float64 { return float64(pool.States()[st]) }))
	}
	return m
}
