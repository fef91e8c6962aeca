package console

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/operate"
)

// identity is who makes a request: the user as stored now, its scope
// (narrowed by its token, if it came with one).
type identity struct {
	user  accounts.User
	scope scope
	token *accounts.Token // a stored token; nil for a login or a users-file token
	sess  *session        // nil for an API token
}

func (id *identity) who() string { return "console:" + id.user.Name }

// client is the NATS client a request goes through: read-only identities
// use the viewer connection, when there is one.
func (s *Server) client(id *identity) *operate.Client {
	if id.scope.readOnly {
		return s.viewer
	}
	return s.admin
}

func (s *Server) identify(r *http.Request) *identity {
	now := time.Now()
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return nil
		}
		u, t, ok := s.users.ByToken(strings.TrimSpace(tok), now)
		if !ok {
			return nil
		}
		return &identity{user: u, scope: scopeOf(u, t), token: t}
	}
	c, err := r.Cookie(cookieName)
	if err != nil {
		return nil
	}
	se := s.sess.get(c.Value, now)
	if se == nil {
		return nil
	}
	u, ok := s.users.table.User(se.user)
	if !ok || u.Disabled || u.Hash != se.hash {
		s.sess.remove(c.Value)
		return nil
	}
	return &identity{user: u, scope: scopeOf(u, nil), sess: se}
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

func (s *Server) setSessionCookie(w http.ResponseWriter, r *http.Request, id string, maxAge int) {
	_, https := s.clientOf(r)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true, Secure: https,
		SameSite: http.SameSiteStrictMode, MaxAge: maxAge})
}

// login checks a user's password under the per-client and per-account
// limits, counted before the check.
func (s *Server) login(r *http.Request, name, password string) (string, *session, error) {
	addr, _ := s.clientOf(r)
	client := clientKey(addr)
	done, err := s.limit.attempt(client, name)
	if err != nil {
		s.m.logins.WithLabelValues("limited").Inc()
		s.log.Warn("console login limited", "user", name, "client", client, "err", err)
		return "", nil, &httpError{http.StatusTooManyRequests, "", err.Error()}
	}
	u, ok := s.users.Check(name, password)
	done(ok)
	if !ok {
		s.m.logins.WithLabelValues("failed").Inc()
		s.log.Warn("console login failed", "user", name, "client", client)
		s.recordLogin(r, audit.LoginFailed, name, addr, "wrong user name or password")
		return "", nil, &httpError{http.StatusUnauthorized, "password", "wrong user name or password"}
	}
	s.m.logins.WithLabelValues("ok").Inc()
	s.recordLogin(r, audit.Login, name, addr, "")
	id, se := s.sess.create(u, s.limit.now())
	return id, se, nil
}

// clientOf is the client's address and whether it came over HTTPS: the
// connection's, or, from a proxy listed in TRUSTED_PROXIES, what its
// X-Forwarded-For (the rightmost address no trusted proxy added) and
// X-Forwarded-Proto say.
func (s *Server) clientOf(r *http.Request) (addr string, https bool) {
	addr, https = r.RemoteAddr, r.TLS != nil || s.cfg.TLSCert != ""
	if host, _, err := net.SplitHostPort(addr); err == nil {
		addr = host
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || !s.trusted(ip) {
		return addr, https
	}
	if p := r.Header.Values("X-Forwarded-Proto"); len(p) > 0 {
		last := strings.Split(p[len(p)-1], ",")
		https = strings.EqualFold(strings.TrimSpace(last[len(last)-1]), "https")
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			break
		}
		addr = hop.Unmap().String()
		if !s.trusted(hop) {
			break
		}
	}
	return addr, https
}

func (s *Server) trusted(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range s.proxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// parseProxies reads TRUSTED_PROXIES: addresses or CIDR prefixes.
func parseProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, v := range list {
		v = strings.TrimSpace(v)
		if v == "" {
			continue
		}
		if !strings.Contains(v, "/") {
			a, err := netip.ParseAddr(v)
			if err != nil {
				return nil, fmt.Errorf("TRUSTED_PROXIES: %q: %w", v, err)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return nil, fmt.Errorf("TRUSTED_PROXIES: %q: %w", v, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// recordLogin adds a login to the audit trail: who (as typed, for a failed
// one; at most 64 bytes), from which address, when. Attempts the limits
// refuse are not recorded (they are logged and counted): a flood of them
// would push older events out. The trail being down does not stop a login.
func (s *Server) recordLogin(r *http.Request, what, name, client, result string) {
	if s.admin == nil {
		return
	}
	if len(name) > 64 {
		name = name[:64]
	}
	ev := audit.Event{What: what, Client: client, Result: result}
	if err := s.admin.Record(r.Context(), "console:"+strings.ToValidUTF8(name, "?"), ev); err != nil {
		s.log.Warn("console login not recorded in the audit trail", "user", name, "err", err)
	}
}
