// Command calloutctl is the operator's tool: verify and look up addresses,
// flush the cache, inspect its entries and edit domain policy.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/stats"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

const usage = `calloutctl: operate a callout system.

Usage:
  calloutctl [connection flags] verify ADDRESS [-sender] [-client IP] [-timeout 25s] [-trace]
  calloutctl [connection flags] lookup ADDRESS [-sender]
  calloutctl [connection flags] flush (-all | -domain D | -address A) [-only invalid|valid]
  calloutctl [connection flags] inspect [-domain D] [-keys]
  calloutctl [connection flags] domain set DOMAIN [-mode callout|monitor|off|static] [-route host:port,...|mx]
                                   [-mailboxes a,b] [-bypass a,b] [-on-tempfail defer|accept] [-on-unverifiable accept|defer]
                                   [-sender ADDR] [-fallback-sender ADDR]
  calloutctl [connection flags] domain (get DOMAIN | rm DOMAIN | ls)
  calloutctl [connection flags] setup [-replicas 1] [-cache-ttl 96h]
  calloutctl [connection flags] hosts [-wait 1s] [-json]
  calloutctl [connection flags] audit [-n 50] [-json]
  calloutctl [connection flags] stats [-every 5s] [-n 0] [-json]

Connection flags (or CALLOUT_NATS_URL, CALLOUT_NATS_USER, CALLOUT_NATS_PASSWORD, CALLOUT_NATS_INBOX_PREFIX, CALLOUT_PREFIX):
`

type app struct {
	nc    *nats.Conn
	js    jetstream.JetStream
	op    *operate.Client
	names subjects.Names
	out   io.Writer
	who   string // recorded in audit events
}

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "calloutctl:", err)
		os.Exit(1)
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("calloutctl", flag.ContinueOnError)
	url := fs.String("server", env("CALLOUT_NATS_URL", nats.DefaultURL), "NATS server URLs")
	user := fs.String("user", env("CALLOUT_NATS_USER", ""), "NATS user")
	pass := fs.String("password", env("CALLOUT_NATS_PASSWORD", ""), "NATS password")
	inbox := fs.String("inbox-prefix", env("CALLOUT_NATS_INBOX_PREFIX", ""), "reply inbox prefix (the admin role's is _INBOX_admin)")
	prefix := fs.String("prefix", env("CALLOUT_PREFIX", subjects.DefaultPrefix), "subject prefix")
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("no command")
	}
	opts := []nats.Option{nats.Name("calloutctl"), nats.Timeout(5 * time.Second)}
	if *user != "" {
		opts = append(opts, nats.UserInfo(*user, *pass))
	}
	if *inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(*inbox))
	}
	nc, err := nats.Connect(*url, opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	who := *user
	if who == "" {
		who = env("USER", "operator") + " (no NATS user)"
	}
	names := subjects.New(*prefix)
	a := &app{nc: nc, js: js, op: &operate.Client{NC: nc, JS: js, Names: names}, names: names, out: out, who: who}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "verify":
		return a.verify(ctx, rest)
	case "lookup":
		return a.lookup(ctx, rest)
	case "flush":
		return a.flush(ctx, rest)
	case "inspect":
		return a.inspect(ctx, rest)
	case "domain":
		return a.domain(ctx, rest)
	case "setup":
		return a.setup(ctx, rest)
	case "hosts":
		return a.hosts(ctx, rest)
	case "audit":
		return a.audit(ctx, rest)
	case "stats":
		return a.stats(ctx, rest)
	}
	return fmt.Errorf("unknown command %q", cmd)
}

// parseMixed parses flags that may come before or after the positional arguments.
func parseMixed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (a *app) verify(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	sender := fs.Bool("sender", false, "verify as a sender (callback verification)")
	client := fs.String("client", "", "SMTP client address, for the dictionary-attack brake")
	timeout := fs.Duration("timeout", 25*time.Second, "deadline")
	trace := fs.Bool("trace", false, "a fresh callout (the cache is not read) with its whole dialogue shown (admin)")
	pos, err := parseMixed(fs, args)
	if err != nil || len(pos) != 1 {
		return errors.New("usage: verify ADDRESS [-sender] [-client IP] [-timeout 25s] [-trace]")
	}
	req := wire.VerifyRequest{Address: pos[0], Purpose: verdict.Recipient, ClientAddress: *client, TimeoutMS: int(timeout.Milliseconds()), Trace: *trace}
	if *sender {
		req.Purpose = verdict.Sender
	}
	rep, err := a.op.Verify(ctx, req)
	if err != nil {
		return err
	}
	for _, l := range rep.Transcript {
		fmt.Fprintf(a.out, "%9.3f ms  %-22s %s %s\n", l.AtMS, l.Host, l.Kind, l.Text)
	}
	fmt.Fprintf(a.out, "%s: %s\n", rep.Decision.Action, rep.Decision)
	if rep.Would != nil {
		fmt.Fprintf(a.out, "monitor mode: callout mode would %s: %s\n", rep.Would.Action, rep.Would)
	}
	return a.printJSON(rep.Verdict)
}

