package main

// Section 5: saturation, and the host's speed at that moment.

import (
	"fmt"
	"io"
	"math/rand"
	"net"
	_ "net/http/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// 5. Saturation: 1 ingest, 1 cachekeeper, 2 probers, 90% cache hits.
func (b *bench) saturation() error {
	_, err := b.saturate(true)
	return err
}

// satRun is one saturation load: its rate and each process's CPU per
// verify (µs).
type satRun struct {
	rate   float64
	perCPU map[string]float64
}

// saturate runs the saturation load; with detail, section 5's rows are
// added.
func (b *bench) saturate(detail bool) (satRun, error) {
	if detail {
		b.add("5 saturation", "machine: a fixed loop on one core, before the load", ms(calibrate()), "ms")
		if rt, err := roundTrip(); err == nil {
			b.add("5 saturation", "machine: a loopback TCP round trip, before the load", float64(rt.Nanoseconds())/1000, "µs")
		}
	}
	dest, err := mailDest(func(string) bool { return false })
	if err != nil {
		return satRun{}, err
	}
	defer dest.Close()
	if err := b.policies(map[string]string{"sat.bench": dest.Addr()}); err != nil {
		return satRun{}, err
	}
	var warm []string
	for i := 1; len(warm) < 5000; i++ {
		warm = append(warm, fmt.Sprintf("u%d@sat.bench", i))
	}
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for _, a := range warm {
		wg.Add(1)
		sem <- struct{}{}
		go func() { defer wg.Done(); defer func() { <-sem }(); _, _ = b.verify(a, 30*time.Second) }()
	}
	wg.Wait()
	if err := b.waitCached(warm); err != nil {
		return satRun{}, err
	}
	conns := clients(b.url, 8)
	defer closeAll(conns)
	var next atomic.Int64
	next.Store(1000000)
	var hits, total atomic.Int64
	// Each requester's hit and miss latencies apart (a requester waiting
	// on a miss asks for no hit meanwhile): no lock, one slice each.
	const requesters = 64
	var hitLat, missLat [requesters]latencies
	traffic0, cpu0, t0 := b.natsTraffic(), b.cpuTicks(), time.Now()
	profiled := b.profile("saturation", 5*time.Second)
	defer profiled()
	rate, lat, err := load(requesters, 10*time.Second, func(w, i int) error {
		a := warm[(w*7919+i*31)%len(warm)]
		if (w+i)%10 == 0 {
			a = fmt.Sprintf("u%d@sat.bench", next.Add(1))
		}
		start := time.Now()
		data, _ := wire.Encode(&wire.VerifyRequest{Address: a})
		m, err := conns[w%len(conns)].Request(b.names.Verify(), data, 30*time.Second)
		if err != nil {
			return err
		}
		var rep wire.VerifyReply
		if err := wire.Decode(m.Data, &rep); err != nil {
			return err
		}
		total.Add(1)
		if rep.Verdict.Source == verdict.SourceCache {
			hits.Add(1)
			hitLat[w] = append(hitLat[w], time.Since(start))
		} else {
			missLat[w] = append(missLat[w], time.Since(start))
		}
		return nil
	})
	if err != nil {
		return satRun{}, err
	}
	cpu1, el := b.cpuTicks(), time.Since(t0)
	run := satRun{rate: rate, perCPU: map[string]float64{}}
	if n := total.Load(); n > 0 {
		for name, v := range cpu1.procs {
			run.perCPU[name] = (v - cpu0.procs[name]) / 100 / float64(n) * 1e6
		}
	}
	if !detail {
		return run, b.flushAll()
	}
	b.add("5 saturation", "verifies/s (64 requesters)", rate, "req/s")
	b.add("5 saturation", "cache hit rate", float64(hits.Load())/float64(total.Load()), "")
	b.add("5 saturation", "p50", ms(lat.pct(50)), "ms")
	b.add("5 saturation", "p99", ms(lat.pct(99)), "ms")
	for _, k := range []struct {
		name string
		per  *[requesters]latencies
	}{{"hit", &hitLat}, {"miss", &missLat}} {
		var all latencies
		for _, l := range k.per {
			all = append(all, l...)
		}
		slices.Sort(all)
		b.add("5 saturation", k.name+" p50", ms(all.pct(50)), "ms")
		b.add("5 saturation", k.name+" p99", ms(all.pct(99)), "ms")
	}
	b.addCPU("5 saturation", cpu0, cpu1, el, total.Load())
	b.addTraffic("5 saturation", traffic0, b.natsTraffic(), total.Load())
	return run, b.flushAll()
}

// roundTrip times one byte sent and echoed back over a loopback TCP
// connection, 20,000 times: the system calls, wake-ups and network stack
// that most of a verify's CPU goes to (in every process's profile), whose
// cost on a shared host moves apart from the fixed loop's.
func roundTrip() (time.Duration, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	const n = 20000
	buf := make([]byte, 1)
	start := time.Now()
	for range n {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return 0, err
		}
	}
	return time.Since(start) / n, nil
}

// calibrate times a fixed piece of work on one goroutine (sorting 200,000
// numbers and counting them in a map, five times): how fast the host runs
// this machine at that moment, which moves between runs without any time
// counted as stolen. The same work on every version of the code.
func calibrate() time.Duration {
	r := rand.New(rand.NewSource(1))
	data := make([]int, 200000)
	for i := range data {
		data[i] = r.Intn(1 << 30)
	}
	m := make(map[int]int, len(data))
	start := time.Now()
	for range 5 {
		s := slices.Clone(data)
		slices.Sort(s)
		clear(m)
		for _, v := range s {
			m[v]++
		}
	}
	return time.Since(start)
}
