package wire

import (
	"encoding/binary"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/callout-mail/callout/shared/verdict"
)

// EncodeMsgpack writes a verify reply without reflection (see
// AppendMsgpack).
func (m *VerifyReply) EncodeMsgpack(enc *msgpack.Encoder) error {
	b, err := m.AppendMsgpack(nil)
	if err != nil {
		return err
	}
	_, err = enc.Writer().Write(b)
	return err
}

// AppendMsgpack appends the reply's msgpack encoding to dst: it is encoded
// for every request, and cache hits are most of them, so it is written
// byte by byte instead of through reflection and an encoder. The bytes are
// those of the struct tags' encoding (same keys, order, omissions and
// number and time forms), which TestFastReplyEncoding checks.
func (m *VerifyReply) AppendMsgpack(dst []byte) ([]byte, error) {
	n := 2
	for _, present := range []bool{m.Verdict != nil, m.Error != "", m.Would != nil, m.WouldReject, len(m.Transcript) > 0} {
		if present {
			n++
		}
	}
	b := appendMapLen(dst, n)
	b = appendInt(appendStr(b, "v"), int64(m.V))
	b = appendDecision(appendStr(b, "decision"), &m.Decision)
	if m.Verdict != nil {
		b = appendVerdict(appendStr(b, "verdict"), m.Verdict)
	}
	if m.Error != "" {
		b = appendStr(appendStr(b, "error"), m.Error)
	}
	if m.Would != nil {
		b = appendDecision(appendStr(b, "would"), m.Would)
	}
	if m.WouldReject {
		b = append(appendStr(b, "would_reject"), 0xc3)
	}
	if len(m.Transcript) > 0 {
		// Traced replies only: rare.
		t, err := msgpack.Marshal(m.Transcript)
		if err != nil {
			return dst, err
		}
		b = append(appendStr(b, "transcript"), t...)
	}
	return b, nil
}

// AppendMsgpack appends the request's encoding, the struct tags' bytes.
func (m *VerifyRequest) AppendMsgpack(dst []byte) ([]byte, error) {
	n := 2
	for _, present := range []bool{m.Purpose != "", m.ClientAddress != "", m.TimeoutMS != 0, m.Trace, m.Sender != "", m.Recipient != "", m.Helo != ""} {
		if present {
			n++
		}
	}
	b := appendMapLen(dst, n)
	b = appendInt(appendStr(b, "v"), int64(m.V))
	b = appendStr(appendStr(b, "address"), m.Address)
	b = appendOpt(b, "purpose", string(m.Purpose))
	b = appendOpt(b, "client_address", m.ClientAddress)
	if m.TimeoutMS != 0 {
		b = appendInt(appendStr(b, "timeout_ms"), int64(m.TimeoutMS))
	}
	if m.Trace {
		b = append(appendStr(b, "trace"), 0xc3)
	}
	b = appendOpt(b, "sender", m.Sender)
	b = appendOpt(b, "recipient", m.Recipient)
	b = appendOpt(b, "helo", m.Helo)
	return b, nil
}

// AppendMsgpack appends the job's encoding, the struct tags' bytes.
func (m *ProbeJob) AppendMsgpack(dst []byte) ([]byte, error) {
	n := 4
	for _, present := range []bool{m.SkipRandom, m.Routed, len(m.Route) > 0, m.Sender != "", m.FallbackSender != "", m.Control != "", m.Refresh} {
		if present {
			n++
		}
	}
	b := appendMapLen(dst, n)
	b = appendInt(appendStr(b, "v"), int64(m.V))
	b = appendStr(appendStr(b, "address"), m.Address)
	b = appendStr(appendStr(b, "purpose"), string(m.Purpose))
	if m.SkipRandom {
		b = append(appendStr(b, "skip_random"), 0xc3)
	}
	b = appendTime(appendStr(b, "requested_at"), m.RequestedAt)
	if m.Routed {
		b = append(appendStr(b, "routed"), 0xc3)
	}
	if len(m.Route) > 0 {
		b = appendArrayLen(appendStr(b, "route"), len(m.Route))
		for _, h := range m.Route {
			b = appendStr(b, h)
		}
	}
	b = appendOpt(b, "sender", m.Sender)
	b = appendOpt(b, "fallback_sender", m.FallbackSender)
	b = appendOpt(b, "control", m.Control)
	if m.Refresh {
		b = append(appendStr(b, "refresh"), 0xc3)
	}
	return b, nil
}

// AppendMsgpack appends the verdict message's encoding, the struct tags' bytes.
func (m *verdictMsg) AppendMsgpack(dst []byte) ([]byte, error) {
	b := appendMapLen(dst, 2)
	b = appendInt(appendStr(b, "v"), int64(m.V))
	return appendVerdict(appendStr(b, "Verdict"), &m.Verdict), nil
}

