package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

func ctl(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), append([]string{"-server", url}, args...), &out)
	return out.String(), err
}

func TestDomainCommands(t *testing.T) {
	ns := natstest.Start(t)
	url := ns.ClientURL()
	if _, err := ctl(t, url, "domain", "set", "Example.ORG", "-route", "127.0.0.1:2525,mx", "-fallback-sender", "verify@gw.example"); err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, url, "domain", "get", "example.org")
	if err != nil || !strings.Contains(out, `"route":["127.0.0.1:2525","mx"]`) || !strings.Contains(out, "verify@gw.example") {
		t.Fatalf("get: %q %v", out, err)
	}
	if _, err := ctl(t, url, "domain", "set", "static.example", "-mode", "static", "-mailboxes", "alice, bob"); err != nil {
		t.Fatal(err)
	}
	out, _ = ctl(t, url, "domain", "ls")
	if !strings.Contains(out, "example.org") || !strings.Contains(out, `"mailboxes":["alice","bob"]`) {
		t.Fatalf("ls: %q", out)
	}
	if _, err := ctl(t, url, "domain", "set", "bad.example", "-mode", "sometimes"); err == nil {
		t.Fatal("a bad mode was stored")
	}
	if _, err := ctl(t, url, "domain", "rm", "example.org"); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl(t, url, "domain", "get", "example.org"); err == nil {
		t.Fatal("removed policy still there")
	}
}

func TestInspect(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "callout_cache"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	v := verdict.Verdict{Kind: verdict.KindAddress, Address: "alice@example.org", Domain: "example.org", Status: verdict.Invalid,
		Reason: "user_unknown", Code: 550, Enhanced: "5.1.1", Text: "User unknown", CheckedAt: now, ExpiresAt: now.Add(2 * time.Hour)}
	b, _ := wire.EncodeVerdict(v)
	if _, err := kv.Put(ctx, kvkey.Address("example.org", "alice", verdict.Recipient, ""), b); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, kvkey.Address("other.example", "bob", verdict.Recipient, ""), b); err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, ns.ClientURL(), "inspect", "-domain", "example.org")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "addr.example/org.alice") || !strings.Contains(out, "invalid") || !strings.Contains(out, "550 5.1.1") || strings.Contains(out, "other") {
		t.Fatalf("inspect: %q", out)
	}
}

