package kvkey

import (
	"errors"
	"regexp"
	"testing"

	"github.com/callout-mail/callout/shared/verdict"
)

var validKey = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

func TestKeys(t *testing.T) {
	tests := []struct {
		domain, local string
		purpose       verdict.Purpose
		sender        string
		want          string
	}{
		{"example.org", "alice", verdict.Recipient, "", "addr.example/org.alice.rcpt"},
		{"example.org", "alice", verdict.Sender, "", "addr.example/org.alice.sender"},
		{"example.org", "alice.smith", verdict.Recipient, "", "addr.example/org.alice/smith.rcpt"},
		{"example.org", "a+b/c=d", verdict.Recipient, "", "addr.example/org.a=2Bb=2Fc=3Dd.rcpt"},
		{"example.org", `"john doe"`, verdict.Recipient, "", "addr.example/org.=22john=20doe=22.rcpt"},
		{"example.org", "alice", verdict.Recipient, "probe@gw.example", "addr.example/org.alice.rcpt.probe=40gw/example"},
		{"example.org", "*", verdict.Sender, "", "addr.example/org.=2A.sender"},
		{"example.org", ">", verdict.Recipient, "", "addr.example/org.=3E.rcpt"},
	}
	for _, tt := range tests {
		got := Address(tt.domain, tt.local, tt.purpose, tt.sender)
		if got != tt.want {
			t.Errorf("Address(%q,%q,%q,%q) = %q, want %q", tt.domain, tt.local, tt.purpose, tt.sender, got, tt.want)
		}
		if !validKey.MatchString(got) {
			t.Errorf("%q is not a valid KV key", got)
		}
		k, err := Parse(got)
		if err != nil || k.Kind != "addr" || k.Domain != tt.domain || k.Local != tt.local || k.Purpose != tt.purpose || k.Sender != tt.sender {
			t.Errorf("Parse(%q) = %+v, %v", got, k, err)
		}
	}
	for p, want := range map[verdict.Purpose]string{verdict.Recipient: "domain.example/org.rcpt.catchall", verdict.Sender: "domain.example/org.sender.catchall"} {
		d := Domain("example.org", p, FactCatchAll)
		if d != want {
			t.Errorf("Domain = %q, want %q", d, want)
		}
		k, err := Parse(d)
		if err != nil || k.Kind != "domain" || k.Domain != "example.org" || k.Purpose != p || k.Fact != FactCatchAll {
			t.Errorf("Parse(%q) = %+v, %v", d, k, err)
		}
	}
}

// Keys of the layout without views are recognized and never misread.
func TestLegacyKeys(t *testing.T) {
	for _, k := range []string{"addr.example/org.alice", "addr.example/org.alice.probe=40gw/example", "domain.example/org.catchall"} {
		if _, err := Parse(k); !errors.Is(err, ErrLegacyKey) || !errors.Is(err, ErrBadKey) {
			t.Errorf("Parse(%q) error = %v, want ErrLegacyKey", k, err)
		}
	}
}

func TestParseRefusesForeignKeys(t *testing.T) {
	for _, k := range []string{"", "addr", "addr.x", "other.a.b", "addr.a=4.b", "addr.a=ZZ.b", "addr.a.b.c.d", "addr.a b.c", "addr.a.b.rcpt.c.d", "domain.a.x.catchall", "flush.all"} {
		if _, err := Parse(k); !errors.Is(err, ErrBadKey) {
			t.Errorf("Parse(%q) error = %v, want ErrBadKey", k, err)
		}
	}
}

func FuzzToken(f *testing.F) {
	f.Add("alice.smith")
	f.Add("")
	f.Add("=2E/.")
	f.Fuzz(func(t *testing.T, s string) {
		tok := Token(s)
		if !validKey.MatchString(tok) {
			t.Fatalf("Token(%q) = %q has a forbidden byte", s, tok)
		}
		for i := 0; i < len(tok); i++ {
			if tok[i] == '.' {
				t.Fatalf("Token(%q) = %q holds a separator", s, tok)
			}
		}
		back, err := ParseToken(tok)
		if err != nil || back != s {
			t.Fatalf("ParseToken(Token(%q)) = %q, %v", s, back, err)
		}
	})
}

func TestFlushDomainOf(t *testing.T) {
	for _, tt := range []struct {
		key  string
		want string
		ok   bool
	}{
		{FlushDomain("example.org"), "example.org", true},
		{FlushAddress("xn--bcher-kva.example", "a.b+c"), "xn--bcher-kva.example", true},
		{FlushAll, "", false},
		{"flush.domain.", "", false},
		{"flush.domain.=zz", "", false},
		{Address("example.org", "a", "recipient", ""), "", false},
	} {
		got, ok := FlushDomainOf(tt.key)
		if got != tt.want || ok != tt.ok {
			t.Errorf("FlushDomainOf(%q) = %q, %v; want %q, %v", tt.key, got, ok, tt.want, tt.ok)
		}
	}
}
