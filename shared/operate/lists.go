package operate

// A domain's mailbox and bypass lists, edited in place: the console and
// calloutctl both go through here.

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/domains"
)

// Lists are the names of a policy's lists.
var Lists = []string{"mailboxes", "bypass"}

// ErrUnparsed is returned when a list is edited in a stored policy that
// does not parse: the whole policy must be set first.
var ErrUnparsed = errors.New("the stored policy does not parse: set the whole policy first")

// ErrNotListed is returned when an entry to remove is not on the list.
var ErrNotListed = errors.New("not on the list")

// List is the list named field ("mailboxes" or "bypass") of p.
func List(p *domains.Policy, field string) (*[]string, error) {
	switch field {
	case "mailboxes":
		return &p.Mailboxes, nil
	case "bypass":
		return &p.Bypass, nil
	}
	return nil, &domains.FieldError{Field: "list", Msg: "mailboxes or bypass"}
}

// EditList changes a domain's list with edit (given the current list, it
// returns the new one) at revision rev, and says what changed; with dryRun
// it writes nothing and only says what would change. Entries compare as
// the ingests compare them: local parts, without case.
func (c *Client) EditList(ctx context.Context, who, domain, field string, rev uint64, dryRun bool, edit func(cur []string) ([]string, error)) (Stored, audit.ListChange, error) {
	st, err := c.Policy(ctx, domain)
	if err != nil {
		return Stored{}, audit.ListChange{}, err
	}
	if st.Error != "" {
		return Stored{}, audit.ListChange{}, fmt.Errorf("%w (%s)", ErrUnparsed, st.Error)
	}
	p := st.Policy
	cur, err := List(&p, field)
	if err != nil {
		return Stored{}, audit.ListChange{}, err
	}
	next, err := edit(*cur)
	if err != nil {
		return Stored{}, audit.ListChange{}, err
	}
	lc, err := listChange(st.Domain, field, st.Policy, next)
	if err != nil {
		return Stored{}, audit.ListChange{}, err
	}
	if dryRun {
		return st, lc, nil
	}
	*cur = next
	stored, err := c.SetPolicy(ctx, who, st.Domain, p, rev)
	return stored, lc, err
}

// listChange says what setting a domain's list to next would change, on
// the normalized lists.
func listChange(domain, field string, cur domains.Policy, next []string) (audit.ListChange, error) {
	before, err := cur.Normalize(domain)
	if err != nil {
		return audit.ListChange{}, err
	}
	after := before
	l, _ := List(&after, field)
	*l = next
	if after, err = after.Normalize(domain); err != nil {
		return audit.ListChange{}, err
	}
	bl, _ := List(&before, field)
	al, _ := List(&after, field)
	b, _ := json.Marshal(map[string][]string{field: *bl})
	a, _ := json.Marshal(map[string][]string{field: *al})
	var ev audit.Event
	audit.PolicyChange(&ev, b, a)
	return ev.Lists[field], nil
}

// entryKey is how the ingests compare an entry: its local part, lower-case.
func entryKey(domain, e string) string {
	n, err := (domains.Policy{Mailboxes: []string{e}}).Normalize(domain)
	if err != nil || len(n.Mailboxes) != 1 {
		return e
	}
	return strings.ToLower(n.Mailboxes[0])
}

// MergeList is cur with the entries of add it lacks; entries that do not
// parse are kept for the policy's own check to name.
func MergeList(domain string, cur, add []string) []string {
	out := append([]string(nil), cur...)
	seen := map[string]bool{}
	for _, e := range cur {
		seen[entryKey(domain, e)] = true
	}
	for _, e := range add {
		if k := entryKey(domain, e); !seen[k] {
			seen[k] = true
			out = append(out, e)
		}
	}
	return out
}

// RemoveFromList is cur without entry (ErrNotListed when it is not on it).
func RemoveFromList(domain string, cur []string, entry string) ([]string, error) {
	k := entryKey(domain, entry)
	var out []string
	found := false
	for _, e := range cur {
		if entryKey(domain, e) == k {
			found = true
			continue
		}
		out = append(out, e)
	}
	if !found {
		return nil, fmt.Errorf("%s: %w", entry, ErrNotListed)
	}
	return out, nil
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
				return nil, &domains.FieldError{Field: "list", Msg: fmt.Sprintf("CSV: %v", err)}
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
