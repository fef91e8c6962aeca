// Command cachekeeper stores callout verdicts in a JetStream KV bucket,
// answers lookups and applies flushes.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/callout-mail/callout/services/cachekeeper/keeper"
	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/metricshttp"
	"github.com/callout-mail/callout/shared/natsconn"
)

const envPrefix = "CALLOUT_CACHEKEEPER"

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("service", "cachekeeper")
	var cfg keeper.Config
	if len(os.Args) > 1 && (os.Args[1] == "-h" || os.Args[1] == "--help") {
		fmt.Println("cachekeeper: the callout verdict cache. Settings:")
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
		log.Error("cachekeeper stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg keeper.Config, log *slog.Logger) error {
	nc, err := natsconn.Connect(ctx, cfg.NATS, "callout-cachekeeper", log)
	if err != nil {
		return err
	}
	defer natsconn.Drain(nc, 5*time.Second)
	reg := metricshttp.NewRegistry()
	svc, err := keeper.New(cfg, nc, reg, log)
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