func appendDecision(b []byte, d *verdict.Decision) []byte {
	b = appendMapLen(b, 4)
	b = appendStr(appendStr(b, "action"), string(d.Action))
	b = appendInt(appendStr(b, "code"), int64(d.Code))
	b = appendStr(appendStr(b, "enhanced"), d.Enhanced)
	return appendStr(appendStr(b, "text"), d.Text)
}

func appendVerdict(b []byte, v *verdict.Verdict) []byte {
	n := 5 // kind, domain, status, checked_at, source; then what is set
	for _, s := range []string{v.Address, string(v.Purpose), v.Sender, v.Fact, string(v.Reason), v.Enhanced, v.Text, v.Host} {
		if s != "" {
			n++
		}
	}
	if v.Code != 0 {
		n++
	}
	if !v.ExpiresAt.IsZero() {
		n++
	}
	b = appendMapLen(b, n)
	b = appendStr(appendStr(b, "kind"), string(v.Kind))
	b = appendOpt(b, "address", v.Address)
	b = appendStr(appendStr(b, "domain"), v.Domain)
	b = appendOpt(b, "purpose", string(v.Purpose))
	b = appendOpt(b, "sender", v.Sender)
	b = appendOpt(b, "fact", v.Fact)
	b = appendStr(appendStr(b, "status"), string(v.Status))
	b = appendOpt(b, "reason", string(v.Reason))
	if v.Code != 0 {
		b = appendInt(appendStr(b, "code"), int64(v.Code))
	}
	b = appendOpt(b, "enhanced", v.Enhanced)
	b = appendOpt(b, "text", v.Text)
	b = appendOpt(b, "host", v.Host)
	b = appendTime(appendStr(b, "checked_at"), v.CheckedAt)
	if !v.ExpiresAt.IsZero() {
		b = appendTime(appendStr(b, "expires_at"), v.ExpiresAt)
	}
	return appendStr(appendStr(b, "source"), string(v.Source))
}

// appendOpt appends an omitempty string field.
func appendOpt(b []byte, k, v string) []byte {
	if v == "" {
		return b
	}
	return appendStr(appendStr(b, k), v)
}

// Container headers: the fix form's first byte (0x80 for a map, 0x90 for
// an array), then the 16- and 32-bit forms' codes (0xde, 0xdf for a map;
// 0xdc, 0xdd for an array).
const (
	mapFix, mapCode16     = 0x80, 0xde
	arrayFix, arrayCode16 = 0x90, 0xdc
)

func appendMapLen(b []byte, n int) []byte { return appendContainerLen(b, n, mapFix, mapCode16) }

func appendArrayLen(b []byte, n int) []byte { return appendContainerLen(b, n, arrayFix, arrayCode16) }

// appendContainerLen writes a header in its smallest form; the 32-bit
// form's code follows the 16-bit one's.
func appendContainerLen(b []byte, n int, fix, code16 byte) []byte {
	switch {
	case n < 16:
		return append(b, fix|byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, code16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, code16+1), uint32(n))
}

func appendStr(b []byte, s string) []byte {
	switch l := len(s); {
	case l < 32:
		b = append(b, 0xa0|byte(l))
	case l < 256:
		b = append(b, 0xd9, byte(l))
	case l <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(l))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(l))
	}
	return append(b, s...)
}

// appendInt uses the smallest form, as the encoder's EncodeInt does.
func appendInt(b []byte, n int64) []byte {
	switch {
	case n >= 0 && n <= 0x7f:
		return append(b, byte(n))
	case n >= 0 && n <= 0xff:
		return append(b, 0xcc, byte(n))
	case n >= 0 && n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(n))
	case n >= 0 && n <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(n))
	case n >= 0:
		return binary.BigEndian.AppendUint64(append(b, 0xcf), uint64(n))
	case n >= -32:
		return append(b, byte(n))
	case n >= -128:
		return append(b, 0xd0, byte(n))
	case n >= -32768:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(n))
	case n >= -2147483648:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(n))
}

// appendTime writes the msgpack timestamp extension (type -1) in its
// 32-, 64- or 96-bit form.
func appendTime(b []byte, t time.Time) []byte {
	secs := uint64(t.Unix())
	if secs>>34 == 0 {
		data := uint64(t.Nanosecond())<<34 | secs
		if data&0xffffffff00000000 == 0 {
			return binary.BigEndian.AppendUint32(append(b, 0xd6, 0xff), uint32(data))
		}
		return binary.BigEndian.AppendUint64(append(b, 0xd7, 0xff), data)
	}
	b = binary.BigEndian.AppendUint32(append(b, 0xc7, 12, 0xff), uint32(t.Nanosecond()))
	return binary.BigEndian.AppendUint64(b, secs)
}
