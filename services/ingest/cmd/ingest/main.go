// Command ingest answers MTAs' verify requests over NATS and, for Postfix,
// over the policy delegation protocol.
package main

import (
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/ingest/ingest"
	"github.com/callout-mail/callout/shared/servicemain"
)

func main() {
	var cfg ingest.Config
	servicemain.Main("ingest", ingest.EnvPrefix, "verify requests from MTAs (NATS and Postfix policy)", &cfg,
		func(nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (servicemain.Service, error) {
			return ingest.NewWithPolicy(cfg, nc, reg, log)
		})
}
