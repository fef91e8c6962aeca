package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
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
	"github.com/callout-mail/callout/services/ingest/policyd"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/backoff"
	"github.com/callout-mail/callout/shared/cachecopy"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/microasync"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Version of the micro service.
const Version = "1.0.0"

// Reasons the ingest gives itself.
const (
	ReasonProbeSender = "probe_sender"
	ReasonPolicyOff   = "policy_off"
	ReasonListed      = "listed"
	ReasonNotListed   = "not_listed"
	ReasonNotServed   = "not_served"
	ReasonBraked      = "too_many_unknown_recipients"
	ReasonDeadline    = "deadline"
	ReasonQueue       = "queue_unavailable"
	ReasonSyntax      = "syntax"
	ReasonUnprobeable = "unprobeable_form"
	ReasonNullSender  = "null_sender"
	ReasonPostmaster  = "postmaster"
	ReasonShed        = "shed"
	ReasonBypass      = "bypass"
	// ReasonUnconfirmed defers what the near cache would reject while this
	// ingest cannot know that no flush removed it: cut off from NATS, or
	// asked to confirm a flush it has not applied yet.
	ReasonUnconfirmed = "cache_unconfirmed"
)

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
	id      atomic.Value // string: the micro service id, named in flush confirmations
	// refreshes re-probes old valid entries the near cache answers.
	refreshes refresher
}

// flight is one pending callout that any number of requests wait for.
// Verdicts arrive on one subscription to every address verdict
// (onVerdict), which ends the flight of their target: no subscription per
// callout, each of which would change the server's interest graph twice.
//
// A flight never ends with a verdict that a flush known here covers (its
// callout started before the flush): it asks for a fresh callout instead
// (refused), so that a request that comes after a flush never gets the
// verdict of a callout from before it.
type flight struct {
	key     string
	subject string        // the verdict subject
	job     wire.ProbeJob // what it queued or would queue
	done    chan struct{}
	refused chan struct{} // a covered verdict came: queue a fresh callout
	once    sync.Once
	v       verdict.Verdict
	err     error
}

// ended reports whether f has its answer.
func (f *flight) ended() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// end ends the flight with its answer, once: the first of the verdict,
// the cache's answer or a failure wins. It leaves the map, and its
// waiters have the answer.
func (s *Service) end(f *flight, v verdict.Verdict, err error) {
	f.once.Do(func() {
		f.v, f.err = v, err
		s.mu.Lock()
		if s.flights[f.key] == f {
			delete(s.flights, f.key)
		}
		s.mu.Unlock()
		close(f.done)
	})
}

// New builds an ingest on an open connection.
func New(cfg Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*Service, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s := &Service{cfg: cfg, log: log, nc: nc, js: js, names: subjects.New(cfg.NATS.Prefix),
		domains: domains.NewTable(nil), brake: brake.New(brake.Config{Limit: cfg.BrakeLimit, Window: cfg.BrakeWindow, MaxClients: cfg.BrakeMaxClients, IPv6Prefix: cfg.BrakeIPv6Prefix}),
		extra: map[string]bool{}, flights: map[string]*flight{}, ready: make(chan struct{})}
	s.near = nearcache.New(cfg.NearCacheEntries, cfg.ReplyDetails)
	s.refreshes.age = cfg.RefreshAge
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
		QueueGroup: "callout-ingest",
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
	// micro calls handlers one at a time: requests go to a bounded pool.
	pool := microasync.NewPool(s.cfg.Workers)
	err = svc.AddEndpoint("verify", pool.FastHandler(ctx, s.nc, s.fast, s.serveNATS, s.shed),
		micro.WithEndpointSubject(s.names.Verify()))
	if err != nil {
		return err
	}
	// Traced verifies: a subject of their own, which only operators may
	// publish to; their transcripts never reach an MTA.
	err = svc.AddEndpoint("trace", pool.Handler(ctx, s.nc, s.serveTrace, s.shed),
		micro.WithEndpointSubject(s.names.VerifyTrace()))
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

func (s *Service) serveTrace(ctx context.Context, r *microasync.Request) {
	s.serve(ctx, r, true)
}

func (s *Service) serveNATS(ctx context.Context, r *microasync.Request) {
	s.serve(ctx, r, false)
}

// decode reads a verify request, or answers it with an error and
// returns false.
func (s *Service) decode(r *microasync.Request, trace bool) (wire.VerifyRequest, bool) {
	var req wire.VerifyRequest
	var err error
	if isJSON(r) {
		err = wire.DecodeJSON(r.Data(), &req)
	} else {
		err = wire.Decode(r.Data(), &req)
	}
	if err == nil && req.Trace && !trace {
		// The MTA subject never runs or returns a trace.
		err = errors.New("traced verifies go to " + s.names.VerifyTrace())
	}
	if err != nil {
		s.m.requests.WithLabelValues(string(verdict.Defer), "error").Inc()
		rep := wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Defer, Code: 451, Enhanced: "4.3.5", Text: "Verify request not understood"}, Error: err.Error()}
		b, _ := encodeReply(&rep, isJSON(r))
		_ = r.Error("400", err.Error(), b)
		return req, false
	}
	req.Trace = trace
	return req, true
}

