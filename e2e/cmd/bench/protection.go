package main

// Section 6: normal destinations beside a slow one.

import (
	"fmt"
	_ "net/http/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// 6. Protection: 3 probers, 50 normal destinations and one that answers
// every RCPT after 5 s. The normal destinations' miss latency with and
// without a burst of jobs for the slow one, and the slow one's peak
// connections (MAX_CONNS holds across the probers).
func (b *bench) protection() error {
	if err := b.launch("prober-3", "prober", append(proberSettings("CALLOUT_PROBER_"), "CALLOUT_PROBER_WORKERS=64")...); err != nil {
		return err
	}
	defer b.stopProc("prober-3")
	slow, err := smtptest.Start("127.0.0.1:0", smtptest.Config{Rcpt: func(_, to string) string {
		time.Sleep(5 * time.Second)
		return "250 2.1.5 Ok"
	}})
	if err != nil {
		return err
	}
	defer slow.Close()
	route := map[string]string{"slow.bench": slow.Addr()}
	for i := 0; i < 50; i++ {
		d, err := mailDest(func(string) bool { return false })
		if err != nil {
			return err
		}
		defer d.Close()
		route[fmt.Sprintf("n%d.bench", i)] = d.Addr()
	}
	if err := b.policies(route); err != nil {
		return err
	}
	next := 1
	normal := func(label string) error {
		var lat latencies
		var mu sync.Mutex
		var wg sync.WaitGroup
		var failed atomic.Value
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 40; i++ {
					mu.Lock()
					n := next
					next++
					mu.Unlock()
					a := fmt.Sprintf("u%d@n%d.bench", n, n%50)
					t0 := time.Now()
					rep, err := b.verify(a, 30*time.Second)
					if err != nil || rep.Verdict == nil || rep.Verdict.Source != verdict.SourceProbe {
						failed.Store(fmt.Errorf("%s: %v", a, err))
						return
					}
					mu.Lock()
					lat = append(lat, time.Since(t0))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if e := failed.Load(); e != nil {
			return e.(error)
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.add("6 protection", label+" normal miss p50", ms(lat.pct(50)), "ms")
		b.add("6 protection", label+" normal miss p99", ms(lat.pct(99)), "ms")
		return nil
	}
	if err := normal("alone:"); err != nil {
		return err
	}
	// A burst for the slow destination, answered (deferred) at the deadline.
	burst, err := nats.Connect(b.url)
	if err != nil {
		return err
	}
	defer burst.Close()
	for i := 0; i < 200; i++ {
		data, _ := wire.Encode(&wire.VerifyRequest{Address: fmt.Sprintf("s%d@slow.bench", i), TimeoutMS: 20000})
		if err := burst.PublishRequest(b.names.Verify(), burst.NewRespInbox(), data); err != nil {
			return err
		}
	}
	for start := time.Now(); slow.Active() < 8 && time.Since(start) < 10*time.Second; {
		time.Sleep(10 * time.Millisecond)
	}
	if err := normal("slow burst:"); err != nil {
		return err
	}
	b.add("6 protection", "slow destination peak connections (MAX_CONNS 8, 3 probers)", float64(slow.Peak()), "")
	return b.flushAll()
}
