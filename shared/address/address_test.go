package address

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want string
		err  error
	}{
		{"alice@example.org", "alice@example.org", nil},
		{"<Alice@Example.ORG>", "Alice@example.org", nil},
		{" <bob.smith+tag@mail.example.org> ", "bob.smith+tag@mail.example.org", nil},
		{`"alice"@example.org`, "alice@example.org", nil},
		{`"john doe"@example.org`, `"john doe"@example.org`, nil},
		{`"a\"b"@example.org`, `"a\"b"@example.org`, nil},
		{`"a@b"@example.org`, `"a@b"@example.org`, nil},
		{"user@bücher.example", "user@xn--bcher-kva.example", nil},
		{"user@BÜCHER.example", "user@xn--bcher-kva.example", nil},
		{"", "", ErrEmpty},
		{"<>", "", ErrEmpty},
		{"alice", "", ErrNoAt},
		{"alice@", "", ErrEmptyPart},
		{"alice@.", "", ErrEmptyPart},
		{"@example.org", "", ErrEmptyPart},
		{"alice@example.org.", "alice@example.org", nil},
		{"<alice@Example.ORG.>", "alice@example.org", nil},
		{"alice@example.org..", "", ErrDomainSyntax},
		// Full-width and ideographic full stops map to "." under IDNA: the
		// root's dot they give is dropped as an ASCII one is, and a name
		// that is one label before it stays refused.
		{"a@bücher。de。", "a@xn--bcher-kva.de", nil},
		{"a@bücher.de．", "a@xn--bcher-kva.de", nil},
		{"a@example.org。", "a@example.org", nil},
		{"0@ß。", "", ErrDomainSyntax},
		{"0@xn--tda.", "", ErrDomainSyntax},
		{"a@bücher.de。。", "", ErrDomainSyntax},
		{".alice@example.org", "", ErrLocalSyntax},
		{"al..ice@example.org", "", ErrLocalSyntax},
		{"al ice@example.org", "", ErrLocalSyntax},
		{"al(ice@example.org", "", ErrLocalSyntax},
		{"alice@example.org\r\nDATA", "", ErrControl},
		{"alice@example.org\nRCPT TO:<x@y.z>", "", ErrControl},
		{"ali\x00ce@example.org", "", ErrControl},
		{"alice@exa\tmple.org", "", ErrControl},
		{"alice@[127.0.0.1]", "", ErrAddressLiteral},
		{"alice@[IPv6:::1]", "", ErrAddressLiteral},
		{"alice@localhost", "", ErrDomainSyntax},
		{"alice@-bad.example", "", ErrDomainSyntax},
		{"alice@exa_mple.org", "", ErrDomainSyntax},
		{"alice@example..org", "", ErrDomainSyntax},
		{"jörg@example.org", "", ErrNonASCIILocal},
		{strings.Repeat("a", 65) + "@example.org", "", ErrLocalTooLong},
		{strings.Repeat("a", 64) + "@example.org", strings.Repeat("a", 64) + "@example.org", nil},
		{"a@" + strings.Repeat("b", 64) + ".org", "", ErrDomainSyntax},
		{"a@" + strings.Repeat(strings.Repeat("b", 62)+".", 4) + "org", "", ErrPathTooLong},
		{strings.Repeat("x", 5000), "", ErrTooLong},
		{`"unterminated@example.org`, "", ErrLocalSyntax},
		{`"a"b@example.org`, "", ErrNoAt},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("Parse(%q) error = %v, want %v", tt.in, err, tt.err)
			}
			var ae *Error
			if err != nil && !errors.As(err, &ae) {
				t.Errorf("Parse(%q) error %T is not *Error", tt.in, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q) unexpected error %v", tt.in, err)
			continue
		}
		if got.String() != tt.want {
			t.Errorf("Parse(%q) = %q, want %q", tt.in, got.String(), tt.want)
		}
	}
}

