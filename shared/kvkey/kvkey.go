// Package kvkey builds the cache's KV keys, one readable token per field.
//
// A KV key may hold only [-/_=.a-zA-Z0-9] and uses "." between tokens, so a
// field is escaped: "." becomes "/", and "/", "=" and every other byte
// outside [-_a-zA-Z0-9] becomes "=XX" (hex). An empty field is "=".
// alice.smith@example.org, checked as a recipient, is
// addr.example/org.alice/smith.rcpt.
package kvkey

import (
	"errors"
	"fmt"
	"strings"

	"github.com/callout-mail/callout/shared/verdict"
)

// MaxLen keeps keys far below the server's control-line limit.
const MaxLen = 1024

// ErrBadKey is returned for keys this codec did not make.
var ErrBadKey = errors.New("not a callout cache key")

// Facts about a whole domain.
const (
	FactCatchAll = "catchall" // catch_all or not_catch_all
	FactAccess   = "access"   // we are refused: null sender rejected, blocked
	// FactControl is the control probe's answer: postmaster@domain, which
	// RFC 5321 requires to exist, accepted (valid) or refused (invalid).
	// Refused, the destination is refusing the verifier, not the user.
	FactControl = "postmaster"
)

const hexdigits = "0123456789ABCDEF"

// Token escapes one field.
func Token(s string) string {
	if s == "" {
		return "="
	}
	var b strings.Builder
	b.Grow(len(s) + 8) // one allocation for the usual key
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			b.WriteByte(c)
		case c == '.':
			b.WriteByte('/')
		default:
			b.WriteByte('=')
			b.WriteByte(hexdigits[c>>4])
			b.WriteByte(hexdigits[c&15])
		}
	}
	return b.String()
}

