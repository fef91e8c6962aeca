// Package pull takes messages from a durable JetStream pull consumer for a
// set of workers, the way workers want their jobs: a message is asked for
// only when a worker is free for it, so nothing waits in a local buffer
// while its AckWait runs, and all of it goes through one subscription kept
// for the queue's life.
//
// The jetstream client's Fetch opens and closes a subscription for every
// batch (two changes of the server's interest graph per job) and hands the
// message over through a goroutine of its own. And one waiting request per
// idle worker costs the server a walk over all of them, with an interest
// check each, every time the consumer looks for work. Here the requests
// for the idle workers are few and larger: a new one is made when none is
// open, or when the workers not asked for are a quarter of them.
//
// The protocol (ADR-13): a request {"batch":n,"expires":ns} to
// $JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer> with a reply subject of
// the queue's inbox; the server answers with up to n messages on it, and
// ends a request early with a status without payload: 408 (it expired),
// 404 (no messages, for no_wait), 409 (too many waiting requests, a
// leadership change), 503 when no consumer answers at all. Each request
// has its own reply subject, so every message and status is told to the
// request it answers.
package pull

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Queue hands a consumer's messages to workers, one each.
type Queue struct {
	nc      *nats.Conn
	subject string
	inbox   string // the subscription covers inbox.*
	sub     *nats.Subscription
	// msgs is filled by the connection's reader itself and read by the
	// workers: no goroutine in between on a job's way.
	msgs  chan *nats.Msg
	wait  time.Duration
	least int // a request asks for at least this many, unless none is open
	mu    sync.Mutex
	idle  int                  // workers waiting in Next
	open  map[string]time.Time // reply subject -> when it expires
	// The open requests in the order they were made, which is the order
	// they expire in (all wait as long): the expired are found at the
	// front without a walk over all of them on every ask.
	byAge []openReq
	asked int    // messages asked for and not taken yet
	n     uint64 // requests made
}

type openReq struct {
	reply string
	until time.Time
}

// New subscribes a queue of consumer on stream for up to workers workers;
// wait is how long one request waits on the server for messages.
func New(nc *nats.Conn, stream, consumer string, workers int, wait time.Duration) (*Queue, error) {
	workers = max(workers, 1)
	q := &Queue{nc: nc, subject: "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + consumer, inbox: nc.NewInbox(), wait: wait,
		least: max(1, workers/4), open: map[string]time.Time{},
		// Deliveries never outnumber the workers asked for, and each
		// request ends with one status at most: a full channel (which
		// would drop messages) is out of reach.
		msgs: make(chan *nats.Msg, 4*workers+64)}
	sub, err := nc.ChanSubscribe(q.inbox+".*", q.msgs)
	if err != nil {
		return nil, err
	}
	q.sub = sub
	return q, nil
}

// Close ends the subscription and hands back what no worker took.
func (q *Queue) Close() {
	_ = q.sub.Unsubscribe()
	for {
		select {
		case m := <-q.msgs:
			if len(m.Data) > 0 || m.Header.Get("Status") == "" {
				_ = m.Nak()
			}
		default:
			return
		}
	}
}

// ErrPull is a refused pull request (a 409 status: too many requests
// wait, the consumer's leader changed; or no consumer answers): wait a
// little and ask again.
var ErrPull = errors.New("pull request refused")

// Next waits for a message for the calling worker, or for ctx's end; an
// error wrapping ErrPull means the server refused to hand any out.
func (q *Queue) Next(ctx context.Context) (*Msg, error) {
	q.mu.Lock()
	q.idle++
	q.ask()
	q.mu.Unlock()
	lost := time.NewTimer(q.wait + time.Second)
	defer lost.Stop()
	for {
		select {
		case m := <-q.msgs:
			if msg, done, err := q.take(m); done {
				return msg, err
			}
		case <-ctx.Done():
			q.mu.Lock()
			q.idle--
			q.mu.Unlock()
			return nil, ctx.Err()
		case <-lost.C:
			// Requests lost on the way (the server restarted) are
			// forgotten and asked again.
			q.mu.Lock()
			q.ask()
			q.mu.Unlock()
			lost.Reset(q.wait + time.Second)
		}
	}
}

// take reads a message or a status for a waiting worker: done when the
// worker has its message or an error. Messages come with their own
// subject, not the request's: they are counted against all requests
// together. A request that ends early says with its status how many it
// had left (as nats.go's consumers read it); one that ends without saying
// leaves the count to ask, which sets it right when no request is open.
func (q *Queue) take(m *nats.Msg) (*Msg, bool, error) {
	status := ""
	if len(m.Data) == 0 && m.Header != nil {
		status = m.Header.Get("Status")
	}
	if status == "100" {
		return nil, false, nil // a heartbeat (not asked for)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if status == "" {
		q.asked = max(q.asked-1, 0)
		q.idle--
		// Whoever is idle and not asked for yet is asked for now, so that
		// none waits for its timer while jobs wait.
		q.ask()
		return &Msg{m: m}, true, nil
	}
	if _, ok := q.open[m.Subject]; ok {
		delete(q.open, m.Subject)
		if n, err := strconv.Atoi(m.Header.Get("Nats-Pending-Messages")); err == nil {
			q.asked = max(q.asked-n, 0)
		}
	}
	switch status {
	case "404", "408":
		q.ask()
		return nil, false, nil
	}
	q.idle--
	return nil, true, fmt.Errorf("%w: %s %s", ErrPull, status, m.Header.Get("Description"))
}

// ask makes a request for the idle workers not asked for yet, if they are
// enough of them (q.mu held).
func (q *Queue) ask() {
	now := time.Now()
	for len(q.byAge) > 0 && now.After(q.byAge[0].until) {
		// Filled long ago (a filled request gets no status), or lost.
		// One ended with a status is gone from open already.
		delete(q.open, q.byAge[0].reply)
		q.byAge[0] = openReq{}
		q.byAge = q.byAge[1:]
	}
	if len(q.open) == 0 {
		q.asked = 0
	}
	n := q.idle - q.asked
	if n <= 0 || (q.asked > 0 && n < q.least) {
		return
	}
	q.n++
	reply := q.inbox + "." + strconv.FormatUint(q.n, 10)
	req := []byte(`{"batch":` + strconv.Itoa(n) + `,"expires":` + strconv.FormatInt(q.wait.Nanoseconds(), 10) + `}`)
	if err := q.nc.PublishRequest(q.subject, reply, req); err != nil {
		return // closed or reconnecting: the next Next or its timer asks again
	}
	until := now.Add(q.wait + time.Second)
	q.open[reply] = until
	q.byAge = append(q.byAge, openReq{reply: reply, until: until})
	q.asked += n
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
