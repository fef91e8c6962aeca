package console

// Users and API tokens, from the API and the pages alike. An admin manages
// every user; a reseller the domain users it made, within its domains;
// every user its own tokens, within its own scope.

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/operate"
)

// userView is a user as the API shows it: never its hash.
type userView struct {
	Name      string        `json:"name"`
	Role      accounts.Role `json:"role"`
	ReadOnly  bool          `json:"read_only"`
	Domains   []string      `json:"domains"`
	Owner     string        `json:"owner,omitempty"`
	Disabled  bool          `json:"disabled"`
	Created   time.Time     `json:"created,omitempty"`
	CreatedBy string        `json:"created_by,omitempty"`
	Source    string        `json:"source"` // "file" (the users file: changed there) or "console"
	Revision  uint64        `json:"revision"`
}

func viewUser(u accounts.User) userView {
	v := userView{Name: u.Name, Role: u.Role, ReadOnly: u.ReadOnly, Domains: u.Domains, Owner: u.Owner, Disabled: u.Disabled,
		Created: u.Created, CreatedBy: u.CreatedBy, Source: "console", Revision: u.Revision}
	if v.Domains == nil {
		v.Domains = []string{}
	}
	if u.File {
		v.Source = "file"
	}
	return v
}

// manages reports whether id may see and change user u.
func (id *identity) manages(u accounts.User) bool {
	switch id.scope.role {
	case accounts.Admin:
		return true
	case accounts.Reseller:
		return u.Owner == id.user.Name && u.Role == accounts.Domain
	}
	return false
}

// visibleUsers are the users id manages.
func (s *Server) visibleUsers(id *identity) []userView {
	out := []userView{}
	for _, u := range s.users.table.Users() {
		if id.manages(u) {
			out = append(out, viewUser(u))
		}
	}
	return out
}

// managedUser is the user named name if id manages it; else 404, as
// for a user that does not exist.
func (s *Server) managedUser(id *identity, name string) (accounts.User, error) {
	u, ok := s.users.table.User(name)
	if !ok || !id.manages(u) {
		return u, errOutOfScope("user: " + name)
	}
	return u, nil
}

// userForm is a user as created or changed: absent fields unchanged.
type userForm struct {
	Name     string         `json:"name"`
	Role     *accounts.Role `json:"role"`
	ReadOnly *bool          `json:"read_only"`
	Domains  *[]string      `json:"domains"`
	Disabled *bool          `json:"disabled"`
	Password string         `json:"password,omitempty"`
	Revision uint64         `json:"revision,omitempty"`
}

// within checks that a reseller gives only what it has: the domain role,
// its own domains.
func (id *identity) within(u accounts.User) error {
	if id.scope.role == accounts.Admin {
		return nil
	}
	if u.Role != accounts.Domain {
		return &httpError{http.StatusForbidden, "role", "a reseller makes domain users only"}
	}
	ds, err := accounts.NormalizeDomains(u.Domains)
	if err != nil {
		return err
	}
	for _, d := range ds {
		if !id.scope.has(d) {
			return &httpError{http.StatusForbidden, "domains", fmt.Sprintf("%s is not one of your domains", d)}
		}
	}
	return nil
}

func (f *userForm) apply(u *accounts.User) {
	if f.Role != nil {
		u.Role = *f.Role
	}
	if f.ReadOnly != nil {
		u.ReadOnly = *f.ReadOnly
	}
	if f.Domains != nil {
		u.Domains = *f.Domains
	}
	if f.Disabled != nil {
		u.Disabled = *f.Disabled
	}
}

// createUser makes a user: an admin any, a reseller a domain user of its
// own domains (which it then manages).
func (s *Server) createUser(r *http.Request, id *identity, f userForm) (userView, error) {
	u := accounts.User{Name: strings.TrimSpace(f.Name), Created: time.Now().UTC(), CreatedBy: id.user.Name}
	if f.Role == nil {
		return userView{}, badRequest("role", "admin, reseller or domain")
	}
	f.apply(&u)
	if id.scope.role != accounts.Admin {
		u.Owner = id.user.Name
	}
	if err := id.within(u); err != nil {
		return userView{}, err
	}
	if _, taken := s.users.table.User(u.Name); taken {
		return userView{}, &httpError{http.StatusConflict, "name", "a user of that name exists"}
	}
	var err error
	if u.Hash, err = accounts.HashPassword(f.Password, s.users.cost); err != nil {
		return userView{}, err
	}
	u, err = s.admin.PutUser(r.Context(), id.who(), u, 0, "")
	if operate.Made(err) {
		s.users.table.PutUser(u)
	}
	if err != nil {
		return userView{}, err
	}
	return viewUser(u), nil
}

