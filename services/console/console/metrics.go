package console

import "github.com/prometheus/client_golang/prometheus"

// metrics are the console's own; the rest of the system's come from the
// services' stats on NATS.
type metrics struct {
	requests *prometheus.CounterVec
	logins   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callout_console_requests_total", Help: "HTTP requests by route kind and status class."}, []string{"kind", "status"}),
		logins:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callout_console_logins_total", Help: "Login attempts by outcome (ok, failed, limited)."}, []string{"outcome"}),
	}
	reg.MustRegister(m.requests, m.logins)
	return m
}
