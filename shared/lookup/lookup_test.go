package lookup

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Every way a lookup's answer can go wrong comes back as an error that
// says which; a well-formed reply comes back whole. The responder plays a
// cachekeeper that answers each case's bytes.
func TestAsk(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	hit, _ := wire.Encode(&wire.LookupReply{Hit: true, Verdict: &verdict.Verdict{Kind: verdict.KindAddress, Address: "a@example.org",
		Domain: "example.org", Status: verdict.Valid, Code: 250, CheckedAt: time.Now(), Source: verdict.SourceProbe}})
	miss, _ := wire.Encode(&wire.LookupReply{})
	noVerdict, _ := wire.Encode(&wire.LookupReply{Hit: true})
	for _, c := range []struct {
		name    string
		answer  func(m *nats.Msg)
		wantErr error
		hit     bool
	}{
		{"hit", func(m *nats.Msg) { _ = m.Respond(hit) }, nil, true},
		{"miss", func(m *nats.Msg) { _ = m.Respond(miss) }, nil, false},
		{"refused", func(m *nats.Msg) {
			r := nats.NewMsg(m.Reply)
			r.Header.Set(micro.ErrorHeader, "bad request")
			r.Header.Set(micro.ErrorCodeHeader, "400")
			_ = m.RespondMsg(r)
		}, ErrRefused, false},
		{"hit without verdict", func(m *nats.Msg) { _ = m.Respond(noVerdict) }, ErrNoVerdict, false},
		{"garbage", func(m *nats.Msg) { _ = m.Respond([]byte("\xc1\xc1\xc1")) }, nil, false},
		{"nobody", nil, nats.ErrNoResponders, false},
		{"silent", func(*nats.Msg) {}, context.DeadlineExceeded, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			subject := "test.lookup." + t.Name()[len("TestAsk/"):]
			if c.answer != nil {
				sub, err := nc.Subscribe(subject, c.answer)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = sub.Unsubscribe() }()
				_ = nc.Flush()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			r, err := Ask(ctx, nc, subject, &wire.LookupRequest{Address: "a@example.org", Purpose: verdict.Recipient})
			switch {
			case c.name == "garbage":
				if err == nil {
					t.Fatalf("garbage reply taken: %+v", r)
				}
			case c.wantErr != nil:
				if !errors.Is(err, c.wantErr) {
					t.Fatalf("error %v, want %v", err, c.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case r.Hit != c.hit || (c.hit && (r.Verdict == nil || r.Verdict.Address != "a@example.org")):
				t.Fatalf("reply %+v, want hit %v", r, c.hit)
			}
		})
	}
}
