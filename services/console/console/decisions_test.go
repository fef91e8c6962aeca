package console

import (
	"encoding/csv"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
)

// decisionLog: the answers the console's verifies got are in the log
// with their fields, each filter finds them, bad filters name their
// field, a filter's text never widens a search, the counts per hour
// match, and an erase removes a domain's records everywhere.
func decisionLog(t *testing.T, sys *system, admin, viewer *client) {
	since := time.Now().UTC().Format(time.RFC3339Nano) // after the verifies of other parts
	for _, a := range []string{"alice@callout.test", "nobody@callout.test", "nobody@callout.test", "*@callout.test"} {
		st, b := viewer.call("POST", "/api/verify", map[string]any{"address": a})
		wantStatus(t, "verify "+a, st, http.StatusOK, b)
	}
	search := func(c *client, q string) operate.SearchResult {
		t.Helper()
		st, b := c.call("GET", "/api/decisions?"+q, nil)
		wantStatus(t, "search "+q, st, http.StatusOK, b)
		return decode[operate.SearchResult](t, b)
	}
	var rejects operate.SearchResult
	waitfor.Cond(t, 15*time.Second, func() bool {
		rejects = search(viewer, "recipient=NOBODY@callout.test&action=reject&since="+url.QueryEscape(since))
		return len(rejects.Records) == 2
	})
	r := rejects.Records[0]
	if r.Recipient != "nobody@callout.test" || r.Code != 550 || r.Via != decisions.ViaConsole || r.Reason != verdict.ReasonUserUnknown ||
		r.Instance == "" || r.At.IsZero() || rejects.Records[0].ID <= rejects.Records[1].ID {
		t.Fatalf("reject record %+v", rejects.Records)
	}
	// The first was answered by a callout, with the destination's reply.
	if first := rejects.Records[1]; first.Source != verdict.SourceProbe || first.DestCode != 550 || first.DestEnhanced != "5.1.1" || first.Host == "" {
		t.Fatalf("the callout's record %+v", first)
	}
	// Domain and action; paging by cursor; "*" is text.
	page := search(admin, "domain=callout.test&limit=1")
	if len(page.Records) != 1 || page.Cursor == "" {
		t.Fatalf("first page %+v", page)
	}
	next := search(admin, "domain=callout.test&limit=1&cursor="+url.QueryEscape(page.Cursor))
	if len(next.Records) != 1 || next.Records[0].ID >= page.Records[0].ID {
		t.Fatalf("second page %+v after %+v", next, page)
	}
	var star operate.SearchResult
	waitfor.Cond(t, 10*time.Second, func() bool {
		star = search(admin, "recipient="+url.QueryEscape("*@callout.test"))
		return len(star.Records) >= 1
	})
	if len(star.Records) != 1 || star.Records[0].Recipient != "*@callout.test" {
		t.Fatalf("a * recipient widened the search: %+v", star)
	}
	if none := search(admin, "recipient="+url.QueryEscape(">@callout.test")); len(none.Records) != 0 {
		t.Fatalf("a > recipient found %+v", none)
	}
	// Bad filters: 400 naming the field.
	for q, field := range map[string]string{
		"action=drop": "action", "client=300.0.0.1": "client", "since=yesterday": "since", "limit=5000": "limit",
		"recipient=nobody": "recipient", "reason=nonsense": "reason", "cursor=x:1": "cursor",
	} {
		st, b := admin.call("GET", "/api/decisions?"+q, nil)
		wantStatus(t, q, st, http.StatusBadRequest, b)
		wantField(t, q, b, field)
	}
	// A filter the index cannot answer, over more records than the bound
	// (40 here): narrow the search.
	for i := 0; i < 41; i++ {
		viewer.call("POST", "/api/verify", map[string]any{"address": "alice@callout.test"})
	}
	waitfor.Cond(t, 15*time.Second, func() bool { return search(admin, "domain=callout.test&limit=1000").Candidates > 41 })
	st, b := admin.call("GET", "/api/decisions?client=192.0.2.0/24", nil)
	wantStatus(t, "too broad", st, http.StatusUnprocessableEntity, b)
	if !strings.Contains(string(b), "narrow the search") {
		t.Fatalf("too broad: %s", b)
	}
	// CSV: one row per record, the header first.
	req, _ := http.NewRequest("GET", sys.http.URL+"/api/decisions?format=csv&recipient=nobody@callout.test&since="+url.QueryEscape(since), nil)
	req.Header.Set("Authorization", "Bearer "+sys.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(resp.Body).ReadAll()
	resp.Body.Close()
	if err != nil || len(rows) != 3 || rows[0][0] != "at" || rows[1][7] != "nobody@callout.test" {
		t.Fatalf("csv %v %v", rows, err)
	}
	// Counts per hour: the domain's and everyone's.
	waitfor.Cond(t, 15*time.Second, func() bool {
		st, b := viewer.call("GET", "/api/domains/callout.test/history?days=1", nil)
		if st != http.StatusOK {
			return false
		}
		h := decode[struct {
			Hours []decisions.Hour `json:"hours"`
		}](t, b)
		var c decisions.Counts
		for _, x := range h.Hours {
			c.Add(&x.Counts)
		}
		return c.Reject >= 2 && c.Reasons["reject/user_unknown"] >= 2 && c.Callouts >= 1 && c.Accept >= 42
	})
	st, b = admin.call("GET", "/api/history?days=1", nil)
	wantStatus(t, "history", st, http.StatusOK, b)
	st, b = admin.call("GET", "/api/domains/callout.test/history?days=91", nil)
	wantStatus(t, "history days", st, http.StatusBadRequest, b)
	// Erase: the viewer may not; the admin erases, and nothing is found.
	st, b = viewer.call("POST", "/api/decisions/erase", map[string]any{"domain": "callout.test"})
	wantStatus(t, "viewer erase", st, http.StatusForbidden, b)
	st, b = admin.call("POST", "/api/decisions/erase", map[string]any{"domain": "*"})
	wantStatus(t, "erase *", st, http.StatusBadRequest, b)
	st, b = admin.call("POST", "/api/decisions/erase", map[string]any{"domain": "callout.test"})
	wantStatus(t, "erase", st, http.StatusOK, b)
	if n := decode[operate.EraseResult](t, b).Removed; n < 46 {
		t.Fatalf("erased %d records", n)
	}
	if left := search(admin, "domain=callout.test"); len(left.Records) != 0 {
		t.Fatalf("after the erase: %+v", left)
	}
}
