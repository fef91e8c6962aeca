package decisions

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Version is the record version this code writes; it reads it and older.
const Version = 1

// Where a record's answer was asked.
const (
	ViaNATS    = "nats"    // callout.verify (an MTA over NATS)
	ViaPolicy  = "policy"  // the Postfix policy protocol (and Exim's readsocket)
	ViaMilter  = "milter"  // a milter session (Sendmail, Postfix's smtpd_milters)
	ViaConsole = "console" // an operator's verify from the console or API
	ViaTrace   = "trace"   // an operator's traced callout
)

// SourceNear is a record's Source for an answer from the ingest's near
// cache (the verdict's own source says "cache").
const SourceNear verdict.Source = "near"

// Field limits: a record stays small whatever a client sends.
const (
	maxAddress = 320
	maxName    = 255
	maxText    = 512
)

// Record is one answer an ingest gave. It is encoded as a msgpack array
// (the field order is the format: fields are only ever appended) behind
// its version, about 150 bytes (stored compressed: see BatchMsg).
type Record struct {
	//lint:ignore U1000 read by the msgpack decoder: the record is an array
	_msgpack     struct{}        `msgpack:",as_array"`
	V            int             `json:"-"`
	At           time.Time       `json:"at"`
	Instance     string          `json:"instance"`         // the ingest: host and micro service id
	Region       string          `json:"region,omitempty"` // in a fleet over regions
	Via          string          `json:"via"`
	Client       string          `json:"client,omitempty"` // the SMTP client's address
	Helo         string          `json:"helo,omitempty"`
	Sender       string          `json:"sender"` // "" is the null sender (or not given)
	Recipient    string          `json:"recipient,omitempty"`
	Purpose      verdict.Purpose `json:"purpose"` // which of the two was checked
	Action       verdict.Action  `json:"action"`
	Code         int             `json:"code"`
	Enhanced     string          `json:"enhanced,omitempty"`
	Text         string          `json:"text,omitempty"` // the answer's text
	Status       verdict.Status  `json:"status"`
	Reason       verdict.Reason  `json:"reason,omitempty"`
	Source       verdict.Source  `json:"source"`                  // probe, cache, near, static
	Host         string          `json:"host,omitempty"`          // the destination host called
	DestCode     int             `json:"dest_code,omitempty"`     // its reply
	DestText     string          `json:"dest_text,omitempty"`     // its text, cleaned
	TookUS       int64           `json:"took_us"`                 // time to answer, microseconds
	Would        verdict.Action  `json:"would,omitempty"`         // monitor mode: what callout mode would have done
	CheckedAt    time.Time       `json:"checked_at,omitzero"`     // when the verdict's callout was made
	DestEnhanced string          `json:"dest_enhanced,omitempty"` // the destination's enhanced status code
}

// Checked is the address the record's check was about.
func (r *Record) Checked() string {
	if r.Purpose == verdict.Sender {
		return r.Sender
	}
	return r.Recipient
}

// Domain is the domain a record belongs to: its recipient's, whoever was
// checked (mail to a customer's domain is the customer's, its sender
// check included); "" when no recipient is known.
func (r *Record) Domain() string { return DomainOf(r.Recipient) }

// DomainOf is the lower-cased domain of an address ("" without one).
func DomainOf(addr string) string {
	i := strings.LastIndexByte(addr, '@')
	if i < 0 {
		return ""
	}
	return strings.ToLower(strings.TrimSuffix(addr[i+1:], "."))
}

// Clean makes a record safe to store and show: control characters (CR,
// LF, NUL from a client or a destination) become spaces and every field
// is cut to its limit, so no record breaks a log line or a CSV row.
func (r *Record) Clean() {
	r.Instance = clip(r.Instance, maxName)
	r.Region = clip(r.Region, maxName)
	r.Client = clip(r.Client, maxName)
	r.Helo = clip(r.Helo, maxName)
	r.Sender = clip(r.Sender, maxAddress)
	r.Recipient = clip(r.Recipient, maxAddress)
	r.Host = clip(r.Host, maxName)
	r.Text = clip(r.Text, maxText)
	r.DestText = clip(r.DestText, maxText)
	r.Enhanced = clip(r.Enhanced, 16)
	r.DestEnhanced = clip(r.DestEnhanced, 16)
}

