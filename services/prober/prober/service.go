package prober

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"

	"github.com/callout-mail/callout/services/prober/callout"
	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/lease"
	"github.com/callout-mail/callout/services/prober/pull"
	"github.com/callout-mail/callout/services/prober/resolve"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/backoff"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/inflight"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
)

// Service is one prober instance.
type Service struct {
	cfg      Config
	log      *slog.Logger
	nc       *nats.Conn
	js       jetstream.JetStream
	names    subjects.Names
	pool     *destination.Pool
	verifier *callout.Verifier
	resolver *resolve.Resolver
	domains  *domains.Table
	m        *metrics
	instance string
	waiting  atomic.Int64   // jobs waiting for a busy host, without a worker
	parked   *inflight.Pool // their goroutines
}

// New builds a prober on an open NATS connection. reg receives its metrics.
func New(cfg Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*Service, error) {
	names, err := cfg.NATS.Names()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	secret := []byte(cfg.RandomSecret)
	if len(secret) == 0 {
		secret = make([]byte, 32)
		_, _ = rand.Read(secret)
		log.Warn("CALLOUT_PROBER_RANDOM_SECRET is not set: the catch-all probe address changes at each start and differs between instances")
	}
	host, _ := os.Hostname()
	s := &Service{cfg: cfg, log: log, nc: nc, js: js, names: names, domains: domains.NewTable(nil),
		instance: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), nuid.Next()[:6]), parked: inflight.NewPool(max(cfg.MaxWaiting, 1))}
	s.pool = destination.NewPool(destination.Config{
		MaxConns: cfg.MaxConns, Rate: cfg.Rate, BreakerFailures: cfg.BreakerFailures, BreakerOpen: cfg.BreakerOpen,
		MaxNonMail: cfg.MaxNonMail, ReuseRetry: cfg.ReuseRetry, BackoffQuiet: cfg.BackoffQuiet,
		ReuseMaxRcpts: cfg.ReuseMaxRcpts, IdleTimeout: cfg.IdleTimeout, TLSFallback: cfg.TLSFallback,
	}, func(host string, from, to gobreaker.State) {
		log.Warn("destination breaker", "host", host, "from", from.String(), "to", to.String())
	})
	s.verifier = callout.New(callout.Config{
		SMTP: smtpprobe.Config{
			HeloName: cfg.HeloName, ConnectTimeout: cfg.ConnectTimeout, BannerTimeout: cfg.BannerTimeout,
			CommandTimeout: cfg.CommandTimeout, StartTLS: cfg.StartTLS, TLSVerify: cfg.TLSVerify,
			Limits: smtpprobe.Limits{MaxLine: cfg.MaxReplyLine, MaxLines: cfg.MaxReplyLines, MaxBytes: cfg.MaxReplyBytes},
		},
		DialogueTimeout: cfg.DialogueTimeout, Budget: cfg.Budget, RandomSecret: secret,
	}, s.pool)
	s.resolver = resolve.New(cfg.DNSServer, cfg.MXPort)
	s.m = newMetrics(reg, s.pool, s.domains.Errors, func() float64 { return float64(s.waiting.Load()) })
	return s, nil
}

// Run serves jobs until ctx ends, then lets the callouts in flight finish
// (or hands their jobs back) and returns.
func (s *Service) Run(ctx context.Context) error {
	watching := false
	err := backoff.Retry(ctx, s.log, "prober setup", 5*time.Second, func(ctx context.Context) error {
		if _, err := streams.Probes(ctx, s.js, s.names, s.cfg.Replicas); streams.Warn(s.log, err) != nil {
			return err
		}
		if _, err := streams.Verdicts(ctx, s.js, s.names, s.cfg.Replicas); streams.Warn(s.log, err) != nil {
			return err
		}
		kv, err := domains.PolicyBucket(ctx, s.js, s.names, s.cfg.Replicas)
		if err != nil {
			return err
		}
		if !watching {
			if err := s.domains.Watch(ctx, kv, s.log); err != nil {
				return err
			}
			watching = true
		}
		if s.cfg.FleetLimits {
			if _, err := streams.Leases(ctx, s.js, s.names, s.cfg.Replicas); streams.Warn(s.log, err) != nil {
				return err
			}
		}
		_, err = streams.Workers(ctx, s.js, s.names.ProbeStream(), s.names.ProbeConsumer(), s.cfg.AckWait, s.cfg.Replicas)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // asked to stop while setting up
		}
		return err
	}
	if s.cfg.FleetLimits {
		leases := lease.New(lease.Config{MaxConns: s.cfg.MaxConns, Rate: s.cfg.Rate, TTL: s.cfg.LeaseTTL, Instance: s.instance, Replicas: s.cfg.Replicas}, s.nc, s.names)
		s.pool.SetFleet(leases, func(host string, err error) {
			s.m.leaseErrors.Inc()
			s.log.Warn("fleet-wide limits unavailable; this prober's own limits apply", "host", host, "err", err)
		})
		// Another prober waits for a slot of a host whose connections this
		// one keeps idle: give one back.
		want, err := leases.Wanted(func(host string) { go s.pool.Yield(ctx, host) })
		if err != nil {
			return err
		}
		defer func() { _ = want.Unsubscribe() }()
	}
	hosts, err := s.nc.Subscribe(s.names.ProberHosts(), s.answerHosts)
	if err != nil {
		return err
	}
	defer func() { _ = hosts.Unsubscribe() }()
	var traces inflight.Group
	trace, err := s.nc.QueueSubscribe(s.names.ProberTrace(), "probers", func(m *nats.Msg) {
		traces.Go(func() { s.trace(ctx, m) })
	})
	if err != nil {
		return err
	}
	defer func() { _ = trace.Unsubscribe(); traces.Close() }()
	s.log.Info("prober running", "workers", s.cfg.Workers, "stream", s.names.ProbeStream(), "fleet_limits", s.cfg.FleetLimits)
	go s.sweep(ctx)
	jobs, err := pull.New(s.nc, s.names.ProbeStream(), s.names.ProbeConsumer(), s.cfg.Workers, 2*time.Second)
	if err != nil {
		return fmt.Errorf("job subscription: %w", err)
	}
	var wg sync.WaitGroup
	for i := 0; i < s.cfg.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.worker(ctx, jobs)
		}()
	}
	wg.Wait()
	jobs.Close()
	s.parked.Close()
	cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	s.pool.Close(cctx)
	cancel()
	return nil
}

func (s *Service) sweep(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.pool.Sweep(ctx, time.Hour)
		}
	}
}
