package decisions

import (
	"context"
	"log/slog"
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
// the stream is down or refuses, records are dropped and counted.
type Recorder struct {
	js      jetstream.JetStream
	names   subjects.Names
	ch      chan Record
	dropped func(why string)
	log     *slog.Logger
	// lastErr rate-limits the log line of dropped records.
	lastErr atomic.Int64
}

// NewRecorder makes a recorder for a connection; dropped is told of
// every dropped record.
func NewRecorder(nc *nats.Conn, names subjects.Names, buffer int, dropped func(why string), log *slog.Logger) (*Recorder, error) {
	r := &Recorder{names: names, ch: make(chan Record, max(buffer, 1)), dropped: dropped, log: log}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
		r.drop(DropStream, err)
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
		r.drop(DropBuffer, nil)
	}
}

func (r *Recorder) drop(why string, err error) {
	r.dropped(why)
	now := time.Now().UnixNano()
	if last := r.lastErr.Load(); now-last > int64(10*time.Second) && r.lastErr.CompareAndSwap(last, now) {
		r.log.Warn("decision records dropped", "why", why, "err", err, "stream", r.names.DecisionStream())
	}
}

// Run publishes queued records until ctx ends, then those still queued
// for up to a second.
func (r *Recorder) Run(ctx context.Context) {
	for {
		select {
		case rec := <-r.ch:
			r.publish(&rec)
		case <-ctx.Done():
			deadline := time.After(time.Second)
			for {
				select {
				case rec := <-r.ch:
					r.publish(&rec)
				case <-deadline:
					return
				default:
					select {
					case <-r.js.PublishAsyncComplete():
					case <-deadline:
					}
					return
				}
			}
		}
	}
}

func (r *Recorder) publish(rec *Record) {
	rec.Clean()
	b, err := Encode(rec)
	if err != nil {
		r.drop(DropEncode, err)
		return
	}
	action := string(rec.Action)
	if action == "" || !plain(action) {
		action = "none"
	}
	subject := r.names.Decision(action, Token(rec.Domain()))
	if _, err := r.js.PublishAsync(subject, b); err != nil {
		r.drop(DropPublish, err)
	}
}
