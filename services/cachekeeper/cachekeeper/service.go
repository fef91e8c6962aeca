package cachekeeper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/cachekeeper/cache"
	"github.com/callout-mail/callout/shared/backoff"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/inflight"
	"github.com/callout-mail/callout/shared/microasync"
	"github.com/callout-mail/callout/shared/refresh"
	"github.com/callout-mail/callout/shared/revision"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/wire"
)

// Version of the micro service.
const Version = "1.0.0"

// Service is one cachekeeper instance.
type Service struct {
	cfg     Config
	log     *slog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
	names   subjects.Names
	store   *cache.Store
	m       *metrics
	mu      sync.Mutex
	refresh refresh.Ahead // background re-probes of old valid entries
	ready   chan struct{}
	pool    *microasync.Pool
	ingests map[string]time.Time // running ingests (micro id) and when last seen
	live    map[uint64]time.Time // flush log sequences applied live, and when
	logRev  revision.Mark        // bucket revision of the last flush applied from the log
	// The region's decision log (decisions.go).
	index   *decisions.Index
	indexed atomic.Bool // the index has read the log to its end once
}

// Ready is closed once the service stores verdicts and answers requests.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// New builds a cachekeeper on an open connection.
func New(cfg Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*Service, error) {
	names, err := cfg.NATS.Names()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	index := &decisions.Index{}
	return &Service{cfg: cfg, log: log, nc: nc, js: js, names: names, m: newMetrics(reg, index), refresh: refresh.Ahead{Age: cfg.RefreshAge}, ingests: map[string]time.Time{}, ready: make(chan struct{}), index: index}, nil
}

// Run serves until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	var cons jetstream.Consumer
	err := backoff.Retry(ctx, s.log, "cachekeeper setup", 5*time.Second, func(ctx context.Context) error {
		var err error
		if s.store, err = cache.Open(ctx, s.nc, s.js, s.names, s.cfg.Replicas, s.cfg.TTLs()); streams.Warn(s.log, err) != nil {
			return err
		}
		if _, err := streams.Verdicts(ctx, s.js, s.names, s.cfg.Replicas); streams.Warn(s.log, err) != nil {
			return err
		}
		if _, err := streams.Probes(ctx, s.js, s.names, s.cfg.Replicas); streams.Warn(s.log, err) != nil {
			return err
		}
		cons, err = streams.Workers(ctx, s.js, s.names.VerdictStream(), s.names.VerdictConsumer(), 30*time.Second, s.cfg.Replicas)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil // asked to stop while setting up
		}
		return err
	}
	// The store keeps a copy of the flush records from a watch of the
	// bucket (until it runs, a write reads them from the bucket).
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); s.store.Watch(wctx, s.log) }()
	defer func() { stopWatch(); <-watched }()
	// In a fleet over regions: the flushes this region missed first.
	if s.names.Region != "" {
		var flog jetstream.Consumer
		err := backoff.Retry(ctx, s.log, "flush log", 5*time.Second, func(ctx context.Context) error {
			var err error
			if flog, err = s.joinRegion(ctx); err != nil {
				return err
			}
			return s.catchUp(ctx, flog)
		})
		if err != nil {
			return nil // asked to stop
		}
		go s.followLog(ctx, flog)
		go s.beat(ctx, flog, cons)
	}
	stores := inflight.NewPool(s.cfg.StoreWorkers)
	pull := []jetstream.PullConsumeOpt{jetstream.PullMaxMessages(4 * s.cfg.StoreWorkers)}
	if s.names.Region != "" {
		// Short pulls: a region reconnected to the others gets the
		// verdicts it missed within seconds (see followLog).
		pull = append(pull, jetstream.PullExpiry(5*time.Second))
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		// Refused while stopping: the verdict stays unacked and is
		// redelivered to a running cachekeeper.
		stores.Do(func() { s.store1(ctx, msg) })
	}, pull...)
	if err != nil {
		return fmt.Errorf("consume verdicts: %w", err)
	}
	// Ingests say hello when they start keeping a near cache; subscribed
	// before this cachekeeper says it is ready, so that none is missed.
	hello, err := s.nc.Subscribe(s.names.NearCacheHello(), func(m *nats.Msg) { s.sawIngest(string(m.Data), time.Now()) })
	if err != nil {
		cc.Stop()
		return err
	}
	defer func() { _ = hello.Unsubscribe() }()
	go s.trackIngests(ctx)
	go s.followDecisions(ctx)
	svc, err := s.serve(ctx)
	if err != nil {
		cc.Stop()
		return err
	}
	s.log.Info("cachekeeper running", "bucket", s.names.CacheBucket(), "lookup", s.names.CacheLookup(), "flush", s.names.Flush())
	// Subscriptions reach the server before anyone is told we are ready.
	if err := s.nc.Flush(); err != nil {
		s.log.Warn("flush", "err", err)
	}
	close(s.ready)
	<-ctx.Done()
	_ = svc.Stop()
	s.pool.Wait()
	cc.Stop()
	stores.Close()
	return nil
}