func (a *app) lookup(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("lookup", flag.ContinueOnError)
	sender := fs.Bool("sender", false, "what sender checks (by MX) learned, instead of recipient checks")
	pos, err := parseMixed(fs, args)
	if err != nil || len(pos) != 1 {
		return errors.New("usage: lookup ADDRESS [-sender]")
	}
	addr, err := address.Parse(pos[0])
	if err != nil {
		return err
	}
	purpose := verdict.Recipient
	senders := []string{""}
	if *sender {
		purpose = verdict.Sender
	} else if kv, err := a.js.KeyValue(ctx, a.names.DomainsBucket()); err == nil {
		if e, err := kv.Get(ctx, addr.Domain); err == nil {
			if p, err := domains.Parse(addr.Domain, e.Value()); err == nil {
				senders = p.Senders()
			}
		}
	}
	b, _ := wire.Encode(&wire.LookupRequest{Address: addr.String(), Purpose: purpose, Senders: senders})
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := a.nc.RequestWithContext(rctx, a.names.CacheLookup(), b)
	if err != nil {
		return fmt.Errorf("lookup: %w", err)
	}
	if e := m.Header.Get(micro.ErrorHeader); e != "" {
		return fmt.Errorf("lookup: %s", e)
	}
	var rep wire.LookupReply
	if err := wire.Decode(m.Data, &rep); err != nil {
		return err
	}
	if !rep.Hit {
		fmt.Fprintln(a.out, "miss")
		if rep.CatchAll != nil {
			fmt.Fprintf(a.out, "domain fact: %s until %s\n", rep.CatchAll.Status, rep.CatchAll.ExpiresAt.Format(time.RFC3339))
		}
		return nil
	}
	fmt.Fprintln(a.out, "hit")
	return a.printJSON(rep.Verdict)
}

func (a *app) flush(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("flush", flag.ContinueOnError)
	all := fs.Bool("all", false, "flush everything")
	dom := fs.String("domain", "", "flush one domain, its facts too")
	addr := fs.String("address", "", "flush one address")
	only := fs.String("only", "", "only invalid or only valid entries")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cmd := wire.FlushCommand{Only: verdict.Status(*only)}
	switch {
	case *all && *dom == "" && *addr == "":
		cmd.Scope = wire.ScopeAll
	case !*all && *dom != "" && *addr == "":
		cmd.Scope, cmd.Domain = wire.ScopeDomain, *dom
	case !*all && *dom == "" && *addr != "":
		cmd.Scope, cmd.Address = wire.ScopeAddress, *addr
	default:
		return errors.New("usage: flush (-all | -domain D | -address A) [-only invalid|valid]")
	}
	rep, err := a.op.Flush(ctx, a.who, cmd)
	if err != nil && !errors.Is(err, operate.ErrNotRecorded) {
		return err
	}
	fmt.Fprintf(a.out, "removed %d entries\n", rep.Removed)
	for _, id := range rep.Unconfirmed {
		fmt.Fprintf(a.out, "ingest %s did not confirm in time: it serves nothing from its near cache until it has applied the flush\n", id)
	}
	return err
}

func (a *app) inspect(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	dom := fs.String("domain", "", "only this domain")
	keysOnly := fs.Bool("keys", false, "keys only")
	if err := fs.Parse(args); err != nil {
		return err
	}
	kv, err := a.js.KeyValue(ctx, a.names.CacheBucket())
	if err != nil {
		return fmt.Errorf("cache bucket: %w", err)
	}
	filters := kvkey.EntryFilters()
	if *dom != "" {
		d, err := address.NormalizeDomain(*dom)
		if err != nil {
			return err
		}
		filters = kvkey.DomainFilters(d)
	}
	lister, err := kv.ListKeysFiltered(ctx, filters...)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	if !*keysOnly {
		fmt.Fprintln(tw, "KEY\tSTATUS\tREASON\tCODE\tCHECKED\tEXPIRES\tTEXT")
	}
	for k := range lister.Keys() {
		if *keysOnly {
			fmt.Fprintln(tw, k)
			continue
		}
		e, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		v, err := wire.DecodeEntry(k, e.Value())
		if err != nil {
			fmt.Fprintf(tw, "%s\t(undecodable: %v)\n", k, err)
			continue
		}
		code := ""
		if v.Code != 0 {
			code = strings.TrimSpace(fmt.Sprintf("%d %s", v.Code, v.Enhanced))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k, v.Status, v.Reason, code,
			v.CheckedAt.UTC().Format(time.RFC3339), v.ExpiresAt.UTC().Format(time.RFC3339), v.Text)
	}
	return tw.Flush()
}

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
		if err != nil && !errors.Is(err, operate.ErrNotRecorded) {
			return err
		}
		fmt.Fprintf(a.out, "%s\t%s\n", st.Domain, policyText(st))
		return err
	}
	return fmt.Errorf("unknown domain command %q", args[0])
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
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return errors.New("usage: setup [-replicas N] [-cache-ttl 96h]")
	}
	if *replicas < 1 || *cacheTTL < time.Second {
		return errors.New("setup: -replicas at least 1, -cache-ttl at least 1s")
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	done, err := streams.Setup(sctx, a.js, a.names, *replicas, *cacheTTL)
	for _, d := range done {
		fmt.Fprintf(a.out, "%s: ok\n", d)
	}
	return err
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
