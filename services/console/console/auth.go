package console

import (
	"net/http"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/operate"
)

// identity is who makes a request.
type identity struct {
	user *User
	sess *session // nil for an API token
}

func (id *identity) who() string { return "console:" + id.user.Name }

func (s *Server) client(id *identity) *operate.Client {
	if id.user.Role == RoleAdmin {
		return s.admin
	}
	return s.viewer
}

func (s *Server) identify(r *http.Request) *identity {
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return nil
		}
		if u := s.users.ByToken(strings.TrimSpace(tok)); u != nil {
			return &identity{user: u}
		}
		return nil
	}
	c, err := r.Cookie(cookieName)
	if err != nil {
		return nil
	}
	if se := s.sess.get(c.Value, time.Now()); se != nil {
		return &identity{user: se.user, sess: se}
	}
	return nil
}

// csrfOK checks a cookie session's write: the token comes in a header (API)
// or a form field (pages). Token-authenticated requests carry no cookie a
// browser could be tricked into sending.
func csrfOK(r *http.Request, id *identity) bool {
	if id.sess == nil {
		return true
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return true
	}
	if t := r.Header.Get("X-CSRF-Token"); t != "" {
		return sameToken(t, id.sess.csrf)
	}
	return sameToken(r.PostFormValue("csrf"), id.sess.csrf)
}

func (s *Server) setSessionCookie(w http.ResponseWriter, id string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true, Secure: s.cfg.TLSCert != "",
		SameSite: http.SameSiteStrictMode, MaxAge: maxAge})
}

// login checks a user's password under the per-client limit.
func (s *Server) login(r *http.Request, name, password string) (string, *session, error) {
	client, now := clientKey(r.RemoteAddr), time.Now()
	if !s.limit.allowed(client, now) {
		s.m.logins.WithLabelValues("limited").Inc()
		return "", nil, &httpError{http.StatusTooManyRequests, "", errTooMany.Error()}
	}
	u := s.users.Check(name, password)
	if u == nil {
		s.limit.failed(client, now)
		s.m.logins.WithLabelValues("failed").Inc()
		s.log.Warn("console login failed", "user", name, "client", client)
		return "", nil, &httpError{http.StatusUnauthorized, "password", "wrong user name or password"}
	}
	s.m.logins.WithLabelValues("ok").Inc()
	id, se := s.sess.create(u, now)
	return id, se, nil
}
