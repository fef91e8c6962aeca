package main

// Commands about the cache: verify, lookup, flush, inspect.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/lookup"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

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
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rep, err := lookup.Ask(rctx, a.nc, a.names.CacheLookup(), &wire.LookupRequest{Address: addr.String(), Purpose: purpose, Senders: senders})
	if err != nil {
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
	if !operate.Made(err) {
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
