package console

import (
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

func (s *Server) routesAPI(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/openapi.yaml", func(w http.ResponseWriter, r *http.Request) {
		b, _ := files.ReadFile("openapi.yaml")
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(b)
	})
	mux.HandleFunc("POST /api/login", s.apiLogin)
	mux.Handle("POST /api/logout", s.api(anyRead, s.apiLogout))
	mux.Handle("GET /api/me", s.api(anyRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		writeJSON(w, http.StatusOK, me(id))
		return nil
	}))
	mux.Handle("POST /api/verify", s.api(anyRead, s.apiVerify))
	mux.Handle("GET /api/cache", s.api(anyRead, s.apiCache))
	mux.Handle("GET /api/cache/entry", s.api(anyRead, s.apiCacheEntry))
	mux.Handle("DELETE /api/cache/entry", s.api(anyWrite, s.apiCacheDelete))
	mux.Handle("POST /api/flush", s.api(anyWrite, s.apiFlush))
	mux.Handle("GET /api/domains", s.api(anyRead, s.apiDomains))
	mux.Handle("GET /api/domains/{domain}", s.api(anyRead, s.apiDomain))
	mux.Handle("PUT /api/domains/{domain}", s.api(anyWrite, s.apiDomainPut))
	mux.Handle("DELETE /api/domains/{domain}", s.api(adminWrite, s.apiDomainDelete))
	for _, field := range []string{"mailboxes", "bypass"} {
		mux.Handle("PUT /api/domains/{domain}/"+field, s.api(anyWrite, s.apiList(field)))
		mux.Handle("GET /api/domains/{domain}/"+field, s.api(anyRead, s.apiListExport(field)))
		mux.Handle("POST /api/domains/{domain}/"+field+"/{entry}", s.api(anyWrite, s.apiListEntry(field, true)))
		mux.Handle("DELETE /api/domains/{domain}/"+field+"/{entry}", s.api(anyWrite, s.apiListEntry(field, false)))
	}
	mux.Handle("POST /api/domains/{domain}/monitor", s.api(anyWrite, s.apiMonitor))
	mux.Handle("GET /api/stats", s.api(adminRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		writeJSON(w, http.StatusOK, s.col.Fleet(time.Now(), 20))
		return nil
	}))
	mux.Handle("GET /api/stats/history", s.api(adminRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		writeJSON(w, http.StatusOK, map[string]any{"every_s": s.cfg.HistoryEvery.Seconds(), "samples": s.hist.samples()})
		return nil
	}))
	mux.Handle("GET /api/hosts", s.api(adminRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		hs, err := s.client(id).Hosts(r.Context(), time.Second)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, hs)
		return nil
	}))
	mux.Handle("GET /api/regions", s.api(adminRead, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		rs, err := s.client(id).RegionStatuses(r.Context(), 500*time.Millisecond)
		if err != nil {
			return err
		}
		if rs == nil {
			rs = []operate.RegionStatus{}
		}
		writeJSON(w, http.StatusOK, rs)
		return nil
	}))
	mux.Handle("GET /api/audit", s.api(anyRead, s.apiAudit))
	s.routesAccounts(mux)
	s.routesDecisions(mux)
	mux.Handle("/api/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such endpoint: " + r.Method + " " + r.URL.Path})
	}))
}

type meReply struct {
	User     string        `json:"user"`
	Role     accounts.Role `json:"role"`
	ReadOnly bool          `json:"read_only,omitempty"`
	// Domains are the identity's domains; absent for every domain.
	Domains []string `json:"domains,omitempty"`
	CSRF    string   `json:"csrf,omitempty"`
}

func me(id *identity) meReply {
	m := meReply{User: id.user.Name, Role: id.scope.role, ReadOnly: id.scope.readOnly, Domains: id.scope.domains}
	if id.sess != nil {
		m.CSRF = id.sess.csrf
	}
	return m
}

func (s *Server) apiLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	var body struct {
		User     string `json:"user"`
		Password string `json:"password"`
	}
	if err := decodeJSON(r, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	sid, se, err := s.login(r, body.User, body.Password)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.setSessionCookie(w, r, sid, int(s.cfg.SessionTTL.Seconds()))
	u, _ := s.users.table.User(se.user)
	writeJSON(w, http.StatusOK, me(&identity{user: u, scope: scopeOf(u, nil), sess: se}))
}

