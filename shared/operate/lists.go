package operate

// A domain's mailbox and bypass lists, edited in place: the console and
// calloutctl both go through here.

import (
	"context"
	"encoding/csv"
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

// ImportList replaces a domain's list (field: "mailboxes" or "bypass")
// with list, or with merge adds the entries of list it lacks, at revision
// rev, and says what changed; with dryRun it writes nothing and only says
// what would change.
func (c *Client) ImportList(ctx context.Context, who, domain, field string, list []string, merge bool, rev uint64, dryRun bool) (Stored, audit.ListChange, error) {
	return c.editList(ctx, who, domain, field, rev, dryRun, func(cur []string) ([]string, error) {
		if merge {
			return mergeList(domain, cur, list), nil
		}
		return list, nil
	})
}

// EditEntry adds one entry to a domain's list, or removes it
// (ErrNotListed when it is not on it), at revision rev; with dryRun it
// only says what would change.
func (c *Client) EditEntry(ctx context.Context, who, domain, field, entry string, add bool, rev uint64, dryRun bool) (Stored, audit.ListChange, error) {
	return c.editList(ctx, who, domain, field, rev, dryRun, func(cur []string) ([]string, error) {
		if add {
			return mergeList(domain, cur, []string{entry}), nil
		}
		return removeFromList(domain, cur, entry)
	})
}

// editList changes a domain's list with edit (given the current list, it
// returns the new one) and says what changed; with dryRun it writes
// nothing. Entries compare as the ingests compare them: local parts,
// without case.
//
// With rev domains.AnyRevision (calloutctl), the change is applied to the
// revision it read, and read again when another change lands first: an
// edit of one entry never undoes someone else's.
func (c *Client) editList(ctx context.Context, who, domain, field string, rev uint64, dryRun bool, edit func(cur []string) ([]string, error)) (Stored, audit.ListChange, error) {
	if rev != domains.AnyRevision {
		return c.editListAt(ctx, who, domain, field, rev, dryRun, edit)
	}
	for try := 1; ; try++ {
		st, lc, err := c.editListAt(ctx, who, domain, field, 0, dryRun, edit)
		if !errors.Is(err, domains.ErrRevision) || try == 5 {
			return st, lc, err
		}
	}
}

// editListAt is editList at revision rev (0: the revision it reads).
func (c *Client) editListAt(ctx context.Context, who, domain, field string, rev uint64, dryRun bool, edit func(cur []string) ([]string, error)) (Stored, audit.ListChange, error) {
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
	// Both lists in normal form, as the ingests hold them.
	after := p
	*listOf(&after, field) = next
	if after, err = after.Normalize(st.Domain); err != nil {
		return Stored{}, audit.ListChange{}, err
	}
	lc := audit.DiffList(*cur, *listOf(&after, field))
	if dryRun {
		return st, lc, nil
	}
	*cur = next
	if rev == 0 {
		rev = st.Revision
	}
	stored, err := c.SetPolicy(ctx, who, st.Domain, p, rev)
	return stored, lc, err
}

// listOf is List for a field already checked.
func listOf(p *domains.Policy, field string) *[]string {
	l, _ := List(p, field)
	return l
}

// mergeList is cur with the entries of add it lacks; entries that do not
// parse are kept for the policy's own check to name.
func mergeList(domain string, cur, add []string) []string {
	out := append([]string(nil), cur...)
	seen := map[string]bool{}
	for _, e := range cur {
		seen[domains.EntryKey(domain, e)] = true
	}
	for _, e := range add {
		if k := domains.EntryKey(domain, e); !seen[k] {
			seen[k] = true
			out = append(out, e)
		}
	}
	return out
}

// removeFromList is cur without entry (ErrNotListed when it is not on it).
func removeFromList(domain string, cur []string, entry string) ([]string, error) {
	k := domains.EntryKey(domain, entry)
	var out []string
	found := false
	for _, e := range cur {
		if domains.EntryKey(domain, e) == k {
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
