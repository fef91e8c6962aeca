// Package address parses and normalizes SMTP envelope addresses (RFC 5321
// Mailbox) so that an accepted address can be written into an SMTP command
// without changing its meaning.
package address

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// Limits from RFC 5321 section 4.5.3.1.
const (
	MaxLocal  = 64
	MaxDomain = 255
	MaxPath   = 256 // including the angle brackets
	maxInput  = 1024
)

// Reasons an address is refused. Test with errors.Is.
var (
	ErrEmpty          = errors.New("empty address")
	ErrTooLong        = errors.New("address too long")
	ErrControl        = errors.New("control character in address")
	ErrNoAt           = errors.New("no @ in address")
	ErrLocalSyntax    = errors.New("bad local part")
	ErrLocalTooLong   = errors.New("local part longer than 64 octets")
	ErrNonASCIILocal  = errors.New("non-ASCII local part")
	ErrDomainSyntax   = errors.New("bad domain")
	ErrDomainTooLong  = errors.New("domain longer than 255 octets")
	ErrAddressLiteral = errors.New("address literals are not verified")
	ErrEmptyPart      = errors.New("empty local part or domain")
	ErrPathTooLong    = errors.New("path longer than 256 octets")
)

// Broken reports whether a parse error means the input is not an address
// at all (control characters, which could inject SMTP commands, no @, an
// empty part, absurd length). Every other error is a form that real mail
// uses and an MTA may have accepted, which a callout only cannot send:
// such an address is unverifiable, never refused for its form.
func Broken(err error) bool {
	return errors.Is(err, ErrControl) || errors.Is(err, ErrEmpty) || errors.Is(err, ErrNoAt) ||
		errors.Is(err, ErrEmptyPart) || errors.Is(err, ErrTooLong)
}

// Error tells which input was refused and why.
type Error struct {
	Input  string
	Reason error
	Detail string
}

func (e *Error) Error() string {
	if e.Detail != "" {
		return fmt.Sprintf("invalid address %q: %v: %s", e.Input, e.Reason, e.Detail)
	}
	return fmt.Sprintf("invalid address %q: %v", e.Input, e.Reason)
}

func (e *Error) Unwrap() error { return e.Reason }

// Address is a normalized envelope address. Local keeps its case (RFC 5321
// says it is the destination's to interpret); Domain is lower-case A-labels.
type Address struct {
	Local  string
	Domain string
}

// String returns local@domain, safe to put between the angle brackets of
// MAIL FROM or RCPT TO.
func (a Address) String() string { return a.Local + "@" + a.Domain }

// Parse normalizes s, which may be enclosed in angle brackets.
func Parse(s string) (Address, error) {
	fail := func(reason error, detail string) (Address, error) {
		in := s
		if len(in) > 80 {
			in = in[:80] + "..."
		}
		return Address{}, &Error{Input: in, Reason: reason, Detail: detail}
	}
	if len(s) > maxInput {
		return fail(ErrTooLong, fmt.Sprintf("%d octets", len(s)))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return fail(ErrControl, fmt.Sprintf("byte 0x%02x at %d", c, i))
		}
	}
	s2 := strings.TrimSpace(s)
	if strings.HasPrefix(s2, "<") && strings.HasSuffix(s2, ">") {
		s2 = s2[1 : len(s2)-1]
	}
	if s2 == "" {
		return fail(ErrEmpty, "")
	}
	local, rest, err := splitLocal(s2)
	if err != nil {
		return fail(err, "")
	}
	if len(local) > MaxLocal {
		return fail(ErrLocalTooLong, "")
	}
	domain, err := normalizeDomain(rest)
	if err != nil {
		return fail(err, "")
	}
	a := Address{Local: local, Domain: domain}
	if len(local)+1+len(domain)+2 > MaxPath { // len(a.String()), not built
		return fail(ErrPathTooLong, "")
	}
	return a, nil
}

