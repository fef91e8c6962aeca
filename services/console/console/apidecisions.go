package console

// The decision log: search (JSON or CSV), erase, counts per domain per
// hour.

import (
	"encoding/csv"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/verdict"
)

func (s *Server) routesDecisions(mux *http.ServeMux) {
	mux.Handle("GET /api/decisions", s.api(anyRead, s.apiDecisions))
	mux.Handle("POST /api/decisions/erase", s.api(adminWrite, s.apiDecisionsErase))
	mux.Handle("GET /api/domains/{domain}/history", s.api(anyRead, s.apiDomainHistory))
	mux.Handle("GET /api/history", s.api(adminRead, s.apiHistory))
}

// decisionQuery reads a search's filters from a query string: a time as
// decisions.ParseWhen reads it; everything else is text, checked by
// decisions.Query.Check.
func decisionQuery(v url.Values) (decisions.Query, string, error) {
	q := decisions.Query{
		Recipient: v.Get("recipient"), Domain: v.Get("domain"), Sender: v.Get("sender"), Client: v.Get("client"),
		Action: verdict.Action(v.Get("action")), Reason: verdict.Reason(v.Get("reason")), Purpose: verdict.Purpose(v.Get("purpose")),
	}
	for _, f := range []struct {
		name string
		dst  *time.Time
	}{{"since", &q.Since}, {"until", &q.Until}} {
		at, err := decisions.ParseWhen(v.Get(f.name))
		if err != nil {
			return q, "", badRequest(f.name, "%s: %v", f.name, err)
		}
		*f.dst = at
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			return q, "", badRequest("limit", "limit: a number from 1 to %d", decisions.MaxLimit)
		}
		q.Limit = n
	}
	cursor := v.Get("cursor")
	if len(cursor) > 1024 {
		return q, "", badRequest("cursor", "cursor: too long")
	}
	return q, cursor, nil
}

// searchDecisions answers a search in the identity's scope: a tenant's
// search finds its domains' records only, and naming another domain is
// the same 404 as everywhere.
func (s *Server) searchDecisions(r *http.Request, id *identity) (operate.SearchResult, error) {
	q, cursor, err := decisionQuery(r.URL.Query())
	if err != nil {
		return operate.SearchResult{}, err
	}
	if !id.scope.all() {
		if q.Domain != "" && !id.scope.has(q.Domain) || q.Recipient != "" && !id.scope.has(decisions.DomainOf(q.Recipient)) {
			return operate.SearchResult{}, errOutOfScope("domain")
		}
		q.Domains = append([]string{}, id.scope.domains...)
		if len(q.Domains) == 0 {
			q.Domains = []string{"."} // no domain: nothing is found
		}
	}
	return s.client(id).SearchDecisions(r.Context(), q, cursor)
}

func (s *Server) apiDecisions(w http.ResponseWriter, r *http.Request, id *identity) error {
	res, err := s.searchDecisions(r, id)
	if err != nil {
		return err
	}
	if r.URL.Query().Get("format") == "csv" {
		writeDecisionsCSV(w, res)
		return nil
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// writeDecisionsCSV writes a page as CSV: the records are clean (no CR or
// LF in any field), and encoding/csv quotes what needs it.
func writeDecisionsCSV(w http.ResponseWriter, res operate.SearchResult) {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="decisions.csv"`)
	if res.Cursor != "" {
		w.Header().Set("X-Next-Cursor", res.Cursor)
	}
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"at", "region", "instance", "via", "client", "helo", "sender", "recipient", "purpose", "action", "code", "enhanced", "text", "status", "reason", "source", "host", "dest_code", "dest_enhanced", "dest_text", "took_us"})
	for _, h := range res.Records {
		_ = cw.Write([]string{h.At.UTC().Format(time.RFC3339Nano), h.Region, h.Instance, h.Via, h.Client, safeCell(h.Helo), safeCell(h.Sender), safeCell(h.Recipient), string(h.Purpose),
			string(h.Action), strconv.Itoa(h.Code), h.Enhanced, safeCell(h.Text), string(h.Status), string(h.Reason), string(h.Source), h.Host,
			strconv.Itoa(h.DestCode), h.DestEnhanced, safeCell(h.DestText), strconv.FormatInt(h.TookUS, 10)})
	}
	cw.Flush()
}

// safeCell keeps a spreadsheet from taking a cell for a formula (a
// destination's text or a client's HELO starting with = + - @).
func safeCell(s string) string {
	if s != "" && strings.ContainsRune("=+-@", rune(s[0])) {
		return "'" + s
	}
	return s
}

// decisionsPage is the decision log page.
type decisionsPage struct {
	operate.SearchResult
	NextURL, CSVURL string
	Reasons         []string
	CanFlush        bool
}

func (s *Server) pageDecisions(w http.ResponseWriter, r *http.Request, id *identity, p page) {
	q := r.URL.Query()
	p.Title, p.Form = "Decision log", q
	dp := &decisionsPage{CanFlush: !id.scope.readOnly}
	for _, ri := range verdict.Reasons() {
		dp.Reasons = append(dp.Reasons, string(ri.Reason))
	}
	p.D = dp
	res, err := s.searchDecisions(r, id)
	if err != nil {
		s.fail(w, "decisions", p, err)
		return
	}
	dp.SearchResult = res
	dp.CSVURL = withParam("/api/decisions", q, "format", "csv", "cursor")
	if res.Cursor != "" {
		dp.NextURL = withParam("/decisions", q, "cursor", res.Cursor)
	}
	s.render(w, http.StatusOK, "decisions", p)
}

// withParam is path with the query q, key set to value and the drop
// parameters left out: the links to a next page or an export.
func withParam(path string, q url.Values, key, value string, drop ...string) string {
	nq := url.Values{}
	for k, v := range q {
		nq[k] = v
	}
	for _, d := range drop {
		nq.Del(d)
	}
	nq.Set(key, value)
	return path + "?" + nq.Encode()
}

func (s *Server) apiDecisionsErase(w http.ResponseWriter, r *http.Request, id *identity) error {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	var body struct {
		Domain string `json:"domain"`
	}
	if err := decodeJSON(r, &body); err != nil {
		return err
	}
	res, err := s.admin.EraseDecisions(r.Context(), id.who(), body.Domain)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// historyDays reads days= (1 to 90, default 30).
func historyDays(v url.Values) (time.Time, error) {
	days := 30
	if d := v.Get("days"); d != "" {
		n, err := strconv.Atoi(d)
		if err != nil || n < 1 || n > 90 {
			return time.Time{}, badRequest("days", "days: 1 to 90")
		}
		days = n
	}
	return time.Now().Add(-time.Duration(days) * 24 * time.Hour), nil
}

func (s *Server) apiDomainHistory(w http.ResponseWriter, r *http.Request, id *identity) error {
	since, err := historyDays(r.URL.Query())
	if err != nil {
		return err
	}
	d := strings.ToLower(r.PathValue("domain"))
	if decisions.Token(d) != d {
		return badRequest("domain", "domain: %q is not a domain", d)
	}
	hs, err := s.client(id).History(r.Context(), d, since)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"domain": d, "hours": hs})
	return nil
}

func (s *Server) apiHistory(w http.ResponseWriter, r *http.Request, id *identity) error {
	since, err := historyDays(r.URL.Query())
	if err != nil {
		return err
	}
	hs, err := s.client(id).History(r.Context(), decisions.AllDomains, since)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"hours": hs})
	return nil
}
