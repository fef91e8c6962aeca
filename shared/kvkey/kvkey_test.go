package kvkey

import (
	"errors"
	"regexp"
	"testing"
)

var validKey = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

func TestKeys(t *testing.T) {
	tests := []struct {
		domain, local, sender string
		want                  string
	}{
		{"example.org", "alice", "", "addr.example/org.alice"},
		{"example.org", "alice.smith", "", "addr.example/org.alice/smith"},
		{"example.org", "a+b/c=d", "", "addr.example/org.a=2Bb=2Fc=3Dd"},
		{"example.org", `"john doe"`, "", "addr.example/org.=22john=20doe=22"},
		{"example.org", "alice", "probe@gw.example", "addr.example/org.alice.probe=40gw/example"},
		{"example.org", "*", "", "addr.example/org.=2A"},
		{"example.org", ">", "", "addr.example/org.=3E"},
	}
	for _, tt := range tests {
		got := Address(tt.domain, tt.local, tt.sender)
		if got != tt.want {
			t.Errorf("Address(%q,%q,%q) = %q, want %q", tt.domain, tt.local, tt.sender, got, tt.want)
		}
		if !validKey.MatchString(got) {
			t.Errorf("%q is not a valid KV key", got)
		}
		k, err := Parse(got)
		if err != nil || k.Kind != "addr" || k.Domain != tt.domain || k.Local != tt.local || k.Sender != tt.sender {
			t.Errorf("Parse(%q) = %+v, %v", got, k, err)
		}
	}
	d := Domain("example.org", FactCatchAll)
	if d != "domain.example/org.catchall" {
		t.Errorf("Domain = %q", d)
	}
	k, err := Parse(d)
	if err != nil || k.Kind != "domain" || k.Domain != "example.org" || k.Fact != FactCatchAll {
		t.Errorf("Parse(%q) = %+v, %v", d, k, err)
	}
}

func TestParseRefusesForeignKeys(t *testing.T) {
	for _, k := range []string{"", "addr", "addr.x", "other.a.b", "addr.a=4.b", "addr.a=ZZ.b", "addr.a.b.c.d", "addr.a b.c"} {
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