func clip(s string, n int) string {
	clean := true
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c >= 0x80 {
			clean = false
			break
		}
	}
	if clean && len(s) <= n {
		return s // the usual case: no copy
	}
	s = verdict.CleanText(s)
	for len(s) > n {
		// Cut on a rune boundary.
		s = s[:n]
		for len(s) > 0 && s[len(s)-1]&0xc0 == 0x80 {
			s = s[:len(s)-1]
		}
		if len(s) > 0 && s[len(s)-1] >= 0xc0 {
			s = s[:len(s)-1]
		}
	}
	return s
}

// ErrRecord is a stored record that cannot be read.
var ErrRecord = errors.New("unreadable decision record")

// Encode encodes a record at the current version.
func Encode(r *Record) ([]byte, error) {
	return AppendEncode(make([]byte, 0, 256), r), nil
}

// recordFields is the length of a record's array.
const recordFields = 24

// AppendEncode appends a record's encoding at the current version, byte
// for byte what the msgpack encoder makes of it (TestAppendEncode), with
// no reflection: every answer is encoded.
func AppendEncode(b []byte, r *Record) []byte {
	r.V = Version
	b = wire.AppendArrayLen(b, recordFields)
	b = wire.AppendInt(b, int64(r.V))
	b = wire.AppendTime(b, r.At)
	for _, s := range [...]string{r.Instance, r.Region, r.Via, r.Client, r.Helo, r.Sender, r.Recipient, string(r.Purpose), string(r.Action)} {
		b = wire.AppendString(b, s)
	}
	b = wire.AppendInt(b, int64(r.Code))
	for _, s := range [...]string{r.Enhanced, r.Text, string(r.Status), string(r.Reason), string(r.Source), r.Host} {
		b = wire.AppendString(b, s)
	}
	b = wire.AppendInt(b, int64(r.DestCode))
	b = wire.AppendString(b, r.DestText)
	b = wire.AppendInt64(b, r.TookUS)
	b = wire.AppendString(b, string(r.Would))
	b = wire.AppendTime(b, r.CheckedAt)
	return wire.AppendString(b, r.DestEnhanced)
}

// A message of the log carries a batch of records of one action and
// domain token, each record's encoding after the other: one publish, one
// acknowledgement and one stored message for up to MaxBatch records.
const (
	MaxBatch      = 255
	MaxBatchBytes = 32 << 10
	// BatchHeader says how many records a message carries.
	BatchHeader = "Callout-Records"
	// CompressionHeader says how a message's batch is compressed: "s2"
	// (S2's block format); a message without it holds the batch as is.
	CompressionHeader = "Callout-Compression"
)

// BatchMsg is the log's message of a batch: n records' encodings one
// after the other. The batch is compressed when that makes it smaller
// (records of one action repeat most of their text: a fifth to a sixth
// of the bytes are left); the server's work per record, storing it and
// handing it to the cachekeepers' index, is by the byte.
func BatchMsg(subject string, batch []byte, n int) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Header.Set(BatchHeader, strconv.Itoa(n))
	m.Data = batch
	if c := s2.Encode(nil, batch); len(c) < len(batch) {
		m.Data = c
		m.Header.Set(CompressionHeader, "s2")
	}
	return m
}

// BatchData is a stored message's batch as BatchMsg was given it: h
// is the message's headers. A batch that would decompress past a batch's
// bound, or cannot, is ErrRecord. dst is reused when large enough.
func BatchData(dst []byte, h nats.Header, data []byte) ([]byte, error) {
	switch c := h.Get(CompressionHeader); c {
	case "":
		return data, nil
	case "s2":
		n, err := s2.DecodedLen(data)
		if err != nil || n > 2*MaxBatchBytes {
			return nil, fmt.Errorf("%w: compressed batch of %d bytes (%v)", ErrRecord, n, err)
		}
		b, err := s2.Decode(dst[:cap(dst)], data)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrRecord, err)
		}
		return b, nil
	default:
		return nil, fmt.Errorf("%w: compression %q", ErrRecord, c)
	}
}