// ParseToken reverses Token.
func ParseToken(t string) (string, error) {
	if t == "=" {
		return "", nil
	}
	var b strings.Builder
	for i := 0; i < len(t); i++ {
		c := t[i]
		switch {
		case c == '/':
			b.WriteByte('.')
		case c == '=':
			if i+2 >= len(t) {
				return "", fmt.Errorf("%w: short escape in %q", ErrBadKey, t)
			}
			hi, lo := unhex(t[i+1]), unhex(t[i+2])
			if hi < 0 || lo < 0 {
				return "", fmt.Errorf("%w: bad escape in %q", ErrBadKey, t)
			}
			b.WriteByte(byte(hi<<4 | lo))
			i += 2
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			b.WriteByte(c)
		default:
			return "", fmt.Errorf("%w: byte %q in %q", ErrBadKey, c, t)
		}
	}
	return b.String(), nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// Views. What a callout learns is a fact about the destination it asked:
// a recipient check goes to the domain's route, a sender check to its
// public MX, which may be another server (often this very gateway). Every
// key and subject names its view, so that facts learned one way never
// answer the other.
const (
	ViewRecipient = "rcpt"
	ViewSender    = "sender"
)

// View is the view token of a purpose ("" is a recipient check).
func View(p verdict.Purpose) string {
	if p == verdict.Sender {
		return ViewSender
	}
	return ViewRecipient
}

// Address is the key of an address verdict:
// addr.<domain>.<local>.<view>[.<probe sender>]. Results got with a
// non-empty probe sender are kept apart from null-sender results.
func Address(domain, local string, p verdict.Purpose, sender string) string {
	k := "addr." + Target(domain, local, p)
	if sender != "" {
		k += "." + Token(sender)
	}
	return k
}

// Target is the address part of Address, without "addr" and the probe
// sender: <domain>.<local>.<view>, the tokens of job subjects.
func Target(domain, local string, p verdict.Purpose) string {
	return Token(domain) + "." + Token(local) + "." + View(p)
}

// AddressFilters cover every entry of one address: all views and senders
// (and entries of the layout without views).
func AddressFilters(domain, local string) []string {
	k := "addr." + Token(domain) + "." + Token(local)
	return []string{k, k + ".>"}
}

// Domain is the key of one fact about a domain: domain.<domain>.<view>.<fact>.
func Domain(domain string, p verdict.Purpose, fact string) string {
	return "domain." + Token(domain) + "." + View(p) + "." + fact
}

// DomainFilters are the KV key filters that cover everything about a domain.
func DomainFilters(domain string) []string {
	t := Token(domain)
	return []string{"addr." + t + ".>", "domain." + t + ".>"}
}

// Flush records: when each scope was last flushed (see the cache).
const FlushAll = "flush.all"

// FlushDomain is the flush record of a domain.
func FlushDomain(domain string) string { return "flush.domain." + Token(domain) }

// FlushAddress is the flush record of one address. The local part is
// folded to lower case: a flush covers the address in any case, as static
// lists compare it.
func FlushAddress(domain, local string) string {
	return "flush.addr." + Token(domain) + "." + Token(strings.ToLower(local))
}

// FlushDomainOf is the domain a record made by FlushDomain or FlushAddress
// is about; false for FlushAll and keys this codec did not make.
func FlushDomainOf(key string) (string, bool) {
	var tok string
	if rest, ok := strings.CutPrefix(key, "flush.domain."); ok {
		tok = rest
	} else if rest, ok := strings.CutPrefix(key, "flush.addr."); ok {
		tok, _, _ = strings.Cut(rest, ".")
	}
	if tok == "" {
		return "", false
	}
	d, err := ParseToken(tok)
	return d, err == nil
}

// EntryFilters cover every verdict entry (not the flush records). A new
// slice each time: the KV client rewrites the filters it is given.
func EntryFilters() []string { return []string{"addr.>", "domain.>"} }

// Key is a decoded key.
type Key struct {
	Kind    string // "addr" or "domain"
	Domain  string
	Local   string          // addr only
	Purpose verdict.Purpose // the view
	Sender  string          // addr only, "" for the null sender
	Fact    string          // domain only
}

// ErrLegacyKey marks a key of the layout without views: such entries are
// never read (they may hold a sender check's facts) and expire by their TTL.
var ErrLegacyKey = fmt.Errorf("%w: layout without view", ErrBadKey)

func parseView(t string) (verdict.Purpose, bool) {
	switch t {
	case ViewRecipient:
		return verdict.Recipient, true
	case ViewSender:
		return verdict.Sender, true
	}
	return "", false
}

// Parse decodes a key made by Address or Domain.
func Parse(k string) (Key, error) {
	parts := strings.Split(k, ".")
	switch {
	case len(parts) >= 3 && len(parts) <= 5 && parts[0] == "addr":
		var key Key
		var err error
		key.Kind = "addr"
		if key.Domain, err = ParseToken(parts[1]); err != nil {
			return Key{}, err
		}
		if key.Local, err = ParseToken(parts[2]); err != nil {
			return Key{}, err
		}
		if len(parts) == 3 {
			return Key{}, fmt.Errorf("%w: %q", ErrLegacyKey, k)
		}
		var ok bool
		if key.Purpose, ok = parseView(parts[3]); !ok {
			if len(parts) == 4 {
				return Key{}, fmt.Errorf("%w: %q", ErrLegacyKey, k)
			}
			return Key{}, fmt.Errorf("%w: view %q in %q", ErrBadKey, parts[3], k)
		}
		if len(parts) == 5 {
			if key.Sender, err = ParseToken(parts[4]); err != nil {
				return Key{}, err
			}
		}
		return key, nil
	case len(parts) == 3 && parts[0] == "domain":
		return Key{}, fmt.Errorf("%w: %q", ErrLegacyKey, k)
	case len(parts) == 4 && parts[0] == "domain":
		d, err := ParseToken(parts[1])
		if err != nil {
			return Key{}, err
		}
		p, ok := parseView(parts[2])
		if !ok {
			return Key{}, fmt.Errorf("%w: view %q in %q", ErrBadKey, parts[2], k)
		}
		return Key{Kind: "domain", Domain: d, Purpose: p, Fact: parts[3]}, nil
	}
	return Key{}, fmt.Errorf("%w: %q", ErrBadKey, k)
}
