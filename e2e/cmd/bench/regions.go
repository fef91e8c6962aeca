package main

// Section 11: one fleet over three regions (deploy/nats/regions), on
// loopback: no WAN delay is emulated (tc netem on lo would delay every
// loopback hop, the hit path's included, and needs a kernel module this
// machine may lack), so the figures are the topology's own cost.

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
	"github.com/callout-mail/callout/tools/stack"
)

// regionFleet is the three regions' processes and a client on each server.
type regionFleet struct {
	wans  []net.Listener
	dir   string
	procs []*stack.Proc
	urls  map[string]string
	conns map[string]*nats.Conn
}

func (f *regionFleet) stop() {
	for _, l := range f.wans {
		_ = l.Close()
	}
	for i := len(f.procs) - 1; i >= 0; i-- {
		_ = f.procs[i].Stop(10 * time.Second)
	}
	for _, c := range f.conns {
		c.Close()
	}
	os.RemoveAll(f.dir)
}

// startRegions runs the fleet; with a delay, every route between two
// regions goes through a forwarder that holds each byte that long each
// way: the WAN between regions, emulated in user space, so that only
// what crosses regions is delayed (tc netem on lo would delay every
// loopback hop, the hit path's too).
func startRegions(bin string, regions []string, delay time.Duration, threads func(svc string) []string) (*regionFleet, error) {
	dir, err := os.MkdirTemp("", "callout-bench-regions")
	if err != nil {
		return nil, err
	}
	f := &regionFleet{dir: dir, urls: map[string]string{}, conns: map[string]*nats.Conn{}}
	routes := map[string]int{}
	for _, r := range regions {
		routes[r] = freePort()
	}
	dead := freePort()
	for _, r := range regions {
		var routeURLs []string
		for _, to := range regions {
			if to == r {
				continue
			}
			target := fmt.Sprintf("127.0.0.1:%d", routes[to])
			if delay > 0 {
				l, err := newWAN(target, delay)
				if err != nil {
					return f, err
				}
				f.wans = append(f.wans, l)
				target = l.Addr().String()
			}
			routeURLs = append(routeURLs, "nats-route://"+target)
		}
		port := freePort()
		f.urls[r] = fmt.Sprintf("nats://127.0.0.1:%d", port)
		conf, _ := filepath.Abs("deploy/nats/regions/" + r + ".conf")
		p, err := stack.StartIn(dir, dir, "nats-"+r, filepath.Join(bin, "nats-server"), []string{"-c", conf, "-p", strconv.Itoa(port),
			"-m", strconv.Itoa(freePort()), "--cluster", fmt.Sprintf("nats://127.0.0.1:%d", routes[r]), "--routes", strings.Join(routeURLs, ","),
			"--cluster_advertise", fmt.Sprintf("127.0.0.1:%d", dead)}, nil)
		if err != nil {
			return f, err
		}
		f.procs = append(f.procs, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, r := range regions {
		if err := stack.WaitNATS(ctx, f.urls[r]); err != nil {
			return f, err
		}
		if f.conns[r], err = nats.Connect(f.urls[r]); err != nil {
			return f, err
		}
	}
	js, _ := jetstream.New(f.conns[regions[0]], jetstream.WithDefaultTimeout(5*time.Second))
	for {
		// Each try with its deadline: a request made before the meta
		// leader is elected is not answered.
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.AccountInfo(actx)
		acancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return f, fmt.Errorf("no JetStream meta leader: %w", ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Until every server has joined, an R3 stream finds no peers.
	for {
		_, err := streams.SetupWith(ctx, js, subjects.New(""), 3, 96*time.Hour, streams.DefaultLimits, regions...)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return f, err
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, r := range regions {
		for _, svc := range []string{"cachekeeper", "prober", "ingest"} {
			up := "CALLOUT_" + strings.ToUpper(svc) + "_"
			env := append(threads(svc), up+"NATS_URL="+f.urls[r], up+"NATS_REGION="+r, up+"REPLICAS=3", up+"METRICS_ADDR=")
			switch svc {
			case "prober":
				env = append(env, proberSettings(up)...)
			case "ingest":
				env = append(env, up+"BRAKE_LIMIT=0", up+"POLICY_ADDR=127.0.0.1:"+strconv.Itoa(freePort()))
			}
			p, err := stack.Start(dir, svc+"-"+r, filepath.Join(bin, svc), nil, env)
			if err != nil {
				return f, err
			}
			f.procs = append(f.procs, p)
		}
	}
	for _, r := range regions {
		for {
			if _, err := f.verify(r, "postmaster@regions.bench"); err == nil {
				break
			}
			if ctx.Err() != nil {
				return f, fmt.Errorf("region %s does not answer", r)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return f, nil
}

func (f *regionFleet) verifyOn(nc *nats.Conn, r, addr string) (wire.VerifyReply, error) {
	data, _ := wire.Encode(&wire.VerifyRequest{Address: addr})
	m, err := nc.Request(subjects.NewIn("", r).VerifyRegion(), data, 15*time.Second)
	if err != nil {
		return wire.VerifyReply{}, err
	}
	var rep wire.VerifyReply
	if err := wire.Decode(m.Data, &rep); err != nil {
		return rep, err
	}
	if rep.Verdict == nil {
		return rep, fmt.Errorf("%s: no verdict", addr)
	}
	return rep, nil
}

func (f *regionFleet) verify(r, addr string) (wire.VerifyReply, error) {
	return f.verifyOn(f.conns[r], r, addr)
}

// cached reports whether region r's cache has a verdict for addr.
func (f *regionFleet) cached(r, addr string) bool {
	b, _ := wire.Encode(&wire.LookupRequest{Address: addr, Senders: []string{""}})
	m, err := f.conns[r].Request(subjects.NewIn("", r).CacheLookup(), b, 2*time.Second)
	if err != nil {
		return false
	}
	var rep wire.LookupReply
	return wire.Decode(m.Data, &rep) == nil && rep.Hit
}

// newWAN forwards connections to target, each byte held delay each way.
func newWAN(target string, delay time.Duration) (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			go delayed(d, c, delay)
			go delayed(c, d, delay)
		}
	}()
	return ln, nil
}

// delayed copies src to dst, each chunk written delay after it was read,
// in order.
func delayed(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		at   time.Time
		data []byte
	}
	q := make(chan chunk, 4096)
	go func() {
		defer dst.Close()
		for c := range q {
			time.Sleep(time.Until(c.at))
			if _, err := dst.Write(c.data); err != nil {
				return
			}
		}
	}()
	defer close(q)
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{at: time.Now().Add(delay), data: append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			return
		}
	}
}

// 11. Regions: hits in a region against the echo on its server, the time
// a verdict made in one region takes to be in another's cache, and a
// miss's cost against a plain dialogue; on loopback, then with a WAN
// delay between the regions.
func (b *bench) regions(bin string) error {
	for _, delay := range []time.Duration{0, 20 * time.Millisecond} {
		if err := b.regionsWith(bin, delay); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) regionsWith(bin string, delay time.Duration) error {
	sec := "11 regions"
	if delay > 0 {
		sec = fmt.Sprintf("11 regions, %v WAN", delay)
	}
	regions := []string{"a", "b", "c"}
	f, err := startRegions(bin, regions, delay, b.threads)
	if f != nil {
		defer f.stop()
	}
	if err != nil {
		if f != nil {
			for _, l := range []string{"nats-a.log", "nats-b.log"} {
				data, _ := os.ReadFile(filepath.Join(f.dir, l))
				fmt.Fprintf(os.Stderr, "--- %s\n%s\n", l, tail(string(data), 15))
			}
		}
		return fmt.Errorf("regions: %w", err)
	}
	// u<n> exists when n is not a multiple of 3 (economy.go); no catch-all.
	dest, err := mailDest(func(string) bool { return false })
	if err != nil {
		return err
	}
	defer dest.Close()
	ctx := context.Background()
	js, _ := jetstream.New(f.conns["a"], jetstream.WithDefaultTimeout(10*time.Second))
	st, err := domains.Bucket(ctx, js, subjects.New(""), 3)
	if err != nil {
		return err
	}
	if err := domains.Put(ctx, st, "regions.bench", domains.Policy{Route: []string{dest.Addr()}}); err != nil {
		return err
	}
	for _, r := range regions {
		deadline := time.Now().Add(30 * time.Second)
		for {
			rep, err := f.verify(r, "u1@regions.bench")
			if err == nil && rep.Verdict.Reason != verdict.ReasonNotServed {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("region %s has no policy", r)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// The time a verdict made in region a takes to be in b's cache.
	var prop latencies
	for i := 100_001; len(prop) < 200; i++ {
		if i%3 == 0 {
			continue
		}
		addr := fmt.Sprintf("u%d@regions.bench", i)
		if _, err := f.verify("a", addr); err != nil {
			return err
		}
		t0 := time.Now()
		for !f.cached("b", addr) {
			if time.Since(t0) > 10*time.Second {
				return fmt.Errorf("%s never reached region b", addr)
			}
			time.Sleep(time.Millisecond)
		}
		prop = append(prop, time.Since(t0))
	}
	sort.Slice(prop, func(i, j int) bool { return prop[i] < prop[j] })
	b.add(sec, "verdict made in a, in b's cache p50", ms(prop.pct(50)), "ms")
	b.add(sec, "verdict made in a, in b's cache p99", ms(prop.pct(99)), "ms")

	// Hits in region a from 16 requesters against the echo on a's server.
	var addrs []string
	for i := 200_001; len(addrs) < 1000; i++ {
		if i%3 == 0 {
			continue
		}
		addrs = append(addrs, fmt.Sprintf("u%d@regions.bench", i))
		if _, err := f.verify("a", addrs[len(addrs)-1]); err != nil {
			return err
		}
	}
	for _, a := range addrs {
		for !f.cached("a", a) {
			time.Sleep(time.Millisecond)
		}
	}
	echo, err := nats.Connect(f.urls["a"])
	if err != nil {
		return err
	}
	defer echo.Close()
	if _, err := echo.QueueSubscribe("bench.echo", "echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		return err
	}
	conns := clients(f.urls["a"], 8)
	defer closeAll(conns)
	rate, lat, err := load(16, 3*time.Second, func(w, i int) error {
		rep, err := f.verifyOn(conns[w%len(conns)], "a", addrs[(w*7919+i)%len(addrs)])
		if err == nil && rep.Verdict.Source != verdict.SourceCache {
			err = fmt.Errorf("not a hit: %+v", rep.Verdict)
		}
		return err
	})
	if err != nil {
		return err
	}
	payload, _ := wire.Encode(&wire.VerifyRequest{Address: addrs[0]})
	erate, _, err := load(16, 3*time.Second, func(w, i int) error {
		_, err := conns[w%len(conns)].Request("bench.echo", payload, 10*time.Second)
		return err
	})
	if err != nil {
		return err
	}
	b.add(sec, "c=16 verify rate in a region", rate, "req/s")
	b.add(sec, "c=16 verify p99", ms(lat.pct(99)), "ms")
	b.add(sec, "c=16 verify/echo rate ratio", rate/erate, "")

	// A miss in a region (jobs, leases and verdicts replicated over the
	// three) against the plain dialogue.
	lv, ld, err := misses(200, "regions.bench", dest.Addr(), func(a string) (wire.VerifyReply, error) { return f.verify("a", a) })
	if err != nil {
		return err
	}
	b.add(sec, "verify of a new address p50", ms(lv.pct(50)), "ms")
	b.add(sec, "miss overhead p50", ms(lv.pct(50)-ld.pct(50)), "ms")
	for _, r := range b.rows {
		if r.Section == "2 miss" && r.Name == "overhead p50" {
			b.add(sec, "miss overhead over one cluster's p50", ms(lv.pct(50)-ld.pct(50))-r.Value, "ms")
			break
		}
	}
	return nil
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
