package operate

// The decision log: searches over every region's log, erasures, and the
// counts per domain per hour.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/subjects"
)

// SearchResult is one page of a search of the decision log, over every
// region of the fleet, newest first.
type SearchResult struct {
	Records []decisions.Hit `json:"records"`
	// Cursor asks for the next page ("" after the last).
	Cursor string `json:"cursor,omitempty"`
	// Read and Candidates: records read, and the most the index pointed at.
	Read       int `json:"read"`
	Candidates int `json:"candidates"`
	// Indexing names the regions whose index is still being built (their
	// older records may be missing); Unanswered those that did not answer.
	Indexing   []string `json:"indexing,omitempty"`
	Unanswered []string `json:"unanswered,omitempty"`
}

// SearchWait is how long a search waits for a region's answer.
const SearchWait = 20 * time.Second

// cursorDone marks a region whose records were all returned.
const cursorDone = "-"

// parseCursor reads a cursor: "<seq>" in one region, "<region>:<seq>,..."
// over regions ("-" for a region done).
func parseCursor(s string, regions []string) (map[string]string, error) {
	at := map[string]string{}
	if s == "" {
		return at, nil
	}
	bad := &decisions.FieldError{Field: "cursor", Err: fmt.Errorf("%w: %q", decisions.ErrBadFilter, s)}
	for _, part := range strings.Split(s, ",") {
		r, seq, ok := strings.Cut(part, ":")
		if !ok {
			r, seq = "", part
		}
		if seq != cursorDone {
			if _, err := strconv.ParseUint(seq, 10, 64); err != nil {
				return nil, bad
			}
		}
		if r != "" && !slices.Contains(regions, r) || r == "" && len(regions) > 0 {
			return nil, bad
		}
		at[r] = seq
	}
	return at, nil
}

func (c *Client) regionNames(ctx context.Context) ([]string, []subjects.Names, error) {
	regions, err := c.Regions(ctx)
	if err != nil {
		return nil, nil, err
	}
	if len(regions) == 0 {
		return []string{""}, []subjects.Names{c.Names}, nil
	}
	names := make([]subjects.Names, len(regions))
	for i, r := range regions {
		names[i] = subjects.NewIn(c.Names.Prefix, r)
	}
	return regions, names, nil
}

// SearchDecisions answers one page of q from every region's log.
func (c *Client) SearchDecisions(ctx context.Context, q decisions.Query, cursor string) (SearchResult, error) {
	res := SearchResult{Records: []decisions.Hit{}}
	if err := q.Check(); err != nil {
		return res, err
	}
	regions, names, err := c.regionNames(ctx)
	if err != nil {
		return res, err
	}
	at, err := parseCursor(cursor, slices.DeleteFunc(slices.Clone(regions), func(r string) bool { return r == "" }))
	if err != nil {
		return res, err
	}
	type answer struct {
		region string
		res    decisions.Result
		err    error
	}
	answers := make([]answer, len(regions))
	var wg sync.WaitGroup
	for i, r := range regions {
		if at[r] == cursorDone {
			answers[i] = answer{region: r}
			continue
		}
		rq := q
		rq.Before, _ = strconv.ParseUint(at[r], 10, 64)
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := answer{region: r}
			a.res, a.err = c.searchRegion(ctx, names[i], rq)
			answers[i] = a
		}()
	}
	wg.Wait()
	var hits []decisions.Hit
	for _, a := range answers {
		switch {
		case errors.Is(a.err, ErrUnavailable):
			res.Unanswered = append(res.Unanswered, a.region)
			continue
		case a.err != nil:
			return res, a.err
		}
		res.Read += a.res.Read
		res.Candidates += a.res.Candidates
		if a.res.Indexing {
			res.Indexing = append(res.Indexing, a.region)
		}
		for _, h := range a.res.Records {
			h.Region = a.region
			hits = append(hits, h)
		}
	}
	// Newest first over the regions; a page takes the first Limit, and
	// each region goes on from the last of its records taken.
	slices.SortStableFunc(hits, func(a, b decisions.Hit) int { return b.At.Compare(a.At) })
	if len(hits) > q.Limit {
		hits = hits[:q.Limit]
	}
	if hits != nil {
		res.Records = hits
	}
	next := map[string]string{}
	more := false
	for _, a := range answers {
		if at[a.region] == cursorDone {
			next[a.region] = cursorDone
			continue
		}
		taken, all := 0, len(a.res.Records)
		var last uint64
		for _, h := range hits {
			if h.Region == a.region {
				taken++
				last = h.ID
			}
		}
		switch {
		case slices.Contains(res.Unanswered, a.region):
			next[a.region] = at[a.region] // asked again on the next page
			more = true
		case taken == all && a.res.Next == 0:
			next[a.region] = cursorDone
		case taken == 0:
			next[a.region] = at[a.region]
			more = true
		default:
			next[a.region] = strconv.FormatUint(last, 10)
			more = true
		}
	}
	if more {
		res.Cursor = formatCursor(regions, next)
	}
	return res, nil
}