func TestUsageErrors(t *testing.T) {
	ns := natstest.Start(t)
	for _, args := range [][]string{{"flush"}, {"flush", "-all", "-domain", "x.org"}, {"verify"}, {"lookup"}, {"bogus"}} {
		if _, err := ctl(t, ns.ClientURL(), args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	// Nobody answers: a clear error, not a hang.
	if _, err := ctl(t, ns.ClientURL(), "flush", "-all"); err == nil || !strings.Contains(err.Error(), "flush") {
		t.Fatalf("flush without a cachekeeper: %v", err)
	}
}

// setup creates every stream and bucket, and applies changed settings.
func TestSetup(t *testing.T) {
	ns := natstest.Start(t)
	url := ns.ClientURL()
	out, err := ctl(t, url, "setup", "-cache-ttl", "48h")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"stream CALLOUT_PROBES: ok", "stream CALLOUT_VERDICTS: ok", "bucket callout_domains: ok", "bucket callout_cache: ok"} {
		if !strings.Contains(out, want) {
			t.Fatalf("setup output %q lacks %q", out, want)
		}
	}
	nc := ns.Connect(t)
	js := natstest.JetStream(t, nc)
	kv, err := js.KeyValue(context.Background(), "callout_cache")
	if err != nil {
		t.Fatal(err)
	}
	st, _ := kv.Status(context.Background())
	if st.TTL() != 48*time.Hour || st.LimitMarkerTTL() == 0 {
		t.Fatalf("cache bucket ttl %v markers %v", st.TTL(), st.LimitMarkerTTL())
	}
	if _, err := ctl(t, url, "setup", "-cache-ttl", "96h"); err != nil {
		t.Fatal(err)
	}
	st, _ = kv.Status(context.Background())
	if st.TTL() != 96*time.Hour {
		t.Fatalf("setup did not update the ttl: %v", st.TTL())
	}
	// The audit trail is kept by age with a size cap, never by count: a
	// flood of events cannot push last week's out.
	if _, err := ctl(t, url, "setup", "-audit-max-age", "720h", "-audit-max-bytes", "67108864"); err != nil {
		t.Fatal(err)
	}
	as, err := js.Stream(context.Background(), "CALLOUT_AUDIT")
	if err != nil {
		t.Fatal(err)
	}
	info, err := as.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c := info.Config; c.MaxAge != 720*time.Hour || c.MaxBytes != 64<<20 || c.MaxMsgs > 0 {
		t.Fatalf("audit stream limits: age %v bytes %d msgs %d", c.MaxAge, c.MaxBytes, c.MaxMsgs)
	}
}

// A bad policy is refused where it is written, naming the field.
func TestDomainSetRefusals(t *testing.T) {
	ns := natstest.Start(t)
	url := ns.ClientURL()
	for _, tt := range []struct {
		args  []string
		field string
	}{
		{[]string{"-mode", "Static", "-mailboxes", "a"}, "mode"},
		{[]string{"-mode", "static"}, "mailboxes"},
		{[]string{"-mode", "static", "-mailboxes", "a@other.example"}, "mailboxes"},
		{[]string{"-route", "127.0.0.1"}, "route"},
		{[]string{"-on-tempfail", "Accept"}, "on_tempfail"},
		{[]string{"-fallback-sender", "nobody"}, "fallback_sender"},
	} {
		_, err := ctl(t, url, append([]string{"domain", "set", "x.example"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%v: %v, want an error naming %s", tt.args, err, tt.field)
		}
	}
	if _, err := ctl(t, url, "domain", "set", "x.example", "-mode", "static", "-mailboxes", "Alice,bob@X.example"); err != nil {
		t.Fatal(err)
	}
	out, _ := ctl(t, url, "domain", "get", "x.example")
	if !strings.Contains(out, `"mailboxes":["Alice","bob"]`) {
		t.Fatalf("stored %s", out)
	}
}

// Every operator change is one audit event with who, when and what.
func TestAuditTrail(t *testing.T) {
	ns := natstest.Start(t)
	url := ns.ClientURL()
	t0 := time.Now().Add(-time.Second)
	for _, args := range [][]string{
		{"domain", "set", "a.example", "-route", "127.0.0.1:2525"},
		{"domain", "set", "a.example", "-route", "127.0.0.1:2525", "-mode", "monitor"},
		{"domain", "rm", "a.example"},
	} {
		if _, err := ctl(t, url, args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	if _, err := ctl(t, url, "domain", "set", "b.example", "-mode", "Bad"); err == nil {
		t.Fatal("a bad policy was stored")
	}
	out, err := ctl(t, url, "audit", "-json")
	if err != nil {
		t.Fatal(err)
	}
	var evs []struct {
		At     time.Time       `json:"at"`
		Who    string          `json:"who"`
		What   string          `json:"what"`
		Domain string          `json:"domain"`
		Before json.RawMessage `json:"before"`
		After  json.RawMessage `json:"after"`
	}
	if err := json.Unmarshal([]byte(out), &evs); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3 (a refused change is none): %s", len(evs), out)
	}
	for _, ev := range evs {
		if ev.Who == "" || ev.At.Before(t0) || ev.Domain != "a.example" {
			t.Fatalf("event %+v", ev)
		}
	}
	if evs[0].What != "policy.set" || evs[0].Before != nil || !strings.Contains(string(evs[0].After), "127.0.0.1:2525") {
		t.Fatalf("first event %+v", evs[0])
	}
	if evs[1].What != "policy.set" || strings.Contains(string(evs[1].Before), "monitor") || !strings.Contains(string(evs[1].After), "monitor") {
		t.Fatalf("monitor switch %s -> %s", evs[1].Before, evs[1].After)
	}
	if evs[2].What != "policy.rm" || !strings.Contains(string(evs[2].Before), "monitor") {
		t.Fatalf("removal %+v", evs[2])
	}
	table, err := ctl(t, url, "audit", "-n", "1")
	if err != nil || !strings.Contains(table, "policy.rm") || strings.Contains(table, "policy.set") {
		t.Fatalf("audit -n 1: %q %v", table, err)
	}
}

// A domain's list shown, changed one entry at a time, imported with a
// dry run first.
func TestDomainList(t *testing.T) {
	ns := natstest.Start(t)
	url := ns.ClientURL()
	if _, err := ctl(t, url, "domain", "set", "lists.test", "-mode", "static", "-mailboxes", "alice,bob"); err != nil {
		t.Fatal(err)
	}
	if out, err := ctl(t, url, "domain", "list", "lists.test", "mailboxes", "add", "Carol@lists.test"); err != nil || !strings.Contains(out, "1 added, 0 removed, 3 entries") {
		t.Fatalf("add: %q %v", out, err)
	}
	if out, err := ctl(t, url, "domain", "list", "lists.test", "mailboxes", "rm", "BOB"); err != nil || !strings.Contains(out, "0 added, 1 removed, 2 entries") {
		t.Fatalf("rm: %q %v", out, err)
	}
	if _, err := ctl(t, url, "domain", "list", "lists.test", "mailboxes", "rm", "nobody"); err == nil {
		t.Fatal("removed an entry not on the list")
	}
	file := filepath.Join(t.TempDir(), "list.csv")
	if err := os.WriteFile(file, []byte("local_part\ndave\nerin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, url, "domain", "list", "lists.test", "mailboxes", "import", file, "-dry-run")
	if err != nil || !strings.Contains(out, "would change: 2 added, 2 removed, 2 entries") || !strings.Contains(out, "+ dave") || !strings.Contains(out, "- alice") {
		t.Fatalf("dry run: %q %v", out, err)
	}
	if out, err := ctl(t, url, "domain", "list", "lists.test", "mailboxes"); err != nil || out != "alice\nCarol\n" {
		t.Fatalf("after a dry run: %q %v", out, err)
	}
	if _, err := ctl(t, url, "domain", "list", "lists.test", "mailboxes", "import", file, "-merge"); err != nil {
		t.Fatal(err)
	}
	if out, err := ctl(t, url, "domain", "list", "lists.test", "mailboxes"); err != nil || out != "alice\nCarol\ndave\nerin\n" {
		t.Fatalf("after a merge: %q %v", out, err)
	}
	// A long list: imported, edited one entry at a time, listed whole.
	var long strings.Builder
	for i := range 30_000 {
		fmt.Fprintf(&long, "u%05d\n", i)
	}
	if err := os.WriteFile(file, []byte(long.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := ctl(t, url, "domain", "list", "lists.test", "mailboxes", "import", file); err != nil || !strings.Contains(out, "30000 added, 4 removed, 30000 entries") {
		t.Fatalf("long import: %q %v", out, err)
	}
	if out, err := ctl(t, url, "domain", "list", "lists.test", "mailboxes", "rm", "u00042"); err != nil || !strings.Contains(out, "0 added, 1 removed, 29999 entries") {
		t.Fatalf("rm from a long list: %q %v", out, err)
	}
	out, err = ctl(t, url, "domain", "list", "lists.test", "mailboxes")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); err != nil || len(lines) != 29_999 || slices.Contains(lines, "u00042") || !slices.Contains(lines, "u29999") {
		t.Fatalf("long list: %d lines, %v", len(lines), err)
	}
}

// Users and tokens from the command line: the console's records, each
// change in the audit trail.
func TestUserCommands(t *testing.T) {
	ns := natstest.Start(t)
	url := ns.ClientURL()
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("a-long-password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl(t, url, "user", "add", "carol", "-role", "domain", "-domains", "Example.ORG,b.example", "-password-file", pw); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl(t, url, "user", "add", "carol", "-role", "domain", "-domains", "x.example", "-password-file", pw); err == nil {
		t.Fatal("a second carol was made")
	}
	if _, err := ctl(t, url, "user", "add", "dave", "-role", "domain", "-password-file", pw); err == nil {
		t.Fatal("a domain user without domains was made")
	}
	if _, err := ctl(t, url, "user", "set", "carol", "-disable"); err != nil {
		t.Fatal(err)
	}
	out, err := ctl(t, url, "user", "ls")
	if err != nil || !strings.Contains(out, "carol") || !strings.Contains(out, "b.example,example.org") || !strings.Contains(out, "disabled") {
		t.Fatalf("user ls: %q %v", out, err)
	}
	if _, err := ctl(t, url, "token", "add", "carol", "-role", "admin"); err == nil {
		t.Fatal("a token above its user's role was made")
	}
	if _, err := ctl(t, url, "token", "add", "carol", "-domains", "c.example"); err == nil {
		t.Fatal("a token of another's domain was made")
	}
	out, err = ctl(t, url, "token", "add", "carol", "-domains", "example.org", "-days", "7", "-label", "ci")
	if err != nil || !strings.Contains(out, "cot_") {
		t.Fatalf("token add: %q %v", out, err)
	}
	id := strings.Fields(out)[1]
	out, _ = ctl(t, url, "token", "ls", "-user", "carol")
	if !strings.Contains(out, id) || !strings.Contains(out, "ci") || strings.Contains(out, "cot_") {
		t.Fatalf("token ls (the token itself is never shown again): %q", out)
	}
	if _, err := ctl(t, url, "token", "rm", id); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl(t, url, "user", "rm", "carol"); err != nil {
		t.Fatal(err)
	}
	out, _ = ctl(t, url, "audit", "-json")
	for _, what := range []string{`"user.set"`, `"token.add"`, `"token.rm"`, `"user.rm"`} {
		if !strings.Contains(out, what) {
			t.Errorf("audit trail lacks %s", what)
		}
	}
	if strings.Contains(out, "$2a$") {
		t.Error("a password hash is in the audit trail")
	}
}
