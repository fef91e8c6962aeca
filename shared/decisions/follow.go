package decisions

import (
	"context"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// Follow reads a region's log into x: from where x stopped (its start,
// the first time), then each record as it comes, until ctx ends.
// caughtUp is called once every record there was when it began is in x.
func Follow(ctx context.Context, js jetstream.JetStream, stream string, x *Index, caughtUp func()) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("decision log %s: %w", stream, err)
	}
	last := st.CachedInfo().State.LastSeq
	var once sync.Once
	done := func() { once.Do(caughtUp) }
	if SeqOf(x.Last()) >= last {
		done()
	}
	cfg := jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy}
	if x.Last() > 0 {
		// From the message of the last record on: its records already
		// indexed are ignored.
		cfg = jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: SeqOf(x.Last())}
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("decision log %s: %w", stream, err)
	}
	var buf []byte // one batch at a time: Consume calls serially
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		seq := md.Sequence.Stream
		if b, err := BatchData(buf, m.Headers(), m.Data()); err == nil {
			if m.Headers().Get(CompressionHeader) != "" {
				buf = b // decompressed into a buffer of its own: kept for the next
			}
			_ = IndexBatch(b, func(idx int, e Entry) { x.AddEntry(seq, idx, e) })
		}
		if md.Sequence.Stream >= last || md.NumPending == 0 {
			done()
		}
	}, jetstream.PullMaxMessages(2048))
	if err != nil {
		return fmt.Errorf("decision log %s: %w", stream, err)
	}
	<-ctx.Done()
	cc.Stop()
	return nil
}
