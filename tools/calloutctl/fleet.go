package main

// Commands about the fleet and its records: domains, stats, audit, hosts, setup.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/natsconn"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/stats"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/verdict"
)

func (a *app) domain(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New("usage: domain set|get|rm|ls DOMAIN [flags]")
	}
	switch args[0] {
	case "ls":
		all, err := a.op.Policies(ctx)
		if err != nil {
			return err
		}
		for _, st := range all {
			fmt.Fprintf(a.out, "%s\t%s\n", st.Domain, policyText(st))
		}
		return nil
	case "get", "rm":
		if len(args) != 2 {
			return fmt.Errorf("usage: domain %s DOMAIN", args[0])
		}
		if args[0] == "rm" {
			return a.op.RemovePolicy(ctx, a.who, args[1], 0)
		}
		st, err := a.op.Policy(ctx, args[1])
		if err != nil {
			return err
		}
		fmt.Fprintf(a.out, "%s\n", policyText(st))
		return nil
	case "set":
		fs := flag.NewFlagSet("domain set", flag.ContinueOnError)
		mode := fs.String("mode", "callout", "callout, monitor (call out, always accept), off or static")
		route := fs.String("route", "", "host:port list in preference order, or mx")
		boxes := fs.String("mailboxes", "", "static mode: local parts or addresses, comma-separated")
		bypass := fs.String("bypass", "", "local parts always accepted without a callout, comma-separated")
		onTemp := fs.String("on-tempfail", "", "defer (default) or accept")
		onUnv := fs.String("on-unverifiable", "", "accept (default) or defer")
		sender := fs.String("sender", "", "probe MAIL FROM (default <>)")
		fallback := fs.String("fallback-sender", "", "probe MAIL FROM when the sender is refused")
		pos, err := parseMixed(fs, args[1:])
		if err != nil || len(pos) != 1 {
			return errors.New("usage: domain set DOMAIN [flags]")
		}
		p := domains.Policy{Mode: domains.Mode(*mode), Route: split(*route), Mailboxes: split(*boxes), Bypass: split(*bypass),
			OnTempfail: verdict.Action(*onTemp), OnUnverifiable: verdict.Action(*onUnv), Sender: *sender, FallbackSender: *fallback}
		st, err := a.op.SetPolicy(ctx, a.who, pos[0], p, domains.AnyRevision)
		if !operate.Made(err) {
			return err
		}
		fmt.Fprintf(a.out, "%s\t%s\n", st.Domain, policyText(st))
		return err
	case "list":
		return a.domainList(ctx, args[1:])
	}
	return fmt.Errorf("unknown domain command %q", args[0])
}

// domainList shows or changes one of a domain's lists:
//
//	domain list DOMAIN mailboxes|bypass                  the list, one entry per line
//	domain list DOMAIN mailboxes|bypass add|rm ENTRY
//	domain list DOMAIN mailboxes|bypass import FILE [-merge] [-dry-run]
func (a *app) domainList(ctx context.Context, args []string) error {
	usage := errors.New("usage: domain list DOMAIN mailboxes|bypass [add ENTRY | rm ENTRY | import FILE [-merge] [-dry-run]]")
	fs := flag.NewFlagSet("domain list", flag.ContinueOnError)
	merge := fs.Bool("merge", false, "import: add to the list instead of replacing it")
	dryRun := fs.Bool("dry-run", false, "say what would change, write nothing")
	pos, err := parseMixed(fs, args)
	if err != nil || len(pos) < 2 {
		return usage
	}
	domain, field := pos[0], pos[1]
	if len(pos) == 2 {
		st, err := a.op.Policy(ctx, domain)
		if err != nil {
			return err
		}
		l, err := operate.List(&st.Policy, field)
		if err != nil {
			return err
		}
		for _, e := range *l {
			fmt.Fprintln(a.out, e)
		}
		return nil
	}
	if len(pos) != 4 {
		return usage
	}
	var st operate.Stored
	var lc audit.ListChange
	switch pos[2] {
	case "add", "rm":
		st, lc, err = a.op.EditEntry(ctx, a.who, domain, field, pos[3], pos[2] == "add", domains.AnyRevision, *dryRun)
	case "import":
		data, rerr := os.ReadFile(pos[3])
		if rerr != nil {
			return rerr
		}
		list, perr := operate.ParseList(string(data))
		if perr != nil {
			return perr
		}
		st, lc, err = a.op.ImportList(ctx, a.who, domain, field, list, *merge, domains.AnyRevision, *dryRun)
	default:
		return usage
	}
	if !operate.Made(err) {
		return err
	}
	what := "changed"
	if *dryRun {
		what = "would change"
	}
	fmt.Fprintf(a.out, "%s %s: %s: %d added, %d removed, %d entries\n", st.Domain, field, what, lc.AddedCount, lc.RemovedCount, lc.Count)
	for _, e := range lc.Added {
		fmt.Fprintf(a.out, "+ %s\n", e)
	}
	for _, e := range lc.Removed {
		fmt.Fprintf(a.out, "- %s\n", e)
	}
	return err
}