func (s *Server) apiLogout(w http.ResponseWriter, r *http.Request, id *identity) error {
	if c, err := r.Cookie(cookieName); err == nil {
		s.sess.remove(c.Value)
	}
	s.setSessionCookie(w, r, "", -1)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// verifyBody is a verify request from an operator.
type verifyBody struct {
	Address       string `json:"address"`
	Sender        bool   `json:"sender,omitempty"`
	ClientAddress string `json:"client_address,omitempty"`
	TimeoutMS     int    `json:"timeout_ms,omitempty"`
	Trace         bool   `json:"trace,omitempty"`
}

func (s *Server) verify(r *http.Request, id *identity, b verifyBody) (wire.VerifyReply, error) {
	if strings.TrimSpace(b.Address) == "" {
		return wire.VerifyReply{}, badRequest("address", "an address is needed")
	}
	if len(b.Address) > 1024 {
		return wire.VerifyReply{}, badRequest("address", "too long")
	}
	if b.TimeoutMS < 0 || b.TimeoutMS > 120000 {
		return wire.VerifyReply{}, badRequest("timeout_ms", "0 to 120000")
	}
	if err := id.scope.inAddress(b.Address); err != nil {
		return wire.VerifyReply{}, err
	}
	if b.Trace && !id.scope.canTrace() {
		return wire.VerifyReply{}, &httpError{http.StatusForbidden, "trace", "a traced callout needs the admin or reseller role"}
	}
	if b.ClientAddress != "" && (id.scope.role != accounts.Admin || id.scope.readOnly) {
		// To see what an MTA's client would be answered: for admins only.
		return wire.VerifyReply{}, &httpError{http.StatusForbidden, "client_address", "asking for a client address needs the admin role"}
	}
	req := wire.VerifyRequest{Address: b.Address, Purpose: verdict.Recipient, ClientAddress: b.ClientAddress, TimeoutMS: b.TimeoutMS, Trace: b.Trace}
	if b.Sender {
		req.Purpose = verdict.Sender
	}
	return s.client(id).Verify(r.Context(), req)
}

func (s *Server) apiVerify(w http.ResponseWriter, r *http.Request, id *identity) error {
	var b verifyBody
	if err := decodeJSON(r, &b); err != nil {
		return err
	}
	rep, err := s.verify(r, id, b)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rep)
	return nil
}

// auditQuery filters audit events.
type auditQuery struct {
	N                  int
	What, Who, Contain string
}

func (s *Server) auditEvents(r *http.Request, id *identity, q auditQuery) ([]audit.Event, error) {
	if q.N <= 0 {
		q.N = 200
	}
	// Read more than asked so that filters still fill a page.
	evs, err := s.client(id).Audit(r.Context(), min(q.N*20, 10000))
	if err != nil {
		return nil, err
	}
	out := []audit.Event{}
	for i := len(evs) - 1; i >= 0 && len(out) < q.N; i-- { // newest first
		ev := evs[i]
		if q.What != "" && ev.What != q.What || q.Who != "" && !strings.Contains(strings.ToLower(ev.Who), strings.ToLower(q.Who)) {
			continue
		}
		if q.Contain != "" && !strings.Contains(strings.ToLower(ev.Domain+" "+ev.Address), strings.ToLower(q.Contain)) {
			continue
		}
		if !id.scope.seesEvent(ev, id.user.Name) {
			continue
		}
		out = append(out, ev)
	}
	return out, nil
}

func auditParams(q map[string][]string) (auditQuery, error) {
	aq := auditQuery{What: first(q, "what"), Who: first(q, "who"), Contain: first(q, "domain")}
	if v := first(q, "n"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return aq, badRequest("n", "a whole number from 1 to 1000")
		}
		aq.N = n
	}
	known := audit.Kinds
	if aq.What != "" {
		if i := sort.SearchStrings(known, aq.What); i == len(known) || known[i] != aq.What {
			return aq, badRequest("what", "one of %s", strings.Join(known, ", "))
		}
	}
	return aq, nil
}

func (s *Server) apiAudit(w http.ResponseWriter, r *http.Request, id *identity) error {
	aq, err := auditParams(r.URL.Query())
	if err != nil {
		return err
	}
	evs, err := s.auditEvents(r, id, aq)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, evs)
	return nil
}
