package domains

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/waitfor"
)

func TestParse(t *testing.T) {
	good := []string{
		`{}`,
		`{"mode":"callout","route":["127.0.0.1:2525","[::1]:25"]}`,
		`{"mode":"static","mailboxes":["alice","bob"]}`,
		`{"mode":"off"}`,
		`{"route":["mx"],"on_tempfail":"accept","sender":"verify@gw.example.org","fallback_sender":"postmaster@gw.example.org"}`,
	}
	for _, g := range good {
		if _, err := Parse([]byte(g)); err != nil {
			t.Errorf("Parse(%s): %v", g, err)
		}
	}
	bad := []string{
		`{"mode":"maybe"}`,
		`{"route":["nohost"]}`,
		`{"on_tempfail":"reject"}`,
		`{"on_unverifiable":"reject"}`,
		`{"sender":"not an address"}`,
		`{"unknown":1}`,
		`[`,
	}
	for _, b := range bad {
		if _, err := Parse([]byte(b)); !errors.Is(err, ErrPolicy) {
			t.Errorf("Parse(%s) error = %v, want ErrPolicy", b, err)
		}
	}
}

func TestWatchPicksUpChanges(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv, err := Bucket(ctx, js, "callout_domains", 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := Put(ctx, kv, "Example.ORG", Policy{Mode: ModeStatic, Mailboxes: []string{"alice"}}); err != nil {
		t.Fatal(err)
	}
	tab, err := Watch(ctx, kv, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	p, ok := tab.Lookup("example.org")
	if !ok || p.EffectiveMode() != ModeStatic || !p.Listed("ALICE") || p.Listed("bob") {
		t.Fatalf("initial policy: %+v %v", p, ok)
	}
	if err := Put(ctx, kv, "example.org", Policy{Mode: ModeOff}); err != nil {
		t.Fatal(err)
	}
	// A garbage value must not replace the last good policy.
	if _, err := kv.Put(ctx, "example.org", []byte(`{"mode":"bogus"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "other.example", []byte(`{"mode":"off"}`)); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { _, ok := tab.Lookup("other.example"); return ok })
	if p, _ := tab.Lookup("example.org"); p.EffectiveMode() != ModeOff {
		t.Fatalf("policy after change: %+v", p)
	}
	if err := kv.Delete(ctx, "example.org"); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { _, ok := tab.Lookup("example.org"); return !ok })
}

func TestIsProbeSender(t *testing.T) {
	tab := NewTable(map[string]Policy{"a.example": {Sender: "verify@gw.example", FallbackSender: "pm@gw.example"}})
	if !tab.IsProbeSender("Verify@gw.example") || !tab.IsProbeSender("pm@gw.example") || tab.IsProbeSender("x@gw.example") {
		t.Fatal("probe senders not recognized")
	}
	tab.Set("a.example", Policy{})
	if tab.IsProbeSender("verify@gw.example") {
		t.Fatal("stale probe sender")
	}
}