func (s *Service) store1(ctx context.Context, msg jetstream.Msg) {
	v, err := wire.DecodeVerdict(msg.Data())
	if err != nil {
		s.log.Error("verdict refused", "subject", msg.Subject(), "err", err)
		s.m.written.WithLabelValues("garbage").Inc()
		_ = msg.Term()
		return
	}
	// A verdict is stored only under the subject it came on: a prober may
	// publish only what its permissions allow, and a verdict about one
	// address (or view) must not land on another's key.
	key, err := cache.SubjectKey(v)
	if err != nil || s.names.Verdict(key) != msg.Subject() {
		outcome := "mismatch"
		if errors.Is(err, cache.ErrNoView) {
			outcome = "no_view" // from a prober of the layout without views
		}
		s.log.Error("verdict refused: content does not match its subject", "subject", msg.Subject(), "key", key, "err", err)
		s.m.written.WithLabelValues(outcome).Inc()
		_ = msg.Term()
		return
	}
	out, err := s.store.Put(ctx, v)
	if err != nil {
		if errors.Is(err, cache.ErrConflict) || ctx.Err() != nil || errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			_ = msg.NakWithDelay(time.Second)
			return
		}
		s.log.Error("verdict not stored", "subject", msg.Subject(), "err", err)
		s.m.written.WithLabelValues("error").Inc()
		_ = msg.Term()
		return
	}
	s.m.written.WithLabelValues(string(out)).Inc()
	s.log.Debug("verdict", "subject", msg.Subject(), "status", v.Status, "outcome", out)
	_ = msg.Ack()
}

func (s *Service) serve(ctx context.Context) (micro.Service, error) {
	svc, err := micro.AddService(s.nc, micro.Config{
		Name: "callout-cache", Version: Version, Description: "callout verdict cache", Metadata: map[string]string{"region": s.names.Region},
		QueueGroup: "callout-cache",
	})
	if err != nil {
		return nil, err
	}
	// A micro handler runs serially: lookups go to a bounded pool.
	s.pool = microasync.NewPool(s.cfg.Workers)
	if err := svc.AddEndpoint("lookup", s.pool.Handler(ctx, s.nc, s.lookup, nil),
		micro.WithEndpointSubject(s.names.CacheLookup())); err != nil {
		return nil, err
	}
	// The decision log: one cachekeeper of the region answers each.
	if err := svc.AddEndpoint("decisions-search", s.pool.Handler(ctx, s.nc, s.search, nil),
		micro.WithEndpointSubject(s.names.DecisionSearch())); err != nil {
		return nil, err
	}
	if err := svc.AddEndpoint("decisions-erase", micro.HandlerFunc(func(r micro.Request) { s.erase(ctx, r) }),
		micro.WithEndpointSubject(s.names.DecisionErase())); err != nil {
		return nil, err
	}
	// Every instance must apply a flush: no queue group.
	if err := svc.AddEndpoint("flush", micro.HandlerFunc(func(r micro.Request) { s.flush(ctx, r) }),
		micro.WithEndpointSubject(s.names.Flush()), micro.WithEndpointQueueGroupDisabled()); err != nil {
		return nil, err
	}
	return svc, nil
}
