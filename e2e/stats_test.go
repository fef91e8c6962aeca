package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/stats"
)

// Each service publishes its figures on its stats subject; the counters
// match the requests made, and calloutctl stats summarizes the fleet.
func TestStats(t *testing.T) {
	env := map[string][]string{}
	for _, svc := range []string{"ingest", "prober", "cachekeeper"} {
		env[svc] = []string{"CALLOUT_" + strings.ToUpper(svc) + "_STATS_INTERVAL=300ms"}
	}
	s := newSystem(t, options{env: env})
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	s.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}})
	var mu sync.Mutex
	last := map[string]stats.Message{}
	sub, err := s.nc.Subscribe(s.names.StatsAll(), func(m *nats.Msg) {
		var sm stats.Message
		if json.Unmarshal(m.Data, &sm) == nil && strings.HasSuffix(m.Subject, "."+strings.ReplaceAll(sm.Instance, ".", "_")) {
			mu.Lock()
			last[sm.Service] = sm
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	sum := func(service, name string) (float64, bool) {
		mu.Lock()
		defer mu.Unlock()
		sm, ok := last[service]
		return stats.Sum(sm.Counters, name), ok
	}
	waitFor(t, 10*time.Second, func() bool {
		_, a := sum("ingest", "")
		_, b := sum("prober", "")
		_, c := sum("cachekeeper", "")
		return a && b && c
	})
	// Quiet: the count stands still.
	var before float64
	waitFor(t, 10*time.Second, func() bool {
		v1, _ := sum("ingest", "callout_ingest_requests_total")
		time.Sleep(700 * time.Millisecond)
		v2, _ := sum("ingest", "callout_ingest_requests_total")
		before = v2
		return v1 == v2
	})
	callouts0, _ := sum("prober", "callout_prober_callouts_total")
	for i := 0; i < 7; i++ {
		s.verify(fmt.Sprintf("u%d@example.org", i))
	}
	waitFor(t, 10*time.Second, func() bool {
		v, _ := sum("ingest", "callout_ingest_requests_total")
		c, _ := sum("prober", "callout_prober_callouts_total")
		return v == before+7 && c == callouts0+7
	})
	out, err := exec.Command(filepath.Join(binDir, "calloutctl"), "-server", s.url, "stats", "-every", "700ms", "-n", "2", "-json").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"ingest": 1`) || !strings.Contains(string(out), `"prober": 1`) {
		t.Fatalf("calloutctl stats: %v\n%s", err, out)
	}
}
