// Package accounts is the console's users, their roles and domains, and
// their API tokens, kept in a KV bucket (<prefix>_accounts) that every
// console instance watches, so that a change needs no restart. Writes go
// through shared/operate, which records them in the audit trail.
package accounts

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/callout-mail/callout/shared/address"
)

// Role is what a user may do, before its domains narrow it.
type Role string

const (
	Admin    Role = "admin"    // everything, every domain
	Reseller Role = "reseller" // the domains the admin assigns it; makes domain users for them
	Domain   Role = "domain"   // its own domains
)

// Rank orders roles: an admin can do what a reseller can, a reseller what
// a domain user can.
func (r Role) Rank() int {
	switch r {
	case Admin:
		return 3
	case Reseller:
		return 2
	case Domain:
		return 1
	}
	return 0
}

// ErrAccount is wrapped by every refusal of a user or token as given.
var ErrAccount = errors.New("account")

// FieldError names what is wrong with a user or token as given.
type FieldError struct{ Field, Msg string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }
func (e *FieldError) Unwrap() error { return ErrAccount }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{field, fmt.Sprintf(format, args...)}
}

// User is one console user.
type User struct {
	Name     string `json:"name"`
	Role     Role   `json:"role"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// Domains are the reseller's or domain user's domains (none for an admin).
	Domains []string `json:"domains,omitempty"`
	// Owner is the reseller that made and manages this domain user.
	Owner     string    `json:"owner,omitempty"`
	Disabled  bool      `json:"disabled,omitempty"`
	Hash      string    `json:"hash,omitempty"` // bcrypt of the password; never shown
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by,omitempty"`
	// Revision is the stored revision (0 for a users-file user).
	Revision uint64 `json:"-"`
	// File is set on users of the users file: the bootstrap, changed
	// only there.
	File bool `json:"-"`
}

// MaxName is the longest user name.
const MaxName = 128

// CheckName refuses a user name that could not be shown or logged as it is.
func CheckName(name string) error {
	if name == "" || len(name) > MaxName {
		return fieldErr("name", "1 to %d characters", MaxName)
	}
	for _, c := range name {
		if c <= ' ' || c == 0x7f || strings.ContainsRune("<>&\"':/\\", c) {
			return fieldErr("name", "letters, digits and . _ - @ + only (no spaces, no <>&\"':/\\)")
		}
	}
	return nil
}

// Normalize checks u and puts its domains in their one form, sorted.
func (u User) Normalize() (User, error) {
	if err := CheckName(u.Name); err != nil {
		return u, err
	}
	if u.Role.Rank() == 0 {
		return u, fieldErr("role", "admin, reseller or domain")
	}
	ds, err := NormalizeDomains(u.Domains)
	if err != nil {
		return u, err
	}
	u.Domains = ds
	if u.Role == Admin && len(u.Domains) > 0 {
		return u, fieldErr("domains", "an admin has every domain; give none")
	}
	if u.Role == Domain && len(u.Domains) == 0 {
		return u, fieldErr("domains", "a domain user needs at least one domain")
	}
	return u, nil
}

// MaxDomains bounds a user's or token's domain list.
const MaxDomains = 10000

// NormalizeDomains is domains lower-cased, in A-labels, sorted, once each.
func NormalizeDomains(in []string) ([]string, error) {
	if len(in) > MaxDomains {
		return nil, fieldErr("domains", "at most %d", MaxDomains)
	}
	out := make([]string, 0, len(in))
	for _, d := range in {
		n, err := address.NormalizeDomain(strings.TrimSpace(d))
		if err != nil {
			return nil, fieldErr("domains", "%q: %v", d, err)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Token is an API token: a user's, narrowed to a role, some of the user's
// domains and a time. The token itself is shown once; only its SHA-256 is
// kept.
type Token struct {
	ID       string    `json:"id"`
	User     string    `json:"user"`
	Label    string    `json:"label,omitempty"`
	Role     Role      `json:"role"`
	ReadOnly bool      `json:"read_only,omitempty"`
	Domains  []string  `json:"domains,omitempty"` // empty: all of the user's
	Expires  time.Time `json:"expires"`
	Created  time.Time `json:"created"`
	Hash     string    `json:"hash,omitempty"` // hex SHA-256 of the token; never shown
}

// tokenPrefix begins every token, so that a leaked one is recognized (and
// secret scanners can be told of it).
const tokenPrefix = "cot_"

// NewToken makes a token: the secret to show once, its id and the hash to
// keep.
func NewToken() (secret, id, hash string) {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	id = hex.EncodeToString(b) // no "_": it ends the id in the token
	secret = tokenPrefix + id + "_" + random(24)
	return secret, id, HashToken(secret)
}

// TokenID is the id a token names, or false when it is not one of ours.
func TokenID(secret string) (string, bool) {
	rest, ok := strings.CutPrefix(secret, tokenPrefix)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "_")
	return id, ok && id != ""
}

// HashToken is what is kept of a token.
func HashToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Matches reports whether secret is this token, in constant time.
func (t *Token) Matches(secret string) bool {
	h := HashToken(secret)
	return subtle.ConstantTimeCompare([]byte(h), []byte(t.Hash)) == 1
}

func random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// MinCost is the bcrypt cost of a password hash at least.
const MinCost = 12

// HashPassword is the bcrypt hash of a password at cost (MinCost when 0).
func HashPassword(password string, cost int) (string, error) {
	if len(password) < 10 {
		return "", fieldErr("password", "at least 10 characters")
	}
	if len(password) > 72 {
		return "", fieldErr("password", "at most 72 bytes (bcrypt's limit)")
	}
	if cost == 0 {
		cost = MinCost
	}
	b, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	return string(b), err
}

// Key encodings: a user name may hold characters a key may not.
func userKey(name string) string { return "user." + base64.RawURLEncoding.EncodeToString([]byte(name)) }
func tokenKey(id string) string  { return "token." + id }

// MaxTokenLife is the longest a token may last.
const MaxTokenLife = 2 * 366 * 24 * time.Hour

// Narrow checks that t asks for no more than u has, and fills what it
// left out: the user's role and read-only flag.
func (t Token) Narrow(u User, now time.Time) (Token, error) {
	if t.Role == "" {
		t.Role = u.Role
	}
	if t.Role.Rank() == 0 {
		return t, fieldErr("role", "admin, reseller or domain")
	}
	if t.Role.Rank() > u.Role.Rank() {
		return t, fieldErr("role", "at most the user's role (%s)", u.Role)
	}
	if u.ReadOnly {
		t.ReadOnly = true
	}
	ds, err := NormalizeDomains(t.Domains)
	if err != nil {
		return t, err
	}
	t.Domains = ds
	if u.Role != Admin {
		for _, d := range ds {
			if _, ok := slices.BinarySearch(u.Domains, d); !ok {
				return t, fieldErr("domains", "%s is not one of the user's domains", d)
			}
		}
	}
	if t.Role != Admin && u.Role == Admin && len(ds) == 0 {
		return t, fieldErr("domains", "a %s token of an admin names its domains", t.Role)
	}
	if len(t.Label) > 200 {
		return t, fieldErr("label", "at most 200 bytes")
	}
	if t.Expires.IsZero() {
		return t, fieldErr("expires", "a token needs an expiry")
	}
	if !t.Expires.After(now) || t.Expires.Sub(now) > MaxTokenLife {
		return t, fieldErr("expires", "in the future, within %d days", MaxTokenLife/(24*time.Hour))
	}
	return t, nil
}