func isJSON(r *microasync.Request) bool { return r.Header(wire.ContentType) == wire.JSONMediaType }

func (s *Service) respond(r *microasync.Request, rep *wire.VerifyReply) {
	// The publish copies the reply out: its buffer serves the next one.
	buf, _ := s.replyBufs.Get().(*[]byte)
	if buf == nil {
		buf = new([]byte)
	}
	defer s.replyBufs.Put(buf)
	var b []byte
	var err error
	if isJSON(r) {
		b, err = encodeReply(rep, true)
	} else {
		b, err = wire.AppendEncode((*buf)[:0], rep)
		*buf = b[:0]
	}
	if err != nil {
		_ = r.Error("500", err.Error(), nil)
		return
	}
	_ = r.Respond(b)
}

// fast answers, on the subscription's goroutine, what needs no NATS round
// trip: bad requests, the addresses never called out, the policy's own
// answers and near-cache hits (the steady state of a gateway). Everything
// else goes on to a pool worker with the decoded request.
func (s *Service) fast(r *microasync.Request) bool {
	req, ok := s.decode(r, false)
	if !ok {
		return true
	}
	purpose := purposeOf(req)
	v, pol, m := s.local(req, purpose)
	if m != nil {
		// The worker goes on from here rather than starting over.
		r.State = &pending{req: req, purpose: purpose, v: v, pol: pol, m: m}
		return false
	}
	var logLine func()
	rep := s.reply(context.Background(), req, purpose, r.Arrived(), v, pol, nil, &logLine)
	s.respond(r, &rep)
	logLine()
	return true
}

// pending is a request fast found no answer for in memory, with what it
// learnt: the worker asks the cache (and the destination) from there.
type pending struct {
	req     wire.VerifyRequest
	purpose verdict.Purpose
	v       verdict.Verdict
	pol     verdict.Policy
	m       *miss
}

func (s *Service) serve(ctx context.Context, r *microasync.Request, trace bool) {
	var rep wire.VerifyReply
	logLine := func() {}
	if p, ok := r.State.(*pending); ok {
		rep = s.answer(ctx, p.req, p.purpose, r.Arrived(), p.v, p.pol, p.m, &logLine)
	} else {
		req, ok := s.decode(r, trace)
		if !ok {
			return
		}
		purpose := purposeOf(req)
		v, pol, m := s.local(req, purpose)
		rep = s.answer(ctx, req, purpose, r.Arrived(), v, pol, m, &logLine)
	}
	s.respond(r, &rep)
	logLine() // after the answer is on its way
}

func encodeReply(rep *wire.VerifyReply, isJSON bool) ([]byte, error) {
	if isJSON {
		rep.V = wire.Version
		return json.Marshal(rep)
	}
	return wire.Encode(rep)
}

// shed answers a request that finds every worker busy with a defer at
// once: queued, it would be answered after its MTA gave up.
func (s *Service) shed(r *microasync.Request) {
	s.m.shed.Inc()
	s.m.requests.WithLabelValues(string(verdict.Defer), "shed").Inc()
	rep := wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Defer, Code: 451, Enhanced: "4.3.2", Text: "System busy, try again later"},
		Verdict: &verdict.Verdict{Kind: verdict.KindAddress, Status: verdict.TempFail, Reason: ReasonShed, CheckedAt: time.Now(), Source: verdict.SourceStatic}}
	if b, err := encodeReply(&rep, isJSON(r)); err == nil {
		_ = r.Respond(b)
	}
}

// Verify answers one request before its deadline. It never rejects unless
// the destination said "user unknown" (or the operator's list says so).
func (s *Service) Verify(ctx context.Context, req wire.VerifyRequest) wire.VerifyReply {
	return s.verify(ctx, req, time.Now())
}

// verify is Verify with the deadline counted from start, the request's
// arrival.
func (s *Service) verify(ctx context.Context, req wire.VerifyRequest, start time.Time) wire.VerifyReply {
	purpose := purposeOf(req)
	v, pol, m := s.local(req, purpose)
	return s.answer(ctx, req, purpose, start, v, pol, m, nil)
}

// answer goes on from local's result: a miss (m) is asked of the cache and
// the destination before its deadline. The log line goes to *later when
// set (see reply).
func (s *Service) answer(ctx context.Context, req wire.VerifyRequest, purpose verdict.Purpose, start time.Time, v verdict.Verdict, pol verdict.Policy, m *miss, later *func()) wire.VerifyReply {
	var transcript []wire.TraceLine
	if req.Trace {
		transcript = []wire.TraceLine{}
	}
	if m != nil {
		timeout := req.Timeout(s.cfg.Timeout, s.cfg.MaxTimeout)
		// Answer a little before the caller gives up.
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, start.Add(max(timeout-timeout/20, timeout-250*time.Millisecond)))
		defer cancel()
		v, pol = s.remote(ctx, req, purpose, m, &transcript)
	}
	return s.reply(ctx, req, purpose, start, v, pol, transcript, later)
}

