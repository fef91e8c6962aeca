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
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/subjects"
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
  calloutctl [connection flags] domain list DOMAIN mailboxes|bypass [add ENTRY | rm ENTRY | import FILE [-merge] [-dry-run]]
  calloutctl [connection flags] setup [-replicas 1] [-cache-ttl 96h] [-audit-max-age 2160h] [-audit-max-bytes 1073741824]
                                   [-log-max-age 192h] [-log-max-bytes 2147483648] [-regions a,b,c]   (as the maintenance user)
  calloutctl [connection flags] hosts [-wait 1s] [-json]
  calloutctl [connection flags] regions [-wait 1s] [-json]
  calloutctl [connection flags] audit [-n 50] [-json]
  calloutctl [connection flags] log [-recipient A] [-domain D] [-sender A] [-client IP|NET] [-action A] [-reason R] [-since T] [-until T] [-n 50] [-cursor C] [-json]
  calloutctl [connection flags] log erase -domain D
  calloutctl [connection flags] report [-day 2026-12-01] [-domain D] [-json]
  calloutctl [connection flags] stats [-every 5s] [-n 0] [-json]
  calloutctl [connection flags] user ls
  calloutctl [connection flags] user add NAME -role admin|reseller|domain [-domains a,b] [-read-only] [-owner RESELLER] [-password-file F]
  calloutctl [connection flags] user set NAME [-role R] [-domains a,b] [-read-only | -read-write] [-disable | -enable] [-password-file F | -new-password]
  calloutctl [connection flags] user rm NAME
  calloutctl [connection flags] token ls [-user NAME]
  calloutctl [connection flags] token add USER [-role R] [-domains a,b] [-read-only] [-days 90] [-label TEXT]
  calloutctl [connection flags] token rm ID

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
	case "regions":
		return a.regions(ctx, rest)
	case "audit":
		return a.audit(ctx, rest)
	case "stats":
		return a.stats(ctx, rest)
	case "user":
		return a.user(ctx, rest)
	case "token":
		return a.token(ctx, rest)
	case "log":
		return a.log(ctx, rest)
	case "report":
		return a.report(ctx, rest)
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
