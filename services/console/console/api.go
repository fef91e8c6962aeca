package console

import (
	"encoding/csv"
	"errors"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
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
	mux.Handle("POST /api/logout", s.api(RoleViewer, s.apiLogout))
	mux.Handle("GET /api/me", s.api(RoleViewer, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		writeJSON(w, http.StatusOK, me(id))
		return nil
	}))
	mux.Handle("POST /api/verify", s.api(RoleViewer, s.apiVerify))
	mux.Handle("GET /api/cache", s.api(RoleViewer, s.apiCache))
	mux.Handle("GET /api/cache/entry", s.api(RoleViewer, s.apiCacheEntry))
	mux.Handle("DELETE /api/cache/entry", s.api(RoleAdmin, s.apiCacheDelete))
	mux.Handle("POST /api/flush", s.api(RoleAdmin, s.apiFlush))
	mux.Handle("GET /api/domains", s.api(RoleViewer, s.apiDomains))
	mux.Handle("GET /api/domains/{domain}", s.api(RoleViewer, s.apiDomain))
	mux.Handle("PUT /api/domains/{domain}", s.api(RoleAdmin, s.apiDomainPut))
	mux.Handle("DELETE /api/domains/{domain}", s.api(RoleAdmin, s.apiDomainDelete))
	mux.Handle("PUT /api/domains/{domain}/mailboxes", s.api(RoleAdmin, s.apiList("mailboxes")))
	mux.Handle("PUT /api/domains/{domain}/bypass", s.api(RoleAdmin, s.apiList("bypass")))
	mux.Handle("POST /api/domains/{domain}/monitor", s.api(RoleAdmin, s.apiMonitor))
	mux.Handle("GET /api/stats", s.api(RoleViewer, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		writeJSON(w, http.StatusOK, s.col.Fleet(time.Now(), 20))
		return nil
	}))
	mux.Handle("GET /api/stats/history", s.api(RoleViewer, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		writeJSON(w, http.StatusOK, map[string]any{"every_s": s.cfg.HistoryEvery.Seconds(), "samples": s.hist.samples()})
		return nil
	}))
	mux.Handle("GET /api/hosts", s.api(RoleViewer, func(w http.ResponseWriter, r *http.Request, id *identity) error {
		hs, err := s.client(id).Hosts(r.Context(), time.Second)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, hs)
		return nil
	}))
	mux.Handle("GET /api/audit", s.api(RoleViewer, s.apiAudit))
	mux.Handle("/api/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such endpoint: " + r.Method + " " + r.URL.Path})
	}))
}

type meReply struct {
	User string `json:"user"`
	Role Role   `json:"role"`
	CSRF string `json:"csrf,omitempty"`
}

func me(id *identity) meReply {
	m := meReply{User: id.user.Name, Role: id.user.Role}
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
	s.setSessionCookie(w, sid, int(s.cfg.SessionTTL.Seconds()))
	writeJSON(w, http.StatusOK, me(&identity{user: se.user, sess: se}))
}

