package ingest

// Requests over NATS: decoding, the fast path, replies.

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/microasync"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

func (s *Service) serveTrace(ctx context.Context, r *microasync.Request) {
	s.serve(context.WithValue(ctx, notMail{}, decisions.ViaTrace), r, true)
}

// serveConsole answers operators' verifies (callout.verify.console): as
// an MTA's, but they never count for the brake.
func (s *Service) serveConsole(ctx context.Context, r *microasync.Request) {
	s.serve(context.WithValue(ctx, notMail{}, decisions.ViaConsole), r, false)
}

// notMail marks a request's context: an operator asks, no MTA; the
// subject it came on says so, never a field of the request. Its value
// is where it was asked (decisions.ViaTrace or ViaConsole).
type notMail struct{}

func isMail(ctx context.Context) bool { return ctx.Value(notMail{}) == nil }

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
		rep := wire.VerifyReply{Decision: verdict.Decide(verdict.Verdict{Status: verdict.TempFail, Reason: verdict.ReasonBadRequest}, verdict.Policy{}), Error: err.Error()}
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

// answerInline answers, on the subscription's goroutine, what needs no NATS round
// trip: bad requests, the addresses never called out, the policy's own
// answers and near-cache hits (the steady state of a gateway). Everything
// else goes on to a pool worker with the decoded request.
func (s *Service) answerInline(r *microasync.Request) bool {
	req, ok := s.decode(r, false)
	if !ok {
		return true
	}
	purpose := purposeOf(req)
	v, pol, m := s.answerFromMemory(req, purpose)
	if m != nil {
		// The worker goes on from here rather than starting over.
		r.State = &pending{req: req, purpose: purpose, v: v, pol: pol, m: m}
		return false
	}
	var logLine func()
	rep := s.reply(context.Background(), req, purpose, r.Arrived(), v, pol, nil, &logLine, v.Source == verdict.SourceCache)
	s.respond(r, &rep)
	logLine()
	return true
}

// pending is a request answerInline found no answer for in memory, with what it
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
		v, pol, m := s.answerFromMemory(req, purpose)
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
	v := verdict.Verdict{Kind: verdict.KindAddress, Status: verdict.TempFail, Reason: verdict.ReasonShed, CheckedAt: time.Now(), Source: verdict.SourceStatic}
	rep := wire.VerifyReply{Decision: verdict.Decide(v, verdict.Policy{}), Verdict: &v}
	if b, err := encodeReply(&rep, isJSON(r)); err == nil {
		_ = r.Respond(b)
	}
}
