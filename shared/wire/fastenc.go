package wire

import (
	"github.com/vmihailenco/msgpack/v5"

	"github.com/callout-mail/callout/shared/verdict"
)

// EncodeMsgpack writes a verify reply without reflection: it is encoded
// for every request, and cache hits are most of them. The bytes are those
// of the struct tags' encoding (same keys, order and omissions), which
// TestFastReplyEncoding checks.
func (m *VerifyReply) EncodeMsgpack(enc *msgpack.Encoder) error {
	n := 2
	for _, present := range []bool{m.Verdict != nil, m.Error != "", m.Would != nil, m.WouldReject, len(m.Transcript) > 0} {
		if present {
			n++
		}
	}
	if err := enc.EncodeMapLen(n); err != nil {
		return err
	}
	w := fields{enc: enc}
	w.int("v", int64(m.V))
	w.key("decision")
	w.decision(&m.Decision)
	if m.Verdict != nil {
		w.key("verdict")
		w.verdict(m.Verdict)
	}
	if m.Error != "" {
		w.str("error", m.Error)
	}
	if m.Would != nil {
		w.key("would")
		w.decision(m.Would)
	}
	if m.WouldReject {
		w.key("would_reject")
		w.setErr(enc.EncodeBool(true))
	}
	if len(m.Transcript) > 0 {
		w.key("transcript")
		w.setErr(enc.Encode(m.Transcript)) // traced replies only: rare
	}
	return w.err
}

// fields writes map entries, keeping the first error.
type fields struct {
	enc *msgpack.Encoder
	err error
}

func (w *fields) setErr(err error) {
	if w.err == nil {
		w.err = err
	}
}

func (w *fields) key(k string) { w.setErr(w.enc.EncodeString(k)) }

func (w *fields) str(k, v string) {
	w.key(k)
	w.setErr(w.enc.EncodeString(v))
}

func (w *fields) int(k string, v int64) {
	w.key(k)
	w.setErr(w.enc.EncodeInt(v))
}

func (w *fields) decision(d *verdict.Decision) {
	w.setErr(w.enc.EncodeMapLen(4))
	w.str("action", string(d.Action))
	w.int("code", int64(d.Code))
	w.str("enhanced", d.Enhanced)
	w.str("text", d.Text)
}

func (w *fields) verdict(v *verdict.Verdict) {
	n := 5 // kind, domain, status, checked_at, source; then what is set
	for _, s := range []string{v.Address, string(v.Purpose), v.Sender, v.Fact, v.Reason, v.Enhanced, v.Text, v.Host} {
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
	w.setErr(w.enc.EncodeMapLen(n))
	w.str("kind", string(v.Kind))
	w.opt("address", v.Address)
	w.str("domain", v.Domain)
	w.opt("purpose", string(v.Purpose))
	w.opt("sender", v.Sender)
	w.opt("fact", v.Fact)
	w.str("status", string(v.Status))
	w.opt("reason", v.Reason)
	if v.Code != 0 {
		w.int("code", int64(v.Code))
	}
	w.opt("enhanced", v.Enhanced)
	w.opt("text", v.Text)
	w.opt("host", v.Host)
	w.key("checked_at")
	w.setErr(w.enc.EncodeTime(v.CheckedAt))
	if !v.ExpiresAt.IsZero() {
		w.key("expires_at")
		w.setErr(w.enc.EncodeTime(v.ExpiresAt))
	}
	w.str("source", string(v.Source))
}

// opt writes an omitempty string.
func (w *fields) opt(k, v string) {
	if v != "" {
		w.str(k, v)
	}
}