func purposeOf(req wire.VerifyRequest) verdict.Purpose {
	if req.Purpose == "" {
		return verdict.Recipient
	}
	return req.Purpose
}

// reply makes the answer of a verdict under a policy: the decision (monitor
// mode's too), the brake's count, metrics and the log line. With later
// set, the log line is left there for the caller to write once the answer
// is sent: the MTA does not wait for it.
func (s *Service) reply(ctx context.Context, req wire.VerifyRequest, purpose verdict.Purpose, start time.Time, v verdict.Verdict, pol verdict.Policy, transcript []wire.TraceLine, later *func()) wire.VerifyReply {
	d := s.decide(v, pol)
	var would *verdict.Decision
	if pol.Monitor && d.Action != verdict.Accept {
		// Monitor mode: accept, and say what callout mode would have done.
		w := d
		would = &w
		d = verdict.Decide(verdict.Verdict{Address: v.Address, Status: verdict.Valid}, pol)
		s.m.monitored.WithLabelValues(v.Domain, string(w.Action)).Inc()
		s.log.Info("monitor: would not accept", "address", v.Address, "would", w.Action, "code", w.Code, "text", w.Text,
			"status", v.Status, "reason", v.Reason, "dest_code", v.Code, "dest_text", v.Text)
	}
	if d.Action == verdict.Reject && purpose == verdict.Recipient && v.Status == verdict.Invalid {
		s.brake.Invalid(req.ClientAddress)
	}
	el := time.Since(start)
	s.m.requests.WithLabelValues(string(d.Action), string(v.Source)).Inc()
	s.m.latency.Observe(el.Seconds())
	// Answers from the cache are the bulk at high rates and repeat what
	// was logged when the verdict was made (the MTA logs its own rejects):
	// they log at debug.
	level := slog.LevelInfo
	if v.Source == verdict.SourceCache {
		level = slog.LevelDebug
	}
	logLine := func() {}
	if s.log.Enabled(ctx, level) { // the arguments cost allocations: none when the line is off
		logged := v
		logLine = func() {
			// Typed attributes: named string types would go through fmt.
			s.log.LogAttrs(ctx, level, "verify", slog.String("address", logged.Address), slog.String("purpose", string(purpose)),
				slog.String("client", req.ClientAddress), slog.String("action", string(d.Action)), slog.Int("code", d.Code),
				slog.String("status", string(logged.Status)), slog.String("reason", logged.Reason), slog.String("source", string(logged.Source)),
				slog.String("host", logged.Host), slog.Int("dest_code", logged.Code), slog.String("dest_text", logged.Text),
				slog.Duration("took", el.Round(time.Microsecond)))
		}
	}
	if later != nil {
		*later = logLine
	} else {
		logLine()
	}
	if !s.cfg.ReplyDetails {
		v.Host, v.Text = "", ""
	}
	return wire.VerifyReply{Decision: d, Verdict: &v, Would: would, WouldReject: would != nil && would.Action == verdict.Reject, Transcript: transcript}
}

// decide applies the policy and the configured texts.
func (s *Service) decide(v verdict.Verdict, pol verdict.Policy) verdict.Decision {
	if v.Reason == ReasonBraked && v.Status == verdict.TempFail {
		return verdict.Decision{Action: verdict.Defer, Code: 450, Enhanced: "4.7.1", Text: "<" + v.Address + ">: Too many unknown recipients, try again later"}
	}
	d := verdict.Decide(v, pol)
	text := ""
	switch d.Action {
	case verdict.Reject:
		if v.Status == verdict.Invalid {
			text = s.cfg.RejectText
		}
	case verdict.Defer:
		text = s.cfg.DeferText
	}
	if text != "" {
		d.Text = strings.ReplaceAll(text, "{address}", "<"+v.Address+">")
	}
	return d
}

func base(a address.Address, raw string) verdict.Verdict {
	addr := raw
	if a.Domain != "" {
		addr = a.String()
	}
	return verdict.Verdict{Kind: verdict.KindAddress, Address: addr, Domain: a.Domain, CheckedAt: time.Now(), Source: verdict.SourceStatic}
}

// miss is what local learned about a request it could not answer.
type miss struct {
	a       address.Address
	pol     domains.Policy
	dpol    verdict.Policy
	v       verdict.Verdict
	senders []string
	nearKey string
}

