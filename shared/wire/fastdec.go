package wire

// Over 400 lines on purpose: the hand-written decoders of the hot
// messages, one per message, against one reader (checked by FuzzFastDecode).

import (
	"encoding/binary"
	"time"

	"github.com/callout-mail/callout/shared/verdict"
)

// The messages every verify crosses (the request, the reply, the probe
// job, the verdict) are decoded here without reflection: the reflecting
// decoder costs a few microseconds and a deep stack per message, in every
// process on the hot path. Only the forms our encoders write are read
// (map keys this code knows, strings, integers, booleans, timestamps);
// anything else (nil, binary strings, floats, unknown keys, a struct as an
// array) makes the fast decoder give up, and the reflecting one decodes the
// message from the start. FuzzFastDecode holds both to the same result.

// fastDecoder is a message that can decode the common forms itself. It
// reports false when the message holds anything else; m may then be
// partly written, only with what the reflecting decoder writes too.
type fastDecoder interface {
	decodeFast(r *reader) bool
}

// reader walks msgpack bytes; every method reports false instead of
// reading past the end or accepting a form it does not handle.
type reader struct {
	b []byte
	i int
}

func (r *reader) code() (byte, bool) {
	if r.i >= len(r.b) {
		return 0, false
	}
	c := r.b[r.i]
	r.i++
	return c, true
}

// size reads an n-byte big-endian length or number.
func (r *reader) size(n int) (uint64, bool) {
	if len(r.b)-r.i < n {
		return 0, false
	}
	var v uint64
	switch n {
	case 1:
		v = uint64(r.b[r.i])
	case 2:
		v = uint64(binary.BigEndian.Uint16(r.b[r.i:]))
	case 4:
		v = uint64(binary.BigEndian.Uint32(r.b[r.i:]))
	case 8:
		v = binary.BigEndian.Uint64(r.b[r.i:])
	}
	r.i += n
	return v, true
}

func (r *reader) mapLen() (int, bool) {
	n, ok := r.containerLen(mapFix, mapCode16)
	// Each entry takes two bytes at least.
	return n, ok && n <= (len(r.b)-r.i)/2
}

func (r *reader) arrayLen() (int, bool) {
	n, ok := r.containerLen(arrayFix, arrayCode16)
	return n, ok && n <= len(r.b)-r.i
}

// containerLen reads a map's or an array's header (see appendContainerLen).
func (r *reader) containerLen(fix, code16 byte) (int, bool) {
	c, ok := r.code()
	if !ok {
		return 0, false
	}
	var n uint64
	switch {
	case c&0xf0 == fix:
		return int(c & 0x0f), true
	case c == code16:
		n, ok = r.size(2)
	case c == code16+1:
		n, ok = r.size(4)
	default:
		return 0, false
	}
	// Past the message's length it cannot fit (and is not made an int).
	if !ok || n > uint64(len(r.b)) {
		return 0, false
	}
	return int(n), true
}

// strBytes reads a msgpack str (not bin, not nil) without copying it.
func (r *reader) strBytes() ([]byte, bool) {
	c, ok := r.code()
	if !ok {
		return nil, false
	}
	var n uint64
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n = uint64(c & 0x1f)
	case c == 0xd9:
		n, ok = r.size(1)
	case c == 0xda:
		n, ok = r.size(2)
	case c == 0xdb:
		n, ok = r.size(4)
	default:
		return nil, false
	}
	if !ok || n > uint64(len(r.b)-r.i) {
		return nil, false
	}
	s := r.b[r.i : r.i+int(n)]
	r.i += int(n)
	return s, true
}

func (r *reader) str(dst *string) bool {
	s, ok := r.strBytes()
	if ok {
		*dst = string(s)
	}
	return ok
}

