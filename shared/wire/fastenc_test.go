package wire

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/callout-mail/callout/shared/verdict"
)

// plainReply has VerifyReply's fields and tags without its encoder: what
// reflection writes.
type plainReply struct {
	V           int               `msgpack:"v"`
	Decision    verdict.Decision  `msgpack:"decision"`
	Verdict     *verdict.Verdict  `msgpack:"verdict,omitempty"`
	Error       string            `msgpack:"error,omitempty"`
	Would       *verdict.Decision `msgpack:"would,omitempty"`
	WouldReject bool              `msgpack:"would_reject,omitempty"`
	Transcript  []TraceLine       `msgpack:"transcript,omitempty"`
}

// The hand-written encoder writes the bytes the struct tags would, for
// replies with every field set, none, and the usual ones.
func TestFastReplyEncoding(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.UTC)
	full := verdict.Verdict{Kind: verdict.KindAddress, Address: "a@example.org", Domain: "example.org", Purpose: verdict.Sender, Sender: "probe@x.example",
		Fact: "catch_all", Status: verdict.Invalid, Reason: "user_unknown", Code: 550, Enhanced: "5.1.1", Text: "no such user", Host: "mx:25",
		CheckedAt: now, ExpiresAt: now.Add(time.Hour), Source: verdict.SourceCache}
	d := verdict.Decision{Action: verdict.Reject, Code: 550, Enhanced: "5.1.1", Text: "<a@example.org>: Recipient address rejected: User unknown"}
	for name, rep := range map[string]VerifyReply{
		"empty":     {},
		"hit":       {V: Version, Decision: verdict.Decision{Action: verdict.Accept, Code: 250, Enhanced: "2.1.5", Text: "ok"}, Verdict: &verdict.Verdict{Kind: verdict.KindAddress, Address: "a@example.org", Domain: "example.org", Status: verdict.Valid, CheckedAt: now, ExpiresAt: now.Add(96 * time.Hour), Source: verdict.SourceCache}},
		"full":      {V: Version, Decision: d, Verdict: &full, Error: "x", Would: &d, WouldReject: true, Transcript: []TraceLine{{AtMS: 1.5, Host: "mx:25", Kind: "C", Text: "EHLO"}, {Kind: "*", Text: "note"}}},
		"no expiry": {V: Version, Decision: d, Verdict: &verdict.Verdict{Kind: verdict.KindAddress, Status: verdict.Malformed, CheckedAt: now, Source: verdict.SourceStatic}},
		// Every length form of strings, every size of numbers, and the
		// three forms of timestamps (32-bit: whole seconds; 64-bit; 96-bit:
		// before 1970 or after 2514).
		"long texts": {V: Version, Decision: verdict.Decision{Action: verdict.Defer, Code: 451, Text: strings.Repeat("x", 31)},
			Verdict: &verdict.Verdict{Text: strings.Repeat("t", 32), Host: strings.Repeat("h", 255), Reason: verdict.Reason(strings.Repeat("r", 256)), Enhanced: strings.Repeat("e", 70000),
				Code: 128, CheckedAt: time.Unix(1700000000, 0), ExpiresAt: time.Date(1960, 1, 1, 0, 0, 0, 5, time.UTC)}},
		"numbers":  {V: 255, Decision: verdict.Decision{Code: 65535}, Error: "e", Verdict: &verdict.Verdict{Code: 70000, CheckedAt: time.Date(2600, 1, 1, 0, 0, 0, 0, time.UTC)}},
		"negative": {V: -1, Decision: verdict.Decision{Code: -33}, Verdict: &verdict.Verdict{Code: -200, CheckedAt: now}, Would: &verdict.Decision{Code: -40000}},
		"huge":     {V: -3000000000, Decision: verdict.Decision{Code: 5000000000}, Verdict: &verdict.Verdict{Code: 127, CheckedAt: now}},
	} {
		fast, err := msgpack.Marshal(&rep)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := msgpack.Marshal(&plainReply{rep.V, rep.Decision, rep.Verdict, rep.Error, rep.Would, rep.WouldReject, rep.Transcript})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fast, plain) {
			t.Errorf("%s: hand-written encoding differs from the tags'\n%x\n%x", name, fast, plain)
		}
		appended, err := rep.AppendMsgpack([]byte("prefix"))
		if err != nil || !bytes.Equal(appended, append([]byte("prefix"), plain...)) {
			t.Errorf("%s: AppendMsgpack differs from the tags' encoding: %v", name, err)
		}
		var back VerifyReply
		if err := msgpack.Unmarshal(fast, &back); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// The reply of a cache hit, encoded as the ingest does for every request.
func BenchmarkEncodeHitReply(b *testing.B) {
	now := time.Now()
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: "alice@example.org", Domain: "example.org", Purpose: verdict.Recipient, Status: verdict.Valid,
		Reason: "accepted", Code: 250, Enhanced: "2.1.5", CheckedAt: now, ExpiresAt: now.Add(time.Hour), Source: verdict.SourceCache}
	rep := VerifyReply{Decision: verdict.Decision{Action: verdict.Accept, Code: 250, Enhanced: "2.1.5", Text: "<alice@example.org>: Recipient OK"}, Verdict: &v}
	b.Run("Encode", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := Encode(&rep); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AppendMsgpack", func(b *testing.B) {
		b.ReportAllocs()
		var buf []byte
		for i := 0; i < b.N; i++ {
			var err error
			if buf, err = rep.AppendMsgpack(buf[:0]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// The other hand-written encoders write the bytes reflection writes, for
// the decoder's samples and a few edge cases.
func TestFastEncoding(t *testing.T) {
	many := make([]string, 20)
	for i := range many {
		many[i] = strings.Repeat("h", i)
	}
	ms := append(fastSamples(),
		&VerifyRequest{}, &ProbeJob{}, &verdictMsg{},
		&ProbeJob{Address: "a@b.org", Route: many, RequestedAt: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC), V: -70000},
		&VerifyRequest{Address: "a@b.org", TimeoutMS: -1},
	)
	for _, m := range ms {
		a, ok := m.(appender)
		if !ok {
			t.Fatalf("%T has no hand-written encoder", m)
		}
		fast, err := a.AppendMsgpack(nil)
		if err != nil {
			t.Fatal(err)
		}
		plain, err := msgpack.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fast, plain) {
			t.Errorf("%T %+v: hand-written encoding differs from the tags'\n%x\n%x", m, m, fast, plain)
		}
	}
}