// updateUser changes a user at the revision read.
func (s *Server) updateUser(r *http.Request, id *identity, name string, f userForm) (userView, error) {
	u, err := s.managedUser(id, name)
	if err != nil {
		return userView{}, err
	}
	if u.File {
		return userView{}, &httpError{http.StatusConflict, "", "this user comes from the users file: change it there"}
	}
	if f.Revision == 0 {
		return userView{}, badRequest("revision", "the revision you read is needed")
	}
	if f.Name != "" && f.Name != name {
		return userView{}, badRequest("name", "a user is not renamed; make a new one")
	}
	if name == id.user.Name && (f.Disabled != nil && *f.Disabled || f.Role != nil && *f.Role != u.Role) {
		return userView{}, &httpError{http.StatusForbidden, "", "you cannot disable yourself or change your own role"}
	}
	f.apply(&u)
	if err := id.within(u); err != nil {
		return userView{}, err
	}
	note := ""
	if f.Password != "" {
		if u.Hash, err = accounts.HashPassword(f.Password, s.users.cost); err != nil {
			return userView{}, err
		}
		note = "password reset"
	}
	u, err = s.admin.PutUser(r.Context(), id.who(), u, f.Revision, note)
	if operate.Made(err) {
		s.users.table.PutUser(u)
	}
	if err != nil {
		return userView{}, err
	}
	return viewUser(u), nil
}

func (s *Server) deleteUser(r *http.Request, id *identity, name string, rev uint64) error {
	u, err := s.managedUser(id, name)
	if err != nil {
		return err
	}
	if u.File {
		return &httpError{http.StatusConflict, "", "this user comes from the users file: remove it there"}
	}
	if name == id.user.Name {
		return &httpError{http.StatusForbidden, "", "you cannot remove yourself"}
	}
	err = s.admin.RemoveUser(r.Context(), id.who(), name, rev)
	if operate.Made(err) {
		s.users.table.RemoveUser(name)
	}
	return err
}

// tokenView is a token as listed; tokenMade adds its secret, shown once.
type tokenView struct {
	accounts.Token
	Expired bool `json:"expired"`
}

type tokenMade struct {
	tokenView
	Secret string `json:"token"`
}

// seesToken: one's own tokens; an admin every token, a reseller its users'.
func (s *Server) seesToken(id *identity, t accounts.Token) bool {
	if t.User == id.user.Name {
		return true
	}
	u, ok := s.users.table.User(t.User)
	return ok && id.manages(u)
}

func (s *Server) visibleTokens(id *identity) []tokenView {
	now := time.Now()
	out := []tokenView{}
	for _, t := range s.users.table.Tokens() {
		if s.seesToken(id, t) {
			t.Hash = ""
			out = append(out, tokenView{Token: t, Expired: !now.Before(t.Expires)})
		}
	}
	return out
}

// tokenForm is a token asked for.
type tokenForm struct {
	Label    string        `json:"label"`
	Role     accounts.Role `json:"role"`
	ReadOnly bool          `json:"read_only"`
	Domains  []string      `json:"domains"`
	Expires  time.Time     `json:"expires"`
	Days     int           `json:"expires_in_days"`
}

// createToken makes a token of id's user, within id's scope (a token
// cannot make a wider one).
func (s *Server) createToken(r *http.Request, id *identity, f tokenForm) (tokenMade, error) {
	now := time.Now().UTC()
	if f.Days != 0 {
		if f.Days < 0 || f.Days > int(accounts.MaxTokenLife/(24*time.Hour)) {
			return tokenMade{}, badRequest("expires_in_days", "1 to %d", accounts.MaxTokenLife/(24*time.Hour))
		}
		f.Expires = now.Add(time.Duration(f.Days) * 24 * time.Hour)
	}
	secret, tid, hash := accounts.NewToken()
	t := accounts.Token{ID: tid, User: id.user.Name, Label: f.Label, Role: f.Role, ReadOnly: f.ReadOnly, Domains: f.Domains,
		Expires: f.Expires.UTC(), Created: now, Hash: hash}
	holder := accounts.User{Name: id.user.Name, Role: id.scope.role, ReadOnly: id.scope.readOnly, Domains: id.scope.domains}
	t, err := t.Narrow(holder, now)
	if err != nil {
		return tokenMade{}, err
	}
	err = s.admin.AddToken(r.Context(), id.who(), t)
	if operate.Made(err) {
		s.users.table.PutToken(t)
	}
	if err != nil {
		return tokenMade{}, err
	}
	t.Hash = ""
	return tokenMade{tokenView: tokenView{Token: t}, Secret: secret}, nil
}

func (s *Server) revokeToken(r *http.Request, id *identity, tid string) error {
	t, ok := s.users.table.Token(tid)
	if !ok || !s.seesToken(id, t) {
		return errOutOfScope("token: " + tid)
	}
	if t.User != id.user.Name && id.scope.readOnly {
		return &httpError{http.StatusForbidden, "", "this login is read-only: it revokes its own tokens only"}
	}
	err := s.admin.RevokeToken(r.Context(), id.who(), tid)
	if operate.Made(err) {
		s.users.table.RemoveToken(tid)
	}
	return err
}
