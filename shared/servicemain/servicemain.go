// Package servicemain is what every service's main does: load settings
// from the environment, connect to NATS, serve metrics, run the service
// until SIGINT or SIGTERM, then drain.
package servicemain

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/metricshttp"
	"github.com/callout-mail/callout/shared/natsconn"
	"github.com/callout-mail/callout/shared/stats"
)

// Settings is what servicemain needs of a service's configuration (which
// embeds config.Common).
type Settings interface {
	NATSConfig() natsconn.Config
	MetricsListen() string
	CommonSettings() config.Common
}

// Service runs until its context ends.
type Service interface {
	Run(ctx context.Context) error
}

// Build makes the service from its settings and connection.
type Build func(nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (Service, error)

// Main runs a service and exits: 2 for bad settings, 1 when it fails.
func Main(name, envPrefix, about string, cfg Settings, build Build) {
	if len(os.Args) > 1 && os.Args[1] == "--help-markdown" {
		_ = config.Markdown(os.Stdout, envPrefix, cfg)
		return
	}
	if len(os.Args) > 1 && (os.Args[1] == "-h" || os.Args[1] == "--help") {
		fmt.Printf("%s: %s\n\nSettings (environment variables):\n", name, about)
		_ = config.Usage(os.Stdout, envPrefix, cfg)
		return
	}
	err := config.Load(envPrefix, cfg)
	if err == nil {
		if err = cfg.CommonSettings().Check(); err != nil {
			err = fmt.Errorf("settings: %s_%w", envPrefix, err)
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.CommonSettings().LogLevel})).With("service", name)
	if err != nil {
		log.Error("bad configuration", "err", err)
		os.Exit(2)
	}
	interval := cfg.CommonSettings().StatsInterval
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, name, cfg, build, interval, log); err != nil {
		log.Error(name+" stopped", "err", err)
		os.Exit(1)
	}
	log.Info(name + " stopped")
}

// StatsExtra is what a service adds to its stats messages (optional).
type StatsExtra interface{ StatsExtra() any }

func run(ctx context.Context, name string, cfg Settings, build Build, interval time.Duration, log *slog.Logger) error {
	nc, err := natsconn.Connect(ctx, cfg.NATSConfig(), "callout-"+name, log)
	if err != nil {
		return err
	}
	defer natsconn.Drain(nc, 5*time.Second)
	reg := metricshttp.NewRegistry()
	svc, err := build(nc, reg, log)
	if err != nil {
		return err
	}
	if addr, err := metricshttp.Serve(ctx, cfg.MetricsListen(), reg, log); err != nil {
		return fmt.Errorf("metrics: %w", err)
	} else if addr != "" {
		log.Info("metrics", "addr", addr)
	}
	if interval > 0 {
		host, _ := os.Hostname()
		instance := fmt.Sprintf("%s-%d-%s", host, os.Getpid(), nuid.Next()[:6])
		var extra func() any
		if e, ok := svc.(StatsExtra); ok {
			extra = e.StatsExtra
		}
		n, _ := cfg.NATSConfig().Names()
		go stats.Publish(ctx, nc, n.Stats(name, instance), name, instance, reg, interval, extra, log)
	}
	return svc.Run(ctx)
}
