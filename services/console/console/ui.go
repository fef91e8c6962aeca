package console

// Over 400 lines on purpose: the HTML pages' handlers, one per page, which
// share the rendering and form helpers here.

import (
	"bytes"
	"encoding/json"
	"errors"
	"html/template"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

var funcs = template.FuncMap{
	// when shows a time in UTC; the page's script rewrites it into the
	// browser's time zone.
	"when": func(t time.Time) template.HTML {
		if t.IsZero() {
			return ""
		}
		u := t.UTC()
		return template.HTML(`<time datetime="` + u.Format(time.RFC3339) + `">` + template.HTMLEscapeString(u.Format("2006-01-02 15:04:05 UTC")) + `</time>`)
	},
	"json": func(v any) string {
		b, _ := json.MarshalIndent(v, "", "  ")
		return string(b)
	},
	"raw": func(b json.RawMessage) string { return string(b) },
	// editable: a list short enough to edit in a text box.
	"editable": func(l []string) bool { return len(l) <= maxEditable },
	"lines": func(l []string) string {
		if len(l) == 0 {
			return ""
		}
		return strings.Join(l, "\n") + "\n"
	},
	"join": strings.Join,
	"f1":   func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) },
	"f2":   func(f float64) string { return strconv.FormatFloat(f, 'f', 2, 64) },
}

// parsePages builds one template per page: the layout with the page's
// content.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(files, "web/templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		base := path.Base(n)
		if base == "layout.html" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "web/templates/layout.html", n)
		if err != nil {
			return nil, err
		}
		pages[strings.TrimSuffix(base, ".html")] = t
	}
	return pages, nil
}

// page is what every page template gets.
type page struct {
	Title  string
	Nav    string
	Me     *meReply
	Admin  bool // an admin that may change things
	Write  bool // may change its domains (not read-only)
	Trace  bool // may run a traced callout
	Staff  bool // admin or reseller: manages users
	All    bool // sees every domain (admin, read-only or not)
	Msg    string
	Err    string
	Fields map[string]string // errors by form field
	Form   url.Values        // what was submitted, to show it again
	D      any
	Next   string // the next page's URL, if any
}

