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