// splitLocal reads the local part (dot-atom or quoted string) and returns it
// normalized, with what follows the @.
func splitLocal(s string) (local, domain string, err error) {
	if s[0] == '"' {
		var b strings.Builder
		i := 1
		for ; i < len(s); i++ {
			c := s[i]
			if c >= 0x80 {
				return "", "", ErrNonASCIILocal
			}
			if c == '\\' {
				if i+1 >= len(s) || s[i+1] < 0x20 || s[i+1] > 0x7e {
					return "", "", ErrLocalSyntax
				}
				i++
				b.WriteByte(s[i])
				continue
			}
			if c == '"' {
				break
			}
			b.WriteByte(c)
		}
		if i >= len(s) || i+1 >= len(s) || s[i+1] != '@' {
			if i >= len(s) {
				return "", "", ErrLocalSyntax
			}
			return "", "", ErrNoAt
		}
		content := b.String()
		if content == "" {
			return "", "", ErrLocalSyntax
		}
		return quoteLocal(content), s[i+2:], nil
	}
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return "", "", ErrNoAt
	}
	local = s[:at]
	if local == "" {
		return "", "", ErrEmptyPart
	}
	for i := 0; i < len(local); i++ {
		if local[i] >= 0x80 {
			return "", "", ErrNonASCIILocal
		}
	}
	if !isDotAtom(local) {
		return "", "", ErrLocalSyntax
	}
	return local, s[at+1:], nil
}

// quoteLocal returns the shortest RFC 5321 form of a local part: a dot-atom
// when possible, otherwise a quoted string with \ and " escaped.
func quoteLocal(content string) string {
	if isDotAtom(content) {
		return content
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(content); i++ {
		if c := content[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(content[i])
	}
	b.WriteByte('"')
	return b.String()
}

func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '.' && !isAtext(s[i]) {
			return false
		}
	}
	return true
}

var idnaProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false))

// plainASCII is d lower-cased when it holds only letters, digits, hyphens
// and dots, in non-empty labels that neither start nor end with a hyphen
// nor have hyphens in their third and fourth places (an A-label, "xn--"):
// what IDNA maps to itself, lower case, so that the common domain skips
// it. ok is false otherwise.
func plainASCII(d string) (string, bool) {
	upper := false
	start := 0
	for i := 0; i <= len(d); i++ {
		if i == len(d) || d[i] == '.' {
			l := d[start:i]
			if l == "" || l[0] == '-' || l[len(l)-1] == '-' || len(l) >= 4 && l[2] == '-' && l[3] == '-' {
				return "", false // IDNA decides (and refuses most)
			}
			start = i + 1
			continue
		}
		switch c := d[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
		case c >= 'A' && c <= 'Z':
			upper = true
		default:
			return "", false
		}
	}
	if upper {
		return strings.ToLower(d), true
	}
	return d, true
}

// NormalizeDomain lower-cases d and converts it to A-labels, refusing what
// cannot be a mail domain.
func NormalizeDomain(d string) (string, error) {
	n, err := normalizeDomain(d)
	if err != nil {
		return "", &Error{Input: d, Reason: err}
	}
	return n, nil
}

func normalizeDomain(d string) (string, error) {
	// The root's dot (a@example.org.) is the same domain; MTAs pass it on.
	if strings.HasSuffix(d, ".") && !strings.HasSuffix(d, "..") {
		d = d[:len(d)-1]
	}
	if d == "" {
		return "", ErrEmptyPart
	}
	if d[0] == '[' {
		return "", ErrAddressLiteral
	}
	if len(d) > MaxDomain*4 {
		return "", ErrDomainTooLong
	}
	ascii, ok := plainASCII(d)
	if !ok {
		if !utf8.ValidString(d) {
			return "", fmt.Errorf("%w: not UTF-8", ErrDomainSyntax)
		}
		var err error
		if ascii, err = idnaProfile.ToASCII(d); err != nil {
			return "", fmt.Errorf("%w: %v", ErrDomainSyntax, err)
		}
		// An A-label must decode again, or the result would not be stable.
		if _, err := idnaProfile.ToUnicode(ascii); err != nil {
			return "", fmt.Errorf("%w: %v", ErrDomainSyntax, err)
		}
		ascii = strings.ToLower(ascii)
		// Full stops of other scripts map to "." here, so the root's dot
		// can appear only now ("bücher.de。").
		if strings.HasSuffix(ascii, ".") && !strings.HasSuffix(ascii, "..") {
			ascii = ascii[:len(ascii)-1]
		}
	}
	if len(ascii) > MaxDomain {
		return "", ErrDomainTooLong
	}
	if !strings.Contains(ascii, ".") {
		return "", fmt.Errorf("%w: needs at least two labels", ErrDomainSyntax)
	}
	for rest, more := ascii, true; more; {
		var l string
		l, rest, more = strings.Cut(rest, ".")
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return "", ErrDomainSyntax
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return "", ErrDomainSyntax
			}
		}
	}
	return ascii, nil
}