// local returns the verdict that answers the request and the policy to
// apply when memory has it: the null sender and postmaster, bad input, the
// policy's own answers, a near-cache hit. Otherwise it returns a miss for
// remote. It never waits.
func (s *Service) local(req wire.VerifyRequest, purpose verdict.Purpose) (verdict.Verdict, verdict.Policy, *miss) {
	if v, ok := special(req.Address, purpose); ok {
		return v, verdict.Policy{Purpose: purpose}, nil
	}
	a, err := address.Parse(req.Address)
	if err != nil {
		v := base(address.Address{}, verdict.CleanText(req.Address))
		v.Text = err.Error()
		if address.Broken(err) {
			v.Status, v.Reason = verdict.Malformed, ReasonSyntax
		} else {
			// Real mail uses these forms (literals, internationalized or
			// odd local parts, underscores or one label in the domain):
			// they are only not safe to call out for. Never a reject.
			v.Status, v.Reason = verdict.Unverifiable, ReasonUnprobeable
		}
		return v, verdict.Policy{Purpose: purpose}, nil
	}
	v := base(a, "")
	as := v.Address // a.String(), built once
	if s.extra[strings.ToLower(as)] || s.domains.IsProbeSender(as) {
		v.Status, v.Reason = verdict.Skipped, ReasonProbeSender
		return v, verdict.Policy{Purpose: purpose}, nil
	}
	pol, known := s.domains.Lookup(a.Domain)
	dpol := pol.Decision(purpose)
	if purpose == verdict.Sender {
		dpol.OnTempfail, dpol.OnUnverifiable = s.cfg.SenderOnTempfail, s.cfg.SenderOnUnverifiable
	} else {
		switch {
		case known && pol.Bypassed(a.Local, s.cfg.RecipientDelimiter):
			v.Status, v.Reason = verdict.Skipped, ReasonBypass
			return v, dpol, nil
		case !known && s.cfg.UnknownDomains == "reject":
			v.Status, v.Reason = verdict.RelayDenied, ReasonNotServed
			return v, dpol, nil
		case !known && s.cfg.UnknownDomains == "accept":
			// Nothing the destination said: relay control is the MTA's.
			v.Status, v.Reason = verdict.Unverifiable, ReasonNotServed
			return v, dpol, nil
		case pol.EffectiveMode() == domains.ModeOff:
			v.Status, v.Reason = verdict.Skipped, ReasonPolicyOff
			return v, dpol, nil
		case pol.EffectiveMode() == domains.ModeStatic:
			if pol.Listed(a.Local, s.cfg.RecipientDelimiter) {
				v.Status, v.Reason = verdict.Valid, ReasonListed
			} else {
				v.Status, v.Reason = verdict.Invalid, ReasonNotListed
			}
			return v, dpol, nil
		}
	}
	if req.Trace {
		return v, dpol, &miss{a: a, pol: pol, dpol: dpol, v: v}
	}
	// Without a policy, pol is the zero policy: the null sender only.
	senders := pol.Senders()
	nearKey := nearcache.Key(as, purpose, senders)
	if hit, ok := s.near.Get(nearKey); ok {
		if hit.Status != verdict.Invalid || !s.offline.Load() && !s.fenced() {
			s.refresh(a, purpose, pol, &hit)
			return hit, dpol, nil
		}
		// A reject this ingest cannot know is current: a flush may have
		// removed it while the bucket's changes do not reach here.
		s.m.unconfirmed.Inc()
		v.Status, v.Reason, v.Source = verdict.TempFail, ReasonUnconfirmed, verdict.SourceCache
		return v, dpol, nil
	}
	return v, dpol, &miss{a: a, pol: pol, dpol: dpol, v: v, senders: senders, nearKey: nearKey}
}

// remote answers a miss: a traced callout (req.Trace, only from
// callout.verify.trace, reads no cache: a prober makes a fresh callout and
// *transcript gets its dialogue), or the cache's answer, or a callout.
func (s *Service) remote(ctx context.Context, req wire.VerifyRequest, purpose verdict.Purpose, m *miss, transcript *[]wire.TraceLine) (verdict.Verdict, verdict.Policy) {
	a, pol, dpol, v, senders, nearKey := m.a, m.pol, m.dpol, m.v, m.senders, m.nearKey
	if req.Trace {
		return s.traced(ctx, a, newJob(a, purpose, pol), transcript), dpol
	}
	rev := s.seen()
	if purpose == verdict.Recipient && s.brake.Braked(req.ClientAddress) {
		// No callout for this client now: the cache alone answers.
		if look := s.ask(ctx, a, purpose, senders, nearKey, rev, nil); look.Hit {
			return *look.Verdict, dpol
		}
		s.m.braked.Inc()
		v.Status, v.Reason = verdict.TempFail, ReasonBraked
		return v, dpol
	}
	return s.fetch(ctx, a, purpose, senders, nearKey, rev, newJob(a, purpose, pol)), dpol
}