func (s *Server) render(w http.ResponseWriter, status int, name string, p page) {
	var buf bytes.Buffer
	if err := s.pages[name].Execute(&buf, p); err != nil {
		s.log.Error("console page", "page", name, "err", err)
		http.Error(w, "page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

type uiHandler func(w http.ResponseWriter, r *http.Request, id *identity, p page)

// ui wraps a page: a login is needed, access and scope are checked (see
// scope.go), writes carry the session's CSRF token.
func (s *Server) ui(a access, nav string, h uiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		id := s.identify(r)
		if id == nil || id.sess == nil {
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		m := me(id)
		sc := id.scope
		p := page{Nav: nav, Me: &m, Admin: sc.role == accounts.Admin && !sc.readOnly, Write: !sc.readOnly, Trace: sc.canTrace(),
			Staff: sc.role.Rank() >= accounts.Reseller.Rank(), All: sc.all(), Msg: r.URL.Query().Get("msg"), Fields: map[string]string{}}
		if err := sc.allow(a, r); err != nil {
			status, _, msg := classify(err)
			p.Title, p.Err = "Not allowed", msg
			if status == http.StatusNotFound {
				p.Title = "Not found"
			}
			s.render(w, status, "error", p)
			return
		}
		if r.Method == http.MethodPost {
			if err := r.ParseMultipartForm(maxBody); err != nil && !errors.Is(err, http.ErrNotMultipart) {
				p.Title, p.Err = "Bad request", err.Error()
				s.render(w, http.StatusBadRequest, "error", p)
				return
			}
			if !csrfOK(r, id) {
				p.Title, p.Err = "Not allowed", "The form's security token is missing or old: reload the page and try again."
				s.render(w, http.StatusForbidden, "error", p)
				return
			}
			p.Form = r.PostForm
		}
		h(w, r, id, p)
	})
}

// fail shows an error on the page it came from: beside its field when
// the error names one.
func (s *Server) fail(w http.ResponseWriter, name string, p page, err error) {
	status, field, msg := classify(err)
	if field != "" {
		p.Fields[field] = msg
	} else {
		p.Err = msg
	}
	s.render(w, status, name, p)
}

func back(w http.ResponseWriter, r *http.Request, to, msg string) {
	u := to
	if msg != "" {
		sep := "?"
		if strings.Contains(to, "?") {
			sep = "&"
		}
		u += sep + "msg=" + url.QueryEscape(msg)
	}
	http.Redirect(w, r, u, http.StatusSeeOther)
}

// localPath keeps a redirect target on this site.
// localPath is where to go after a login: p when it is a path of this
// site, else "/". Browsers drop tabs and newlines from a URL and take a
// backslash for a slash, so any of them, or "//" once decoded, could lead
// elsewhere.
func localPath(p string) string {
	bad := func(s string) bool {
		return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) || strings.HasPrefix(s, "//")
	}
	if !strings.HasPrefix(p, "/") || bad(p) {
		return "/"
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Opaque != "" || !strings.HasPrefix(u.Path, "/") || bad(u.Path) {
		return "/"
	}
	return p
}

func (s *Server) routesUI(mux *http.ServeMux) {
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		s.render(w, http.StatusOK, "login", page{Title: "Log in", Fields: map[string]string{}, Form: url.Values{"next": {r.URL.Query().Get("next")}}})
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		_ = r.ParseForm()
		sid, _, err := s.login(r, r.PostFormValue("user"), r.PostFormValue("password"))
		if err != nil {
			p := page{Title: "Log in", Fields: map[string]string{}, Form: url.Values{"user": {r.PostFormValue("user")}, "next": {r.PostFormValue("next")}}}
			s.fail(w, "login", p, err)
			return
		}
		s.setSessionCookie(w, r, sid, int(s.cfg.SessionTTL.Seconds()))
		http.Redirect(w, r, localPath(r.PostFormValue("next")), http.StatusSeeOther)
	})
	mux.Handle("POST /logout", s.ui(anyRead, "", func(w http.ResponseWriter, r *http.Request, id *identity, p page) {
		if c, err := r.Cookie(cookieName); err == nil {
			s.sess.remove(c.Value)
		}
		s.setSessionCookie(w, r, "", -1)
		http.Redirect(w, r, "/login", http.StatusSeeOther)
	}))
	mux.Handle("GET /{$}", s.ui(anyRead, "dashboard", s.pageDashboard))
	mux.Handle("GET /domains", s.ui(anyRead, "domains", s.pageDomains))
	mux.Handle("POST /domains", s.ui(adminWrite, "domains", s.postDomainCreate))
	mux.Handle("GET /domains/{domain}", s.ui(anyRead, "domains", s.pageDomain))
	mux.Handle("POST /domains/{domain}/{action}", s.ui(anyWrite, "domains", s.postDomain))
	mux.Handle("POST /flush", s.ui(anyWrite, "", s.postFlush))
	mux.Handle("GET /cache", s.ui(anyRead, "cache", s.pageCache))
	mux.Handle("POST /cache/delete", s.ui(anyWrite, "cache", s.postCacheDelete))
	mux.Handle("GET /verify", s.ui(anyRead, "verify", s.pageVerify))
	mux.Handle("POST /verify", s.ui(anyRead, "verify", s.pageVerify))
	mux.Handle("GET /audit", s.ui(anyRead, "audit", s.pageAudit))
	mux.Handle("GET /decisions", s.ui(anyRead, "decisions", s.pageDecisions))
	mux.Handle("GET /destinations", s.ui(adminRead, "destinations", s.pageDestinations))
	s.routesAccountPages(mux)
}

func (s *Server) pageDashboard(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	if !id.scope.all() {
		// The fleet's figures are every customer's: a tenant starts at its domains.
		http.Redirect(w, r, "/domains", http.StatusSeeOther)
		return
	}
	p.Title = "Dashboard"
	p.D = s.col.Fleet(time.Now(), 10)
	s.render(w, http.StatusOK, "dashboard", p)
}

func (s *Server) pageDomains(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	p.Title = "Domains"
	dq, err := parseDomainQuery(r)
	if err != nil {
		s.fail(w, "domains", p, err)
		return
	}
	if r.URL.Query().Get("limit") == "" {
		dq.Limit = 200 // a page a person reads
	}
	rows, next, err := s.domainRows(r, id, dq)
	p.D = rows
	p.Form = url.Values{"q": {dq.Q}}
	if next != "" {
		p.Next = "/domains?" + url.Values{"q": {dq.Q}, "after": {next}}.Encode()
	}
	if err != nil {
		s.fail(w, "domains", p, err)
		return
	}
	s.render(w, http.StatusOK, "domains", p)
}

