// Command prober runs SMTP callouts for jobs taken from NATS JetStream.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/callout-mail/callout/services/prober/probe"
	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/metricshttp"
	"github.com/callout-mail/callout/shared/natsconn"
)

const envPrefix = "CALLOUT_PROBER"

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("service", "prober")
	var cfg probe.Config
	if len(os.Args) > 1 && (os.Args[1] == "-h" || os.Args[1] == "--help") {
		fmt.Println("prober: SMTP callouts for jobs from NATS. Settings:")
		_ = config.Usage(os.Stdout, envPrefix, &cfg)
		return
	}
	if err := config.Load(envPrefix, &cfg); err != nil {
		log.Error("bad configuration", "err", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("prober stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg probe.Config, log *slog.Logger) error {
	nc, err := natsconn.Connect(ctx, cfg.NATS, "callout-prober", log)
	if err != nil {
		return err
	}
	defer natsconn.Drain(nc, 5*time.Second)
	reg := metricshttp.NewRegistry()
	svc, err := probe.New(cfg, nc, reg, log)
	if err != nil {
		return err
	}
	if addr, err := metricshttp.Serve(ctx, cfg.MetricsAddr, reg, log); err != nil {
		return fmt.Errorf("metrics: %w", err)
	} else if addr != "" {
		log.Info("metrics", "addr", addr)
	}
	return svc.Run(ctx)
}
