package main

// The decision log: log (search), log erase, report.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/verdict"
)

const logUsage = "usage: log [-recipient A] [-domain D] [-sender A] [-client IP|NET] [-action accept|reject|defer] [-reason R] [-since T] [-until T] [-n 50] [-cursor C] [-json]\n       log erase -domain D"

// log searches the decision log, newest first.
func (a *app) log(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "erase" {
		return a.logErase(ctx, args[1:])
	}
	fs := flag.NewFlagSet("log", flag.ContinueOnError)
	var q decisions.Query
	fs.StringVar(&q.Recipient, "recipient", "", "one recipient address")
	fs.StringVar(&q.Domain, "domain", "", "the recipients' domain")
	fs.StringVar(&q.Sender, "sender", "", "one sender address (<> the null sender)")
	fs.StringVar(&q.Client, "client", "", "the SMTP client's address or network")
	action := fs.String("action", "", "accept, reject or defer")
	reason := fs.String("reason", "", "a reason (docs/troubleshooting.md)")
	since := fs.String("since", "", "from this time, or this long ago (24h)")
	until := fs.String("until", "", "up to this time")
	fs.IntVar(&q.Limit, "n", decisions.DefaultLimit, "records per page")
	cursor := fs.String("cursor", "", "the next page (printed after a full page)")
	asJSON := fs.Bool("json", false, "print the page as JSON")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return errors.New(logUsage)
	}
	q.Action, q.Reason = verdict.Action(*action), verdict.Reason(*reason)
	var err error
	if q.Since, err = decisions.ParseWhen(*since); err != nil {
		return fmt.Errorf("log: -since %w", err)
	}
	if q.Until, err = decisions.ParseWhen(*until); err != nil {
		return fmt.Errorf("log: -until %w", err)
	}
	res, err := a.op.SearchDecisions(ctx, q, *cursor)
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	if *asJSON {
		return a.printJSON(res)
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WHEN\tACTION\tRECIPIENT\tSENDER\tCLIENT\tREASON\tSOURCE\tANSWER\tDESTINATION")
	for _, h := range res.Records {
		sender := h.Sender
		if sender == "" {
			sender = "<>"
		}
		dest := h.Host
		if h.DestCode != 0 {
			dest = strings.TrimSpace(fmt.Sprintf("%s %d %s", h.Host, h.DestCode, h.DestText))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d %s\t%s\n", h.At.Local().Format(time.RFC3339), h.Action, orDash(h.Recipient), sender, orDash(h.Client),
			orDash(string(h.Reason)), h.Source, h.Code, h.Enhanced, orDash(dest))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(res.Indexing) > 0 {
		fmt.Fprintf(a.out, "(still indexing: %s; older records may be missing)\n", strings.Join(res.Indexing, ", "))
	}
	if len(res.Unanswered) > 0 {
		fmt.Fprintf(a.out, "(no answer from regions %s: their records are missing)\n", strings.Join(res.Unanswered, ", "))
	}
	if res.Cursor != "" {
		fmt.Fprintf(a.out, "(more: -cursor %s)\n", res.Cursor)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (a *app) logErase(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("log erase", flag.ContinueOnError)
	domain := fs.String("domain", "", "the domain whose records go")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 || *domain == "" {
		return errors.New("usage: log erase -domain D")
	}
	res, err := a.op.EraseDecisions(ctx, a.who, *domain)
	if err != nil {
		return fmt.Errorf("log erase: %w", err)
	}
	fmt.Fprintf(a.out, "erased %d records of %s\n", res.Removed, strings.ToLower(*domain))
	return nil
}

// report prints one day's counts per domain: the daily summary.
func (a *app) report(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("report", flag.ContinueOnError)
	dayFlag := fs.String("day", "", "the day (UTC), 2026-12-01 (default: yesterday)")
	domain := fs.String("domain", "", "one domain only")
	asJSON := fs.Bool("json", false, "print the counts as JSON")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return errors.New("usage: report [-day 2026-12-01] [-domain D] [-json]")
	}
	day := time.Now().UTC().AddDate(0, 0, -1)
	if *dayFlag != "" {
		t, err := time.Parse("2006-01-02", *dayFlag)
		if err != nil {
			return fmt.Errorf("report: -day %q: want 2026-12-01", *dayFlag)
		}
		day = t
	}
	all, err := a.op.Day(ctx, day)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if *domain != "" {
		d := strings.ToLower(*domain)
		c := all[d]
		all = map[string]*decisions.Counts{}
		if c != nil {
			all[d] = c
		}
	}
	if *asJSON {
		return a.printJSON(all)
	}
	fmt.Fprintf(a.out, "callout report for %s (UTC)\n\n", day.Format("2006-01-02"))
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "DOMAIN\tANSWERS\tACCEPT\tREJECT\tDEFER\tCALLOUTS\tHIT RATIO\tTOP REASONS\t")
	domains := slices.Sorted(func(yield func(string) bool) {
		for d := range all {
			if d != decisions.AllDomains && !yield(d) {
				return
			}
		}
	})
	if all[decisions.AllDomains] != nil {
		domains = append(domains, decisions.AllDomains)
	}
	for _, d := range domains {
		c := all[d]
		ratio := "-"
		if c.Total() > 0 {
			ratio = fmt.Sprintf("%.2f", float64(c.Hits)/float64(c.Total()))
		}
		name := d
		if d == decisions.AllDomains {
			name = "(all)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", name, c.Total(), c.Accept, c.Reject, c.Defer, c.Callouts, ratio, topReasons(c.Reasons, 3))
	}
	if len(domains) == 0 {
		fmt.Fprintln(a.out, "(no answers counted that day)")
	}
	return tw.Flush()
}

func topReasons(r map[string]int64, n int) string {
	keys := make([]string, 0, len(r))
	for k := range r {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if r[a] != r[b] {
			if r[a] > r[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, k := range keys[:min(n, len(keys))] {
		parts = append(parts, fmt.Sprintf("%s %d", k, r[k]))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}
