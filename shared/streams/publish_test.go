package streams

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/natstest"
)

func TestQuickAck(t *testing.T) {
	for _, tt := range []struct {
		in  string
		seq uint64
		ok  bool
	}{
		{`{"stream":"KV_callout_cache","seq":149}`, 149, true},
		{`{"stream":"S","seq":7,"duplicate":true}`, 7, true},
		{`{"stream":"S","seq":18446744073709551615}`, 18446744073709551615, true},
		{`{"stream":"S","seq":18446744073709551616}`, 0, false},
		{`{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"}}`, 0, false},
		{`{"stream":"S","seq":5,"error":{"code":503}}`, 0, false},
		{`{"stream":"S","domain":"hub","seq":5}`, 0, false}, // left to the decoder
		{`{"stream":"","seq":5}`, 0, false},
		{`{"stream":"a\"b","seq":5}`, 0, false},
		{`{"stream":"S","seq":05}`, 0, false},
		{`{"stream":"S","seq":5`, 0, false},
		{`{"stream":"S","seq":-1}`, 0, false},
	} {
		seq, ok := quickAck([]byte(tt.in))
		if seq != tt.seq || ok != tt.ok {
			t.Errorf("quickAck(%s) = %d %v, want %d %v", tt.in, seq, ok, tt.seq, tt.ok)
		}
	}
}

// FuzzQuickAck: what the hand reader takes, JSON reads the same way.
func FuzzQuickAck(f *testing.F) {
	for _, s := range []string{`{"stream":"S","seq":1}`, `{"stream":"S","seq":7,"duplicate":true}`, `{"error":{"code":1}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		seq, ok := quickAck(b)
		if !ok {
			return
		}
		var ack struct {
			Error  *jetstream.APIError `json:"error"`
			Stream string              `json:"stream"`
			Seq    uint64              `json:"seq"`
		}
		if err := json.Unmarshal(b, &ack); err != nil || ack.Error != nil || ack.Stream == "" || ack.Seq != seq {
			t.Fatalf("%q: read %d, JSON %+v %v", b, seq, ack, err)
		}
	})
}

// Publish stores and returns the sequence, and reports refusals and a
// missing stream as the jetstream client does.
func TestPublish(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	for want := uint64(1); want <= 2; want++ {
		seq, err := Publish(ctx, nc, &nats.Msg{Subject: "s.a", Data: []byte("x")})
		if err != nil || seq != want {
			t.Fatalf("publish %d: %d %v", want, seq, err)
		}
	}
	m := ExpectLast("s.a", nil, 1, 0)
	if _, err := Publish(ctx, nc, m); !WrongLastSequence(err) {
		t.Fatalf("wrong last sequence: %v", err)
	}
	var apiErr *jetstream.APIError
	if _, err := Publish(ctx, nc, m); !errors.As(err, &apiErr) || apiErr.Code != 400 {
		t.Fatalf("refusal: %v", err)
	}
	if _, err := Publish(ctx, nc, &nats.Msg{Subject: "nostream.a"}); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("no stream: %v", err)
	}
}

func TestExpectLast(t *testing.T) {
	m := ExpectLast("s.a", []byte("x"), 7, 5*time.Second)
	if m.Header.Get(jetstream.ExpectedLastSubjSeqHeader) != "7" || m.Header.Get(jetstream.MsgTTLHeader) != "5s" || string(m.Data) != "x" {
		t.Fatalf("headers %v", m.Header)
	}
	if m := ExpectLast("s.a", nil, 0, 0); m.Header.Get(jetstream.ExpectedLastSubjSeqHeader) != "0" || m.Header.Get(jetstream.MsgTTLHeader) != "" {
		t.Fatalf("no ttl, a new subject: headers %v", m.Header)
	}
}
