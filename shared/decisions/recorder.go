package decisions

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/subjects"
)

// Why a record was dropped (the label of the dropped metric).
const (
	DropBuffer  = "buffer"  // more records waiting than the buffer holds
	DropPublish = "publish" // the publish failed (too many unacknowledged, disconnected)
	DropStream  = "stream"  // the stream refused or did not answer (missing, full, down)
)

// Recorder publishes records to the log without ever holding up the
// answer that made them: Record only appends to a batch in memory; past
// the buffer, and when the stream is down or refuses, records are
// dropped and counted. It batches: the records of one action that come
// within BatchEvery go in one message (up to MaxBatch, MaxBatchBytes), so
// that a publish, its acknowledgement and a stored message serve many,
// and a block of the log holds few messages: a search reads scattered
// records, and the server indexes each message of every block it loads
// for one. Record wakes nothing but for a full batch: with a goroutine
// woken for every answer, the scheduler took 13% of the ingest's profile
// under the saturation load and futex calls 6%; 9% and 1.5% without.
type Recorder struct {
	js      jetstream.JetStream
	names   subjects.Names
	dropped func(why string)
	log     *slog.Logger
	buffer  int
	// lastErr rate-limits the log line of dropped records.
	lastErr atomic.Int64
	kick    chan struct{} // a batch is full (capacity 1)

	mu       sync.Mutex
	batches  map[string]*batch // by subject, filling
	subjects map[string]string // by action
	full     []*batch          // full, waiting for Run
	waiting  int               // records in batches not yet published
}

// BatchEvery is how long a record waits for others of its batch: a
// record is in the log within it.
const BatchEvery = time.Second

type batch struct {
	subject string
	buf     []byte
	n       int
}

// NewRecorder makes a recorder for a connection; dropped is told of
// every dropped record. At most buffer records wait for the log.
func NewRecorder(nc *nats.Conn, names subjects.Names, buffer int, dropped func(why string), log *slog.Logger) (*Recorder, error) {
	r := &Recorder{names: names, buffer: max(buffer, 1), kick: make(chan struct{}, 1), dropped: dropped, log: log, batches: map[string]*batch{}, subjects: map[string]string{}}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(1024), jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
		n, _ := strconv.Atoi(m.Header.Get(BatchHeader))
		r.drop(DropStream, max(n, 1), err)
	}), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return nil, err
	}
	r.js = js
	return r, nil
}

// Record adds a copy of rec to its batch; it never blocks for longer
// than an append.
func (r *Recorder) Record(rec *Record) {
	c := *rec
	c.Clean()
	var enc [512]byte // most records fit: no allocation before the copy into the batch
	b := AppendEncode(enc[:0], &c)
	action := string(c.Action)
	if action == "" || !plain(action) {
		action = "none"
	}
	r.mu.Lock()
	if r.waiting >= r.buffer {
		r.mu.Unlock()
		r.drop(DropBuffer, 1, nil)
		return
	}
	r.waiting++
	subject, ok := r.subjects[action]
	if !ok {
		subject = r.names.Decision(action)
		r.subjects[action] = subject
	}
	bt := r.batches[subject]
	if bt != nil && (bt.n >= MaxBatch || len(bt.buf)+len(b) > MaxBatchBytes) {
		r.full = append(r.full, bt)
		bt = nil
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
	if bt == nil {
		// Room for a whole batch at once: grown from a few KiB, a
		// batch's buffer was copied four times on its way to full.
		bt = &batch{subject: subject, buf: make([]byte, 0, MaxBatchBytes)}
		r.batches[subject] = bt
	}
	bt.buf = append(bt.buf, b...)
	bt.n++
	r.mu.Unlock()
}

func (r *Recorder) drop(why string, n int, err error) {
	for i := 0; i < n; i++ {
		r.dropped(why)
	}
	now := time.Now().UnixNano()
	if last := r.lastErr.Load(); now-last > int64(10*time.Second) && r.lastErr.CompareAndSwap(last, now) {
		r.log.Warn("decision records dropped", "why", why, "err", err, "stream", r.names.DecisionStream())
	}
}

// Run publishes the batches until ctx ends (every BatchEvery, and each
// as soon as it is full), then what is left, waiting up to a second for
// the acknowledgements.
func (r *Recorder) Run(ctx context.Context) {
	t := time.NewTicker(BatchEvery)
	defer t.Stop()
	for {
		select {
		case <-r.kick:
			r.sendFull()
		case <-t.C:
			r.sendAll()
		case <-ctx.Done():
			r.sendAll()
			select {
			case <-r.js.PublishAsyncComplete():
			case <-time.After(time.Second):
			}
			return
		}
	}
}

// sendFull publishes the full batches.
func (r *Recorder) sendFull() {
	r.mu.Lock()
	full := r.full
	r.full = nil
	r.mu.Unlock()
	for _, bt := range full {
		r.send(bt)
	}
}

// sendAll publishes every batch, full or not.
func (r *Recorder) sendAll() {
	r.mu.Lock()
	all := r.full
	r.full = nil
	for subject, bt := range r.batches {
		all = append(all, bt)
		delete(r.batches, subject)
	}
	r.mu.Unlock()
	for _, bt := range all {
		r.send(bt)
	}
}

func (r *Recorder) send(bt *batch) {
	_, err := r.js.PublishMsgAsync(BatchMsg(bt.subject, bt.buf, bt.n))
	r.mu.Lock()
	r.waiting -= bt.n
	r.mu.Unlock()
	if err != nil {
		r.drop(DropPublish, bt.n, err)
	}
}
