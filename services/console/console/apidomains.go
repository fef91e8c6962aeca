package console

// The API's domain endpoints: policies, lists, monitor mode.

import (
	"encoding/csv"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/operate"
)

// domainRow is a domain in the list.
type domainRow struct {
	operate.Stored
	Mode      domains.Mode `json:"mode"`
	Mailboxes int          `json:"mailboxes"`
	Bypass    int          `json:"bypass"`
	Would     float64      `json:"monitor_would"`
}

// domainQuery selects a page of the domain list: the domains containing
// Q (any case), after the domain After, at most Limit.
type domainQuery struct {
	Q, After string
	Limit    int
}

// maxDomainPage is the most domains one page holds.
const maxDomainPage = 1000

func parseDomainQuery(r *http.Request) (domainQuery, error) {
	q := r.URL.Query()
	dq := domainQuery{Q: strings.ToLower(strings.TrimSpace(q.Get("q"))), After: strings.ToLower(q.Get("after")), Limit: maxDomainPage}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxDomainPage {
			return dq, badRequest("limit", "a whole number from 1 to %d", maxDomainPage)
		}
		dq.Limit = n
	}
	return dq, nil
}

// domainRows is a page of the domain list, and the domain to start the
// next page after ("" when this is the last).
func (s *Server) domainRows(r *http.Request, id *identity, dq domainQuery) ([]domainRow, string, error) {
	all, err := s.client(id).Policies(r.Context())
	if err != nil {
		return nil, "", err
	}
	would := s.col.Fleet(time.Now(), 0).Would
	rows := make([]domainRow, 0, min(len(all), dq.Limit))
	for _, st := range all {
		if st.Domain <= dq.After || dq.Q != "" && !strings.Contains(st.Domain, dq.Q) || !id.scope.has(st.Domain) {
			continue
		}
		if len(rows) == dq.Limit {
			return rows, rows[len(rows)-1].Domain, nil
		}
		rows = append(rows, domainRow{Stored: st, Mode: st.Policy.EffectiveMode(), Mailboxes: st.Policy.Count("mailboxes"), Bypass: st.Policy.Count("bypass"), Would: would[st.Domain]})
	}
	return rows, "", nil
}

// apiDomains lists the domains, a page at a time: a Link header with
// rel="next" names the next page when there is one.
func (s *Server) apiDomains(w http.ResponseWriter, r *http.Request, id *identity) error {
	dq, err := parseDomainQuery(r)
	if err != nil {
		return err
	}
	rows, next, err := s.domainRows(r, id, dq)
	if err != nil {
		return err
	}
	if next != "" {
		v := url.Values{"after": {next}, "limit": {strconv.Itoa(dq.Limit)}}
		if dq.Q != "" {
			v.Set("q", dq.Q)
		}
		w.Header().Set("Link", "</api/domains?"+v.Encode()+`>; rel="next"`)
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
	st, err := s.setPolicy(r, id, r.PathValue("domain"), *body.Policy, body.Revision)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// setPolicy writes a domain's policy for an identity: only an admin
// creates a domain (rev 0) or sets its admin-only fields.
func (s *Server) setPolicy(r *http.Request, id *identity, domain string, p domains.Policy, rev uint64) (operate.Stored, error) {
	if id.scope.role != accounts.Admin {
		if rev == 0 {
			return operate.Stored{}, &httpError{http.StatusForbidden, "revision", "only an admin creates a domain; give the revision you read"}
		}
		cur, err := s.admin.Policy(r.Context(), domain)
		if err != nil {
			return operate.Stored{}, err
		}
		if err := id.scope.checkPolicyChange(cur.Policy, p); err != nil {
			return operate.Stored{}, err
		}
	}
	return s.admin.SetPolicy(r.Context(), id.who(), domain, p, rev)
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

// editPolicy changes the stored policy of domain with edit and writes it
// back if still at revision rev. A stored policy that does not parse is
// not edited piecemeal: the whole policy is to be set.
func (s *Server) editPolicy(r *http.Request, id *identity, domain string, rev uint64, edit func(*domains.Policy) error) (operate.Stored, error) {
	st, err := s.admin.Policy(r.Context(), domain)
	if err != nil {
		return operate.Stored{}, err
	}
	if st.Error != "" {
		return operate.Stored{}, fmt.Errorf("%w (%s)", operate.ErrUnparsed, st.Error)
	}
	p := st.Policy
	if err := edit(&p); err != nil {
		return operate.Stored{}, err
	}
	return s.setPolicy(r, id, domain, p, rev)
}

// importList replaces a domain's mailbox or bypass list with the pasted
// or uploaded text, or with merge adds what the list lacks (see
// operate.ImportList).
func (s *Server) importList(r *http.Request, id *identity, domain, field, text string, merge bool, rev uint64, dryRun bool) (operate.Stored, audit.ListChange, error) {
	list, err := operate.ParseList(text)
	if err != nil {
		return operate.Stored{}, audit.ListChange{}, err
	}
	return s.admin.ImportList(r.Context(), id.who(), domain, field, list, merge, rev, dryRun)
}

// apiList replaces (mode=replace, the default) or adds to (mode=merge) a
// list from an upload; dry_run=true says what would change, writing
// nothing.
func (s *Server) apiList(field string) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, id *identity) error {
		q := r.URL.Query()
		mode, dryRun := q.Get("mode"), q.Get("dry_run") == "true"
		if mode != "" && mode != "replace" && mode != "merge" {
			return badRequest("mode", "replace or merge")
		}
		if v := q.Get("dry_run"); v != "" && v != "true" && v != "false" {
			return badRequest("dry_run", "true or false")
		}
		rev, err := revisionParam(r)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		st, lc, err := s.importList(r, id, r.PathValue("domain"), field, string(b), mode == "merge", rev, dryRun)
		if err != nil {
			return err
		}
		if dryRun {
			writeJSON(w, http.StatusOK, map[string]any{"dry_run": true, field: lc})
			return nil
		}
		writeJSON(w, http.StatusOK, st)
		return nil
	}
}

// apiListEntry adds (POST) or removes (DELETE) one entry of a list.
func (s *Server) apiListEntry(field string, add bool) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, id *identity) error {
		rev, err := revisionParam(r)
		if err != nil {
			return err
		}
		entry := strings.TrimSpace(r.PathValue("entry"))
		if entry == "" {
			return badRequest("entry", "an entry is needed")
		}
		st, _, err := s.admin.EditEntry(r.Context(), id.who(), r.PathValue("domain"), field, entry, add, rev, false)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, st)
		return nil
	}
}

// apiListExport is a list as CSV, one entry per line under a header that
// an import skips.
func (s *Server) apiListExport(field string) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, id *identity) error {
		st, err := s.client(id).Policy(r.Context(), r.PathValue("domain"))
		if err != nil {
			return err
		}
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
		w.Header().Set("Content-Disposition", `attachment; filename="`+st.Domain+"-"+field+`.csv"`)
		cw := csv.NewWriter(w)
		_ = cw.Write([]string{"local_part"})
		l, err := operate.List(&st.Policy, field)
		if err != nil {
			return err
		}
		for _, e := range *l {
			_ = cw.Write([]string{e})
		}
		cw.Flush()
		return cw.Error()
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