func TestBroken(t *testing.T) {
	for in, broken := range map[string]bool{
		"":                                       true,
		"<>":                                     true,
		"alice":                                  true,
		"alice@":                                 true,
		"@example.org":                           true,
		"a@b.example\r\nDATA":                    true,
		"ali\x00ce@example.org":                  true,
		strings.Repeat("x", 5000):                true,
		"alice@exa_mple.org":                     false,
		"alice@localhost":                        false,
		"alice@-bad.example":                     false,
		"alice@[127.0.0.1]":                      false,
		"jörg@example.org":                       false,
		"taro..yamada@example.org":               false,
		strings.Repeat("a", 65) + "@example.org": false,
		"a@" + strings.Repeat(strings.Repeat("b", 62)+".", 4) + "org": false,
	} {
		_, err := Parse(in)
		if err == nil {
			t.Errorf("Parse(%q) accepted", in)
			continue
		}
		if Broken(err) != broken {
			t.Errorf("Broken(Parse(%q)) = %v, want %v (%v)", in, !broken, broken, err)
		}
	}
}

// FuzzParse proves that no accepted address can add a line or a second
// command when written into RCPT TO, and that normalization is stable.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"alice@example.org", `"a b"@example.org`, "a@b.c\r\nDATA", `"x\"@y"@z.org`, "<a@bücher.de>", "a\x00@b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			return
		}
		cmd := "RCPT TO:<" + a.String() + ">\r\n"
		if strings.Count(cmd, "\n") != 1 || strings.Count(cmd, "\r") != 1 || strings.ContainsRune(cmd, 0) {
			t.Fatalf("address %q gives command %q", s, cmd)
		}
		if strings.Count(cmd, ">") != 1 && !strings.HasPrefix(a.Local, `"`) {
			t.Fatalf("address %q closes the path early: %q", s, cmd)
		}
		if len(a.String())+2 > MaxPath {
			t.Fatalf("address %q longer than a path may be", a)
		}
		b, err := Parse(a.String())
		if err != nil || b != a {
			t.Fatalf("normalized %q does not parse to itself: %v %v", a, b, err)
		}
	})
}

// The ASCII shortcut gives what IDNA gives, or IDNA decides.
func TestPlainASCIIMatchesIDNA(t *testing.T) {
	for _, d := range []string{
		"example.org", "Example.ORG", "mx-1.example.org", "a.b", "-a.example", "a-.example", "ab--cd.example",
		"xn--bcher-kva.example", "XN--BCHER-KVA.example", "a..b", ".a", "1.2.3.4", "ex_ample.org", "a.b-",
		"0-0.0", "ab-c-.d", "a-b--c.org", "x.yz--", "ä.example", "a.b.c.d.e.f.g.h",
	} {
		fast, ok := plainASCII(d)
		if !ok {
			continue
		}
		slow, err := idnaProfile.ToASCII(d)
		if err != nil {
			t.Errorf("%q: shortcut gives %q, IDNA refuses: %v", d, fast, err)
			continue
		}
		if strings.ToLower(slow) != fast {
			t.Errorf("%q: shortcut gives %q, IDNA %q", d, fast, strings.ToLower(slow))
		}
	}
}

func BenchmarkNormalizeDomain(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := NormalizeDomain("mx.sat.bench.example"); err != nil {
			b.Fatal(err)
		}
	}
}

// The shortcut never disagrees with IDNA on what it takes.
func FuzzPlainASCII(f *testing.F) {
	for _, d := range []string{"example.org", "Ex-Ample.ORG", "xn--bcher-kva.example", "a.b"} {
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, d string) {
		fast, ok := plainASCII(d)
		if !ok {
			return
		}
		slow, err := idnaProfile.ToASCII(d)
		if err != nil || strings.ToLower(slow) != fast {
			t.Fatalf("%q: shortcut %q, IDNA %q, %v", d, fast, slow, err)
		}
	})
}