// Words of the small vocabularies (kinds, statuses, sources, purposes,
// actions) are taken from these lists instead of allocated per message.
var (
	kinds    = []string{string(verdict.KindAddress), string(verdict.KindDomain)}
	statuses = func() []string {
		ss := make([]string, len(verdict.Statuses))
		for i, st := range verdict.Statuses {
			ss[i] = string(st)
		}
		return ss
	}()
	sources  = []string{string(verdict.SourceProbe), string(verdict.SourceCache), string(verdict.SourceStatic)}
	purposes = []string{string(verdict.Recipient), string(verdict.Sender)}
	actions  = []string{string(verdict.Accept), string(verdict.Reject), string(verdict.Defer)}
)

// word is str for a value that is most likely one of words.
func (r *reader) word(dst *string, words []string) bool {
	s, ok := r.strBytes()
	if !ok {
		return false
	}
	for _, w := range words {
		if string(s) == w {
			*dst = w
			return true
		}
	}
	*dst = string(s)
	return true
}

// integer reads any msgpack integer as the reflecting decoder does into an
// int field (a uint64 beyond the int64 range wraps).
func (r *reader) integer(dst *int) bool {
	c, ok := r.code()
	if !ok {
		return false
	}
	var n int64
	switch {
	case c <= 0x7f:
		n = int64(c)
	case c >= 0xe0:
		n = int64(int8(c))
	case c >= 0xcc && c <= 0xcf:
		var u uint64
		u, ok = r.size(1 << (c - 0xcc))
		n = int64(u)
	case c >= 0xd0 && c <= 0xd3:
		var u uint64
		u, ok = r.size(1 << (c - 0xd0))
		switch c {
		case 0xd0:
			n = int64(int8(u))
		case 0xd1:
			n = int64(int16(u))
		case 0xd2:
			n = int64(int32(u))
		default:
			n = int64(u)
		}
	default:
		return false
	}
	*dst = int(n)
	return ok
}

func (r *reader) boolean(dst *bool) bool {
	c, ok := r.code()
	if !ok || (c != 0xc2 && c != 0xc3) {
		return false
	}
	*dst = c == 0xc3
	return true
}

// timestamp reads the timestamp extension (type -1) in its 32-, 64- and
// 96-bit forms, in local time as the reflecting decoder gives it (UTC for
// the zero time).
func (r *reader) timestamp(dst *time.Time) bool {
	c, ok := r.code()
	if !ok {
		return false
	}
	var n int
	switch c {
	case 0xd6:
		n = 4
	case 0xd7:
		n = 8
	case 0xc7:
		l, ok := r.size(1)
		if !ok || l != 12 {
			return false
		}
		n = 12
	default:
		return false
	}
	if len(r.b)-r.i < n+1 || r.b[r.i] != 0xff {
		return false
	}
	r.i++
	var t time.Time
	switch n {
	case 4:
		s, _ := r.size(4)
		t = time.Unix(int64(s), 0)
	case 8:
		v, _ := r.size(8)
		t = time.Unix(int64(v&0x3ffffffff), int64(v>>34))
	case 12:
		ns, _ := r.size(4)
		s, _ := r.size(8)
		t = time.Unix(int64(s), int64(ns))
	}
	if t.IsZero() {
		t = t.UTC()
	}
	*dst = t
	return true
}

// strs reads an array of strings (an empty array is an empty, not a nil,
// slice, as the reflecting decoder makes it).
func (r *reader) strs(dst *[]string) bool {
	n, ok := r.arrayLen()
	if !ok {
		return false
	}
	ss := make([]string, n)
	for i := range ss {
		if !r.str(&ss[i]) {
			return false
		}
	}
	*dst = ss
	return true
}

// fields reads a map whose keys are strings, calling field for each; field
// reports false for a key it does not know or a value it cannot read.
func (r *reader) fields(field func(key []byte) bool) bool {
	n, ok := r.mapLen()
	if !ok {
		return false
	}
	for ; n > 0; n-- {
		k, ok := r.strBytes()
		if !ok || !field(k) {
			return false
		}
	}
	return true
}

