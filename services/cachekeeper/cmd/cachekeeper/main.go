// Command cachekeeper stores callout verdicts in a JetStream KV bucket,
// answers lookups and applies flushes.
package main

import (
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/cachekeeper/cachekeeper"
	"github.com/callout-mail/callout/shared/servicemain"
)

func main() {
	var cfg cachekeeper.Config
	servicemain.Main("cachekeeper", cachekeeper.EnvPrefix, "the callout verdict cache (JetStream KV)", &cfg,
		func(nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (servicemain.Service, error) {
			return cachekeeper.New(cfg, nc, reg, log)
		})
}
