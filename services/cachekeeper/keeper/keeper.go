// Package keeper is the cachekeeper service: it stores verdicts from the
// verdict stream, answers lookups and applies flush commands.
package keeper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/cachekeeper/cache"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/backoff"
	"github.com/callout-mail/callout/shared/inflight"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/microasync"
	"github.com/callout-mail/callout/shared/natsconn"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Version of the micro service.
const Version = "1.0.0"

// Config is the cachekeeper's settings, from CALLOUT_CACHEKEEPER_* variables.
type Config struct {
	NATS            natsconn.Config `envconfig:"NATS"`
	Replicas        int             `default:"1" desc:"replicas of the cache bucket and streams (3 in a cluster)"`
	TTLValid        time.Duration   `envconfig:"TTL_VALID" default:"96h" desc:"how long an existing mailbox is cached"`
	TTLInvalid      time.Duration   `envconfig:"TTL_INVALID" default:"2h" desc:"how long a user-unknown is cached"`
	TTLDisabled     time.Duration   `envconfig:"TTL_DISABLED" default:"30m" desc:"how long a disabled mailbox (5.2.1) is cached"`
	TTLCatchAll     time.Duration   `envconfig:"TTL_CATCH_ALL" default:"96h" desc:"how long a catch-all domain fact is cached"`
	TTLNotCatchAll  time.Duration   `envconfig:"TTL_NOT_CATCH_ALL" default:"2h" desc:"how long a not-catch-all domain fact is cached"`
	TTLUnverifiable time.Duration   `envconfig:"TTL_UNVERIFIABLE" default:"2h" desc:"how long a refusal of us (null sender refused, blocked) is cached"`
	TTLTempfail     time.Duration   `envconfig:"TTL_TEMPFAIL" default:"0s" desc:"how long a temporary failure is cached (0: never)"`
	RefreshAge      time.Duration   `envconfig:"REFRESH_AGE" default:"48h" desc:"a valid entry older than this is re-probed in the background when looked up (0: off)"`
	Workers         int             `default:"64" desc:"lookups served at once"`
	StoreWorkers    int             `envconfig:"STORE_WORKERS" default:"8" desc:"verdicts written at once"`
	MetricsAddr     string          `envconfig:"METRICS_ADDR" default:"127.0.0.1:9103" desc:"Prometheus /metrics listen address (empty: off)"`
}

// Validate checks values envconfig cannot.
func (c *Config) Validate() error {
	if c.Workers < 1 || c.StoreWorkers < 1 {
		return errors.New("CALLOUT_CACHEKEEPER_WORKERS and _STORE_WORKERS must be at least 1")
	}
	for _, d := range []time.Duration{c.TTLValid, c.TTLInvalid, c.TTLDisabled, c.TTLCatchAll, c.TTLNotCatchAll, c.TTLUnverifiable, c.TTLTempfail} {
		if d < 0 || (d > 0 && d < time.Second) {
			return errors.New("CALLOUT_CACHEKEEPER_TTL_*: a TTL is 0 (not cached) or at least 1s")
		}
	}
	return nil
}

// TTLs returns the cache TTL classes.
func (c Config) TTLs() cache.TTLs {
	return cache.TTLs{Valid: c.TTLValid, Invalid: c.TTLInvalid, Disabled: c.TTLDisabled, CatchAll: c.TTLCatchAll,
		NotCatchAll: c.TTLNotCatchAll, Unverifiable: c.TTLUnverifiable, TempFail: c.TTLTempfail}
}

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
	refresh map[string]time.Time // key -> last background re-probe
	ready   chan struct{}
	pool    *microasync.Pool
	ingests map[string]time.Time // running ingests (micro id) and when last seen
}

// Ready is closed once the service stores verdicts and answers requests.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// New builds a cachekeeper on an open connection.
func New(cfg Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*Service, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, log: log, nc: nc, js: js, names: subjects.New(cfg.NATS.Prefix), m: newMetrics(reg), refresh: map[string]time.Time{}, ingests: map[string]time.Time{}, ready: make(chan struct{})}, nil
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
	stores := inflight.NewPool(s.cfg.StoreWorkers)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		// Refused while stopping: the verdict stays unacked and is
		// redelivered to a running cachekeeper.
		stores.Do(func() { s.store1(ctx, msg) })
	}, jetstream.PullMaxMessages(4*s.cfg.StoreWorkers))
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
		Name: "callout-cache", Version: Version, Description: "callout verdict cache",
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
	// Every instance must apply a flush: no queue group.
	if err := svc.AddEndpoint("flush", micro.HandlerFunc(func(r micro.Request) { s.flush(ctx, r) }),
		micro.WithEndpointSubject(s.names.Flush()), micro.WithEndpointQueueGroupDisabled()); err != nil {
		return nil, err
	}
	return svc, nil
}