func (m *VerifyRequest) decodeFast(r *reader) bool {
	return r.fields(func(k []byte) bool {
		switch string(k) {
		case "v":
			return r.integer(&m.V)
		case "address":
			return r.str(&m.Address)
		case "purpose":
			return r.word((*string)(&m.Purpose), purposes)
		case "client_address":
			return r.str(&m.ClientAddress)
		case "timeout_ms":
			return r.integer(&m.TimeoutMS)
		case "trace":
			return r.boolean(&m.Trace)
		case "sender":
			return r.str(&m.Sender)
		case "recipient":
			return r.str(&m.Recipient)
		case "helo":
			return r.str(&m.Helo)
		}
		return false
	})
}

func (m *VerifyReply) decodeFast(r *reader) bool {
	return r.fields(func(k []byte) bool {
		switch string(k) {
		case "v":
			return r.integer(&m.V)
		case "decision":
			return decodeDecision(r, &m.Decision)
		case "verdict":
			return decodeVerdict(r, fresh(&m.Verdict))
		case "error":
			return r.str(&m.Error)
		case "would":
			return decodeDecision(r, fresh(&m.Would))
		case "would_reject":
			return r.boolean(&m.WouldReject)
		}
		return false // a transcript among them: traced replies are rare
	})
}

func (m *ProbeJob) decodeFast(r *reader) bool {
	return r.fields(func(k []byte) bool {
		switch string(k) {
		case "v":
			return r.integer(&m.V)
		case "address":
			return r.str(&m.Address)
		case "purpose":
			return r.word((*string)(&m.Purpose), purposes)
		case "skip_random":
			return r.boolean(&m.SkipRandom)
		case "requested_at":
			return r.timestamp(&m.RequestedAt)
		case "routed":
			return r.boolean(&m.Routed)
		case "route":
			return r.strs(&m.Route)
		case "sender":
			return r.str(&m.Sender)
		case "fallback_sender":
			return r.str(&m.FallbackSender)
		case "control":
			return r.str(&m.Control)
		case "refresh":
			return r.boolean(&m.Refresh)
		}
		return false
	})
}

func (m *verdictMsg) decodeFast(r *reader) bool {
	return r.fields(func(k []byte) bool {
		switch string(k) {
		case "v":
			return r.integer(&m.V)
		case "Verdict":
			return decodeVerdict(r, &m.Verdict)
		}
		return false
	})
}

func decodeDecision(r *reader, d *verdict.Decision) bool {
	return r.fields(func(k []byte) bool {
		switch string(k) {
		case "action":
			return r.word((*string)(&d.Action), actions)
		case "code":
			return r.integer(&d.Code)
		case "enhanced":
			return r.str(&d.Enhanced)
		case "text":
			return r.str(&d.Text)
		}
		return false
	})
}

// fresh points *p at a new T, a copy of the one it pointed to, if any, and
// returns it: a pointer field is decoded into it, so that the value the
// caller's pointer held is left as it was should the fast decoder give up.
func fresh[T any](p **T) *T {
	v := new(T)
	if *p != nil {
		*v = **p
	}
	*p = v
	return v
}

func decodeVerdict(r *reader, v *verdict.Verdict) bool {
	return r.fields(func(k []byte) bool {
		switch string(k) {
		case "kind":
			return r.word((*string)(&v.Kind), kinds)
		case "address":
			return r.str(&v.Address)
		case "domain":
			return r.str(&v.Domain)
		case "purpose":
			return r.word((*string)(&v.Purpose), purposes)
		case "sender":
			return r.str(&v.Sender)
		case "fact":
			return r.str(&v.Fact)
		case "status":
			return r.word((*string)(&v.Status), statuses)
		case "reason":
			return r.str((*string)(&v.Reason))
		case "code":
			return r.integer(&v.Code)
		case "enhanced":
			return r.str(&v.Enhanced)
		case "text":
			return r.str(&v.Text)
		case "host":
			return r.str(&v.Host)
		case "checked_at":
			return r.timestamp(&v.CheckedAt)
		case "expires_at":
			return r.timestamp(&v.ExpiresAt)
		case "source":
			return r.word((*string)(&v.Source), sources)
		}
		return false
	})
}
