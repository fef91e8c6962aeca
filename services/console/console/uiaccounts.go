package console

// The users and tokens pages.

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/callout-mail/callout/shared/accounts"
)

func (s *Server) routesAccountPages(mux *http.ServeMux) {
	mux.Handle("GET /users", s.ui(resellerRead, "users", s.pageUsers))
	mux.Handle("POST /users", s.ui(resellerWrite, "users", s.postUserCreate))
	mux.Handle("POST /users/{name}", s.ui(resellerWrite, "users", s.postUser))
	mux.Handle("GET /tokens", s.ui(anyRead, "tokens", s.pageTokens))
	mux.Handle("POST /tokens", s.ui(anyRead, "tokens", s.postTokenCreate))
	mux.Handle("POST /tokens/{id}/revoke", s.ui(anyRead, "tokens", s.postTokenRevoke))
}

type usersPage struct {
	Users   []userView
	Domains []string // what the creator may give (nil: any)
}

func (s *Server) renderUsers(w http.ResponseWriter, id *identity, p page, status int) {
	p.Title = "Users"
	p.D = usersPage{Users: s.visibleUsers(id), Domains: id.scope.domains}
	s.render(w, status, "users", p)
}

func (s *Server) pageUsers(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	s.renderUsers(w, id, p, http.StatusOK)
}

// formDomains reads domains from a text field: one per line, or
// separated by commas or spaces.
func formDomains(v string) *[]string {
	ds := strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\r' || r == '\t' })
	if ds == nil {
		ds = []string{}
	}
	return &ds
}

func (s *Server) postUserCreate(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	role := accounts.Role(p.Form.Get("role"))
	ro := p.Form.Get("read_only") == "true"
	f := userForm{Name: p.Form.Get("name"), Role: &role, ReadOnly: &ro, Domains: formDomains(p.Form.Get("domains")), Password: p.Form.Get("password")}
	v, err := s.createUser(r, id, f)
	if err != nil {
		p.Title = "Users"
		p.D = usersPage{Users: s.visibleUsers(id), Domains: id.scope.domains}
		s.fail(w, "users", p, err)
		return
	}
	back(w, r, "/users", "User "+v.Name+" created.")
}

// postUser is one action on a user: disable, enable, password, domains, delete.
func (s *Server) postUser(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	name, rev := r.PathValue("name"), formRevision(p.Form)
	f := userForm{Revision: rev}
	var msg string
	var err error
	switch p.Form.Get("action") {
	case "disable", "enable":
		off := p.Form.Get("action") == "disable"
		f.Disabled = &off
		msg = "User " + name + " is " + p.Form.Get("action") + "d."
	case "password":
		f.Password = p.Form.Get("password")
		if f.Password == "" {
			err = badRequest("password", "a new password is needed")
		}
		msg = "The password of " + name + " is set."
	case "domains":
		f.Domains = formDomains(p.Form.Get("domains"))
		msg = "The domains of " + name + " are saved."
	case "delete":
		err = s.deleteUser(r, id, name, rev)
		if err == nil {
			back(w, r, "/users", "User "+name+" removed.")
			return
		}
	default:
		err = badRequest("action", "disable, enable, password, domains or delete")
	}
	if err == nil && p.Form.Get("action") != "delete" {
		_, err = s.updateUser(r, id, name, f)
	}
	if err != nil {
		p.Title = "Users"
		p.D = usersPage{Users: s.visibleUsers(id), Domains: id.scope.domains}
		s.fail(w, "users", p, err)
		return
	}
	back(w, r, "/users", msg)
}

type tokensPage struct {
	Tokens []tokenView
	Made   *tokenMade // the token just made, shown once
}

func (s *Server) pageTokens(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	p.Title = "API tokens"
	p.D = tokensPage{Tokens: s.visibleTokens(id)}
	s.render(w, http.StatusOK, "tokens", p)
}

func (s *Server) postTokenCreate(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	p.Title = "API tokens"
	days := 90
	if v := p.Form.Get("days"); v != "" {
		if _, err := fmt.Sscan(v, &days); err != nil {
			days = -1
		}
	}
	f := tokenForm{Label: p.Form.Get("label"), Role: accounts.Role(p.Form.Get("role")), ReadOnly: p.Form.Get("read_only") == "true", Days: days}
	if d := *formDomains(p.Form.Get("domains")); len(d) > 0 {
		f.Domains = d
	}
	t, err := s.createToken(r, id, f)
	if err != nil {
		p.D = tokensPage{Tokens: s.visibleTokens(id)}
		s.fail(w, "tokens", p, err)
		return
	}
	// Shown on this answer only: the page is not a redirect target, and
	// is not stored (Cache-Control: no-store).
	p.D = tokensPage{Tokens: s.visibleTokens(id), Made: &t}
	p.Msg = "Token made. Copy it now: it is not shown again."
	s.render(w, http.StatusCreated, "tokens", p)
}

func (s *Server) postTokenRevoke(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	if err := s.revokeToken(r, id, r.PathValue("id")); err != nil {
		p.Title = "API tokens"
		p.D = tokensPage{Tokens: s.visibleTokens(id)}
		s.fail(w, "tokens", p, err)
		return
	}
	back(w, r, "/tokens", "Token "+r.PathValue("id")+" revoked.")
}
