// Package microasync serves a NATS micro endpoint from a bounded pool of
// goroutines. A micro handler is called serially, and the library reads the
// request's state after the handler returns; so answers from another
// goroutine are published straight to the reply subject (with micro's error
// headers for errors) instead of through the micro.Request.
package microasync

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/inflight"
)

// Request is what an async handler gets: the request data and a way to answer.
type Request struct {
	nc      *nats.Conn
	reply   string
	data    []byte
	headers nats.Header
	arrived time.Time
	// State carries what a fast path learned (a decoded request) to the
	// pooled handler when it could not answer.
	State any
}

// Arrived is when the request was taken from the subscription: deadlines
// count from here, not from when a worker got to it.
func (r *Request) Arrived() time.Time { return r.arrived }

// Data is the request payload.
func (r *Request) Data() []byte { return r.data }

// Header returns one request header.
func (r *Request) Header(k string) string { return r.headers.Get(k) }

// Respond answers with data.
func (r *Request) Respond(data []byte) error {
	if r.reply == "" {
		return nil
	}
	return r.nc.PublishMsg(&nats.Msg{Subject: r.reply, Data: data})
}

// Error answers with micro's error headers and optional data.
func (r *Request) Error(code, description string, data []byte) error {
	if r.reply == "" {
		return nil
	}
	return r.nc.PublishMsg(&nats.Msg{Subject: r.reply, Data: data, Header: nats.Header{
		micro.ErrorHeader: []string{description}, micro.ErrorCodeHeader: []string{code},
	}})
}

// Pool runs requests on a bounded set of goroutines.
type Pool struct{ reqs *inflight.Pool }

// NewPool returns a pool of limit goroutines.
func NewPool(limit int) *Pool { return &Pool{reqs: inflight.NewPool(limit)} }

// Handler returns a micro handler that runs fn for each request in the
// pool. Beyond the limit, shed answers at once when given (a request queued
// behind a full pool would be answered after its caller gave up); without
// shed it waits (NATS buffers).
func (p *Pool) Handler(ctx context.Context, nc *nats.Conn, fn func(context.Context, *Request), shed func(*Request)) micro.Handler {
	return p.FastHandler(ctx, nc, nil, fn, shed)
}

// FastHandler is Handler with a fast path: fast is tried first on the
// subscription's own goroutine, and a request it answers from memory
// (returning true) costs no hand-off to another goroutine. fast must never
// wait on I/O: it holds up every request behind it.
func (p *Pool) FastHandler(ctx context.Context, nc *nats.Conn, fast func(*Request) bool, fn func(context.Context, *Request), shed func(*Request)) micro.Handler {
	return micro.HandlerFunc(func(r micro.Request) {
		req := &Request{nc: nc, reply: r.Reply(), data: r.Data(), headers: nats.Header(r.Headers()), arrived: time.Now()}
		if fast != nil && fast(req) {
			return
		}
		run := func() { fn(ctx, req) }
		// Refused once Wait has begun: the service is stopping and its
		// caller will time out and ask another instance.
		if shed == nil {
			p.reqs.Do(run)
		} else if ok, taken := p.reqs.TryDo(run); ok && !taken {
			shed(req)
		}
	})
}

// Wait refuses new requests and waits until every request taken has been
// handled, so that a service that stops answers what it took before its
// connection drains.
func (p *Pool) Wait() { p.reqs.Close() }
