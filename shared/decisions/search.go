package decisions

import (
	"context"
	"errors"
	"fmt"
)

// Stored is a record with its place in its region's log.
type Stored struct {
	ID uint64 `json:"id"`
	Record
}

// Reader reads records by ID (a region's log), newest first; an ID whose
// record is gone is left out.
type Reader interface {
	Read(ctx context.Context, ids []uint64) ([]Stored, error)
}

// Result is one page of a search.
type Result struct {
	Records []Hit `json:"records"`
	// Next is the Before of the next page, a record ID (0: this was the
	// last).
	Next uint64 `json:"next,omitempty"`
	// Read is how many records were read; Candidates how many the index
	// pointed at, the most the search could have read.
	Read       int `json:"read"`
	Candidates int `json:"candidates"`
	// Indexing: the index is still being built from the log, so older
	// records may be missing from the answer.
	Indexing bool   `json:"indexing,omitempty"`
	Region   string `json:"region,omitempty"`
	Error    string `json:"error,omitempty"`
}

// Hit is one result: ID is its place in its region's log (ID).
type Hit struct {
	ID     uint64 `json:"id"`
	Region string `json:"region,omitempty"`
	Record
}

// TooBroadError is a search that would read more records than its bound.
type TooBroadError struct {
	Would, Bound int
}

func (e *TooBroadError) Error() string {
	return fmt.Sprintf("narrow the search: its sender, client or reason filter would read %d records, more than %d; add a recipient, domain or action, or a shorter time range", e.Would, e.Bound)
}

// ErrTooBroad is every TooBroadError (errors.Is).
var ErrTooBroad = errors.New("search too broad")

func (e *TooBroadError) Is(target error) bool { return target == ErrTooBroad }

// readChunk is how many candidates are read at once.
const readChunk = 256

// Search answers one page of q (checked) newest first from the index and
// the records it points at. A query with filters the index cannot answer
// (sender, client, reason, purpose) reads at most maxRead records, or is
// refused with a TooBroadError saying how many it would read.
func Search(ctx context.Context, x *Index, rd Reader, q Query, maxRead int) (Result, error) {
	res := Result{Records: []Hit{}}
	res.Candidates = x.Count(&q, q.Before)
	if !q.indexed() && res.Candidates > maxRead {
		return res, &TooBroadError{Would: res.Candidates, Bound: maxRead}
	}
	before := q.Before
	// Where the index answers every filter, nearly each candidate is a
	// result: read no more than a page.
	chunk := readChunk
	if q.indexed() {
		chunk = min(readChunk, q.Limit+8)
	}
	seqs := make([]uint64, 0, chunk)
	for {
		seqs = seqs[:0]
		x.each(&q, before, func(seq uint64) bool {
			seqs = append(seqs, seq)
			return len(seqs) < chunk
		})
		if len(seqs) == 0 {
			return res, nil
		}
		before = seqs[len(seqs)-1]
		recs, err := rd.Read(ctx, seqs)
		if err != nil {
			return res, err
		}
		res.Read += len(seqs)
		for i := range recs {
			if !q.Match(&recs[i].Record) {
				continue
			}
			res.Records = append(res.Records, Hit{ID: recs[i].ID, Record: recs[i].Record})
			if len(res.Records) == q.Limit {
				res.Next = recs[i].ID
				return res, nil
			}
		}
	}
}