// ask asks the cache (with the job to queue on a miss, if any); a failure
// to ask is logged and answers as a miss, a hit is kept in the near cache.
func (s *Service) ask(ctx context.Context, a address.Address, purpose verdict.Purpose, senders []string, nearKey string, rev uint64, job *wire.ProbeJob) wire.LookupReply {
	look, err := s.lookup(ctx, a, purpose, senders, rev, job)
	if err != nil {
		s.log.Warn("cache lookup failed; treating as a miss", "address", a.String(), "err", err)
	}
	if look.Hit && s.index.Covers(*look.Verdict) {
		// A cachekeeper behind this ingest: the flush it missed holds.
		return wire.LookupReply{}
	}
	if look.Hit && s.nearOn.Load() && !s.fenced() {
		s.near.Put(nearKey, a.Domain, a.Local, purpose, *look.Verdict, rev)
	}
	return look
}

// fetch answers a miss of the near cache: it joins the flight of a callout
// for the same target in this ingest, or starts one. A new flight asks the
// cache with the job attached: on a miss the cachekeeper queues it at once
// (the callout starts without waiting for the answer to travel back); if it
// cannot, this ingest queues it. The flight is there before the ask, so a
// verdict that comes before the answer is not missed, and requests that
// come meanwhile join it instead of asking again.
func (s *Service) fetch(ctx context.Context, a address.Address, purpose verdict.Purpose, senders []string, nearKey string, rev uint64, job wire.ProbeJob) verdict.Verdict {
	// One flight per address and view: a sender check never shares a
	// recipient check's callout.
	key := kvkey.Target(a.Domain, a.Local, purpose)
	s.mu.Lock()
	f, ok := s.flights[key]
	if ok {
		s.mu.Unlock()
		s.m.coalesced.Inc()
		return s.wait(ctx, a, f)
	}
	subject := s.names.Verdict(kvkey.Address(a.Domain, a.Local, purpose, ""))
	f = &flight{key: key, subject: subject, job: job, done: make(chan struct{}), refused: make(chan struct{}, 1)}
	s.flights[key] = f
	s.mu.Unlock()
	// With every key of the bucket known here, an address without any
	// is a miss without asking: the job is queued at once.
	look, known := s.index.Answer(a, purpose, senders, time.Now())
	if known {
		s.m.known.Inc()
	} else {
		look = s.ask(ctx, a, purpose, senders, nearKey, rev, &job)
	}
	switch {
	case look.Hit:
		s.end(f, *look.Verdict, nil)
	case look.Queued || look.Pending:
		go s.fly(f, job, nil, look.Pending)
	default:
		if look.QueueError != "" {
			s.log.Warn("cachekeeper could not queue the job; queueing it here", "address", a.String(), "err", look.QueueError)
		}
		look.Adjust(&job)
		// Published here, before the flight's goroutine starts: the
		// callout does not wait for it.
		ack, err := s.queueAsync(key, job)
		if err != nil {
			s.end(f, verdict.Verdict{}, err)
			break
		}
		s.mu.Lock()
		f.job = job // adjusted: what recheckFlights looks for
		s.mu.Unlock()
		go s.fly(f, job, ack, false)
	}
	return s.wait(ctx, a, f)
}

// newJob is a callout job for a that carries this ingest's routing
// decision: the route (recipients only; senders go by MX) and the probe
// senders.
func newJob(a address.Address, purpose verdict.Purpose, pol domains.Policy) wire.ProbeJob {
	job := wire.ProbeJob{Address: a.String(), Purpose: purpose, RequestedAt: time.Now(),
		Routed: true, Sender: pol.Sender, FallbackSender: pol.FallbackSender}
	if purpose == verdict.Recipient {
		job.Route = pol.Route
	}
	if pol.ControlProbe == "off" {
		job.Control = wire.ControlOff
	}
	return job
}

// special answers the addresses that are never called out: the null
// sender (the bounce sender) and postmaster, which every domain must
// accept (RFC 5321 section 4.5.1), qualified or not.
func special(raw string, purpose verdict.Purpose) (verdict.Verdict, bool) {
	s := strings.TrimSpace(raw)
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: s, CheckedAt: time.Now(), Source: verdict.SourceStatic, Status: verdict.Skipped}
	switch {
	case s == "" && purpose == verdict.Sender:
		v.Reason = ReasonNullSender
		return v, true
	case strings.EqualFold(s, "postmaster"):
		v.Reason = ReasonPostmaster
		return v, true
	}
	local, domain, ok := strings.Cut(s, "@")
	if ok && strings.EqualFold(local, "postmaster") && !strings.ContainsRune(domain, '@') && !strings.ContainsFunc(domain, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		v.Reason = ReasonPostmaster
		if d, err := address.NormalizeDomain(domain); err == nil {
			v.Address, v.Domain = "postmaster@"+d, d
		}
		return v, true
	}
	return verdict.Verdict{}, false
}

