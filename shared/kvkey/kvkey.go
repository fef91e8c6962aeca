// Package kvkey builds the cache's KV keys, one readable token per field.
//
// A KV key may hold only [-/_=.a-zA-Z0-9] and uses "." between tokens, so a
// field is escaped: "." becomes "/", and "/", "=" and every other byte
// outside [-_a-zA-Z0-9] becomes "=XX" (hex). An empty field is "=".
// alice.smith@example.org is addr.example/org.alice/smith.
package kvkey

import (
	"errors"
	"fmt"
	"strings"
)

// MaxLen keeps keys far below the server's control-line limit.
const MaxLen = 1024

// ErrBadKey is returned for keys this codec did not make.
var ErrBadKey = errors.New("not a callout cache key")

// Facts about a whole domain.
const (
	FactCatchAll = "catchall" // catch_all or not_catch_all
	FactAccess   = "access"   // we are refused: null sender rejected, blocked
)

const hexdigits = "0123456789ABCDEF"

// Token escapes one field.
func Token(s string) string {
	if s == "" {
		return "="
	}
	var b strings.Builder
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

// Address is the key of an address verdict. Results got with a non-empty
// probe sender are kept apart from null-sender results.
func Address(domain, local, sender string) string {
	k := "addr." + Token(domain) + "." + Token(local)
	if sender != "" {
		k += "." + Token(sender)
	}
	return k
}

// Target is the address part of Address, without a sender: the token pair
// used in job and verdict subjects.
func Target(domain, local string) string {
	return Token(domain) + "." + Token(local)
}

// Domain is the key of one fact about a domain.
func Domain(domain, fact string) string {
	return "domain." + Token(domain) + "." + fact
}

// DomainFilters are the KV key filters that cover everything about a domain.
func DomainFilters(domain string) []string {
	t := Token(domain)
	return []string{"addr." + t + ".>", "domain." + t + ".>"}
}

// Key is a decoded key.
type Key struct {
	Kind   string // "addr" or "domain"
	Domain string
	Local  string // addr only
	Sender string // addr only, "" for the null sender
	Fact   string // domain only
}

// Parse decodes a key made by Address or Domain.
func Parse(k string) (Key, error) {
	parts := strings.Split(k, ".")
	switch {
	case len(parts) >= 3 && len(parts) <= 4 && parts[0] == "addr":
		var key Key
		var err error
		key.Kind = "addr"
		if key.Domain, err = ParseToken(parts[1]); err != nil {
			return Key{}, err
		}
		if key.Local, err = ParseToken(parts[2]); err != nil {
			return Key{}, err
		}
		if len(parts) == 4 {
			if key.Sender, err = ParseToken(parts[3]); err != nil {
				return Key{}, err
			}
		}
		return key, nil
	case len(parts) == 3 && parts[0] == "domain":
		d, err := ParseToken(parts[1])
		if err != nil {
			return Key{}, err
		}
		return Key{Kind: "domain", Domain: d, Fact: parts[2]}, nil
	}
	return Key{}, fmt.Errorf("%w: %q", ErrBadKey, k)
}
