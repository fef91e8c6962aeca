// Package pull takes messages one at a time from a durable JetStream pull
// consumer, the way a worker wants its jobs: it asks for one message only
// when it is free, so nothing waits in a local buffer while its AckWait
// runs, and it does so on one subscription kept for the worker's life.
//
// The jetstream client's Fetch opens and closes a subscription for every
// batch (two changes of the server's interest graph per job) and hands the
// message over through a goroutine of its own; here a pull request names
// the worker's own inbox, and the message comes on the connection's
// delivery to that subscription.
//
// The protocol (ADR-13): a request {"batch":1,"expires":ns} to
// $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> with the inbox as reply
// subject; the server answers with a message, or with a status without
// payload: 408 (the request expired), 404 (no messages, for no_wait), 409
// (too many waiting requests, a leadership change), 503 when no consumer
// answers at all (the client reports it as no responders).
// Each request has its own reply subject, so a status that answers an
// earlier request is told apart from the current one's.
package pull

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// Puller asks for one message at a time on its own inbox.
type Puller struct {
	nc      *nats.Conn
	subject string
	inbox   string // the subscription covers inbox.*
	sub     *nats.Subscription
	req     []byte
	wait    time.Duration
	n       uint64 // requests made
}

// New subscribes a puller of consumer on stream; wait is how long one
// request waits on the server for a message.
func New(nc *nats.Conn, stream, consumer string, wait time.Duration) (*Puller, error) {
	p := &Puller{nc: nc, subject: "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + consumer, inbox: nc.NewInbox(), wait: wait,
		req: []byte(`{"batch":1,"expires":` + strconv.FormatInt(wait.Nanoseconds(), 10) + `}`)}
	sub, err := nc.SubscribeSync(p.inbox + ".*")
	if err != nil {
		return nil, err
	}
	p.sub = sub
	return p, nil
}

// Close ends the subscription.
func (p *Puller) Close() { _ = p.sub.Unsubscribe() }

// ErrPull is a refused pull request (a 409 status: too many requests
// wait, the consumer's leader changed; or no consumer answers): wait a
// little and ask again.
var ErrPull = errors.New("pull request refused")

// Next asks for one message and waits for it: nil when none came in time.
// A message that answers an earlier request (one that ended here before
// the server's answer came) is returned too: it was delivered to this
// worker, which is free.
func (p *Puller) Next(ctx context.Context) (*Msg, error) {
	p.n++
	reply := p.inbox + "." + strconv.FormatUint(p.n, 10)
	if err := p.nc.PublishRequest(p.subject, reply, p.req); err != nil {
		return nil, err
	}
	// A little past the server's expiry, so that its 408 ends the wait.
	wctx, cancel := context.WithTimeout(ctx, p.wait+time.Second)
	defer cancel()
	for {
		m, err := p.sub.NextMsgWithContext(wctx)
		if err != nil {
			switch {
			case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
				return nil, nil
			case errors.Is(err, nats.ErrNoResponders):
				// The client turns a 503 status into this: no consumer
				// (or stream) answers the request.
				return nil, fmt.Errorf("%w: %v", ErrPull, err)
			}
			return nil, err
		}
		status := ""
		if len(m.Data) == 0 && m.Header != nil {
			status = m.Header.Get("Status")
		}
		if status == "" {
			return &Msg{m: m}, nil
		}
		if m.Subject != reply {
			continue // an earlier request's end
		}
		switch status {
		case "404", "408":
			return nil, nil
		case "100":
			continue // a heartbeat (not asked for)
		}
		return nil, fmt.Errorf("%w: %s %s", ErrPull, status, m.Header.Get("Description"))
	}
}

// Msg is one message taken; its acks go to the consumer.
type Msg struct{ m *nats.Msg }

// Data is the message's payload.
func (m *Msg) Data() []byte { return m.m.Data }

// Subject is the subject it was published to.
func (m *Msg) Subject() string { return m.m.Subject }

// NumDelivered is how many times the consumer has delivered it, this time
// included (0 when its reply subject does not say).
func (m *Msg) NumDelivered() uint64 {
	md, err := m.m.Metadata()
	if err != nil {
		return 0
	}
	return md.NumDelivered
}

// Ack says it is done with (not waiting for the server to confirm).
func (m *Msg) Ack() error { return m.m.Ack() }

// InProgress resets its AckWait.
func (m *Msg) InProgress() error { return m.m.InProgress() }

// Nak hands it back for redelivery at once.
func (m *Msg) Nak() error { return m.m.Nak() }

// NakWithDelay hands it back for redelivery after d.
func (m *Msg) NakWithDelay(d time.Duration) error { return m.m.NakWithDelay(d) }

// Term drops it for good.
func (m *Msg) Term() error { return m.m.Term() }