// traced hands a job to one prober, which runs it with its dialogue
// recorded, and returns the verdict; the transcript goes to *transcript.
func (s *Service) traced(ctx context.Context, a address.Address, job wire.ProbeJob, transcript *[]wire.TraceLine) verdict.Verdict {
	v := base(a, "")
	b, err := wire.Encode(&job)
	if err != nil {
		v.Status, v.Reason, v.Text = verdict.TempFail, ReasonQueue, err.Error()
		return v
	}
	m, err := s.nc.RequestWithContext(ctx, s.names.ProberTrace(), b)
	if err != nil {
		v.Status, v.Reason, v.Text = verdict.TempFail, ReasonDeadline, "traced callout: "+err.Error()
		return v
	}
	var r wire.TraceReply
	if err := wire.Decode(m.Data, &r); err != nil || r.Error != "" {
		v.Status, v.Reason, v.Text = verdict.TempFail, ReasonQueue, fmt.Sprintf("traced callout: %v %s", err, r.Error)
		return v
	}
	*transcript = r.Transcript
	return r.Verdict
}

// watchCache keeps the near cache coherent: every change of the cache
// bucket drops what it concerns. Until the watch runs, nothing is kept.
// The same watch reads the whole bucket first, into the index of its keys
// and domain facts; after a reconnection it starts again.
func (s *Service) watchCache(ctx context.Context, id string) {
	_ = backoff.Retry(ctx, s.log, "near cache watch", 5*time.Second, func(ctx context.Context) error {
		for {
			if err := s.watchOnce(ctx, id); !errors.Is(err, errRewatch) {
				return err
			}
			s.log.Info("reconnected: reading the cache bucket afresh")
		}
	})
}

var errRewatch = errors.New("reconnected")

func (s *Service) watchOnce(ctx context.Context, id string) error {
	kv, err := s.js.KeyValue(ctx, s.names.CacheBucket())
	if err != nil {
		return err
	}
	// Every entry, values and deletes included: the flush records and
	// domain facts always (a flight needs the records), the address keys
	// when the index is on.
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer w.Stop()
	select {
	case <-s.rewatch: // this watch starts after the reconnection
	default:
	}
	s.near.Clear()
	s.index.Reset()
	// Cachekeepers wait for this ingest's confirmation of a flush from
	// now on (before it keeps anything).
	s.id.Store(id)
	if err := s.nc.Publish(s.names.NearCacheHello(), []byte(id)); err != nil {
		return err
	}
	if err := s.nc.Flush(); err != nil {
		return err
	}
	s.nearOn.Store(true)
	defer s.nearOn.Store(false)
	defer s.index.Reset()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.rewatch:
			return errRewatch
		case e, ok := <-w.Updates():
			if !ok {
				s.near.Clear()
				return errors.New("cache watch ended")
			}
			if e == nil {
				s.index.Loaded() // the whole bucket is read
				continue
			}
			// The index first: the near cache's mark, which a flush's
			// confirmation waits for, then covers both.
			s.index.Apply(e.Key(), e.Value(), e.Revision(), e.Operation() != jetstream.KeyValuePut)
			s.near.Apply(e.Key(), e.Revision())
		}
	}
}

// answerSync confirms to a cachekeeper that a flush record (a bucket
// revision) is applied here, so that the flush is answered only once no
// ingest can serve what it removed.
//
// The ingest is fenced from the moment it is asked: until its watch has
// applied rev it serves nothing from its near cache, so that a flush
// answered without its confirmation (too slow) still holds here.
func (s *Service) answerSync(m *nats.Msg) {
	rev, err := strconv.ParseUint(string(m.Data), 10, 64)
	if err != nil {
		return
	}
	for {
		cur := s.fence.Load()
		if cur >= rev || s.fence.CompareAndSwap(cur, rev) {
			break
		}
	}
	ok := s.near.WaitApplied(rev, 2*time.Second)
	id, _ := s.id.Load().(string)
	_ = m.Respond([]byte(strconv.FormatBool(ok) + " " + id))
}

// fenced reports whether a flush this ingest was asked to confirm is not
// applied here yet.
func (s *Service) fenced() bool {
	f := s.fence.Load()
	if f == 0 {
		return false // the steady state: one atomic load
	}
	if s.near.Revision() < f {
		return true
	}
	s.fence.CompareAndSwap(f, 0) // caught up (a later ask sets it again)
	return false
}

// seen is the bucket revision whose changes this ingest must not miss
// in a lookup's answer: what it applied, or the flush it was asked to
// confirm, if later.
func (s *Service) seen() uint64 { return max(s.near.Revision(), s.fence.Load()) }

// lookup asks the cache; rev is the bucket revision this ingest had applied,
// job the job to queue on a miss, if any (see wire.LookupRequest).
func (s *Service) lookup(ctx context.Context, a address.Address, purpose verdict.Purpose, senders []string, rev uint64, job *wire.ProbeJob) (wire.LookupReply, error) {
	b, err := wire.Encode(&wire.LookupRequest{Address: a.String(), Purpose: purpose, Senders: senders, Rev: rev, Job: job})
	if err != nil {
		return wire.LookupReply{}, err
	}
	lctx, cancel := context.WithTimeout(ctx, s.cfg.LookupTimeout)
	defer cancel()
	m, err := s.nc.RequestWithContext(lctx, s.names.CacheLookup(), b)
	if err != nil {
		return wire.LookupReply{}, err
	}
	if e := m.Header.Get(micro.ErrorHeader); e != "" {
		return wire.LookupReply{}, fmt.Errorf("cache: %s", e)
	}
	var r wire.LookupReply
	if err := wire.Decode(m.Data, &r); err != nil {
		return wire.LookupReply{}, err
	}
	if r.Hit && r.Verdict == nil {
		return wire.LookupReply{}, errors.New("cache: hit without verdict")
	}
	return r, nil
}

