package probe

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
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
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/backoff"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/inflight"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Reasons for verdicts the service itself gives.
const (
	ReasonGaveUp   = "gave_up"
	ReasonNoMail   = "domain_accepts_no_mail"
	ReasonNullMX   = "null_mx"   // a sender domain that publishes a null MX
	ReasonNoDomain = "no_domain" // a sender domain DNS says does not exist
	ReasonDNS      = "dns_temporary"
	ReasonNoRoute  = "no_route"
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
	s := &Service{cfg: cfg, log: log, nc: nc, js: js, names: subjects.New(cfg.NATS.Prefix), domains: domains.NewTable(nil),
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
		kv, err := domains.Bucket(ctx, s.js, s.names, s.cfg.Replicas)
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
		leases := lease.New(lease.Config{MaxConns: s.cfg.MaxConns, Rate: s.cfg.Rate, TTL: s.cfg.LeaseTTL, Instance: s.instance}, s.nc, s.names)
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

// HostsReply is a prober's answer on the hosts subject.
type HostsReply = wire.HostsReply

// answerHosts tells an operator about this prober's destination hosts, the
// busiest first (at most 100).
func (s *Service) answerHosts(m *nats.Msg) {
	b, err := json.Marshal(s.hostsReply(100))
	if err == nil {
		_ = m.Respond(b)
	}
}

// trace runs a traced job (an operator's request through the ingest): a
// fresh callout with its dialogue recorded. Its verdicts are published and
// cached like any; the transcript goes back to the asker only.
func (s *Service) trace(ctx context.Context, m *nats.Msg) {
	reply := func(r *wire.TraceReply) {
		if b, err := wire.Encode(r); err == nil {
			_ = m.Respond(b)
		}
	}
	job, addr, err := readJob(m.Data)
	if err != nil {
		reply(&wire.TraceReply{Error: err.Error()})
		return
	}
	tr := smtpprobe.NewTranscript()
	start := time.Now()
	tr.Add("", "*", "%s check of %s", job.Purpose, addr)
	target, done := s.prepare(ctx, job, addr, tr)
	var res callout.Result
	if done != nil {
		tr.Add("", "*", "no callout: %s (%s) %s", done.Address.Status, done.Address.Reason, done.Address.Text)
		res = *done
	} else {
		res = s.verifier.Verify(ctx, target)
	}
	res.Started(start)
	if err := s.publishAll(ctx, addr, job.Purpose, &res); err != nil {
		tr.Add("", "*", "verdict not published: %v", err)
	}
	s.log.Info("traced callout", "address", addr.String(), "purpose", job.Purpose, "result", res.Address.Status, "reason", res.Address.Reason)
	reply(&wire.TraceReply{Verdict: res.Address, Facts: res.Facts, Transcript: tr.Lines()})
}

// worker takes one job at a time: nothing waits in a local buffer while
// its AckWait runs.
func (s *Service) worker(ctx context.Context, jobs *pull.Queue) {
	for ctx.Err() == nil {
		msg, err := jobs.Next(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("fetch", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(250 * time.Millisecond):
				}
			}
			continue
		}
		s.handle(ctx, msg)
	}
}

// readJob decodes a job and its address; a job without a purpose is a
// recipient check.
func readJob(data []byte) (wire.ProbeJob, address.Address, error) {
	var job wire.ProbeJob
	if err := wire.Decode(data, &job); err != nil {
		return job, address.Address{}, err
	}
	addr, err := address.Parse(job.Address)
	if err != nil {
		return job, address.Address{}, err
	}
	if job.Purpose == "" {
		job.Purpose = verdict.Recipient
	}
	return job, addr, nil
}

func (s *Service) handle(ctx context.Context, msg *pull.Msg) {
	job, addr, err := readJob(msg.Data())
	if err != nil {
		s.log.Error("probe job refused", "subject", msg.Subject(), "err", err)
		s.m.jobs.WithLabelValues("garbage").Inc()
		_ = msg.Term()
		return
	}
	if n := msg.NumDelivered(); int(n) > s.cfg.MaxDeliver {
		// Earlier deliveries died mid-callout: answer rather than retry forever.
		v := verdict.Verdict{Kind: verdict.KindAddress, Address: addr.String(), Domain: addr.Domain, Status: verdict.TempFail,
			Reason: ReasonGaveUp, Text: fmt.Sprintf("no result after %d deliveries", n-1), CheckedAt: time.Now(), Source: verdict.SourceProbe}
		s.finish(ctx, msg, addr, job.Purpose, callout.Result{Address: v}, "gave_up")
		return
	}
	// Heartbeat so a long dialogue, or a wait for a busy host, is not
	// redelivered to another prober.
	stopHB := heartbeat(msg, max(s.cfg.AckWait/3, 200*time.Millisecond))
	start := time.Now()
	target, done := s.prepare(ctx, job, addr, nil)
	if done != nil {
		stopHB()
		s.complete(ctx, msg, job, addr, start, *done)
		return
	}
	// The first host's slot is taken without waiting. A job whose host is
	// busy (connections or rate) waits on its own goroutine, not on a
	// worker: one slow destination cannot hold every worker.
	d := s.pool.Get(target.Hosts[0])
	var slot *destination.Slot
	if !d.Open() {
		var ok bool
		if slot, ok = d.TryAcquire(ctx); !ok && s.waiting.Add(1) <= int64(s.cfg.MaxWaiting) {
			wait := func() {
				defer s.waiting.Add(-1)
				slot, err := d.Acquire(ctx, true)
				if err != nil {
					stopHB()
					_ = msg.NakWithDelay(time.Second) // shutting down: another prober takes it
					s.m.jobs.WithLabelValues("requeued").Inc()
					return
				}
				s.run(ctx, msg, job, addr, target, slot, stopHB, start)
			}
			if !s.parked.Do(wait) {
				s.waiting.Add(-1)
				stopHB()
				_ = msg.NakWithDelay(time.Second) // shutting down
				s.m.jobs.WithLabelValues("requeued").Inc()
			}
			return
		} else if !ok {
			s.waiting.Add(-1) // too many waiting already: this worker waits
		}
	}
	s.run(ctx, msg, job, addr, target, slot, stopHB, start)
}

// heartbeat tells the server every interval that msg is in progress,
// until stop is called (any number of times). A timer, not a goroutine
// per job: most callouts end before the first beat.
func heartbeat(msg *pull.Msg, every time.Duration) (stop func()) {
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock()
	t = time.AfterFunc(every, func() {
		_ = msg.InProgress()
		mu.Lock()
		if !stopped {
			t.Reset(every)
		}
		mu.Unlock()
	})
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}

// run makes the callout (slot, when set, is the first host's) and
// publishes its verdicts.
func (s *Service) run(ctx context.Context, msg *pull.Msg, job wire.ProbeJob, addr address.Address, target callout.Target, slot *destination.Slot, stopHB func(), start time.Time) {
	s.m.inFlight.Inc()
	defer s.m.inFlight.Dec()
	res, end := s.verifier.VerifyThen(ctx, target, slot)
	stopHB()
	// The verdict goes first: it does not wait for the destination's reply
	// to the connection's RSET (or QUIT), which comes next, before the
	// worker takes another job.
	s.complete(ctx, msg, job, addr, start, res)
	end()
}

// complete stamps the verdicts with the callout's start and hands them on.
func (s *Service) complete(ctx context.Context, msg *pull.Msg, job wire.ProbeJob, addr address.Address, start time.Time, res callout.Result) {
	res.Started(start)
	if ctx.Err() != nil {
		// Shutting down: the result is an artefact of the cancellation.
		_ = msg.Nak()
		s.m.jobs.WithLabelValues("requeued").Inc()
		return
	}
	el := time.Since(start)
	s.m.duration.Observe(el.Seconds())
	s.m.callouts.WithLabelValues(string(res.Address.Status)).Inc()
	if res.Address.Reason == callout.ReasonRefusesVerifier {
		s.m.refusing.Inc()
	}
	if res.Address.Host != "" && res.Rcpts > 0 {
		kind := "opened"
		if res.Reused {
			kind = "reused"
		}
		s.m.connections.WithLabelValues(kind).Inc()
	}
	a := res.Address
	s.finish(ctx, msg, addr, job.Purpose, res, "done")
	// Logged once the verdict is on its way: its ingest does not wait for the line.
	// Typed attributes: named string types would go through fmt.
	s.log.LogAttrs(ctx, slog.LevelInfo, "callout", slog.String("address", a.Address), slog.String("purpose", string(job.Purpose)),
		slog.String("host", a.Host), slog.String("result", string(a.Status)), slog.String("reason", a.Reason), slog.Int("code", a.Code),
		slog.String("enhanced", a.Enhanced), slog.String("text", a.Text), slog.Int("rcpts", res.Rcpts), slog.Bool("reused", res.Reused),
		slog.Duration("duration", el.Round(time.Millisecond)))
}

// finish publishes the domain facts, then the address verdict, and only then
// acks the job: a prober killed before the ack leaves the job to another.
// Every verdict carries the job's purpose, its view (see kvkey).
func (s *Service) finish(ctx context.Context, msg *pull.Msg, addr address.Address, purpose verdict.Purpose, res callout.Result, outcome string) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.publishAll(pctx, addr, purpose, &res); err != nil {
		s.requeue(msg, err)
		return
	}
	// A plain ack: if it is lost, the job comes back after AckWait and is
	// called out again, which costs one callout; waiting for the server to
	// confirm every ack would cost a round trip on every job.
	if err := msg.Ack(); err != nil {
		s.log.Warn("job ack failed; it will be redelivered", "subject", msg.Subject(), "err", err)
	}
	s.m.jobs.WithLabelValues(outcome).Inc()
}

