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

// StreamReader reads records from a log stream by ID with the server's
// batched direct get: one request for a run of near messages, never a
// consumer.
type StreamReader struct {
	NC     *nats.Conn
	Stream string
	// Gap: messages closer than this are read in one request (the ones
	// between are read and dropped).
	Gap uint64
}

type directGet struct {
	Seq      uint64 `json:"seq"`
	Batch    int    `json:"batch"`
	UpToSeq  uint64 `json:"up_to_seq"`
	MaxBytes int    `json:"max_bytes,omitempty"`
}

// Read returns the records of ids, newest first.
func (r StreamReader) Read(ctx context.Context, ids []uint64) ([]Stored, error) {
	wanted := make(map[uint64]bool, len(ids))
	var seqs []uint64
	for _, id := range ids {
		wanted[id] = true
		seqs = append(seqs, SeqOf(id))
	}
	got := make([]Stored, 0, len(ids))
	err := r.Messages(ctx, seqs, func(seq uint64, _ string, data []byte) {
		_ = DecodeBatch(data, func(idx int, rec *Record) bool {
			if id := ID(seq, idx); wanted[id] {
				got = append(got, Stored{ID: id, Record: *rec})
			}
			return true
		})
	})
	slices.SortFunc(got, func(a, b Stored) int {
		switch {
		case a.ID > b.ID:
			return -1
		case a.ID < b.ID:
			return 1
		}
		return 0
	})
	return got, err
}

// inFlight is how many batched gets are outstanding at once: scattered
// messages are read at the pace of the server, not of round trips.
const inFlight = 64

// Messages calls fn with each message of seqs that the log still has
// (its subject and batch, uncompressed); a batch that cannot be read is
// left out.
func (r StreamReader) Messages(ctx context.Context, seqs []uint64, fn func(seq uint64, subject string, data []byte)) error {
	if len(seqs) == 0 {
		return nil
	}
	want := slices.Compact(slices.Sorted(slices.Values(seqs)))
	gap := r.Gap
	if gap == 0 {
		gap = 8
	}
	inbox := r.NC.NewRespInbox()
	sub, err := r.NC.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	wanted := make(map[uint64]bool, len(want))
	for _, s := range want {
		wanted[s] = true
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pending := 0
	for i := 0; i < len(want) || pending > 0; {
		for ; i < len(want) && pending < inFlight; pending++ {
			j := i
			for j+1 < len(want) && want[j+1]-want[j] <= gap && want[j+1]-want[i] < 256 {
				j++
			}
			lo, hi := want[i], want[j]
			i = j + 1
			req, _ := json.Marshal(directGet{Seq: lo, Batch: int(hi - lo + 1), UpToSeq: hi, MaxBytes: 16 << 20})
			if err := r.NC.PublishRequest("$JS.API.DIRECT.GET."+r.Stream, inbox, req); err != nil {
				return err
			}
		}
		// One message: a record's, or the end of one get.
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return fmt.Errorf("read decision log %s: %w", r.Stream, err)
		}
		switch st := m.Header.Get("Status"); st {
		case "":
		case "204", "404":
			pending-- // the end of a get, or nothing in its range
			continue
		default:
			return fmt.Errorf("read decision log %s: status %s %s", r.Stream, st, m.Header.Get("Description"))
		}
		seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil || !wanted[seq] {
			continue
		}
		data, err := BatchData(nil, m.Header, m.Data)
		if err != nil {
			continue
		}
		fn(seq, m.Header.Get("Nats-Subject"), data)
	}
	return nil
}