// formPolicy reads a policy from a form.
func formPolicy(f url.Values) domains.Policy {
	return domains.Policy{
		Mode:           domains.Mode(f.Get("mode")),
		Route:          splitList(f.Get("route")),
		Mailboxes:      splitList(f.Get("mailboxes")),
		Bypass:         splitList(f.Get("bypass")),
		OnTempfail:     verdict.Action(f.Get("on_tempfail")),
		OnUnverifiable: verdict.Action(f.Get("on_unverifiable")),
		Sender:         strings.TrimSpace(f.Get("sender")),
		FallbackSender: strings.TrimSpace(f.Get("fallback_sender")),
		ControlProbe:   f.Get("control_probe"),
	}
}

func splitList(s string) []string {
	l, _ := operate.ParseList(strings.NewReplacer(",", "\n", ";", "\n", " ", "\n").Replace(s))
	return l
}

func (s *Server) postDomainCreate(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	d := strings.TrimSpace(p.Form.Get("domain"))
	if d == "" {
		p.Title = "Domains"
		p.D, _, _ = s.domainRows(r, id, domainQuery{Limit: 200})
		s.fail(w, "domains", p, badRequest("domain", "a domain is needed"))
		return
	}
	st, err := s.setPolicy(r, id, d, formPolicy(p.Form), 0)
	if err != nil {
		p.Title = "Domains"
		p.D, _, _ = s.domainRows(r, id, domainQuery{Limit: 200})
		s.fail(w, "domains", p, err)
		return
	}
	back(w, r, "/domains/"+url.PathEscape(st.Domain), "Domain "+st.Domain+" created.")
}

type domainPage struct {
	operate.Stored
	Would float64
}

func (s *Server) domainData(r *http.Request, id *identity, d string) (domainPage, error) {
	st, err := s.client(id).Policy(r.Context(), d)
	if err != nil {
		return domainPage{}, err
	}
	return domainPage{Stored: st, Would: s.col.Fleet(time.Now(), 0).Would[st.Domain]}, nil
}

func (s *Server) pageDomain(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	dp, err := s.domainData(r, id, r.PathValue("domain"))
	p.Title, p.D = "Domain "+dp.Domain, dp
	if err != nil {
		p.Title = "Domain"
		s.fail(w, "error", p, err)
		return
	}
	s.render(w, http.StatusOK, "domain", p)
}

func formRevision(f url.Values) uint64 {
	n, _ := strconv.ParseUint(f.Get("revision"), 10, 64)
	return n
}

func (s *Server) postDomain(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	d, rev := r.PathValue("domain"), formRevision(p.Form)
	var err error
	var msg string
	action := r.PathValue("action")
	if rev == 0 {
		action, err = "", badRequest("revision", "the form carries no revision: reload the page")
	}
	switch action {
	case "":
	case "policy":
		var st operate.Stored
		cur, cerr := s.admin.Policy(r.Context(), d)
		if cerr != nil {
			err = cerr
			break
		}
		pol := formPolicy(p.Form)
		pol.Mailboxes, pol.Bypass = cur.Policy.Mailboxes, cur.Policy.Bypass
		if id.scope.role != accounts.Admin {
			pol = keepAdminFields(pol, cur.Policy)
		}
		st, err = s.setPolicy(r, id, d, pol, rev)
		msg = "Policy of " + st.Domain + " saved."
	case "mailboxes", "bypass":
		field := r.PathValue("action")
		text, given := p.Form.Get(field), p.Form.Has(field)
		if f, _, ferr := r.FormFile("file"); ferr == nil {
			b, _ := io.ReadAll(io.LimitReader(f, maxBody))
			f.Close()
			text, given = string(b), true
		}
		if !given {
			// A list too long to edit on the page has no text box: an
			// empty submission is not "replace it with nothing".
			err = badRequest("list", "choose a file to import")
			break
		}
		_, _, err = s.importList(r, id, d, field, text, p.Form.Get("merge") == "true", rev, false)
		msg = "The " + field + " list is saved."
	case "mailboxes-entry", "bypass-entry":
		field, entry := strings.TrimSuffix(action, "-entry"), strings.TrimSpace(p.Form.Get("entry"))
		if entry == "" {
			err = badRequest("entry", "an entry is needed")
			break
		}
		_, _, err = s.admin.EditEntry(r.Context(), id.who(), d, field, entry, p.Form.Get("op") != "rm", rev, false)
		msg = entry + " added to the " + field + " list."
		if p.Form.Get("op") == "rm" {
			msg = entry + " removed from the " + field + " list."
		}
	case "monitor":
		_, err = s.setMonitor(r, id, d, p.Form.Get("on") == "true", rev)
		msg = "Monitor mode is off."
		if p.Form.Get("on") == "true" {
			msg = "Monitor mode is on: callouts run, every recipient is accepted."
		}
	case "delete":
		if id.scope.role != accounts.Admin {
			err = &httpError{http.StatusForbidden, "", "only an admin removes a domain"}
			break
		}
		err = s.admin.RemovePolicy(r.Context(), id.who(), d, rev)
		if err == nil {
			back(w, r, "/domains", "The policy of "+d+" is removed.")
			return
		}
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		dp, derr := s.domainData(r, id, d)
		p.Title, p.D = "Domain "+dp.Domain, dp
		if derr != nil {
			s.fail(w, "error", p, err)
			return
		}
		s.fail(w, "domain", p, err)
		return
	}
	back(w, r, "/domains/"+url.PathEscape(d), msg)
}

