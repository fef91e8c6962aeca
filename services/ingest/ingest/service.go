package ingest

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/ingest/brake"
	"github.com/callout-mail/callout/services/ingest/nearcache"
	"github.com/callout-mail/callout/shared/backoff"
	"github.com/callout-mail/callout/shared/cachecopy"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/microasync"
	"github.com/callout-mail/callout/shared/refresh"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
)

// Version of the micro service.
const Version = "1.0.0"

// Service is one ingest instance.
type Service struct {
	cfg       Config
	replyBufs sync.Pool // *[]byte, for encoding replies
	log       *slog.Logger
	nc        *nats.Conn
	js        jetstream.JetStream
	names     subjects.Names
	domains   *domains.Table
	brake     *brake.Brake
	m         *metrics
	extra     map[string]bool // configured probe senders
	mu        sync.Mutex
	flights   map[string]*flight
	ready     chan struct{}
	near      *nearcache.Cache
	nearOn    atomic.Bool // the bucket is watched: the near cache may keep entries
	// index is the bucket's address keys and domain facts, kept by the
	// same watch: a miss of an address without keys is known here.
	index   *cachecopy.Copy
	rewatch chan struct{} // a reconnection: read the bucket afresh
	// fence is the highest flush record revision a cachekeeper asked this
	// ingest to confirm: until the watch has applied it, the near cache is
	// not served (see fenced).
	fence atomic.Uint64
	// offline: cut off from NATS (the connection's own state, without its
	// lock on the hot path).
	offline atomic.Bool
	// cutOff: in a fleet over regions, this region is cut off from the
	// others or has not applied every flush yet (region.go).
	cutOff atomic.Bool
	id     atomic.Value // string: the micro service id, named in flush confirmations
	// refreshes re-probes old valid entries the near cache answers.
	refreshes refresh.Ahead
	// The decision log (record.go): nil when off.
	recorder *decisions.Recorder
	counter  *decisions.Counter
	history  jetstream.KeyValue // set by runHistory alone
	instance atomic.Pointer[string]
}

// New builds an ingest on an open connection.
func New(cfg Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*Service, error) {
	names, err := cfg.NATS.Names()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: log, nc: nc, js: js, names: names,
		domains: domains.NewTable(nil), brake: brake.New(brake.Config{Limit: cfg.BrakeLimit, Window: cfg.BrakeWindow, MaxClients: cfg.BrakeMaxClients, IPv6Prefix: cfg.BrakeIPv6Prefix}),
		extra: map[string]bool{}, flights: map[string]*flight{}, ready: make(chan struct{})}
	s.near = nearcache.New(cfg.NearCacheEntries, cfg.ReplyDetails)
	s.refreshes.Age = cfg.RefreshAge
	s.index = cachecopy.New(cfg.KnownKeys)
	s.rewatch = make(chan struct{}, 1)
	s.m = newMetrics(reg, s.domains.Errors, s.near, s.index)
	// A reconnection may have missed invalidations: start afresh.
	old := nc.Opts.ReconnectedCB
	nc.SetReconnectHandler(func(c *nats.Conn) {
		if old != nil {
			old(c)
		}
		s.near.Clear()
		s.index.Reset()
		select {
		case s.rewatch <- struct{}{}:
		default:
		}
		s.offline.Store(false)
		// Verdicts published while cut off went by: look for them.
		go s.recheckFlights()
	})
	oldDisc := nc.Opts.DisconnectedErrCB
	nc.SetDisconnectErrHandler(func(c *nats.Conn, err error) {
		s.offline.Store(true)
		if oldDisc != nil {
			oldDisc(c, err)
		}
	})
	for _, p := range cfg.ProbeSenders {
		s.extra[strings.ToLower(strings.TrimSpace(p))] = true
	}
	s.counter = decisions.NewCounter()
	if cfg.DecisionLog {
		if s.recorder, err = decisions.NewRecorder(nc, names, cfg.DecisionLogBuffer, func(why string) { s.m.decisionsDropped.WithLabelValues(why).Inc() }, log); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Ready is closed once the service answers requests.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Run serves until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	err := backoff.Retry(ctx, s.log, "ingest setup", 5*time.Second, func(ctx context.Context) error {
		if _, err := streams.Probes(ctx, s.js, s.names, s.cfg.Replicas); streams.Warn(s.log, err) != nil {
			return err
		}
		kv, err := domains.Bucket(ctx, s.js, s.names, s.cfg.Replicas)
		if err != nil {
			return err
		}
		return s.domains.Watch(ctx, kv, s.log)
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // asked to stop while setting up
		}
		return err
	}
	verdicts, err := s.nc.Subscribe(s.names.Verdict("addr.>"), s.onVerdict)
	if err != nil {
		return err
	}
	defer func() { _ = verdicts.Unsubscribe() }()
	svc, err := micro.AddService(s.nc, micro.Config{
		Name: "callout-ingest", Version: Version, Description: "verify e-mail addresses at their destination",
		QueueGroup: "callout-ingest", Metadata: map[string]string{"region": s.names.Region},
	})
	if err != nil {
		return err
	}
	if s.cfg.NearCacheEntries > 0 {
		sync, err := s.nc.Subscribe(s.names.NearCacheSync(), s.answerSync)
		if err != nil {
			return err
		}
		defer func() { _ = sync.Unsubscribe() }()
		go s.watchCache(ctx, svc.Info().ID)
	}
	if s.names.Region != "" {
		go s.followRegions(ctx)
	}
	s.setInstance(svc.Info().ID)
	bg, stopBg := context.WithCancel(context.WithoutCancel(ctx))
	var bgDone sync.WaitGroup
	defer func() { stopBg(); bgDone.Wait() }()
	if s.recorder != nil {
		bgDone.Add(1)
		go func() { defer bgDone.Done(); s.recorder.Run(bg) }()
	}
	if s.cfg.HistoryInterval > 0 {
		bgDone.Add(1)
		go func() { defer bgDone.Done(); s.runHistory(bg) }()
	}
	// micro calls handlers one at a time: requests go to a bounded pool.
	pool := microasync.NewPool(s.cfg.Workers)
	err = svc.AddEndpoint("verify", pool.FastHandler(ctx, s.nc, s.answerInline, s.serveNATS, s.shed),
		micro.WithEndpointSubject(s.names.Verify()))
	if err == nil && s.names.VerifyRegion() != "" {
		// In a fleet over regions, MTAs of a region ask its ingests alone.
		err = svc.AddEndpoint("verify-region", pool.FastHandler(ctx, s.nc, s.answerInline, s.serveNATS, s.shed),
			micro.WithEndpointSubject(s.names.VerifyRegion()))
	}
	if err != nil {
		return err
	}
	// Traced verifies: a subject of their own, which only operators may
	// publish to; their transcripts never reach an MTA.
	err = svc.AddEndpoint("trace", pool.Handler(ctx, s.nc, s.serveTrace, s.shed),
		micro.WithEndpointSubject(s.names.VerifyTrace()))
	if err == nil {
		err = svc.AddEndpoint("console", pool.Handler(ctx, s.nc, s.serveConsole, s.shed),
			micro.WithEndpointSubject(s.names.VerifyConsole()))
	}
	if err != nil {
		return err
	}
	s.log.Info("ingest running", "subject", s.names.Verify())
	// Subscriptions reach the server before anyone is told we are ready.
	if err := s.nc.Flush(); err != nil {
		s.log.Warn("flush", "err", err)
	}
	close(s.ready)
	<-ctx.Done()
	err = svc.Stop()
	// Requests taken are answered (a defer, their context being done) before
	// the connection drains.
	pool.Wait()
	return err
}