// ID names one record: its message's stream sequence and its place in
// the message's batch.
func ID(seq uint64, idx int) uint64 { return seq<<8 | uint64(idx&0xff) }

// SeqOf is the stream sequence of a record's message.
func SeqOf(id uint64) uint64 { return id >> 8 }

// IdxOf is a record's place in its message.
func IdxOf(id uint64) int { return int(id & 0xff) }

// DecodeBatch calls fn with each record of a message, in order, until fn
// returns false. A record that cannot be read ends the batch with
// ErrRecord.
func DecodeBatch(b []byte, fn func(idx int, r *Record) bool) error {
	var r Record // one for the batch: fn's record is valid only during the call
	return walkBatch(b, func(rd *wire.Reader, idx int) (read, more bool) {
		r = Record{}
		if !decodeFast(rd, &r) || r.V < 1 || r.V > Version {
			return false, true
		}
		return true, fn(idx, &r)
	}, fn)
}

// walkBatch reads a batch's records by hand with fast (false: not a
// record as AppendEncode writes it; more false: stop) and, from the first
// one it cannot read (an older form, say), the rest with the reflecting
// decoder, calling slow with each.
func walkBatch(b []byte, fast func(rd *wire.Reader, idx int) (read, more bool), slow func(idx int, r *Record) bool) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrRecord, p)
		}
	}()
	if len(b) == 0 || len(b) > 2*MaxBatchBytes {
		return fmt.Errorf("%w: batch of %d bytes", ErrRecord, len(b))
	}
	rd := wire.NewReader(b)
	for idx := 0; rd.Offset() < len(b); idx++ {
		start := rd.Offset()
		if idx > MaxBatch {
			return decodeRest(b[start:], idx, slow) // refuses it
		}
		read, more := fast(rd, idx)
		if !read {
			return decodeRest(b[start:], idx, slow)
		}
		if !more {
			return nil
		}
	}
	return nil
}

// decodeRest is DecodeBatch with the reflecting decoder, from the
// record at idx, b's start.
func decodeRest(b []byte, idx int, fn func(idx int, r *Record) bool) error {
	// The decoder reads the bytes.Reader as it is (a ByteScanner), so
	// what it has not read is left in it: the batch ends where a record
	// ends, a record cut short is unreadable.
	br := bytes.NewReader(b)
	dec := msgpack.NewDecoder(br)
	var r Record
	for ; br.Len() > 0; idx++ {
		r = Record{}
		if err := dec.Decode(&r); err != nil {
			return fmt.Errorf("%w: record %d: %v", ErrRecord, idx, err)
		}
		if r.V < 1 || r.V > Version || idx > MaxBatch {
			return fmt.Errorf("%w: record %d: version %d", ErrRecord, idx, r.V)
		}
		if !fn(idx, &r) {
			return nil
		}
	}
	return nil
}

// decodeFast reads one record of recordFields fields as AppendEncode
// writes it; false for any other form.
func decodeFast(rd *wire.Reader, r *Record) bool {
	if n, ok := rd.ArrayLen(); !ok || n != recordFields {
		return false
	}
	var purpose, action, status, reason, source, would string
	ok := rd.Int(&r.V) && rd.Time(&r.At) &&
		rd.String(&r.Instance) && rd.String(&r.Region) && rd.String(&r.Via) && rd.String(&r.Client) && rd.String(&r.Helo) &&
		rd.String(&r.Sender) && rd.String(&r.Recipient) && rd.String(&purpose) && rd.String(&action) &&
		rd.Int(&r.Code) &&
		rd.String(&r.Enhanced) && rd.String(&r.Text) && rd.String(&status) && rd.String(&reason) && rd.String(&source) && rd.String(&r.Host) &&
		rd.Int(&r.DestCode) && rd.String(&r.DestText) && rd.Int64(&r.TookUS) && rd.String(&would) && rd.Time(&r.CheckedAt) &&
		rd.String(&r.DestEnhanced)
	r.Purpose, r.Action, r.Status, r.Reason, r.Source, r.Would = verdict.Purpose(purpose), verdict.Action(action),
		verdict.Status(status), verdict.Reason(reason), verdict.Source(source), verdict.Action(would)
	return ok
}

