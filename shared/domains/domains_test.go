package domains

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/subjects"
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
		if _, err := Parse("example.org", []byte(g)); err != nil {
			t.Errorf("Parse(%s): %v", g, err)
		}
	}
	// Each refusal names the field at fault.
	bad := map[string]string{
		`{"mode":"maybe"}`:                              "mode",
		`{"mode":"Static","mailboxes":["a"]}`:           "mode",
		`{"route":["nohost"]}`:                          "route",
		`{"route":["127.0.0.1"]}`:                       "route",
		`{"route":[":25"]}`:                             "route",
		`{"on_tempfail":"reject"}`:                      "on_tempfail",
		`{"on_tempfail":"Accept"}`:                      "on_tempfail",
		`{"on_unverifiable":"reject"}`:                  "on_unverifiable",
		`{"sender":"not an address"}`:                   "sender",
		`{"fallback_sender":"x"}`:                       "fallback_sender",
		`{"unknown":1}`:                                 "unknown",
		`{"mode":"static"}`:                             "mailboxes",
		`{"mode":"static","mailboxes":[" "]}`:           "mailboxes",
		`{"mode":"static","mailboxes":["a@other.org"]}`: "mailboxes",
		`{"mode":"static","mailboxes":["a b"]}`:         "mailboxes",
		`[`:                                             "",
	}
	for b, field := range bad {
		_, err := Parse("example.org", []byte(b))
		if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), field) {
			t.Errorf("Parse(%s) error = %v, want ErrPolicy naming %q", b, err, field)
		}
	}
}

func TestMailboxes(t *testing.T) {
	p, err := Policy{Mode: ModeStatic, Mailboxes: []string{"Alice", "bob@Example.ORG", " carol ", `"dave"`}}.Normalize("example.org")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(p.Mailboxes, ",") != "Alice,bob,carol,dave" {
		t.Fatalf("mailboxes %q", p.Mailboxes)
	}
	for local, want := range map[string]bool{
		"alice": true, "ALICE": true, "alice+tag": true, "alice-tag": true, "BOB+x+y": true, "dave": true,
		"eve": false, "eve+alice": false, "+alice": false, "alic": false,
	} {
		if got := p.Listed(local, "+-"); got != want {
			t.Errorf("Listed(%q) = %v, want %v", local, got, want)
		}
	}
	if p.Listed("alice+tag", "") {
		t.Error("no delimiter configured, yet alice+tag is listed")
	}
}

func TestWatchPicksUpChanges(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv, err := Bucket(ctx, js, subjects.New(""), 1)
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
	if !ok || p.EffectiveMode() != ModeStatic || !p.Listed("ALICE", "+") || p.Listed("bob", "+") {
		t.Fatalf("initial policy: %+v %v", p, ok)
	}
	if err := Put(ctx, kv, "example.org", Policy{Mode: ModeOff}); err != nil {
		t.Fatal(err)
	}
	// A garbage value must not replace the last good policy, on this
	// instance or on one that starts after the bad write.
	if _, err := kv.Put(ctx, "example.org", []byte(`{"mode":"bogus"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "other.example", []byte(`{"mode":"off"}`)); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { _, ok := tab.Lookup("other.example"); return ok })
	if p, _ := tab.Lookup("example.org"); p.EffectiveMode() != ModeOff || tab.Errors() != 1 || tab.Problems()["example.org"] == "" {
		t.Fatalf("policy after change: %+v, %d errors", p, tab.Errors())
	}
	late, err := Watch(ctx, kv, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := late.Lookup("example.org"); p.EffectiveMode() != ModeOff || late.Errors() != 1 {
		t.Fatalf("late instance: %+v, %d errors", p, late.Errors())
	}
	// A bad value with no good one before it: monitor mode with defaults
	// (called out by MX, never refused).
	if _, err := kv.Put(ctx, "new.example", []byte(`{"route":["x"]}`)); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { return tab.Errors() == 2 })
	if p, ok := tab.Lookup("new.example"); !ok || p.EffectiveMode() != ModeMonitor || !p.UsesMX() {
		t.Fatalf("bad new policy: %+v %v", p, ok)
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

// FuzzParse: any stored value either is refused with ErrPolicy or is a
// policy that passes its own checks and survives a write and a read.
func FuzzParse(f *testing.F) {
	for _, s := range []string{`{}`, `{"mode":"static","mailboxes":["a","b@example.org"]}`, `{"route":["127.0.0.1:25","mx"]}`,
		`{"mode":"Static"}`, `{"sender":"x@y.example","fallback_sender":"z@y.example"}`, `{"x":1}`, `[`,
		`{"mode":"static","lists":{"mailboxes":{"count":2,"chunks":["0123456789abcdef01234567"]}}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("example.org", data)
		if err != nil {
			if !errors.Is(err, ErrPolicy) {
				t.Fatalf("error %v is not ErrPolicy", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed policy fails its checks: %v", err)
		}
		if p.EffectiveMode() == ModeStatic && p.Count("mailboxes") == 0 {
			t.Fatal("static policy without mailboxes")
		}
		b, err := json.Marshal(record{Policy: p, Lists: p.refs})
		if err != nil {
			t.Fatal(err)
		}
		q, err := Parse("example.org", b)
		if err != nil {
			t.Fatalf("re-read of %s: %v", b, err)
		}
		if q.Count("mailboxes") != p.Count("mailboxes") || q.Complete() != p.Complete() {
			t.Fatalf("re-read of %s: lists differ", b)
		}
		for _, m := range p.Mailboxes {
			if !q.Listed(m, "") {
				t.Fatalf("mailbox %q lost on re-read", m)
			}
		}
	})
}

// A policy written around Put under a key that is not the domain's normal
// form serves the normal form, counted as an error; the key in normal
// form, once written, wins; removing it gives the domain back to the other.
func TestWatchNormalizesKeys(t *testing.T) {
	ns := natstest.Start(t)
	js := natstest.JetStream(t, ns.Connect(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv, err := Bucket(ctx, js, subjects.New(""), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "Example.ORG", []byte(`{"mode":"off"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "bad_key-.-", []byte(`{"mode":"off"}`)); err != nil {
		t.Fatal(err)
	}
	tab, err := Watch(ctx, kv, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := tab.Lookup("example.org"); !ok || p.EffectiveMode() != ModeOff || tab.Errors() != 2 || tab.Problems()["Example.ORG"] == "" {
		t.Fatalf("Example.ORG: %+v %v, problems %v", p, ok, tab.Problems())
	}
	if err := Put(ctx, kv, "example.org", Policy{Mode: ModeStatic, Mailboxes: []string{"alice"}}); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { p, _ := tab.Lookup("example.org"); return p.EffectiveMode() == ModeStatic })
	if err := kv.Delete(ctx, "example.org"); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { p, _ := tab.Lookup("example.org"); return p.EffectiveMode() == ModeOff })
	if err := kv.Delete(ctx, "Example.ORG"); err != nil {
		t.Fatal(err)
	}
	waitfor.Cond(t, 10*time.Second, func() bool { _, ok := tab.Lookup("example.org"); return !ok && tab.Errors() == 1 })
}