// wait waits for the flight's verdict until ctx ends; then the answer is
// a tempfail, never a reject.
func (s *Service) wait(ctx context.Context, a address.Address, f *flight) verdict.Verdict {
	v := base(a, "")
	select {
	case <-f.done:
		if f.err != nil {
			v.Status, v.Reason, v.Text = verdict.TempFail, ReasonQueue, f.err.Error()
			return v
		}
		return f.v
	case <-ctx.Done():
		s.m.deadlines.Inc()
		v.Status, v.Reason = verdict.TempFail, ReasonDeadline
		return v
	}
}

// fly waits for the flight's verdict (which onVerdict brings) at most
// MaxTimeout. ack is the PubAck of the job this ingest queued, if it did;
// pending says the job was found pending (queued by another, or by the
// cachekeeper for another request).
//
// A job already pending is fine: its verdict comes on the same subject,
// unless it went by before the subscription (the prober publishes, then
// acks). So a request that finds a job pending looks for a verdict that
// has passed: in the verdict stream (not yet stored) and in the cache
// (stored). Failing both, it asks again to queue the job until it either
// gets the verdict or its own job is queued: a verdict that was neither
// kept nor stored (a tempfail) then costs a new callout, never a wait to
// the deadline. A verdict refused as flushed (onVerdict) starts the same:
// a fresh callout is queued as soon as none is pending.
func (s *Service) fly(f *flight, job wire.ProbeJob, ack jetstream.PubAckFuture, pending bool) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.MaxTimeout)
	defer cancel()
	if ack != nil {
		select {
		case <-ack.Ok():
		case err := <-ack.Err():
			if !streams.JobPending(err) {
				s.end(f, verdict.Verdict{}, fmt.Errorf("queue job: %w", err))
				return
			}
			pending = true
		case <-f.done:
			return
		case <-ctx.Done():
			s.end(f, verdict.Verdict{}, errors.New("no verdict in time"))
			return
		}
	}
	var b []byte // the job, encoded for a retry when one is needed
	requeue := func() (pending bool, err error) {
		if b == nil {
			if b, err = wire.Encode(&job); err != nil {
				return false, err
			}
		}
		return s.queue(ctx, f.key, b)
	}
	refused := 0
	// While a job is pending and its verdict unseen, try to queue ours.
	var ticker *time.Ticker
	var retry <-chan time.Time
	retrying := func(on bool) {
		switch {
		case on && ticker == nil:
			ticker = time.NewTicker(s.cfg.PendingRetry)
			retry = ticker.C
		case !on && ticker != nil:
			ticker.Stop()
			ticker, retry = nil, nil
		}
	}
	defer retrying(false)
	if pending {
		if v, ok := s.passed(ctx, f.subject, job); ok {
			s.deliver(f, v)
			if f.ended() {
				return
			}
		}
		retrying(true)
	}
	for {
		select {
		case <-f.done:
			return
		case <-f.refused:
			// The verdict that came was a flushed one: ask again now. A
			// third in a row says the verdicts' clock is behind the
			// flush records' (NTP): stop calling the destination out,
			// and defer.
			if refused++; refused > maxRefused {
				s.end(f, verdict.Verdict{}, errors.New("every verdict predates a flush of its scope: are the probers' and cachekeepers' clocks apart?"))
				return
			}
			pending, err := requeue()
			retrying(err != nil || pending)
		case <-retry:
			if pending, err := requeue(); err == nil && !pending {
				retrying(false) // our own job is queued now
			}
		case <-ctx.Done():
			s.end(f, verdict.Verdict{}, errors.New("no verdict in time"))
			return
		}
	}
}

// maxRefused is how many flushed verdicts in a row a flight asks a fresh
// callout for.
const maxRefused = 2

// onVerdict ends the flight of an address verdict's target, if any
// (verdicts of other ingests' callouts pass by). A verdict that a flush
// known here covers does not end it: the flight asks for a fresh callout.
func (s *Service) onVerdict(m *nats.Msg) {
	// The subject is the verdict subject of addr.<target>, the flight's key.
	key, ok := strings.CutPrefix(m.Subject, s.names.Verdict("addr."))
	if !ok {
		return
	}
	s.mu.Lock()
	f := s.flights[key]
	s.mu.Unlock()
	if f == nil {
		return
	}
	v, err := wire.DecodeVerdict(m.Data)
	if err != nil {
		s.log.Error("verdict refused", "subject", m.Subject, "err", err)
		return
	}
	s.deliver(f, v)
}

