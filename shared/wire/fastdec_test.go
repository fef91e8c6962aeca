package wire

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/callout-mail/callout/shared/verdict"
)

// fastSamples are messages with every field the fast decoder reads set,
// in every length form of strings and numbers and every timestamp form.
func fastSamples() []Message {
	now := time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)
	full := verdict.Verdict{Kind: verdict.KindAddress, Address: "a@example.org", Domain: "example.org", Purpose: verdict.Sender, Sender: "probe@x.example",
		Fact: "catch_all", Status: verdict.Invalid, Reason: "user_unknown", Code: 550, Enhanced: "5.1.1", Text: strings.Repeat("t", 300), Host: "mx:25",
		CheckedAt: now, ExpiresAt: now.Add(time.Hour), Source: verdict.SourceCache}
	d := verdict.Decision{Action: verdict.Reject, Code: 550, Enhanced: "5.1.1", Text: "<a@example.org>: Recipient address rejected: User unknown"}
	return []Message{
		&VerifyRequest{Address: "a@example.org"},
		&VerifyRequest{Address: "a@example.org", Purpose: verdict.Sender, ClientAddress: "192.0.2.1", TimeoutMS: 70000, Trace: true},
		&VerifyReply{Decision: d, Verdict: &full, Error: "x", Would: &d, WouldReject: true},
		&VerifyReply{Decision: verdict.Decision{Action: verdict.Defer, Code: -5}, Verdict: &verdict.Verdict{Code: -200, CheckedAt: time.Unix(1700000000, 0), ExpiresAt: time.Date(1960, 1, 1, 0, 0, 0, 5, time.UTC)}},
		&ProbeJob{Address: "a@example.org", Purpose: verdict.Recipient, SkipRandom: true, RequestedAt: now, Routed: true, Route: []string{"mx1:25", "mx2:2525"},
			Sender: "s@x.example", FallbackSender: "f@x.example", Control: ControlRefused, Refresh: true},
		&ProbeJob{Address: "b@example.org", Route: []string{}, RequestedAt: time.Date(2600, 1, 1, 0, 0, 0, 0, time.UTC)},
		&verdictMsg{Verdict: full},
		&verdictMsg{Verdict: verdict.Verdict{Kind: verdict.KindDomain, Domain: "example.org", Status: verdict.NotCatchAll, Code: 5000000000}},
	}
}

// decodeBoth decodes data into a new value of m's type by the fast and by
// the reflecting decoder: fast reports whether the fast one took it.
func decodeBoth(m Message, data []byte) (fastV, reflV any, fast bool, reflErr error) {
	typ := reflect.TypeOf(m).Elem()
	f := reflect.New(typ).Interface()
	fast = f.(fastDecoder).decodeFast(&reader{b: data})
	r := reflect.New(typ).Interface()
	reflErr = decodeReflect(data, r.(Message))
	return f, r, fast, reflErr
}

// Every sample takes the fast way and comes out as the reflecting decoder
// makes it.
func TestFastDecode(t *testing.T) {
	for _, m := range fastSamples() {
		data, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		f, r, fast, err := decodeBoth(m, data)
		if !fast || err != nil {
			t.Fatalf("%T %+v: fast %v, reflecting decoder %v", m, m, fast, err)
		}
		if !reflect.DeepEqual(f, r) {
			t.Errorf("%T: fast %+v, reflecting %+v", m, f, r)
		}
	}
	// Forms our encoders do not write go the reflecting way, and decode.
	for _, tt := range []struct {
		name string
		v    any
		ok   bool // what the reflecting decoder says
	}{
		{"unknown key", map[string]any{"v": 1, "address": "a@b.org", "new_field": 1}, true},
		{"nil value", map[string]any{"v": 1, "address": "a@b.org", "purpose": nil}, true},
		{"binary string", map[string]any{"v": 1, "address": []byte("a@b.org")}, true},
		{"float", map[string]any{"v": 1.0, "address": "a@b.org"}, false},
	} {
		data, _ := msgpack.Marshal(tt.v)
		var req VerifyRequest
		if (&req).decodeFast(&reader{b: data}) {
			t.Errorf("%s: taken by the fast decoder", tt.name)
		}
		req = VerifyRequest{}
		if err := Decode(data, &req); (err == nil) != tt.ok || (tt.ok && req.Address != "a@b.org") {
			t.Errorf("%s: %+v %v", tt.name, req, err)
		}
	}
}

// FuzzFastDecode: whatever the fast decoder takes, the reflecting one
// takes too and decodes to the same value; neither panics.
func FuzzFastDecode(f *testing.F) {
	for _, m := range fastSamples() {
		b, _ := Encode(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, m := range []Message{&VerifyRequest{}, &VerifyReply{}, &ProbeJob{}, &verdictMsg{}} {
			fv, rv, fast, err := decodeBoth(m, data)
			if !fast {
				continue
			}
			if err != nil {
				t.Fatalf("%T: the fast decoder took what the reflecting one refuses (%v)", m, err)
			}
			if !reflect.DeepEqual(fv, rv) {
				t.Fatalf("%T: fast %+v, reflecting %+v", m, fv, rv)
			}
		}
	})
}

// A verify request, decoded by the ingest for every request.
func BenchmarkDecodeVerifyRequest(b *testing.B) {
	data, _ := Encode(&VerifyRequest{Address: "alice@example.org", ClientAddress: "192.0.2.1"})
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			var r VerifyRequest
			if err := Decode(data, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reflect", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			var r VerifyRequest
			if err := decodeReflect(data, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A verdict, decoded by the cachekeeper and the ingest for every callout.
func BenchmarkDecodeVerdict(b *testing.B) {
	data, _ := Encode(fastSamples()[6])
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := DecodeVerdict(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reflect", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			var m verdictMsg
			if err := decodeReflect(data, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