// Decode reads a record; garbage or an unknown version is ErrRecord.
func Decode(b []byte, r *Record) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrRecord, p)
		}
	}()
	if len(b) == 0 || len(b) > 16<<10 {
		return fmt.Errorf("%w: %d bytes", ErrRecord, len(b))
	}
	*r = Record{}
	if err := msgpack.Unmarshal(b, r); err != nil {
		return fmt.Errorf("%w: %v", ErrRecord, err)
	}
	if r.V < 1 || r.V > Version {
		return fmt.Errorf("%w: version %d", ErrRecord, r.V)
	}
	return nil
}

// hash is the index's key of a string compared without case: 32-bit
// FNV-1a of its bytes with ASCII lower-cased, no allocation.
func hash[T ~string | ~[]byte](s T) uint32 {
	const offset, prime = 2166136261, 16777619
	h := uint32(offset)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		h ^= uint32(c)
		h *= prime
	}
	return h
}

// domainOf is DomainOf's part of an address, before lower-casing ("" without one).
func domainOf(addr []byte) []byte {
	i := bytes.LastIndexByte(addr, '@')
	if i < 0 {
		return nil
	}
	return bytes.TrimSuffix(addr[i+1:], []byte("."))
}

// IndexBatch calls fn with each record's index entry, in order, reading
// only what the index keeps: no record is decoded, nothing allocated per
// record as AppendEncode writes them (the index reads every record of
// the log as it is written). It reads what DecodeBatch reads.
func IndexBatch(b []byte, fn func(idx int, e Entry)) error {
	return walkBatch(b, func(rd *wire.Reader, idx int) (read, more bool) {
		e, ok := indexFast(rd)
		if ok {
			fn(idx, e)
		}
		return ok, true
	}, func(idx int, r *Record) bool { fn(idx, EntryOf(r)); return true })
}

// indexFast reads one record as decodeFast does, keeping only its entry.
func indexFast(rd *wire.Reader) (Entry, bool) {
	var e Entry
	if n, ok := rd.ArrayLen(); !ok || n != recordFields {
		return e, false
	}
	var v, code int
	var at, checked time.Time
	var took int64
	var rcpt, action []byte
	skip := func(n int) bool {
		for ; n > 0; n-- {
			if _, ok := rd.Bytes(); !ok {
				return false
			}
		}
		return true
	}
	ok := rd.Int(&v) && v >= 1 && v <= Version && rd.Time(&at) &&
		skip(6) && // instance, region, via, client, helo, sender
		bytesInto(rd, &rcpt) && skip(1) && bytesInto(rd, &action) && rd.Int(&code) &&
		skip(6) && // enhanced, text, status, reason, source, host
		rd.Int(&code) && skip(1) && rd.Int64(&took) && skip(1) && rd.Time(&checked) && skip(1)
	if !ok {
		return e, false
	}
	return Entry{At: at.Unix(), Recipient: hash(rcpt), Domain: domainHash(rcpt), Action: actionCode(action)}, true
}

// domainHash is hash(DomainOf(addr)) without a copy for an ASCII domain
// (DomainOf lower-cases beyond ASCII, and makes bad UTF-8 valid).
func domainHash(addr []byte) uint32 {
	d := domainOf(addr)
	for _, c := range d {
		if c >= 0x80 {
			return hash(DomainOf(string(addr)))
		}
	}
	return hash(d)
}

func bytesInto(rd *wire.Reader, dst *[]byte) bool {
	b, ok := rd.Bytes()
	*dst = b
	return ok
}
