package decisions

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

// StreamReader reads records from a log stream by sequence with the
// server's batched direct get: one request for a run of near
// sequences, never a consumer.
type StreamReader struct {
	NC     *nats.Conn
	Stream string
	// Gap: sequences closer than this are read in one request (the ones
	// between are read and dropped).
	Gap uint64
}

type directGet struct {
	Seq      uint64 `json:"seq"`
	Batch    int    `json:"batch"`
	UpToSeq  uint64 `json:"up_to_seq"`
	MaxBytes int    `json:"max_bytes,omitempty"`
}

// Read returns the records at seqs (newest first, as asked).
func (r StreamReader) Read(ctx context.Context, seqs []uint64) ([]Stored, error) {
	if len(seqs) == 0 {
		return nil, nil
	}
	want := slices.Clone(seqs)
	slices.Sort(want)
	gap := r.Gap
	if gap == 0 {
		gap = 32
	}
	inbox := r.NC.NewRespInbox()
	sub, err := r.NC.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	wanted := make(map[uint64]bool, len(want))
	for _, s := range want {
		wanted[s] = true
	}
	got := make([]Stored, 0, len(want))
	for i := 0; i < len(want); {
		j := i
		for j+1 < len(want) && want[j+1]-want[j] <= gap && want[j+1]-want[i] < 1024 {
			j++
		}
		lo, hi := want[i], want[j]
		i = j + 1
		req, _ := json.Marshal(directGet{Seq: lo, Batch: int(hi - lo + 1), UpToSeq: hi, MaxBytes: 8 << 20})
		if err := r.NC.PublishRequest("$JS.API.DIRECT.GET."+r.Stream, inbox, req); err != nil {
			return nil, err
		}
		if err := r.collect(ctx, sub, wanted, &got); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(got, func(a, b Stored) int {
		switch {
		case a.Seq > b.Seq:
			return -1
		case a.Seq < b.Seq:
			return 1
		}
		return 0
	})
	return got, nil
}

// collect reads one batch's messages up to its end.
func (r StreamReader) collect(ctx context.Context, sub *nats.Subscription, wanted map[uint64]bool, got *[]Stored) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return fmt.Errorf("read decision log %s: %w", r.Stream, err)
		}
		switch st := m.Header.Get("Status"); st {
		case "":
		case "204", "404":
			return nil // the end of the batch, or nothing in its range
		default:
			return fmt.Errorf("read decision log %s: status %s %s", r.Stream, st, m.Header.Get("Description"))
		}
		seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil || !wanted[seq] {
			continue
		}
		var rec Stored
		if Decode(m.Data, &rec.Record) != nil {
			continue // an unreadable record is no result
		}
		rec.Seq = seq
		*got = append(*got, rec)
	}
}
