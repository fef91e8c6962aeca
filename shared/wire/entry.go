package wire

import (
	"bytes"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
)

// EntryVersion is the format of values in the cache bucket.
//
// A stored entry keeps only what its key does not say (the key says the
// kind, domain, local part, view, probe sender or fact): a msgpack array
// [version, status, reason, code, enhanced, text, host, checked_at in
// microseconds since 1970, TTL in seconds]. About a third of the verdict
// message it comes from.
const EntryVersion = 2

// EncodeEntry is the stored form of v.
func EncodeEntry(v verdict.Verdict) ([]byte, error) {
	st := verdict.StatusIndex(v.Status)
	if st < 0 {
		return nil, fmt.Errorf("%w: status %q", ErrGarbage, v.Status)
	}
	var b bytes.Buffer
	enc := msgpack.NewEncoder(&b)
	ttl := int64(0)
	if !v.ExpiresAt.IsZero() {
		ttl = int64(v.ExpiresAt.Sub(v.CheckedAt) / time.Second)
	}
	for _, err := range []error{
		enc.EncodeArrayLen(9), enc.EncodeInt(EntryVersion), enc.EncodeInt(int64(st)), enc.EncodeString(string(v.Reason)),
		enc.EncodeInt(int64(v.Code)), enc.EncodeString(v.Enhanced), enc.EncodeString(v.Text), enc.EncodeString(v.Host),
		enc.EncodeInt(v.CheckedAt.UnixMicro()), enc.EncodeInt(ttl),
	} {
		if err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

// DecodeEntry reads a stored entry under key. Values written before the
// compact format (a whole verdict message) are read too.
func DecodeEntry(key string, data []byte) (verdict.Verdict, error) {
	k, err := kvkey.Parse(key)
	if err != nil {
		return verdict.Verdict{}, err
	}
	if len(data) == 0 {
		return verdict.Verdict{}, ErrEmpty
	}
	if data[0]&0xf0 != 0x90 { // not a fixarray: a verdict message
		return DecodeVerdict(data)
	}
	if len(data) > MaxMessage {
		return verdict.Verdict{}, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(data))
	}
	if err := checkMsgpack(data); err != nil {
		return verdict.Verdict{}, err
	}
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	n, err := dec.DecodeArrayLen()
	if err != nil || n < 9 {
		return verdict.Verdict{}, fmt.Errorf("%w: entry of %d fields", ErrGarbage, n)
	}
	var ver, st, code, checked, ttl int64
	var reason, enhanced, text, host string
	for _, f := range []func() error{
		func() (err error) { ver, err = dec.DecodeInt64(); return },
		func() (err error) { st, err = dec.DecodeInt64(); return },
		func() (err error) { reason, err = dec.DecodeString(); return },
		func() (err error) { code, err = dec.DecodeInt64(); return },
		func() (err error) { enhanced, err = dec.DecodeString(); return },
		func() (err error) { text, err = dec.DecodeString(); return },
		func() (err error) { host, err = dec.DecodeString(); return },
		func() (err error) { checked, err = dec.DecodeInt64(); return },
		func() (err error) { ttl, err = dec.DecodeInt64(); return },
	} {
		if err := f(); err != nil {
			return verdict.Verdict{}, fmt.Errorf("%w: %v", ErrGarbage, err)
		}
	}
	if ver != EntryVersion {
		return verdict.Verdict{}, fmt.Errorf("%w: entry %d", ErrVersion, ver)
	}
	if st < 0 || int(st) >= len(verdict.Statuses) {
		return verdict.Verdict{}, fmt.Errorf("%w: status %d", ErrGarbage, st)
	}
	v := verdict.Verdict{Domain: k.Domain, Purpose: k.Purpose, Status: verdict.Statuses[st], Reason: verdict.Reason(reason), Code: int(code),
		Enhanced: enhanced, Text: text, Host: host, CheckedAt: time.UnixMicro(checked), Source: verdict.SourceProbe}
	if ttl > 0 {
		v.ExpiresAt = v.CheckedAt.Add(time.Duration(ttl) * time.Second)
	}
	if k.Kind == "domain" {
		v.Kind, v.Fact = verdict.KindDomain, k.Fact
	} else {
		v.Kind, v.Address, v.Sender = verdict.KindAddress, k.Local+"@"+k.Domain, k.Sender
	}
	return v, nil
}
