package decisions

import (
	"sync"

	"github.com/callout-mail/callout/shared/verdict"
)

// Index finds a search's records without reading the log: for each
// record a hash of its recipient, a hash of its domain, its action and
// its place in its message's batch (10 bytes), in the log's order, in
// segments that know the time span of their records. A record's message
// follows from the one before (the next message when its place is 0,
// the same otherwise) but where the log has a gap, which a run notes.
// A search reads only the messages the index points at; the hashes may
// collide, so every record read is checked again.
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
	buf  []uint64
}

// segSize records per segment: time bounds are per segment.
const segSize = 4096

type segment struct {
	rh, dh       []uint32
	act          []uint8 // 0: erased
	idx          []uint8 // the record's place in its message
	runs         []run   // where the sequence does not follow (entry 0 always)
	minAt, maxAt int64   // unix seconds of the records' times
}

// run gives the message sequence of the entry at start.
type run struct {
	start uint32
	seq   uint64
}

// seqs writes each entry's message sequence into buf.
func (s *segment) seqs(buf []uint64) []uint64 {
	buf = buf[:0]
	ri := 0
	var seq uint64
	for i := range s.act {
		switch {
		case ri < len(s.runs) && s.runs[ri].start == uint32(i):
			seq = s.runs[ri].seq
			ri++
		case s.idx[i] == 0:
			seq++
		}
		buf = append(buf, seq)
	}
	return buf
}

func actionCode[T ~string | ~[]byte](a T) uint8 {
	switch {
	case string(a) == string(verdict.Accept):
		return 1
	case string(a) == string(verdict.Reject):
		return 2
	case string(a) == string(verdict.Defer):
		return 3
	}
	return 4 // anything else still counts as a record
}

// Entry is what the index keeps of a record.
type Entry struct {
	At        int64  // unix seconds
	Recipient uint32 // hash of the recipient
	Domain    uint32 // hash of its domain
	Action    uint8  // actionCode
}

// EntryOf is a record's entry.
func EntryOf(r *Record) Entry {
	return Entry{At: r.At.Unix(), Recipient: hash(r.Recipient), Domain: hash(r.Domain()), Action: actionCode(r.Action)}
}

// Add indexes record idx of the message stored at seq.
func (x *Index) Add(seq uint64, idx int, r *Record) { x.AddEntry(seq, idx, EntryOf(r)) }

// AddEntry indexes the entry of record idx of the message stored at seq.
// Records come in order; one at or below the last is ignored (a
// redelivery).
func (x *Index) AddEntry(seq uint64, idx int, e Entry) {
	id := ID(seq, idx)
	x.mu.Lock()
	defer x.mu.Unlock()
	if id <= x.last && x.last != 0 {
		return
	}
	var s *segment
	if len(x.segs) > 0 {
		s = x.segs[len(x.segs)-1]
		if len(s.act) >= segSize {
			s = nil
		}
	}
	prev := x.last
	x.last = id
	if s == nil {
		s = &segment{rh: make([]uint32, 0, 64), dh: make([]uint32, 0, 64), act: make([]uint8, 0, 64), idx: make([]uint8, 0, 64)}
		x.segs = append(x.segs, s)
	}
	follows := idx == 0 && seq == SeqOf(prev)+1 || idx > 0 && seq == SeqOf(prev) && idx == IdxOf(prev)+1
	if len(s.act) == 0 || !follows {
		s.runs = append(s.runs, run{start: uint32(len(s.act)), seq: seq})
	}
	if len(s.act) == 0 || e.At < s.minAt {
		s.minAt = e.At
	}
	if e.At > s.maxAt {
		s.maxAt = e.At
	}
	s.rh = append(s.rh, e.Recipient)
	s.dh = append(s.dh, e.Domain)
	s.act = append(s.act, e.Action)
	s.idx = append(s.idx, uint8(idx))
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
	for i < len(x.segs) && x.segs[i].last() < first {
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

// last is the sequence of the segment's last message.
func (s *segment) last() uint64 {
	r := s.runs[len(s.runs)-1]
	seq := r.seq
	for i := int(r.start) + 1; i < len(s.idx); i++ {
		if s.idx[i] == 0 {
			seq++
		}
	}
	return seq
}

// each calls fn with the IDs of the candidates below before (0: all),
// newest first, until fn returns false.
func (x *Index) each(q *Query, before uint64, fn func(id uint64) bool) {
	f := newFilter(q)
	x.mu.Lock() // the sequence buffer is shared
	defer x.mu.Unlock()
	for si := len(x.segs) - 1; si >= 0; si-- {
		s := x.segs[si]
		if s.maxAt < f.since || s.minAt > f.til || before != 0 && ID(s.runs[0].seq, int(s.idx[0])) >= before {
			continue
		}
		x.buf = s.seqs(x.buf)
		for i := len(s.act) - 1; i >= 0; i-- {
			id := ID(x.buf[i], int(s.idx[i]))
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