func (s *Server) apiLogout(w http.ResponseWriter, r *http.Request, id *identity) error {
	if c, err := r.Cookie(cookieName); err == nil {
		s.sess.remove(c.Value)
	}
	s.setSessionCookie(w, "", -1)
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
	if b.Trace && id.user.Role != RoleAdmin {
		return wire.VerifyReply{}, &httpError{http.StatusForbidden, "trace", "a traced callout needs the admin role"}
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

func parseTime(q map[string][]string, field string) (time.Time, error) {
	v := first(q, field)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, badRequest(field, "want an RFC 3339 time such as 2026-12-01T10:00:00Z")
	}
	return t, nil
}

func first(q map[string][]string, k string) string {
	if v := q[k]; len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

// cacheQuery reads a CacheQuery from URL parameters.
func cacheQuery(q map[string][]string) (CacheQuery, error) {
	cq := CacheQuery{Domain: first(q, "domain"), Status: verdict.Status(first(q, "status")), Q: first(q, "q"), Sort: first(q, "sort")}
	var err error
	if cq.CheckedAfter, err = parseTime(q, "checked_after"); err != nil {
		return cq, err
	}
	if cq.CheckedBefore, err = parseTime(q, "checked_before"); err != nil {
		return cq, err
	}
	if cq.ExpiresBefore, err = parseTime(q, "expires_before"); err != nil {
		return cq, err
	}
	switch first(q, "order") {
	case "", "asc":
	case "desc":
		cq.Desc = true
	default:
		return cq, badRequest("order", "asc or desc")
	}
	if v := first(q, "limit"); v != "" {
		if cq.Limit, err = strconv.Atoi(v); err != nil || cq.Limit < 1 {
			return cq, badRequest("limit", "a whole number from 1 to %d", maxPage)
		}
	}
	if v := first(q, "cursor"); v != "" {
		if cq.Cursor, err = strconv.ParseUint(v, 10, 64); err != nil {
			return cq, badRequest("cursor", "the next value of the previous page")
		}
	}
	return cq, nil
}

func (s *Server) apiCache(w http.ResponseWriter, r *http.Request, id *identity) error {
	cq, err := cacheQuery(r.URL.Query())
	if err != nil {
		return err
	}
	page, err := s.browse[id.user.Role].Page(r.Context(), cq, time.Now())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, page)
	return nil
}

func (s *Server) apiCacheEntry(w http.ResponseWriter, r *http.Request, id *identity) error {
	e, err := s.browse[id.user.Role].Entry(r.Context(), r.URL.Query().Get("key"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, e)
	return nil
}

// deleteEntry removes one address's entries by flushing the address, so
// that a verdict already on its way cannot bring it back.
func (s *Server) deleteEntry(r *http.Request, id *identity, key string) (wire.FlushReply, error) {
	k, err := kvkey.Parse(key)
	if err != nil {
		return wire.FlushReply{}, badRequest("key", "%v", err)
	}
	if k.Kind != "addr" {
		return wire.FlushReply{}, badRequest("key", "a domain fact goes with its domain: flush the domain")
	}
	return s.admin.Flush(r.Context(), id.who(), wire.FlushCommand{Scope: wire.ScopeAddress, Address: k.Local + "@" + k.Domain})
}

func (s *Server) apiCacheDelete(w http.ResponseWriter, r *http.Request, id *identity) error {
	rep, err := s.deleteEntry(r, id, r.URL.Query().Get("key"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, removed(rep))
	return nil
}

// removed is a flush's answer: the entries removed, and the ingests that
// did not confirm it in time (fenced until they apply it).
func removed(rep wire.FlushReply) any {
	return struct {
		Removed     uint64   `json:"removed"`
		Unconfirmed []string `json:"unconfirmed,omitempty"`
	}{rep.Removed, rep.Unconfirmed}
}

func (s *Server) apiFlush(w http.ResponseWriter, r *http.Request, id *identity) error {
	var cmd wire.FlushCommand
	if err := decodeJSON(r, &cmd); err != nil {
		return err
	}
	rep, err := s.admin.Flush(r.Context(), id.who(), cmd)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, removed(rep))
	return nil
}

// domainRow is a domain in the list.
type domainRow struct {
	operate.Stored
	Mode      domains.Mode `json:"mode"`
	Mailboxes int          `json:"mailboxes"`
	Bypass    int          `json:"bypass"`
	Would     float64      `json:"monitor_would"`
}

func (s *Server) domainRows(r *http.Request, id *identity) ([]domainRow, error) {
	all, err := s.client(id).Policies(r.Context())
	if err != nil {
		return nil, err
	}
	would := s.col.Fleet(time.Now(), 0).Would
	rows := make([]domainRow, 0, len(all))
	for _, st := range all {
		rows = append(rows, domainRow{Stored: st, Mode: st.Policy.EffectiveMode(), Mailboxes: len(st.Policy.Mailboxes), Bypass: len(st.Policy.Bypass), Would: would[st.Domain]})
	}
	return rows, nil
}

func (s *Server) apiDomains(w http.ResponseWriter, r *http.Request, id *identity) error {
	rows, err := s.domainRows(r, id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rows)
	return nil
}

func (s *Server) apiDomain(w http.ResponseWriter, r *http.Request, id *identity) error {
	st, err := s.client(id).Policy(r.Context(), r.PathValue("domain"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

func (s *Server) apiDomainPut(w http.ResponseWriter, r *http.Request, id *identity) error {
	var body struct {
		Policy   *domains.Policy `json:"policy"`
		Revision uint64          `json:"revision"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if body.Policy == nil {
		return badRequest("policy", "a policy is needed")
	}
	st, err := s.admin.SetPolicy(r.Context(), id.who(), r.PathValue("domain"), *body.Policy, body.Revision)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

func revisionParam(r *http.Request) (uint64, error) {
	v := r.URL.Query().Get("revision")
	if v == "" {
		return 0, badRequest("revision", "the revision you read is needed (GET the domain first)")
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return 0, badRequest("revision", "a positive whole number")
	}
	return n, nil
}

func (s *Server) apiDomainDelete(w http.ResponseWriter, r *http.Request, id *identity) error {
	rev, err := revisionParam(r)
	if err != nil {
		return err
	}
	if err := s.admin.RemovePolicy(r.Context(), id.who(), r.PathValue("domain"), rev); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// ParseList reads a pasted or uploaded list: one entry per line, or CSV
// (the first column; a header line "address", "mailbox" or "local_part" is
// skipped). Blank lines and lines starting with # are ignored.
func ParseList(text string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(v string) {
		v = strings.TrimSpace(v)
		if v == "" || strings.HasPrefix(v, "#") || seen[strings.ToLower(v)] {
			return
		}
		switch strings.ToLower(v) {
		case "address", "mailbox", "local_part", "email":
			return
		}
		seen[strings.ToLower(v)] = true
		out = append(out, v)
	}
	if strings.ContainsAny(text, ",;") {
		cr := csv.NewReader(strings.NewReader(text))
		cr.FieldsPerRecord = -1
		cr.Comment = '#'
		cr.TrimLeadingSpace = true
		if strings.Count(text, ";") > strings.Count(text, ",") {
			cr.Comma = ';'
		}
		for {
			rec, err := cr.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, badRequest("list", "CSV: %v", err)
			}
			if len(rec) > 0 {
				add(rec[0])
			}
		}
		return out, nil
	}
	for _, l := range strings.Split(text, "\n") {
		add(l)
	}
	return out, nil
}

// editPolicy changes the stored policy of domain with edit and writes it
// back if still at revision rev. A stored policy that does not parse is
// not edited piecemeal: the whole policy is to be set.
func (s *Server) editPolicy(r *http.Request, id *identity, domain string, rev uint64, edit func(*domains.Policy) error) (operate.Stored, error) {
	st, err := s.admin.Policy(r.Context(), domain)
	if err != nil {
		return operate.Stored{}, err
	}
	if st.Error != "" {
		return operate.Stored{}, &httpError{http.StatusConflict, "policy", "the stored policy does not parse (" + st.Error + "): set the whole policy first"}
	}
	p := st.Policy
	if err := edit(&p); err != nil {
		return operate.Stored{}, err
	}
	return s.admin.SetPolicy(r.Context(), id.who(), domain, p, rev)
}

// replaceList replaces a domain's mailbox or bypass list.
func (s *Server) replaceList(r *http.Request, id *identity, domain, field, text string, rev uint64) (operate.Stored, error) {
	list, err := ParseList(text)
	if err != nil {
		return operate.Stored{}, err
	}
	return s.editPolicy(r, id, domain, rev, func(p *domains.Policy) error {
		if field == "mailboxes" {
			p.Mailboxes = list
		} else {
			p.Bypass = list
		}
		return nil
	})
}

func (s *Server) apiList(field string) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, id *identity) error {
		rev, err := revisionParam(r)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		st, err := s.replaceList(r, id, r.PathValue("domain"), field, string(b), rev)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, st)
		return nil
	}
}

// setMonitor switches a callout domain to monitor mode and back.
func (s *Server) setMonitor(r *http.Request, id *identity, domain string, on bool, rev uint64) (operate.Stored, error) {
	return s.editPolicy(r, id, domain, rev, func(p *domains.Policy) error {
		m := p.EffectiveMode()
		if m != domains.ModeCallout && m != domains.ModeMonitor {
			return badRequest("mode", "monitor mode is for callout domains; this one is %s", m)
		}
		p.Mode = domains.ModeCallout
		if on {
			p.Mode = domains.ModeMonitor
		}
		return nil
	})
}

func (s *Server) apiMonitor(w http.ResponseWriter, r *http.Request, id *identity) error {
	var body struct {
		On       *bool  `json:"on"`
		Revision uint64 `json:"revision"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	if body.On == nil {
		return badRequest("on", "true or false is needed")
	}
	if body.Revision == 0 {
		return badRequest("revision", "the revision you read is needed")
	}
	st, err := s.setMonitor(r, id, r.PathValue("domain"), *body.On, body.Revision)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
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
	known := []string{audit.PolicySet, audit.PolicyRemove, audit.Flush}
	sort.Strings(known)
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
