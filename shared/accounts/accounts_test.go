package accounts

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A token names its id, whatever random bytes it got.
func TestTokenID(t *testing.T) {
	for i := 0; i < 2000; i++ {
		secret, id, hash := NewToken()
		got, ok := TokenID(secret)
		if !ok || got != id {
			t.Fatalf("TokenID(%q) = %q %v, want %q", secret, got, ok, id)
		}
		tok := Token{ID: id, Hash: hash}
		if !tok.Matches(secret) || tok.Matches(secret+"x") {
			t.Fatalf("token %q matches wrongly", secret)
		}
	}
	for _, bad := range []string{"", "cot_", "cot__x", "abc", "Bearer cot_x"} {
		if id, ok := TokenID(bad); ok && bad != "cot__x" {
			t.Errorf("TokenID(%q) = %q", bad, id)
		}
	}
}

// A token is never wider than its user.
func TestNarrow(t *testing.T) {
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	later := now.Add(24 * time.Hour)
	reseller := User{Name: "r", Role: Reseller, Domains: []string{"a.test", "b.test"}}
	ro := User{Name: "v", Role: Domain, ReadOnly: true, Domains: []string{"a.test"}}
	admin := User{Name: "a", Role: Admin}
	for _, c := range []struct {
		name  string
		u     User
		tok   Token
		field string // "" when it is accepted
		check func(Token) bool
	}{
		{"the user's role by default", reseller, Token{Expires: later}, "", func(t Token) bool { return t.Role == Reseller }},
		{"a lower role", reseller, Token{Role: Domain, Domains: []string{"A.test"}, Expires: later}, "", func(t Token) bool { return t.Role == Domain && t.Domains[0] == "a.test" }},
		{"a higher role", reseller, Token{Role: Admin, Expires: later}, "role", nil},
		{"another's domain", reseller, Token{Domains: []string{"c.test"}, Expires: later}, "domains", nil},
		{"read-only stays read-only", ro, Token{Expires: later}, "", func(t Token) bool { return t.ReadOnly }},
		{"no expiry", reseller, Token{}, "expires", nil},
		{"expired", reseller, Token{Expires: now.Add(-time.Second)}, "expires", nil},
		{"too long", reseller, Token{Expires: now.Add(MaxTokenLife + time.Hour)}, "expires", nil},
		{"an admin's domain token names its domains", admin, Token{Role: Domain, Expires: later}, "domains", nil},
		{"an admin's domain token", admin, Token{Role: Domain, Domains: []string{"x.test"}, Expires: later}, "", nil},
		{"a bad domain", reseller, Token{Domains: []string{"a..test"}, Expires: later}, "domains", nil},
		{"an unknown role", reseller, Token{Role: "root", Expires: later}, "role", nil},
	} {
		got, err := c.tok.Narrow(c.u, now)
		var fe *FieldError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.field != "" && (!errors.As(err, &fe) || fe.Field != c.field || !errors.Is(err, ErrAccount)):
			t.Errorf("%s: %v, want an error on %s", c.name, err, c.field)
		case c.check != nil && !c.check(got):
			t.Errorf("%s: %+v", c.name, got)
		}
	}
}

func TestUserNormalize(t *testing.T) {
	for _, c := range []struct {
		u     User
		field string
	}{
		{User{Name: "alice@example.org", Role: Domain, Domains: []string{"Example.ORG", "example.org"}}, ""},
		{User{Name: "root", Role: Admin}, ""},
		{User{Name: "root", Role: Admin, Domains: []string{"a.test"}}, "domains"},
		{User{Name: "d", Role: Domain}, "domains"},
		{User{Name: "", Role: Admin}, "name"},
		{User{Name: "a b", Role: Admin}, "name"},
		{User{Name: "<script>", Role: Admin}, "name"},
		{User{Name: strings.Repeat("x", MaxName+1), Role: Admin}, "name"},
		{User{Name: "x", Role: "viewer"}, "role"},
	} {
		got, err := c.u.Normalize()
		var fe *FieldError
		if c.field == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.u, err)
			} else if c.u.Role == Domain && (len(got.Domains) != 1 || got.Domains[0] != "example.org") {
				t.Errorf("domains %v", got.Domains)
			}
			continue
		}
		if !errors.As(err, &fe) || fe.Field != c.field {
			t.Errorf("%+v: %v, want an error on %s", c.u, err, c.field)
		}
	}
}
