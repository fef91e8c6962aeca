package decisions

import (
	"sync"

	"github.com/callout-mail/callout/shared/verdict"
)

// Index finds a search's records without reading the log: for each
// record, by its stream sequence, a hash of its recipient, a hash of its
// domain and its action (9 bytes), in segments that know the time span
// of their records. A search reads only the records the index points at;
// the hashes may collide, so every record read is checked again.
//
// Why not the stream's own subject index: a subject per recipient would
// make the server keep millions of subjects, and a filtered read loads
// every message block between a subject's first and last message, which
// for a domain seen every hour is the whole log.
type Index struct {
	mu   sync.RWMutex
	segs []*segment
	last uint64 // highest sequence added
	n    int    // entries held (erased ones included)
}

// segSize records per segment: time bounds are per segment.
const segSize = 4096

type segment struct {
	first        uint64 // sequence of entry 0
	rh, dh       []uint32
	act          []uint8 // 0: none (a gap, or erased)
	minAt, maxAt int64   // unix seconds of the records' times
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

// Add indexes the record stored at seq. Sequences come in order; one at
// or below the last is ignored (a redelivery).
func (x *Index) Add(seq uint64, r *Record) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if seq <= x.last && x.last != 0 {
		return
	}
	x.last = seq
	var s *segment
	if len(x.segs) > 0 {
		s = x.segs[len(x.segs)-1]
		if seq >= s.first+segSize {
			s = nil
		}
	}
	if s == nil {
		s = &segment{first: seq, rh: make([]uint32, 0, 64), dh: make([]uint32, 0, 64), act: make([]uint8, 0, 64)}
		x.segs = append(x.segs, s)
	}
	for uint64(len(s.act)) < seq-s.first {
		// Sequences that are not records (deleted, or never indexed).
		s.rh, s.dh, s.act = append(s.rh, 0), append(s.dh, 0), append(s.act, 0)
		x.n++
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

// Last is the highest sequence indexed.
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
	for i < len(x.segs) && x.segs[i].first+uint64(len(x.segs[i].act)) <= first {
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

// each calls fn with the sequences of the candidates below before (0:
// all), newest first, until fn returns false.
func (x *Index) each(q *Query, before uint64, fn func(seq uint64) bool) {
	f := newFilter(q)
	x.mu.RLock()
	defer x.mu.RUnlock()
	for si := len(x.segs) - 1; si >= 0; si-- {
		s := x.segs[si]
		if s.maxAt < f.since || s.minAt > f.til || before != 0 && s.first >= before {
			continue
		}
		for i := len(s.act) - 1; i >= 0; i-- {
			seq := s.first + uint64(i)
			if before != 0 && seq >= before || !f.match(s, i) {
				continue
			}
			if !fn(seq) {
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
