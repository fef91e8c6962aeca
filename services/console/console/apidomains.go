package console

// The API's domain endpoints: policies, lists, monitor mode.

import (
	"encoding/csv"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

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
		if st.Domain <= dq.After || dq.Q != "" && !strings.Contains(st.Domain, dq.Q) {
			continue
		}
		if len(rows) == dq.Limit {
			return rows, rows[len(rows)-1].Domain, nil
		}
		rows = append(rows, domainRow{Stored: st, Mode: st.Policy.EffectiveMode(), Mailboxes: len(st.Policy.Mailboxes), Bypass: len(st.Policy.Bypass), Would: would[st.Domain]})
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