// policyText is a stored policy as JSON (as stored, when it does not parse).
func policyText(st operate.Stored) string {
	if st.Error != "" {
		return string(st.Raw) + "\t(" + st.Error + ")"
	}
	b, _ := json.Marshal(st.Policy)
	return string(b)
}

// stats prints a live summary of the fleet from the services' stats
// messages: rates per second, hit ratio, busiest destinations; every
// -every until Ctrl-C (or -n summaries).
func (a *app) stats(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	every := fs.Duration("every", 5*time.Second, "how often to print a summary")
	count := fs.Int("n", 0, "print this many summaries, then stop (0: until Ctrl-C)")
	asJSON := fs.Bool("json", false, "print the summaries as JSON")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 || *every <= 0 {
		return errors.New("usage: stats [-every 5s] [-n 0] [-json]")
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt)
	defer stop()
	col := stats.NewCollector(3**every + 30*time.Second)
	sub, err := col.Subscribe(a.nc, a.names.StatsAll())
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	t := time.NewTicker(*every)
	defer t.Stop()
	for printed := 0; *count == 0 || printed < *count; printed++ {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		sum := col.Fleet(time.Now(), 10)
		if *asJSON {
			if err := a.printJSON(sum); err != nil {
				return err
			}
			continue
		}
		fmt.Fprintf(a.out, "%s  instances %v\n", time.Now().Format(time.TimeOnly), sum.Instances)
		fmt.Fprintf(a.out, "  verifies/s %.1f (accept %.1f, reject %.1f, defer %.1f)  hit ratio %.2f  near-cache hits/s %.1f  deadlines/s %.2f  shed/s %.2f  coalesced/s %.2f\n",
			sum.Verifies, sum.Accept, sum.Reject, sum.Defer, sum.HitRatio, sum.NearHits, sum.Deadlines, sum.Shed, sum.Coalesced)
		fmt.Fprintf(a.out, "  callouts/s %.1f %v  jobs waiting %d\n", sum.Callouts, sum.ByResult, sum.Waiting)
		for _, h := range sum.Hosts {
			fmt.Fprintf(a.out, "  %-28s %-9s calls %d  p50 %.1f ms  p99 %.1f ms  in use %d  rate %.1f/s  backoff %d  %s\n", h.Host, h.Breaker, h.Calls, h.P50MS, h.P99MS, h.InUse, h.Rate, h.Backoff, h.LastReply)
		}
	}
	return nil
}

// audit lists the newest operator changes.
func (a *app) audit(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	n := fs.Int("n", 50, "the newest N events")
	asJSON := fs.Bool("json", false, "print the events as JSON")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return errors.New("usage: audit [-n 50] [-json]")
	}
	evs, err := a.op.Audit(ctx, *n)
	if err != nil {
		return err
	}
	if *asJSON {
		return a.printJSON(evs)
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "WHEN\tWHO\tWHAT\tSCOPE\tDETAIL")
	for _, ev := range evs {
		scope := ev.Domain
		if ev.Address != "" {
			scope = ev.Address
		}
		if ev.What == audit.Flush {
			scope = strings.TrimSpace(ev.Scope + " " + scope + " " + ev.Only)
		}
		detail := ev.Result
		if ev.After != nil || ev.Before != nil {
			detail = fmt.Sprintf("%s -> %s", orNone(ev.Before), orNone(ev.After))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ev.At.Local().Format(time.RFC3339), ev.Who, ev.What, scope, detail)
	}
	return tw.Flush()
}

func orNone(b json.RawMessage) string {
	if len(b) == 0 {
		return "(none)"
	}
	return string(b)
}

