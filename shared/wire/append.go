package wire

import (
	"encoding/binary"
	"time"
)

// AppendArrayLen, AppendString, AppendInt and AppendTime write msgpack
// values in their smallest forms, as the msgpack encoder does: for
// messages encoded by hand outside this package (the decision log's
// records), on paths where the encoder's reflection costs too much.
func AppendArrayLen(b []byte, n int) []byte { return appendArrayLen(b, n) }

// AppendString writes a msgpack string.
func AppendString(b []byte, s string) []byte { return appendStr(b, s) }

// AppendInt writes a msgpack integer.
func AppendInt(b []byte, n int64) []byte { return appendInt(b, n) }

// AppendTime writes a msgpack timestamp.
func AppendTime(b []byte, t time.Time) []byte { return appendTime(b, t) }

// AppendInt64 writes an int64 as the encoder writes that type: always
// in 8 bytes.
func AppendInt64(b []byte, n int64) []byte {
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(n))
}

// Reader reads msgpack values in the forms the Append functions write,
// for decoders written by hand outside this package (the decision log's
// records). Every method reports false, reading nothing more, on the end
// of the bytes or a form it does not read; the caller then decodes with
// the reflecting decoder.
type Reader struct{ r reader }

// NewReader reads b from its start.
func NewReader(b []byte) *Reader { return &Reader{r: reader{b: b}} }

// Offset is how many bytes have been read.
func (r *Reader) Offset() int { return r.r.i }

// ArrayLen reads an array's header.
func (r *Reader) ArrayLen() (int, bool) { return r.r.arrayLen() }

// String reads a string (not bin, not nil).
func (r *Reader) String(dst *string) bool { return r.r.str(dst) }

// Bytes reads a string's bytes without copying them: they are b's own,
// valid as long as b is.
func (r *Reader) Bytes() ([]byte, bool) { return r.r.strBytes() }

// Int reads an integer as the reflecting decoder does into an int.
func (r *Reader) Int(dst *int) bool { return r.r.integer(dst) }

// Int64 reads an integer into an int64.
func (r *Reader) Int64(dst *int64) bool {
	var n int
	if !r.r.integer(&n) {
		return false
	}
	*dst = int64(n)
	return true
}

// Time reads a timestamp, as the reflecting decoder gives it.
func (r *Reader) Time(dst *time.Time) bool { return r.r.timestamp(dst) }
