package decisions

import (
	"context"
	"log/slog"
	"strconv"
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
	DropEncode  = "encode"
)

// Recorder publishes records to the log without ever holding up the
// answer that made them: Record only queues; past the buffer, and when
// the stream is down or refuses, records are dropped and counted. It
// batches: the records of one action that come within BatchEvery go in
// one message (up to MaxBatch, MaxBatchBytes), so that a publish, its
// acknowledgement and a stored message serve many, and a block of the
// log holds few messages: a search reads scattered records, and the
// server indexes each message of every block it loads for one.
type Recorder struct {
	js      jetstream.JetStream
	names   subjects.Names
	ch      chan Record
	dropped func(why string)
	log     *slog.Logger
	// lastErr rate-limits the log line of dropped records.
	lastErr atomic.Int64
	batches map[string]*batch // by subject; the Run goroutine's alone
}

// BatchEvery is how long a record waits for others of its batch: a
// record is in the log within it.
const BatchEvery = time.Second

type batch struct {
	buf []byte
	n   int
}

// NewRecorder makes a recorder for a connection; dropped is told of
// every dropped record.
func NewRecorder(nc *nats.Conn, names subjects.Names, buffer int, dropped func(why string), log *slog.Logger) (*Recorder, error) {
	r := &Recorder{names: names, ch: make(chan Record, max(buffer, 1)), dropped: dropped, log: log, batches: map[string]*batch{}}
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

// Record queues one record (copied); it never blocks.
func (r *Recorder) Record(rec *Record) {
	select {
	case r.ch <- *rec:
	default:
		r.drop(DropBuffer, 1, nil)
	}
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

// Run publishes queued records until ctx ends, then those still queued
// for up to a second.
func (r *Recorder) Run(ctx context.Context) {
	t := time.NewTicker(BatchEvery)
	defer t.Stop()
	for {
		select {
		case rec := <-r.ch:
			r.add(&rec)
		case <-t.C:
			r.sendAll()
		case <-ctx.Done():
			// One second in all, for the drain and the acknowledgements: a
			// closed Done channel (not a time.After, read once) bounds both.
			last, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			for drained := false; !drained; {
				select {
				case rec := <-r.ch:
					r.add(&rec)
				case <-last.Done():
					drained = true
				default:
					drained = true
				}
			}
			r.sendAll()
			select {
			case <-r.js.PublishAsyncComplete():
			case <-last.Done():
			}
			return
		}
	}
}

// add puts a record in its batch, sending the batch when full.
func (r *Recorder) add(rec *Record) {
	rec.Clean()
	b, err := Encode(rec)
	if err != nil {
		r.drop(DropEncode, 1, err)
		return
	}
	action := string(rec.Action)
	if action == "" || !plain(action) {
		action = "none"
	}
	subject := r.names.Decision(action)
	bt := r.batches[subject]
	if bt != nil && (bt.n >= MaxBatch || len(bt.buf)+len(b) > MaxBatchBytes) {
		r.send(subject, bt)
		bt = nil
	}
	if bt == nil {
		bt = &batch{buf: make([]byte, 0, 4096)}
		r.batches[subject] = bt
	}
	bt.buf = append(bt.buf, b...)
	bt.n++
}

func (r *Recorder) sendAll() {
	for subject, bt := range r.batches {
		r.send(subject, bt)
	}
}

func (r *Recorder) send(subject string, bt *batch) {
	delete(r.batches, subject)
	m := nats.NewMsg(subject)
	m.Data = bt.buf
	m.Header.Set(BatchHeader, strconv.Itoa(bt.n))
	if _, err := r.js.PublishMsgAsync(m); err != nil {
		r.drop(DropPublish, bt.n, err)
	}
}