// setup creates or updates the streams and buckets: the admin's step, since
// the service roles may only create what is missing.
func (a *app) setup(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	replicas := fs.Int("replicas", 1, "JetStream replicas (3 in a cluster)")
	cacheTTL := fs.Duration("cache-ttl", 96*time.Hour, "the cache bucket's TTL: the longest TTL class of the cachekeepers")
	auditAge := fs.Duration("audit-max-age", audit.DefaultLimits.MaxAge, "how long the audit trail keeps an event")
	auditBytes := fs.Int64("audit-max-bytes", audit.DefaultLimits.MaxBytes, "the audit trail's size cap (the oldest events go first past it)")
	logAge := fs.Duration("log-max-age", decisions.DefaultLimits.MaxAge, "how long the decision log keeps a record (docs/decisions.md)")
	logBytes := fs.Int64("log-max-bytes", decisions.DefaultLimits.MaxBytes, "the decision log's size cap, per region (the oldest records go first past it)")
	regionList := fs.String("regions", "", "a fleet over regions: their names, comma-separated (docs/regions.md)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return errors.New("usage: setup [-replicas N] [-cache-ttl 96h] [-audit-max-age 2160h] [-audit-max-bytes N] [-log-max-age 192h] [-log-max-bytes N] [-regions a,b,c]")
	}
	regions := split(*regionList)
	for _, r := range regions {
		if _, err := (natsconn.Config{Region: r}).Names(); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	if *replicas < 1 || *cacheTTL < time.Second || *auditAge < time.Hour || *auditBytes < 1<<20 || *logAge < time.Minute || *logBytes < 1<<20 {
		return errors.New("setup: -replicas at least 1, -cache-ttl at least 1s, -audit-max-age at least 1h, -log-max-age at least 1m, -audit-max-bytes and -log-max-bytes at least 1 MiB")
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	done, err := streams.SetupWith(sctx, a.js, a.names, *replicas, *cacheTTL, streams.Limits{Audit: audit.Limits{MaxAge: *auditAge, MaxBytes: *auditBytes}, Decisions: decisions.Limits{MaxAge: *logAge, MaxBytes: *logBytes}}, regions...)
	for _, d := range done {
		fmt.Fprintf(a.out, "%s: ok\n", d)
	}
	return err
}

// regions shows each region of a fleet over regions: whether it is heard,
// whether it has applied every flush, how far its cache is behind, and
// its instances.
func (a *app) regions(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("regions", flag.ContinueOnError)
	wait := fs.Duration("wait", time.Second, "how long to collect the instances' answers")
	asJSON := fs.Bool("json", false, "print the regions as JSON")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return errors.New("usage: regions [-wait 1s] [-json]")
	}
	all, err := a.op.RegionStatuses(ctx, *wait)
	if err != nil {
		return err
	}
	if *asJSON {
		return a.printJSON(all)
	}
	if len(all) == 0 {
		return errors.New("regions: a fleet in one region (no regions listed; see docs/regions.md)")
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REGION\tSTATE\tFLUSHES\tVERDICT LAG\tFLUSH LAG\tINGESTS\tCACHEKEEPERS")
	for _, r := range all {
		state, flushes := "up", "applied"
		if !r.Heard {
			state = "not heard (down, or cut off from here)"
		}
		if !r.CaughtUp {
			flushes = "applying"
		}
		lag := func(n int64) string {
			if n < 0 {
				return "?"
			}
			return strconv.FormatInt(n, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", r.Region, state, flushes, lag(r.VerdictLag), lag(r.FlushLag), r.Instances["callout-ingest"], r.Instances["callout-cache"])
	}
	return tw.Flush()
}

// hosts asks every prober for its destination hosts and lists them.
func (a *app) hosts(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("hosts", flag.ContinueOnError)
	wait := fs.Duration("wait", time.Second, "how long to collect the probers' answers")
	asJSON := fs.Bool("json", false, "print the answers as JSON")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return errors.New("usage: hosts [-wait 1s] [-json]")
	}
	all, err := a.op.Hosts(ctx, *wait)
	if err != nil {
		return err
	}
	if *asJSON {
		return a.printJSON(all)
	}
	if len(all) == 0 {
		return errors.New("hosts: no prober answered")
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROBER\tHOST\tBREAKER\tCALLS\tP50 MS\tP99 MS\tRATE/S\tBACKOFF\tIN USE\tIDLE\tREUSE\tTLS\tREFUSES VERIFIER\tLAST REPLY")
	for _, ph := range all {
		if ph.Region != "" {
			ph.Instance += " (" + ph.Region + ")"
		}
		for _, h := range ph.Hosts {
			tlsState := "ok"
			if h.PlainText {
				tlsState = "plaintext"
			}
			refusing := h.RefusesVerifier
			if refusing == "" {
				refusing = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%.1f\t%.1f\t%.2f\t%d\t%d\t%d\t%v\t%s\t%s\t%s\n", ph.Instance, h.Host, h.Breaker, h.Calls, h.P50MS, h.P99MS, h.Rate, h.Backoff, h.InUse, h.Idle, h.Reuse, tlsState, refusing, h.LastReply)
		}
		fmt.Fprintf(tw, "%s\t(%d jobs waiting for busy hosts)\n", ph.Instance, ph.Waiting)
	}
	return tw.Flush()
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
