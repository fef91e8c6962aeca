package prober

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/dnstest"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

// One destination answers every RCPT in 5 s and gets a burst of 200 jobs;
// jobs for 50 other destinations, queued behind the burst, reach their
// destinations at once: the slow one's jobs wait without workers. (Without
// that, 16 workers would wait on the slow host's two connections and the
// others would wait for the whole burst, some 500 s.)
func TestNoHeadOfLineBlocking(t *testing.T) {
	h := newHarness(t)
	slow := server(t, smtptest.Config{Rcpt: func(_, to string) string {
		time.Sleep(5 * time.Second)
		return "250 2.1.5 Ok"
	}})
	h.route(t, "slow.example", routeTo(slow))
	others := make([]*smtptest.Server, 50)
	for i := range others {
		others[i] = server(t, smtptest.Config{Mailboxes: []string{fmt.Sprintf("u@d%d.example", i)}})
		h.route(t, fmt.Sprintf("d%d.example", i), routeTo(others[i]))
	}
	cfg := testConfig()
	cfg.Workers, cfg.AckWait, cfg.CommandTimeout, cfg.DialogueTimeout = 16, 30*time.Second, 30*time.Second, 60*time.Second
	ctx := context.Background()
	if _, err := streams.Probes(ctx, h.js, h.names, 1); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		h.queue(t, fmt.Sprintf("s%d@slow.example", i), true)
	}
	for i := range others {
		h.queue(t, fmt.Sprintf("u@d%d.example", i), true)
	}
	h.start(t, cfg)
	waitfor.Cond(t, time.Second, func() bool {
		for i, o := range others {
			if o.RcptsFor(fmt.Sprintf("u@d%d.example", i)) != 1 {
				return false
			}
		}
		return true
	})
	if slow.Peak() > 2 {
		t.Fatalf("slow destination saw %d connections at once, limit 2", slow.Peak())
	}
}

// An MX list is cut to MX_LIMIT hosts.
func TestMXLimit(t *testing.T) {
	h := newHarness(t)
	refusing := server(t, smtptest.Config{Banner: "421 4.3.2 Service not available"})
	_, port, _ := net.SplitHostPort(refusing.Addr())
	var records []string
	for i := 0; i < 8; i++ {
		records = append(records, fmt.Sprintf("many.example. 60 IN MX %d mx%d.many.example.", i, i), fmt.Sprintf("mx%d.many.example. 60 IN A 127.0.0.1", i))
	}
	cfg := testConfig()
	cfg.DNSServer = dnstest.Start(t, records...)
	cfg.MXPort, _ = strconv.Atoi(port)
	cfg.MXLimit = 3
	h.start(t, cfg)
	v := h.ask(t, "many.example", "x", wire.ProbeJob{Address: "x@many.example", Purpose: verdict.Sender, SkipRandom: true}, 10*time.Second)
	if v.Status != verdict.TempFail || refusing.Conns() != 3 {
		t.Fatalf("verdict %s, %d hosts tried, want 3", v.Status, refusing.Conns())
	}
}

func (h *harness) queue(t *testing.T, address string, skipRandom bool) {
	t.Helper()
	local, domain, _ := strings.Cut(address, "@")
	b, _ := wire.Encode(&wire.ProbeJob{Address: address, Purpose: verdict.Recipient, SkipRandom: skipRandom})
	if _, err := h.js.Publish(context.Background(), h.names.Probe(kvkey.Target(domain, local, verdict.Recipient)), b); err != nil {
		t.Fatal(err)
	}
}

func server(t *testing.T, cfg smtptest.Config) *smtptest.Server {
	t.Helper()
	return smtptest.Run(t, cfg)
}

func routeTo(s *smtptest.Server) domains.Policy {
	return domains.Policy{Route: []string{s.Addr()}}
}