// publishAll publishes the domain facts, then the address verdict, each
// marked with the purpose, its view (see kvkey).
func (s *Service) publishAll(ctx context.Context, addr address.Address, purpose verdict.Purpose, res *callout.Result) error {
	for _, f := range res.Facts {
		f.Purpose = purpose
		if err := s.publish(ctx, s.names.Verdict(kvkey.Domain(f.Domain, purpose, f.Fact)), f); err != nil {
			return err
		}
	}
	res.Address.Purpose = purpose
	return s.publish(ctx, s.names.Verdict(kvkey.Address(addr.Domain, addr.Local, purpose, "")), res.Address)
}

func (s *Service) requeue(msg *pull.Msg, err error) {
	s.log.Error("verdict publish failed; job handed back", "subject", msg.Subject(), "err", err)
	_ = msg.NakWithDelay(time.Second)
	s.m.jobs.WithLabelValues("requeued").Inc()
}

func (s *Service) publish(ctx context.Context, subject string, v verdict.Verdict) error {
	b, err := wire.EncodeVerdict(v)
	if err != nil {
		return err
	}
	_, err = streams.Publish(ctx, s.nc, &nats.Msg{Subject: subject, Data: b})
	return err
}

// prepare finds the hosts to ask: the ingest puts its routing decision in
// the job; jobs without one (refresh jobs) use the policy table. A failed
// MX lookup is a result at once. An MX list is cut to MX_LIMIT hosts (like
// Postfix's smtp_mx_address_limit), so a domain with 50 dead MX hosts
// cannot burn the whole budget.
func (s *Service) prepare(ctx context.Context, job wire.ProbeJob, addr address.Address, tr *smtpprobe.Transcript) (callout.Target, *callout.Result) {
	route, sender, fallback, control := job.Route, job.Sender, job.FallbackSender, job.Control
	if !job.Routed {
		pol, known := s.domains.Lookup(addr.Domain)
		if known {
			route, sender, fallback = pol.Route, pol.Sender, pol.FallbackSender
			if pol.ControlProbe == "off" {
				control = wire.ControlOff
			}
		}
	}
	target := callout.Target{Address: addr, SkipRandom: job.SkipRandom, Sender: sender, FallbackSender: fallback, Control: control, Trace: tr}
	if job.Purpose != verdict.Sender && !(domains.Policy{Route: route}).UsesMX() {
		target.Hosts = route
		tr.Add("", "*", "hosts by the domain's route: %s", strings.Join(route, " "))
	} else {
		hosts, err := s.resolver.MX(ctx, addr.Domain)
		if err != nil {
			tr.Add("", "*", "MX lookup of %s failed: %v", addr.Domain, err)
			r := s.dnsResult(addr, job.Purpose, err)
			return target, &r
		}
		target.Hosts = hosts[:min(len(hosts), s.cfg.MXLimit)]
		tr.Add("", "*", "MX lookup of %s: %s (at most %d tried)", addr.Domain, strings.Join(hosts, " "), s.cfg.MXLimit)
	}
	tr.Add("", "*", "MAIL FROM sender %q, fallback %q; catch-all check: %v", sender, fallback, !job.SkipRandom)
	if len(target.Hosts) == 0 {
		r := s.verifier.Verify(ctx, target) // no destination: a tempfail
		return target, &r
	}
	return target, nil
}

