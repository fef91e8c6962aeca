package decisions

import (
	"sync"

	"github.com/callout-mail/callout/shared/verdict"
)

// Index finds a search's records without reading the log: for each
// record a hash of its recipient, a hash of its domain and its action (9
// bytes), in the log's order, in segments that know the time span of
// their records and where each message's batch begins. A search reads
// only the messages the index points at; the hashes may collide, so
// every record read is checked again.
//
// Why not the stream's own subject index: a subject per recipient would
// make the server keep millions of subjects, and a filtered read loads
// every message block between a subject's first and last message, which
// for a domain seen every hour is the whole log.
type Index struct {
	mu   sync.RWMutex
	segs []*segment
	last uint64 // highest record ID added
	n    int    // entries held (erased ones included)
}

// segSize records per segment: time bounds are per segment.
const segSize = 4096

type segment struct {
	rh, dh       []uint32
	act          []uint8 // 0: erased
	runs         []run   // one per message, in order
	minAt, maxAt int64   // unix seconds of the records' times
}

// run is where one message's records begin among a segment's entries
// (a message's batch may begin in the segment before: idx is the place
// in its batch of the run's first record).
type run struct {
	seq   uint64
	start uint32
	idx   uint8
}

func actionCode(a verdict.Action) uint8 {
	switch a {
	case verdict.Accept:
		return 1
	case verdict.Reject:
		return 2
	case verdict.Defer:
		return 3
	}
	return 4 // anything else still counts as a record
}

// Add indexes record idx of the message stored at seq. Records come in
// order; one at or below the last is ignored (a redelivery).
func (x *Index) Add(seq uint64, idx int, r *Record) {
	id := ID(seq, idx)
	x.mu.Lock()
	defer x.mu.Unlock()
	if id <= x.last && x.last != 0 {
		return
	}
	x.last = id
	var s *segment
	if len(x.segs) > 0 {
		s = x.segs[len(x.segs)-1]
		if len(s.act) >= segSize {
			s = nil
		}
	}
	if s == nil {
		s = &segment{rh: make([]uint32, 0, 64), dh: make([]uint32, 0, 64), act: make([]uint8, 0, 64)}
		x.segs = append(x.segs, s)
	}
	if len(s.runs) == 0 || s.runs[len(s.runs)-1].seq != seq {
		s.runs = append(s.runs, run{seq: seq, start: uint32(len(s.act)), idx: uint8(idx)})
	}
	at := r.At.Unix()
	if len(s.act) == 0 || at < s.minAt {
		s.minAt = at
	}
	if at > s.maxAt {
		s.maxAt = at
	}
	s.rh = append(s.rh, hash(r.Recipient))
	s.dh = append(s.dh, hash(r.Domain()))
	s.act = append(s.act, actionCode(r.Action))
	x.n++
}

// Last is the highest record ID indexed.
func (x *Index) Last() uint64 {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.last
}

// Len is the entries held: 9 bytes each.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.n
}

// Forget drops the segments wholly below first, the log's first
// sequence: their records are gone by age or size.
func (x *Index) Forget(first uint64) {
	x.mu.Lock()
	defer x.mu.Unlock()
	i := 0
	for i < len(x.segs) && x.segs[i].runs[len(x.segs[i].runs)-1].seq < first {
		x.n -= len(x.segs[i].act)
		i++
	}
	x.segs = append(x.segs[:0:0], x.segs[i:]...)
}

// Erase forgets the entries of a domain (its records were purged).
func (x *Index) Erase(domain string) {
	h := hash(domain)
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, s := range x.segs {
		for i, d := range s.dh {
			if d == h {
				s.act[i] = 0
			}
		}
	}
}

// filter is a query as the index sees it.
type filter struct {
	rh, dh     uint32
	byR, byD   bool
	act        uint8
	scope      map[uint32]bool
	since, til int64
}

func newFilter(q *Query) filter {
	f := filter{since: -1 << 62, til: 1 << 62}
	if q.Recipient != "" {
		f.rh, f.byR = hash(q.Recipient), true
	}
	if q.Domain != "" {
		f.dh, f.byD = hash(q.Domain), true
	}
	if q.Action != "" {
		f.act = actionCode(q.Action)
	}
	if len(q.Domains) > 0 {
		f.scope = map[uint32]bool{}
		for _, d := range q.Domains {
			f.scope[hash(d)] = true
		}
	}
	if !q.Since.IsZero() {
		f.since = q.Since.Unix()
	}
	if !q.Until.IsZero() {
		f.til = q.Until.Unix()
	}
	return f
}

func (f *filter) match(s *segment, i int) bool {
	a := s.act[i]
	return a != 0 && (f.act == 0 || a == f.act) && (!f.byR || s.rh[i] == f.rh) && (!f.byD || s.dh[i] == f.dh) && (f.scope == nil || f.scope[s.dh[i]])
}

// each calls fn with the IDs of the candidates below before (0: all),
// newest first, until fn returns false.
func (x *Index) each(q *Query, before uint64, fn func(id uint64) bool) {
	f := newFilter(q)
	x.mu.RLock()
	defer x.mu.RUnlock()
	for si := len(x.segs) - 1; si >= 0; si-- {
		s := x.segs[si]
		if s.maxAt < f.since || s.minAt > f.til || before != 0 && ID(s.runs[0].seq, 0) >= before {
			continue
		}
		ri := len(s.runs) - 1
		for i := len(s.act) - 1; i >= 0; i-- {
			for uint32(i) < s.runs[ri].start {
				ri--
			}
			rn := s.runs[ri]
			id := ID(rn.seq, int(rn.idx)+i-int(rn.start))
			if before != 0 && id >= before || !f.match(s, i) {
				continue
			}
			if !fn(id) {
				return
			}
		}
	}
}

// Count is how many records a search would read at most.
func (x *Index) Count(q *Query, before uint64) int {
	n := 0
	x.each(q, before, func(uint64) bool { n++; return true })
	return n
}