// deliver ends f with v, unless a flush known here covers v.
func (s *Service) deliver(f *flight, v verdict.Verdict) {
	if s.index.Covers(v) {
		s.m.flushedVerdicts.Inc()
		select {
		case f.refused <- struct{}{}:
		default:
		}
		return
	}
	s.end(f, v, nil)
}

// recheckFlights looks, after a reconnection, for the verdicts of the open
// flights that were published while this ingest was cut off.
func (s *Service) recheckFlights() {
	type open struct {
		f   *flight
		job wire.ProbeJob
	}
	s.mu.Lock()
	var fs []open
	for _, f := range s.flights {
		fs = append(fs, open{f, f.job})
	}
	s.mu.Unlock()
	for _, o := range fs {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.MaxTimeout)
			defer cancel()
			if v, ok := s.passed(ctx, o.f.subject, o.job); ok {
				s.end(o.f, v, nil)
				return
			}
			// None passed: a fresh callout, if none is pending.
			select {
			case o.f.refused <- struct{}{}:
			default:
			}
		}()
	}
}

// queueAsync publishes the job without waiting for the server's answer.
func (s *Service) queueAsync(key string, job wire.ProbeJob) (jetstream.PubAckFuture, error) {
	b, err := wire.Encode(&job)
	if err != nil {
		return nil, err
	}
	ack, err := s.js.PublishAsync(s.names.Probe(key), b)
	if err != nil {
		return nil, fmt.Errorf("queue job: %w", err)
	}
	return ack, nil
}

// queue publishes the job; pending says one for the same target was
// already queued or in flight.
func (s *Service) queue(ctx context.Context, key string, job []byte) (pending bool, err error) {
	return streams.QueueJob(ctx, s.js, s.names.Probe(key), job)
}

// passed looks for a verdict on subject published before the request
// subscribed: still in the verdict stream, or already in the cache.
func (s *Service) passed(ctx context.Context, subject string, job wire.ProbeJob) (verdict.Verdict, bool) {
	lctx, cancel := context.WithTimeout(ctx, s.cfg.LookupTimeout)
	defer cancel()
	data, ok, err := streams.LastMsg(lctx, s.nc, s.names.VerdictStream(), subject)
	if err != nil {
		s.log.Debug("verdict stream", "subject", subject, "err", err)
	}
	if ok {
		// The stream keeps verdicts until stored; an old one (cachekeepers
		// down for long) does not answer for a callout just asked.
		if v, err := wire.DecodeVerdict(data); err == nil && time.Since(v.CheckedAt) < s.cfg.MaxTimeout+passedMaxAge && !s.index.Covers(v) {
			return v, true
		}
	}
	a, err := address.Parse(job.Address)
	if err != nil {
		return verdict.Verdict{}, false
	}
	senders := domains.Policy{Sender: job.Sender, FallbackSender: job.FallbackSender}.Senders()
	look, err := s.lookup(ctx, a, job.Purpose, senders, s.seen(), nil)
	if err == nil && look.Hit && !s.index.Covers(*look.Verdict) {
		return *look.Verdict, true
	}
	return verdict.Verdict{}, false
}

// passedMaxAge bounds how old a callout found in the verdict stream may be
// (beyond the request deadline) to answer a request: a prober's budget.
const passedMaxAge = 5 * time.Minute

// withPolicy runs the Postfix policy listener beside the NATS service.
type withPolicy struct {
	*Service
	srv  *policyd.Server
	addr string
}

// NewWithPolicy builds the ingest with its Postfix policy listener (when
// PolicyAddr is set).
func NewWithPolicy(cfg Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*withPolicy, error) {
	s, err := New(cfg, nc, reg, log)
	if err != nil {
		return nil, err
	}
	w := &withPolicy{Service: s, addr: cfg.PolicyAddr}
	if cfg.PolicyAddr != "" {
		w.srv = policyd.New(policyd.Config{
			Senders: cfg.PolicySenders, MalformedDefer: cfg.PolicyMalformed == "defer", DeferIfPermit: cfg.PolicyDeferIfPermit,
			MaxConns: cfg.PolicyMaxConns, IdleTimeout: cfg.PolicyIdleTimeout, Timeout: cfg.Timeout,
		}, s.Verify, log)
	}
	return w, nil
}

// Run serves NATS and the policy listener until ctx ends.
func (w *withPolicy) Run(ctx context.Context) error {
	if w.srv == nil {
		return w.Service.Run(ctx)
	}
	ln, err := net.Listen("tcp", w.addr)
	if err != nil {
		return fmt.Errorf("policy listener: %w", err)
	}
	w.log.Info("postfix policy listener", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- w.srv.Serve(ctx, ln) }()
	err = w.Service.Run(ctx)
	ln.Close()
	if perr := <-errc; err == nil {
		err = perr
	}
	return err
}