func formatCursor(regions []string, next map[string]string) string {
	if len(regions) == 1 && regions[0] == "" {
		if next[""] == cursorDone {
			return ""
		}
		if next[""] == "" {
			return "0"
		}
		return next[""]
	}
	parts := make([]string, 0, len(regions))
	for _, r := range regions {
		seq := next[r]
		if seq == "" {
			seq = "0"
		}
		parts = append(parts, r+":"+seq)
	}
	return strings.Join(parts, ",")
}

// searchRegion asks one region's cachekeepers.
func (c *Client) searchRegion(ctx context.Context, names subjects.Names, q decisions.Query) (decisions.Result, error) {
	var res decisions.Result
	b, _ := json.Marshal(q)
	rctx, cancel := context.WithTimeout(ctx, SearchWait)
	defer cancel()
	m, err := c.NC.RequestWithContext(rctx, names.DecisionSearch(), b)
	if err != nil {
		return res, fmt.Errorf("search %s: %w", names.DecisionSearch(), unavailable(err))
	}
	if e := m.Header.Get(micro.ErrorHeader); e != "" {
		switch m.Header.Get(micro.ErrorCodeHeader) {
		case "422":
			return res, fmt.Errorf("%w: %s", decisions.ErrTooBroad, e)
		case "400":
			return res, fmt.Errorf("%w: %s", decisions.ErrBadFilter, e)
		}
		return res, fmt.Errorf("search: %s", e)
	}
	if err := json.Unmarshal(m.Data, &res); err != nil {
		return res, fmt.Errorf("search: %w", err)
	}
	return res, nil
}

// EraseResult is what an erasure did in each region.
type EraseResult struct {
	Removed    int      `json:"removed"`
	Regions    []string `json:"regions,omitempty"`
	Unanswered []string `json:"unanswered,omitempty"`
}

// EraseDecisions removes every record of a domain from every region's
// log (a request of the domain's owner), and audits it. A region that
// does not answer is named: erase again when it is back.
func (c *Client) EraseDecisions(ctx context.Context, who, domain string) (EraseResult, error) {
	var res EraseResult
	domain = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(domain), "."))
	if domain == "" || strings.ContainsAny(domain, "@*> \r\n\x00") {
		return res, &decisions.FieldError{Field: "domain", Err: fmt.Errorf("%w: %q", decisions.ErrBadFilter, domain)}
	}
	regions, names, err := c.regionNames(ctx)
	if err != nil {
		return res, err
	}
	b, _ := json.Marshal(map[string]string{"domain": domain})
	var errs []error
	for i, r := range regions {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		m, err := c.NC.RequestWithContext(rctx, names[i].DecisionErase(), b)
		cancel()
		var rep struct {
			Removed int    `json:"removed"`
			Error   string `json:"error"`
		}
		switch {
		case err != nil:
			res.Unanswered = append(res.Unanswered, r)
			continue
		case m.Header.Get(micro.ErrorHeader) != "":
			errs = append(errs, fmt.Errorf("erase: %s", m.Header.Get(micro.ErrorHeader)))
			continue
		case json.Unmarshal(m.Data, &rep) != nil:
			errs = append(errs, errors.New("erase: unreadable answer"))
			continue
		case rep.Error != "":
			errs = append(errs, fmt.Errorf("erase: %s", rep.Error))
		}
		res.Removed += rep.Removed
		if r != "" {
			res.Regions = append(res.Regions, r)
		}
	}
	err = errors.Join(errs...)
	if err == nil && len(res.Unanswered) > 0 {
		err = fmt.Errorf("erase: %w: regions %s", ErrUnavailable, strings.Join(res.Unanswered, ", "))
	}
	ev := audit.Event{Who: who, What: audit.LogErase, Domain: domain, Result: fmt.Sprintf("erased %d records", res.Removed)}
	if err != nil {
		ev.Result += "; " + err.Error()
	}
	if aerr := audit.Record(ctx, c.JS, c.Names, ev); aerr != nil && err == nil {
		err = fmt.Errorf("%w: %v", ErrNotRecorded, aerr)
	}
	return res, err
}

// history opens the history bucket for reading (nil when there is none).
func (c *Client) history(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := c.JS.KeyValue(ctx, c.Names.HistoryBucket())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	return kv, err
}

// History is a domain's counts per hour since a time, oldest first
// (decisions.AllDomains: every domain together).
func (c *Client) History(ctx context.Context, domain string, since time.Time) ([]decisions.Hour, error) {
	kv, err := c.history(ctx)
	if err != nil || kv == nil {
		return []decisions.Hour{}, err
	}
	return decisions.History(ctx, kv, domain, since)
}

// Day is every domain's counts of one day (UTC).
func (c *Client) Day(ctx context.Context, day time.Time) (map[string]*decisions.Counts, error) {
	kv, err := c.history(ctx)
	if err != nil || kv == nil {
		return map[string]*decisions.Counts{}, err
	}
	return decisions.Day(ctx, kv, day)
}
