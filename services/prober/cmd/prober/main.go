// Command prober runs SMTP callouts for jobs taken from NATS JetStream.
package main

import (
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/prober/prober"
	"github.com/callout-mail/callout/shared/servicemain"
)

func main() {
	var cfg prober.Config
	servicemain.Main("prober", prober.EnvPrefix, "SMTP callouts for probe jobs from NATS JetStream", &cfg,
		func(nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (servicemain.Service, error) {
			return prober.New(cfg, nc, reg, log)
		})
}
