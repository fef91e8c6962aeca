package main

// Section 1: cache hits against the echo ceiling.

import (
	"fmt"
	"maps"
	"math"
	_ "net/http/pprof"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(l)))) - 1
	return l[max(0, min(i, len(l)-1))]
}

// load runs c workers for d, each calling fn with its worker number and
// iteration, and returns the rate and sorted latencies.
func load(c int, d time.Duration, fn func(w, i int) error) (float64, latencies, error) {
	var mu sync.Mutex
	var all latencies
	var firstErr atomic.Value
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	start := time.Now()
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine latencies
			for i := 0; time.Now().Before(end); i++ {
				t0 := time.Now()
				if err := fn(w, i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	if e := firstErr.Load(); e != nil {
		return 0, all, e.(error)
	}
	return float64(len(all)) / el.Seconds(), all, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// 1. Cache hits against a bare request-reply echo on the same server.
func (b *bench) cacheHit() error {
	addrs, done, err := b.cachedAddrs("hit.bench", 1000)
	if err != nil {
		return err
	}
	defer func() { _ = done() }()
	echo, err := nats.Connect(b.url)
	if err != nil {
		return err
	}
	defer echo.Close()
	if _, err := echo.QueueSubscribe("bench.echo", "echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		return err
	}
	payload, _ := wire.Encode(&wire.VerifyRequest{Address: addrs[0]})
	for _, c := range []int{1, 16, 64} {
		conns := clients(b.url, min(c, 8))
		profiled := b.profile(fmt.Sprintf("hit%d", c), 2*time.Second)
		cpu0, t0 := b.cpuTicks(), time.Now()
		var n atomic.Int64
		rate, lat, err := load(c, 3*time.Second, func(w, i int) error {
			n.Add(1)
			data, _ := wire.Encode(&wire.VerifyRequest{Address: addrs[(w*7919+i)%len(addrs)]})
			m, err := conns[w%len(conns)].Request(b.names.Verify(), data, 10*time.Second)
			if err != nil {
				return err
			}
			var rep wire.VerifyReply
			if err := wire.Decode(m.Data, &rep); err != nil || rep.Verdict.Source != verdict.SourceCache {
				return fmt.Errorf("not a cache hit: %v", err)
			}
			return nil
		})
		cpu1, el := b.cpuTicks(), time.Since(t0)
		profiled()
		if err != nil {
			return err
		}
		erate, elat, err := load(c, 3*time.Second, func(w, i int) error {
			_, err := conns[w%len(conns)].Request("bench.echo", payload, 10*time.Second)
			return err
		})
		if err != nil {
			return err
		}
		closeAll(conns)
		sec := "1 cache hit"
		p := fmt.Sprintf("c=%d ", c)
		b.add(sec, p+"verify rate", rate, "req/s")
		b.add(sec, p+"verify p50", ms(lat.pct(50)), "ms")
		b.add(sec, p+"verify p99", ms(lat.pct(99)), "ms")
		b.add(sec, p+"verify p99.9", ms(lat.pct(99.9)), "ms")
		b.add(sec, p+"echo rate (ceiling)", erate, "req/s")
		b.add(sec, p+"echo p50", ms(elat.pct(50)), "ms")
		b.add(sec, p+"echo p99", ms(elat.pct(99)), "ms")
		b.add(sec, p+"verify/echo rate ratio", rate/erate, "")
		if k := float64(n.Load()); k > 0 {
			b.add(sec, p+"CPU per verify, all processes", cpu1.procsSince(cpu0)/100/k*1e6, "µs")
			// Each process apart: where a change's cost falls (the
			// decision log's, say) shows here, not in the rate alone.
			for _, name := range slices.Sorted(maps.Keys(cpu1.procs)) {
				b.add(sec, p+"CPU per verify, "+name, (cpu1.procs[name]-cpu0.procs[name])/100/k*1e6, "µs")
			}
			if cpu1.machine {
				b.add(sec, p+"machine: stolen by the host", (cpu1.stolen-cpu0.stolen)/100/el.Seconds(), "cores")
			}
		}
	}
	return nil
}

// cachedAddrs makes n addresses of domain whose verdicts (valid) are in
// the cache, behind a scripted destination; done flushes them and stops
// the destination.
func (b *bench) cachedAddrs(domain string, n int) (addrs []string, done func() error, err error) {
	dest, err := mailDest(func(string) bool { return false })
	if err != nil {
		return nil, nil, err
	}
	if err := b.policies(map[string]string{domain: dest.Addr()}); err != nil {
		dest.Close()
		return nil, nil, err
	}
	for i := 1; len(addrs) < n; i++ {
		if i%3 != 0 {
			addrs = append(addrs, fmt.Sprintf("u%d@%s", i, domain))
		}
	}
	for _, a := range addrs {
		if _, err := b.verify(a, 30*time.Second); err != nil {
			dest.Close()
			return nil, nil, err
		}
	}
	if err := b.waitCached(addrs); err != nil {
		dest.Close()
		return nil, nil, err
	}
	return addrs, func() error { dest.Close(); return b.flushAll() }, nil
}

func clients(url string, n int) []*nats.Conn {
	var cs []*nats.Conn
	for i := 0; i < n; i++ {
		c, err := nats.Connect(url)
		if err != nil {
			panic(err)
		}
		cs = append(cs, c)
	}
	return cs
}

func closeAll(cs []*nats.Conn) {
	for _, c := range cs {
		c.Close()
	}
}