func (s *Service) lookup(ctx context.Context, r *microasync.Request) {
	var req wire.LookupRequest
	if err := wire.Decode(r.Data(), &req); err != nil {
		s.m.lookups.WithLabelValues("error").Inc()
		_ = r.Error("400", err.Error(), nil)
		return
	}
	a, err := address.Parse(req.Address)
	if err != nil {
		s.m.lookups.WithLabelValues("error").Inc()
		_ = r.Error("400", err.Error(), nil)
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	purpose := req.Purpose
	if purpose == "" {
		purpose = verdict.Recipient
	}
	rep, err := s.store.LookupAfter(lctx, a, purpose, req.Senders, req.Rev)
	if err != nil {
		s.m.lookups.WithLabelValues("error").Inc()
		_ = r.Error("503", err.Error(), nil)
		return
	}
	kind := "miss"
	if rep.Hit {
		kind = string(rep.Verdict.Status)
		s.maybeRefresh(ctx, a, *rep.Verdict)
	} else if req.Job != nil {
		s.queue(lctx, a, purpose, *req.Job, &rep)
	}
	s.m.lookups.WithLabelValues(kind).Inc()
	b, err := wire.Encode(&rep)
	if err != nil {
		_ = r.Error("500", err.Error(), nil)
		return
	}
	_ = r.Respond(b)
}

// queue queues an ingest's job on a miss: its callout starts without
// waiting for the answer to travel back first. The job is for the address
// and view looked up, whatever it says; how it went is in the reply.
func (s *Service) queue(ctx context.Context, a address.Address, purpose verdict.Purpose, job wire.ProbeJob, rep *wire.LookupReply) {
	job.Address, job.Purpose = a.String(), purpose
	rep.Adjust(&job)
	b, err := wire.Encode(&job)
	pending := false
	if err == nil {
		pending, err = streams.QueueJob(ctx, s.js, s.names.Probe(kvkey.Target(a.Domain, a.Local, purpose)), b)
	}
	outcome := "queued"
	switch {
	case err != nil:
		rep.QueueError, outcome = err.Error(), "error"
	case pending:
		rep.Pending, outcome = true, "pending"
	default:
		rep.Queued = true
	}
	s.m.queued.WithLabelValues(outcome).Inc()
}

// maybeRefresh re-probes an old valid entry in the background, at most once
// per key per refresh period; the answer still comes from the cache.
func (s *Service) maybeRefresh(ctx context.Context, a address.Address, v verdict.Verdict) {
	if s.cfg.RefreshAge <= 0 || v.Status != verdict.Valid || v.Kind != verdict.KindAddress || time.Since(v.CheckedAt) < s.cfg.RefreshAge {
		return
	}
	key := kvkey.Address(a.Domain, a.Local, v.Purpose, v.Sender)
	now := time.Now()
	s.mu.Lock()
	if last, ok := s.refresh[key]; ok && now.Sub(last) < s.cfg.RefreshAge {
		s.mu.Unlock()
		return
	}
	if len(s.refresh) > 100000 {
		s.refresh = map[string]time.Time{} // bound the memory; a few extra re-probes at worst
	}
	s.refresh[key] = now
	s.mu.Unlock()
	job := wire.ProbeJob{Address: a.String(), Purpose: v.Purpose, SkipRandom: true, RequestedAt: now}
	b, err := wire.Encode(&job)
	if err != nil {
		return
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.js.Publish(pctx, s.names.Probe(kvkey.Target(a.Domain, a.Local, v.Purpose)), b); err != nil && !streams.JobPending(err) {
		s.log.Warn("refresh job not queued", "address", a.String(), "err", err)
		return
	}
	s.m.refreshes.Inc()
}

func (s *Service) flush(ctx context.Context, r micro.Request) {
	var cmd wire.FlushCommand
	isJSON := r.Headers().Get(wire.ContentType) == wire.JSONMediaType
	var err error
	if isJSON {
		err = wire.DecodeJSON(r.Data(), &cmd)
	} else {
		err = wire.Decode(r.Data(), &cmd)
	}
	if err != nil {
		s.log.Error("flush refused", "err", err)
		_ = r.Error("400", err.Error(), nil)
		return
	}
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	// The ingests confirm the record while the purge runs: their near
	// caches go by the record, not by the purge. (The hook runs on this
	// goroutine, once the record is written.)
	var synced chan struct{}
	var unconfirmed []string
	n, _, err := s.store.FlushThen(fctx, cmd, func(rev uint64) {
		synced = make(chan struct{})
		go func() {
			defer close(synced)
			unconfirmed = s.syncIngests(fctx, rev)
		}()
	})
	rep := wire.FlushReply{Removed: n}
	if err != nil {
		rep.Error = err.Error()
		s.log.Error("flush failed", "scope", cmd.Scope, "err", err)
	}
	if synced != nil {
		<-synced
		rep.Unconfirmed = unconfirmed
	}
	s.m.flushes.WithLabelValues(cmd.Scope).Inc()
	s.m.removed.Add(float64(n))
	s.log.Info("flush", "scope", cmd.Scope, "domain", cmd.Domain, "address", cmd.Address, "only", cmd.Only, "removed", n, "took", time.Since(start).Round(time.Microsecond))
	var b []byte
	if isJSON {
		b, err = jsonReply(&rep)
	} else {
		b, err = wire.Encode(&rep)
	}
	if err != nil {
		return
	}
	_ = r.Respond(b)
}

// trackIngests keeps the set of running ingests, so that a flush knows how
// many confirmations to wait for without asking each time: an ingest says
// hello when it starts keeping a near cache, and a micro ping every few
// seconds finds who is still there.
func (s *Service) trackIngests(ctx context.Context) {
	for {
		start := time.Now()
		s.pingIngests(200 * time.Millisecond)
		s.mu.Lock()
		for id, seen := range s.ingests {
			if seen.Before(start) {
				delete(s.ingests, id) // did not answer this ping: gone
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// pingIngests notes every ingest that answers a micro ping within window
// of the previous answer.
func (s *Service) pingIngests(window time.Duration) {
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.nc.PublishRequest("$SRV.PING.callout-ingest", inbox, nil); err != nil {
		return
	}
	for {
		m, err := sub.NextMsg(window)
		if err != nil {
			return
		}
		var ping struct {
			ID string `json:"id"`
		}
		if json.Unmarshal(m.Data, &ping) == nil && ping.ID != "" {
			s.sawIngest(ping.ID, time.Now())
		}
	}
}

func (s *Service) sawIngest(id string, at time.Time) {
	s.mu.Lock()
	s.ingests[id] = at
	s.mu.Unlock()
}

// syncIngests waits until the running ingests have applied the flush record
// (bucket revision rev) to their near caches, so that once the flush is
// answered no ingest serves what it removed, and returns the ids of those
// that did not confirm within a few seconds. Those are fenced: an ingest
// asked to confirm serves nothing from its near cache until it has
// applied the record, and one that did not get the ask is cut off from
// NATS, when it serves no cached reject.
func (s *Service) syncIngests(ctx context.Context, rev uint64) []string {
	s.mu.Lock()
	count := len(s.ingests)
	s.mu.Unlock()
	if count == 0 {
		// None known yet (this cachekeeper just started): ask now.
		s.pingIngests(100 * time.Millisecond)
		s.mu.Lock()
		count = len(s.ingests)
		s.mu.Unlock()
	}
	if count == 0 {
		return nil
	}
	s.mu.Lock()
	waiting := make(map[string]bool, len(s.ingests))
	for id := range s.ingests {
		waiting[id] = true
	}
	s.mu.Unlock()
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return sorted(waiting)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.nc.PublishRequest(s.names.NearCacheSync(), inbox, []byte(strconv.FormatUint(rev, 10))); err != nil {
		return sorted(waiting)
	}
	deadline := time.Now().Add(3 * time.Second)
	for got := 0; got < count && len(waiting) > 0; got++ {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		// "true <id>" or "false <id>" (an ingest of an older version
		// answers without its id).
		ok, id, _ := strings.Cut(string(m.Data), " ")
		if ok != "true" {
			continue
		}
		if id == "" {
			// Unnamed: counts against any one still waited for.
			for w := range waiting {
				delete(waiting, w)
				break
			}
			continue
		}
		delete(waiting, id)
	}
	if len(waiting) > 0 {
		s.log.Warn("flush: not every ingest confirmed it; those are fenced until they apply it", "ingests", count, "unconfirmed", sorted(waiting))
	}
	return sorted(waiting)
}

func sorted(set map[string]bool) []string {
	if len(set) == 0 {
		return nil
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// NATSConfig is the connection part of the settings.
func (c *Config) NATSConfig() natsconn.Config { return c.NATS }

// MetricsListen is the metrics listen address.
func (c *Config) MetricsListen() string { return c.MetricsAddr }