// dnsResult turns a failed MX lookup into a verdict. A sender domain that
// publishes a null MX says it takes no mail: a definite invalid, refused
// with RFC 7505's 550 5.7.27. One that DNS says does not exist may be
// newly registered: deferred (a 4xx the MTA retries, as Postfix's
// reject_unknown_sender_domain does for a negative answer), or refused
// with 550 5.1.8 when SENDER_NXDOMAIN says so. For a recipient domain we
// serve, either means our set-up is wrong, not the user: unverifiable,
// never a reject.
func (s *Service) dnsResult(addr address.Address, purpose verdict.Purpose, err error) callout.Result {
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: addr.String(), Domain: addr.Domain,
		Text: verdict.CleanText(err.Error()), CheckedAt: time.Now(), Source: verdict.SourceProbe}
	switch {
	case errors.Is(err, resolve.ErrNullMX) && purpose == verdict.Sender:
		v.Status, v.Reason, v.Code, v.Enhanced = verdict.Invalid, ReasonNullMX, 550, verdict.EnhancedNullMX
	case errors.Is(err, resolve.ErrNoDomain) && purpose == verdict.Sender && s.cfg.SenderNXDomain == "reject":
		v.Status, v.Reason, v.Code, v.Enhanced = verdict.Invalid, ReasonNoDomain, 550, "5.1.8"
	case errors.Is(err, resolve.ErrNoDomain) && purpose == verdict.Sender:
		// Invalid but not definite (a 4xx): deferred, never stored.
		v.Status, v.Reason, v.Code, v.Enhanced = verdict.Invalid, ReasonNoDomain, 450, "4.1.8"
	case errors.Is(err, resolve.ErrNoMail):
		v.Status, v.Reason = verdict.Unverifiable, ReasonNoMail
	default:
		v.Status, v.Reason = verdict.TempFail, ReasonDNS
	}
	return callout.Result{Address: v}
}

// StatsExtra adds the busiest destination hosts and the waiting jobs to the
// prober's stats messages.
func (s *Service) StatsExtra() any { return s.hostsReply(10) }

// hostsReply describes this prober's n busiest destination hosts.
func (s *Service) hostsReply(n int) HostsReply {
	return HostsReply{Instance: s.instance, Waiting: s.waiting.Load(), Hosts: s.pool.Hosts(n)}
}
