package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
)

func TestRoundTrip(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	req := &VerifyRequest{Address: "a@example.org", Purpose: verdict.Sender, ClientAddress: "192.0.2.1"}
	b, err := Encode(req)
	if err != nil {
		t.Fatal(err)
	}
	var got VerifyRequest
	if err := Decode(b, &got); err != nil || got != *req || got.V != Version {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: "a@example.org", Domain: "example.org", Status: verdict.Invalid, Code: 550, Enhanced: "5.1.1", Text: "no", CheckedAt: now, Source: verdict.SourceProbe}
	vb, err := EncodeVerdict(v)
	if err != nil {
		t.Fatal(err)
	}
	gv, err := DecodeVerdict(vb)
	if err != nil || !gv.CheckedAt.Equal(now) || gv.Status != v.Status || gv.Text != "no" {
		t.Fatalf("verdict round trip: %+v %v", gv, err)
	}
}

func TestDecodeRefuses(t *testing.T) {
	old, _ := msgpack.Marshal(map[string]any{"v": 99, "address": "a@b.org"})
	noAddr, _ := Encode(&VerifyRequest{})
	big := make([]byte, MaxMessage+1)
	tests := []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrEmpty},
		{"garbage", []byte("\xc1\xff\x00garbage"), ErrGarbage},
		{"json sent as msgpack", []byte(`{"address":"a@b.org"}`), ErrGarbage},
		{"truncated", []byte{0x82, 0xa1, 'v'}, ErrGarbage},
		{"array not map", []byte{0x93, 1, 2, 3}, ErrGarbage},
		{"unknown version", old, ErrVersion},
		{"missing address", noAddr, ErrMissing},
		{"too large", big, ErrTooLarge},
	}
	for _, tt := range tests {
		var r VerifyRequest
		if err := Decode(tt.data, &r); !errors.Is(err, tt.want) {
			t.Errorf("%s: error %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestDecodeJSON(t *testing.T) {
	var r VerifyRequest
	if err := DecodeJSON([]byte(`{"address":"alice@example.org"}`), &r); err != nil || r.Address != "alice@example.org" || r.V != Version {
		t.Fatalf("DecodeJSON = %+v %v", r, err)
	}
	if err := DecodeJSON([]byte(`{"address":`), &r); !errors.Is(err, ErrGarbage) {
		t.Fatalf("bad JSON: %v", err)
	}
	if err := DecodeJSON([]byte(`{"address":"a@b.org","purpose":"x"}`), &r); !errors.Is(err, ErrGarbage) {
		t.Fatalf("bad purpose: %v", err)
	}
}

func TestFlushValidation(t *testing.T) {
	for _, tt := range []struct {
		c  FlushCommand
		ok bool
	}{
		{FlushCommand{Scope: ScopeAll}, true},
		{FlushCommand{Scope: ScopeDomain, Domain: "example.org", Only: verdict.Invalid}, true},
		{FlushCommand{Scope: ScopeDomain}, false},
		{FlushCommand{Scope: ScopeAddress}, false},
		{FlushCommand{Scope: "everything"}, false},
		{FlushCommand{Scope: ScopeAll, Only: verdict.TempFail}, false},
	} {
		b, _ := Encode(&tt.c)
		var got FlushCommand
		if err := Decode(b, &got); (err == nil) != tt.ok {
			t.Errorf("%+v: error %v", tt.c, err)
		}
	}
}

// FuzzDecode: garbage msgpack never panics, and what decodes is what the
// validation allows (a verdict has its domain and status, a request its
// purpose).
func FuzzDecode(f *testing.F) {
	for _, m := range []Message{
		&VerifyRequest{Address: "a@b.org"}, &ProbeJob{Address: "a@b.org", Purpose: verdict.Recipient},
		&LookupRequest{Address: "a@b.org"}, &FlushCommand{Scope: ScopeAll},
	} {
		b, _ := Encode(m)
		f.Add(b)
	}
	b, _ := EncodeVerdict(verdict.Verdict{Kind: verdict.KindAddress, Domain: "b.org", Status: verdict.Valid})
	f.Add(b)
	f.Add([]byte{0xde, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		var r VerifyRequest
		if Decode(data, &r) == nil && r.Purpose != "" && r.Purpose != verdict.Recipient && r.Purpose != verdict.Sender {
			t.Fatalf("purpose %q accepted", r.Purpose)
		}
		var j ProbeJob
		if Decode(data, &j) == nil && j.Address == "" {
			t.Fatal("job without address accepted")
		}
		var l LookupRequest
		_ = Decode(data, &l)
		var c FlushCommand
		if Decode(data, &c) == nil && c.Scope != ScopeAll && c.Scope != ScopeDomain && c.Scope != ScopeAddress {
			t.Fatalf("flush scope %q accepted", c.Scope)
		}
		if v, err := DecodeVerdict(data); err == nil && (v.Domain == "" || v.Status == "") {
			t.Fatalf("verdict without domain or status accepted: %+v", v)
		}
	})
}

// FuzzDecodeJSON: the JSON forms people type are held to the same rules.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"address":"a@b.org"}`, `{"address":"a@b.org","purpose":"sender","timeout_ms":100}`,
		`{"scope":"domain","domain":"b.org","only":"invalid"}`, `{"v":2}`, `[]`, `{"address":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var r VerifyRequest
		if err := DecodeJSON(data, &r); err == nil {
			if r.V != Version || r.Purpose != "" && r.Purpose != verdict.Recipient && r.Purpose != verdict.Sender {
				t.Fatalf("accepted %+v", r)
			}
		}
		var c FlushCommand
		if err := DecodeJSON(data, &c); err == nil && c.Scope != ScopeAll && c.Scope != ScopeDomain && c.Scope != ScopeAddress {
			t.Fatalf("flush scope %q accepted", c.Scope)
		}
	})
}

// A tiny message declaring a huge container or string is refused before
// the decoder sizes anything from it; every message we make passes.
func TestDeclaredLengths(t *testing.T) {
	for _, data := range [][]byte{
		{0xdf, 0x7f, 0xff, 0xff, 0xff},                  // map32 of 2^31 entries
		{0xdd, 0xff, 0xff, 0xff, 0xff, 0x01},            // array32
		{0x81, 0xa1, 'a', 0xc6, 0x73, 0x63, 0x6f, 0x70}, // bin32 of 1.9 GB
		{0x81, 0xa1, 'a', 0xdb, 0x10, 0, 0, 0, 'x'},     // str32
		{0xc1},
		append(bytes.Repeat([]byte{0x91}, 40), 0x01), // nested 40 deep
	} {
		var r VerifyRequest
		if err := Decode(data, &r); !errors.Is(err, ErrGarbage) {
			t.Errorf("%x: %v, want ErrGarbage", data, err)
		}
	}
	for _, m := range []Message{&VerifyRequest{Address: "a@b.org", Purpose: verdict.Sender, TimeoutMS: 100},
		&ProbeJob{Address: "a@b.org", Route: []string{"127.0.0.1:25"}}, &FlushCommand{Scope: ScopeAll}} {
		b, _ := Encode(m)
		if err := checkMsgpack(b); err != nil {
			t.Errorf("%T refused: %v", m, err)
		}
	}
	b, _ := EncodeVerdict(verdict.Verdict{Kind: verdict.KindAddress, Domain: "b.org", Status: verdict.Valid, CheckedAt: time.Now(), Text: "ok"})
	if _, err := DecodeVerdict(b); err != nil {
		t.Errorf("verdict refused: %v", err)
	}
}

// A stored entry keeps what its key does not say, and reads back whole.
func TestEntry(t *testing.T) {
	now := time.UnixMicro(time.Now().UnixMicro())
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: "alice@example.org", Domain: "example.org", Purpose: verdict.Recipient,
		Sender: "verify@gw.example", Status: verdict.Invalid, Reason: "user_unknown", Code: 550, Enhanced: "5.1.1",
		Text: "User unknown", Host: "10.0.0.5:25", CheckedAt: now, ExpiresAt: now.Add(2 * time.Hour), Source: verdict.SourceProbe}
	key := kvkey.Address("example.org", "alice", verdict.Recipient, "verify@gw.example")
	b, err := EncodeEntry(v)
	if err != nil {
		t.Fatal(err)
	}
	full, _ := EncodeVerdict(v)
	if len(b)*2 > len(full) {
		t.Errorf("entry %d bytes, the verdict message %d", len(b), len(full))
	}
	got, err := DecodeEntry(key, b)
	if err != nil || got != v {
		t.Fatalf("DecodeEntry = %+v, %v\nwant %+v", got, err, v)
	}
	// A domain fact, from its key.
	f := verdict.Verdict{Kind: verdict.KindDomain, Domain: "example.org", Purpose: verdict.Sender, Fact: kvkey.FactCatchAll,
		Status: verdict.CatchAll, Reason: "random_accepted", CheckedAt: now, ExpiresAt: now.Add(96 * time.Hour), Source: verdict.SourceProbe}
	b, _ = EncodeEntry(f)
	if got, err := DecodeEntry(kvkey.Domain("example.org", verdict.Sender, kvkey.FactCatchAll), b); err != nil || got != f {
		t.Fatalf("fact: %+v, %v", got, err)
	}
	// Values of the earlier format (a verdict message) are read too.
	if got, err := DecodeEntry(key, full); err != nil || got.Status != verdict.Invalid {
		t.Fatalf("earlier format: %+v, %v", got, err)
	}
	for _, bad := range [][]byte{{0x99, 0x02}, {0x93, 0x02, 0x01, 0xa0}, {0x99, 0x07, 0, 0xa0, 0, 0xa0, 0xa0, 0xa0, 0, 0}} {
		if _, err := DecodeEntry(key, bad); err == nil {
			t.Errorf("%x decoded", bad)
		}
	}
}

// A request's timeout is capped before it becomes a duration.
func TestVerifyRequestTimeout(t *testing.T) {
	def, max := 25*time.Second, 25*time.Second
	for _, tc := range []struct {
		ms   int
		want time.Duration
	}{
		{0, def}, {-1, def}, {math.MinInt, def}, {1, time.Millisecond}, {5000, 5 * time.Second},
		{25000, max}, {25001, max}, {math.MaxInt / 1000, max}, {math.MaxInt, max},
	} {
		req := VerifyRequest{TimeoutMS: tc.ms}
		if got := req.Timeout(def, max); got != tc.want {
			t.Errorf("timeout_ms %d: %v, want %v", tc.ms, got, tc.want)
		}
	}
}

// A request with the transaction's other party and HELO is version 2;
// one without is version 1, as before; an ingest reads both, and a side
// that speaks only version 1 refuses version 2 by name.
func TestVerifyRequestVersions(t *testing.T) {
	plain := &VerifyRequest{Address: "a@example.org"}
	full := &VerifyRequest{Address: "a@example.org", Sender: "s@example.com", Helo: "mx.example.com", ClientAddress: "192.0.2.1"}
	for _, tt := range []struct {
		req  *VerifyRequest
		want int
	}{{plain, 1}, {full, 2}} {
		b, err := Encode(tt.req)
		if err != nil {
			t.Fatal(err)
		}
		var got VerifyRequest
		if err := Decode(b, &got); err != nil || got != *tt.req || got.V != tt.want {
			t.Fatalf("got %+v (%v), want version %d of %+v", got, err, tt.want, tt.req)
		}
		// The general decoder (what an older fast path falls back to) agrees.
		var slow VerifyRequest
		if err := decodeReflect(b, &slow); err != nil || slow != got {
			t.Fatalf("reflect decode %+v %v", slow, err)
		}
		j, _ := json.Marshal(tt.req)
		var gj VerifyRequest
		if err := DecodeJSON(j, &gj); err != nil || gj.Sender != tt.req.Sender {
			t.Fatalf("json %s: %+v %v", j, gj, err)
		}
	}
	// Version 3 is nobody's yet.
	b, _ := msgpack.Marshal(map[string]any{"v": 3, "address": "a@b.org"})
	var r VerifyRequest
	if err := Decode(b, &r); !errors.Is(err, ErrVersion) {
		t.Fatalf("version 3: %v", err)
	}
	// Other messages stay at version 1 only.
	b, _ = msgpack.Marshal(map[string]any{"v": 2, "scope": "all"})
	var f FlushCommand
	if err := Decode(b, &f); !errors.Is(err, ErrVersion) {
		t.Fatalf("flush command version 2: %v", err)
	}
}
