// Command devrun is `make run`: it starts nats-server (deploy/nats/dev.conf),
// a demo destination SMTP server, the cachekeeper, a prober, the ingest and
// the console on loopback, sets up demo domains, says how to try it, and stops it all
// cleanly on Ctrl-C.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/crypto/bcrypt"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/tools/stack"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "devrun:", err)
		os.Exit(1)
	}
}

func run() error {
	bin := flag.String("bin", "./bin", "where the binaries are")
	dir := flag.String("dir", "./var", "state and logs")
	smtpAddr := flag.String("smtp", "127.0.0.1:2525", "demo destination SMTP address")
	consoleAddr := flag.String("console", "127.0.0.1:8080", "console listen address")
	flag.Parse()
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var procs []*stack.Proc
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			p := procs[i]
			if err := p.Stop(10 * time.Second); err != nil {
				fmt.Printf("%s: %v (log: %s)\n", p.Name, err, p.Log)
			} else {
				fmt.Printf("stopped %s\n", p.Name)
			}
		}
	}()
	ns, err := stack.Start(*dir, "nats-server", filepath.Join(*bin, "nats-server"), []string{"-c", "deploy/nats/dev.conf"}, nil)
	if err != nil {
		return err
	}
	procs = append(procs, ns)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := stack.WaitNATS(wctx, nats.DefaultURL); err != nil {
		return err
	}

	demo, err := smtptest.Start(*smtpAddr, smtptest.Config{
		Hostname:  "mx.demo.example",
		Mailboxes: []string{"alice@demo.example", "bob@demo.example"},
		CatchAll:  []string{"catchall.example"},
	})
	if err != nil {
		return fmt.Errorf("demo SMTP server: %w", err)
	}
	defer demo.Close()

	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	kv, err := domains.Bucket(wctx, js, subjects.New(""), 1)
	if err != nil {
		return err
	}
	for d, p := range map[string]domains.Policy{
		"demo.example":     {Route: []string{*smtpAddr}},
		"catchall.example": {Route: []string{*smtpAddr}},
		"static.example":   {Mode: domains.ModeStatic, Mailboxes: []string{"alice", "bob"}},
		"off.example":      {Mode: domains.ModeOff},
	} {
		if err := domains.Put(wctx, kv, d, p); err != nil {
			return err
		}
	}

	env := []string{"CALLOUT_PROBER_RANDOM_SECRET=dev-secret", "CALLOUT_PROBER_HELO_NAME=verifier.localhost"}
	for _, name := range []string{"cachekeeper", "prober", "ingest"} {
		p, err := stack.Start(*dir, name, filepath.Join(*bin, name), nil, env)
		if err != nil {
			return err
		}
		procs = append(procs, p)
	}
	for _, svc := range []string{"callout-cache", "callout-ingest"} {
		if err := stack.WaitService(wctx, nc, svc); err != nil {
			return fmt.Errorf("%w (logs in %s)", err, *dir)
		}
	}
	// The console, with development users and an API token made now.
	users, token, err := devUsers()
	if err != nil {
		return err
	}
	cp, err := stack.Start(*dir, "console", filepath.Join(*bin, "console"), nil, []string{"CALLOUT_CONSOLE_USERS=" + users,
		"CALLOUT_CONSOLE_LISTEN=" + *consoleAddr, "CALLOUT_CONSOLE_HISTORY_EVERY=2s"})
	if err != nil {
		return err
	}
	procs = append(procs, cp)
	if err := stack.WaitHTTP(wctx, "http://"+*consoleAddr+"/api/openapi.yaml"); err != nil {
		return fmt.Errorf("console: %w (logs in %s)", err, *dir)
	}
	fmt.Printf(`
callout is running on loopback (logs in %s/*.log).

  Demo destination %s: mailboxes alice@ and bob@demo.example; catchall.example takes anything.
  Domains: demo.example and catchall.example (callout), static.example (alice, bob listed), off.example.

Try it:
  ./bin/calloutctl verify alice@demo.example      # accept (probe), then from cache
  ./bin/calloutctl verify nobody@demo.example     # reject 550 5.1.1
  ./bin/calloutctl verify x@catchall.example      # accept: catch-all
  ./bin/calloutctl inspect                        # what the cache holds
  ./bin/calloutctl verify -trace nobody@demo.example   # a fresh callout with its whole dialogue
  ./bin/calloutctl flush -domain demo.example
  ./bin/calloutctl audit                          # the flush, recorded
  ./bin/nats --timeout 30s req callout.verify '{"address":"bob@demo.example"}' -H Content-Type:application/json
  ./bin/nats kv ls callout_cache
  Postfix policy: check_policy_service inet:127.0.0.1:10040
  Console: http://%s/ (log in as admin / callout-dev, or viewer / viewer-dev)
  curl -sf -H 'Authorization: Bearer %s' http://%s/api/domains
  curl -sf -H 'Authorization: Bearer %s' -X POST -d '{"scope":"domain","domain":"demo.example"}' http://%s/api/flush
  Ports: NATS 4222 (monitoring 8222), demo destination 2525, policy 10040, console 8080, metrics 9101-9104

Ctrl-C stops everything.
`, *dir, *smtpAddr, *consoleAddr, token, *consoleAddr, token, *consoleAddr)

	// Stop when asked, or when a child dies.
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fmt.Println("\nstopping")
			return nil
		case <-t.C:
			for _, p := range procs {
				if p.Exited() {
					return fmt.Errorf("%s exited; see %s", p.Name, p.Log)
				}
			}
		}
	}
}

// devUsers are the console's development users (admin / callout-dev,
// viewer / viewer-dev) and a new API token for the admin.
func devUsers() (users, token string, err error) {
	a, err := bcrypt.GenerateFromPassword([]byte("callout-dev"), bcrypt.DefaultCost)
	if err != nil {
		return "", "", err
	}
	v, err := bcrypt.GenerateFromPassword([]byte("viewer-dev"), bcrypt.DefaultCost)
	if err != nil {
		return "", "", err
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", "", err
	}
	token = hex.EncodeToString(b)
	sum := sha256.Sum256([]byte(token))
	return "admin:admin:" + string(a) + ":" + hex.EncodeToString(sum[:]) + " viewer:viewer:" + string(v), token, nil
}