func (s *Server) postFlush(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	cmd := wire.FlushCommand{Scope: p.Form.Get("scope"), Domain: p.Form.Get("domain"), Address: p.Form.Get("address"), Only: verdict.Status(p.Form.Get("only"))}
	to := localPath(p.Form.Get("back"))
	rep, err := s.flush(r, id, cmd)
	if err != nil {
		p.Title = "Flush failed"
		s.fail(w, "error", p, err)
		return
	}
	back(w, r, to, "Flushed: "+strconv.FormatUint(rep.Removed, 10)+" entries removed.")
}

type cachePage struct {
	CachePage
	Query   url.Values
	NextURL string
}

func (s *Server) pageCache(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	q := r.URL.Query()
	p.Title, p.Form = "Cache", q
	cp := cachePage{Query: q}
	p.D = &cp
	cq, err := cacheQuery(q)
	if err == nil {
		cp.CachePage, err = s.cachePage(r, id, &cq)
	}
	if err != nil {
		s.fail(w, "cache", p, err)
		return
	}
	if cp.Next != "" {
		cp.NextURL = withParam("/cache", q, "cursor", cp.Next)
	}
	s.render(w, http.StatusOK, "cache", p)
}

func (s *Server) postCacheDelete(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	rep, err := s.deleteEntry(r, id, p.Form.Get("key"))
	if err != nil {
		p.Title = "Delete failed"
		s.fail(w, "error", p, err)
		return
	}
	back(w, r, localPath(p.Form.Get("back")), "Entry deleted ("+strconv.FormatUint(rep.Removed, 10)+" entries of the address removed).")
}

func (s *Server) pageVerify(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	p.Title = "Verify"
	if r.Method != http.MethodPost {
		p.Form = r.URL.Query() // a link may name the address (and trace=on)
		s.render(w, http.StatusOK, "verify", p)
		return
	}
	b := verifyBody{Address: p.Form.Get("address"), Sender: p.Form.Get("sender") == "on", ClientAddress: p.Form.Get("client"), Trace: p.Form.Get("trace") == "on"}
	rep, err := s.verify(r, id, b)
	if err != nil {
		s.fail(w, "verify", p, err)
		return
	}
	p.D = rep
	s.render(w, http.StatusOK, "verify", p)
}

func (s *Server) pageAudit(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	p.Title, p.Form = "Audit log", r.URL.Query()
	aq, err := auditParams(r.URL.Query())
	if err == nil {
		p.D, err = s.auditEvents(r, id, aq)
	}
	if err != nil {
		s.fail(w, "audit", p, err)
		return
	}
	s.render(w, http.StatusOK, "audit", p)
}

// destinationsPage is the destinations page: the probers' hosts and, in a
// fleet over regions, the regions.
type destinationsPage struct {
	Hosts   []wire.HostsReply
	Regions []operate.RegionStatus
}

func (s *Server) pageDestinations(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	p.Title = "Destinations"
	hs, err := s.client(id).Hosts(r.Context(), time.Second)
	var rs []operate.RegionStatus
	if err == nil {
		rs, err = s.client(id).RegionStatuses(r.Context(), 500*time.Millisecond)
	}
	p.D = destinationsPage{Hosts: hs, Regions: rs}
	if err != nil {
		s.fail(w, "destinations", p, err)
		return
	}
	s.render(w, http.StatusOK, "destinations", p)
}
