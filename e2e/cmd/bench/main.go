// Command bench measures callout on loopback and prints one table; the same
// figures go to a JSON file. It starts nats-server and the services as
// processes (binaries from -bin) and scripted destinations in-process.
// These are measurements, not pass/fail checks.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
	"github.com/callout-mail/callout/tools/stack"
)

type row struct {
	Section string  `json:"section"`
	Name    string  `json:"name"`
	Value   float64 `json:"value"`
	Unit    string  `json:"unit"`
	// Repeated measures: Value is the median, Min and Max beside it.
	Min  *float64 `json:"min,omitempty"`
	Max  *float64 `json:"max,omitempty"`
	Reps int      `json:"reps,omitempty"`
}

// target is one of the figures the project holds itself to: the median of
// the row whose section and name (a prefix: some names carry a count) match.
type target struct {
	Name    string  `json:"name"`
	Section string  `json:"section"`
	Row     string  `json:"row"`
	Op      string  `json:"op"` // ">=" or "<="
	Bound   float64 `json:"bound"`
	Unit    string  `json:"unit"`
	Value   float64 `json:"value"`
	Met     bool    `json:"met"`
}

var targets = []target{
	{Name: "hit ratio, 1 requester", Section: "1 cache hit", Row: "c=1 verify/echo rate ratio", Op: ">=", Bound: 0.6},
	{Name: "hit ratio, 16 requesters", Section: "1 cache hit", Row: "c=16 verify/echo rate ratio", Op: ">=", Bound: 0.5},
	{Name: "hit ratio, 64 requesters", Section: "1 cache hit", Row: "c=64 verify/echo rate ratio", Op: ">=", Bound: 0.4},
	{Name: "hit p99, 16 requesters", Section: "1 cache hit", Row: "c=16 verify p99", Op: "<=", Bound: 2, Unit: "ms"},
	{Name: "miss overhead p50", Section: "2 miss", Row: "overhead p50", Op: "<=", Bound: 1, Unit: "ms"},
	{Name: "saturation", Section: "5 saturation", Row: "verifies/s", Op: ">=", Bound: 15000, Unit: "req/s"},
	{Name: "storage, 1M entries", Section: "4 storage", Row: "KV bytes on disk", Op: "<=", Bound: 150, Unit: "MiB"},
	{Name: "full flush", Section: "4 storage", Row: "full flush", Op: "<=", Bound: 1000, Unit: "ms"},
	{Name: "domain flush", Section: "4 storage", Row: "domain flush", Op: "<=", Bound: 10, Unit: "ms"},
	{Name: "ingest memory per near-cache entry", Section: "4 storage", Row: "ingest heap per near-cache entry", Op: "<=", Bound: 400, Unit: "B"},
	{Name: "ingest memory per known key", Section: "4 storage", Row: "ingest heap per known key", Op: "<=", Bound: 48, Unit: "B"},
	// The callout economy: at most one RCPT per distinct address plus two
	// per domain (the catch-all probe and the control probe), and at
	// least five RCPTs per connection.
	{Name: "economy: RCPTs within the budget", Section: "3 economy", Row: "RCPTs past the budget", Op: "<=", Bound: 0},
	{Name: "economy: connections per RCPT", Section: "3 economy", Row: "connections per RCPT", Op: "<=", Bound: 0.2},
}

// checkTargets holds the rows to the targets; a target whose section did
// not run is left out.
func checkTargets(rows []row) []target {
	var out []target
	for _, t := range targets {
		for _, r := range rows {
			if r.Section != t.Section || !strings.HasPrefix(r.Name, t.Row) {
				continue
			}
			t.Value = r.Value
			t.Met = (t.Op == ">=" && r.Value >= t.Bound) || (t.Op == "<=" && r.Value <= t.Bound)
			out = append(out, t)
			break
		}
	}
	return out
}

type bench struct {
	dir, url string
	nc       *nats.Conn
	js       jetstream.JetStream
	names    subjects.Names
	procs    map[string]*stack.Proc
	rows     []row
	kv       jetstream.KeyValue
	pprof    map[string]string // process -> its /debug/pprof address (CALLOUT_BENCH_PROFILE)
	metrics  map[string]string // process -> its /metrics address
	profDir  string
}

// profile takes a CPU profile of every process for the next d, into
// profDir/<section>-<process>.pprof, when CALLOUT_BENCH_PROFILE is set;
// the returned func waits for them. With CALLOUT_BENCH_EXEC_TRACE set it
// takes execution traces (<section>-<process>.trace, for go tool trace)
// instead, which show each goroutine's wake-ups along a request.
func (b *bench) profile(section string, d time.Duration) func() {
	kind, ext := "profile", ".pprof"
	if os.Getenv("CALLOUT_BENCH_EXEC_TRACE") != "" {
		kind, ext = "trace", ".trace"
	}
	var wg sync.WaitGroup
	for name, addr := range b.pprof {
		if name == "nats-server" && kind == "trace" {
			continue // nats-server serves CPU profiles only
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", addr, kind, int(d.Seconds())))
			if err != nil {
				fmt.Fprintln(os.Stderr, "profile", name, err)
				return
			}
			defer resp.Body.Close()
			data, _ := io.ReadAll(resp.Body)
			_ = os.WriteFile(filepath.Join(b.profDir, section+"-"+name+ext), data, 0o644)
		}()
	}
	return wg.Wait
}

func (b *bench) add(section, name string, v float64, unit string) {
	b.rows = append(b.rows, row{Section: section, Name: name, Value: v, Unit: unit})
	fmt.Fprintf(os.Stderr, "  %-12s %-48s %12.3f %s\n", section, name, v, unit)
}

func main() {
	// The load generator collects its garbage a quarter as often as by
	// default: its own collections delay the answers it times, the echo's
	// and the services' alike. The services run with Go's defaults.
	debug.SetGCPercent(400)
	bin := flag.String("bin", "../bin", "directory with nats-server and the service binaries")
	out := flag.String("out", "../bench/results.json", "JSON output")
	requests := flag.Int("requests", 100000, "callout economy: verify requests")
	entries := flag.Int("entries", 1000000, "storage: cached entries")
	only := flag.String("only", "", "run one section: hit, miss, saturation, economy, storage, protection")
	reps := flag.Int("reps", 3, "repetitions of the hit, miss and saturation sections")
	flag.Parse()
	absBin, _ := filepath.Abs(*bin)
	b, stop, err := start(absBin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer stop()
	fmt.Fprintf(os.Stderr, "bench: %d CPUs, %s\n", runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339))
	protection := func() error { return b.protection(absBin) }
	// Hits, misses and saturation run three times: one noisy second must
	// not make or break a figure. The table shows the median, min and max.
	// In a whole run the three sections take turns, so that a slow minute
	// of the shared host falls on one repetition of each, not on all three
	// of one.
	three := func(f func() error) func() error {
		return func() error {
			for i := 0; i < *reps; i++ {
				if err := f(); err != nil {
					return err
				}
			}
			return nil
		}
	}
	hit, miss, sat := three(b.cacheHit), three(b.miss), three(b.saturation)
	// Storage first: its bytes on disk are then the million entries', not
	// also blocks the other sections' entries left behind them (the file
	// store compacts them later). It ends with a full flush.
	steps := []func() error{func() error { return b.storage(*entries) }}
	for i := 0; i < *reps; i++ {
		steps = append(steps, b.cacheHit, b.miss, b.saturation)
	}
	steps = append(steps, func() error { return b.economy(*requests) }, protection)
	if *only != "" {
		steps = map[string][]func() error{"hit": {hit}, "miss": {miss}, "saturation": {sat}, "economy": {func() error { return b.economy(*requests) }},
			"storage": {func() error { return b.storage(*entries) }}, "protection": {protection}}[*only]
	}
	for _, step := range steps {
		if err := step(); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			stop()
			os.Exit(1)
		}
	}
	b.rows = medians(b.rows)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "section\tmeasure\tvalue\tmin\tmax\tunit\t")
	for _, r := range b.rows {
		lo, hi := "", ""
		if r.Min != nil {
			lo, hi = strconv.FormatFloat(*r.Min, 'f', 3, 64), strconv.FormatFloat(*r.Max, 'f', 3, 64)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", r.Section, r.Name, strconv.FormatFloat(r.Value, 'f', 3, 64), lo, hi, r.Unit)
	}
	tw.Flush()
	checks := checkTargets(b.rows)
	if len(checks) > 0 {
		fmt.Println()
		tw = tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "target\tbound\tmedian\tmet\t")
		for _, c := range checks {
			met := "no"
			if c.Met {
				met = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s %s %s\t%s\t%s\t\n", c.Name, c.Op, strconv.FormatFloat(c.Bound, 'f', -1, 64), c.Unit, strconv.FormatFloat(c.Value, 'f', 3, 64), met)
		}
		tw.Flush()
	}
	res := map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "cpus": runtime.NumCPU(), "go": runtime.Version(), "results": b.rows, "targets": checks}
	data, _ := json.MarshalIndent(res, "", "  ")
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err == nil {
		_ = os.WriteFile(*out, data, 0o644)
	}
}

// medians folds repeated measures (same section and name) into one row:
// the median, with min and max.
func medians(rows []row) []row {
	var out []row
	idx := map[string]int{}
	vals := map[string][]float64{}
	for _, r := range rows {
		k := r.Section + "\x00" + r.Name
		if _, ok := idx[k]; !ok {
			idx[k] = len(out)
			out = append(out, r)
		}
		vals[k] = append(vals[k], r.Value)
	}
	for k, i := range idx {
		v := vals[k]
		if len(v) < 2 {
			continue
		}
		sort.Float64s(v)
		lo, hi := v[0], v[len(v)-1]
		out[i].Value, out[i].Min, out[i].Max, out[i].Reps = v[len(v)/2], &lo, &hi, len(v)
	}
	return out
}

func freePort() int {
	p, err := stack.FreePort()
	if err != nil {
		panic(err)
	}
	return p
}

func start(bin string) (*bench, func(), error) {
	dir, err := os.MkdirTemp("", "callout-bench")
	if err != nil {
		return nil, nil, err
	}
	b := &bench{dir: dir, names: subjects.New(""), procs: map[string]*stack.Proc{}, pprof: map[string]string{}, metrics: map[string]string{}}
	var order []*stack.Proc
	stop := func() {
		for i := len(order) - 1; i >= 0; i-- {
			_ = order[i].Stop(10 * time.Second)
		}
		if b.nc != nil {
			b.nc.Close()
		}
		if os.Getenv("CALLOUT_BENCH_PROFILE") == "" {
			os.RemoveAll(dir)
		} else {
			fmt.Fprintln(os.Stderr, "logs kept in", dir)
		}
	}
	port := freePort()
	b.url = fmt.Sprintf("nats://127.0.0.1:%d", port)
	conf, _ := filepath.Abs("../deploy/nats/dev.conf")
	// CALLOUT_BENCH_PROFILE (a file) gives every process a /debug/pprof
	// address and lists them there, one "name address" line each, to
	// profile a run from outside.
	profile := os.Getenv("CALLOUT_BENCH_PROFILE")
	var profiles []string
	args := []string{"-c", conf, "-p", strconv.Itoa(port), "-m", strconv.Itoa(freePort())}
	if os.Getenv("CALLOUT_BENCH_NATS_TRACE") != "" {
		args = append(args, "-DV") // every protocol message with its time, in nats-server.log
	}
	if profile != "" {
		pp := freePort()
		args = append(args, "--profile", strconv.Itoa(pp))
		profiles = append(profiles, fmt.Sprintf("nats-server 127.0.0.1:%d", pp), "url "+b.url)
		b.pprof["nats-server"] = fmt.Sprintf("127.0.0.1:%d", pp)
		// The load generator too: what it spends is not the system's.
		self := fmt.Sprintf("127.0.0.1:%d", freePort())
		go func() { _ = http.ListenAndServe(self, nil) }()
		b.pprof["bench"] = self
	}
	ns, err := stack.StartIn(dir, dir, "nats-server", filepath.Join(bin, "nats-server"), args, nil)
	if err != nil {
		return nil, stop, err
	}
	order = append(order, ns)
	b.procs["nats-server"] = ns
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := stack.WaitNATS(ctx, b.url); err != nil {
		return nil, stop, err
	}
	if b.nc, err = nats.Connect(b.url); err != nil {
		return nil, stop, err
	}
	b.js, _ = jetstream.New(b.nc)
	if b.kv, err = domains.Bucket(ctx, b.js, b.names, 1); err != nil {
		return nil, stop, err
	}
	common := func(svc string) []string {
		up := "CALLOUT_" + strings.ToUpper(svc) + "_"
		return []string{up + "NATS_URL=" + b.url, up + "METRICS_ADDR="}
	}
	launch := func(name, svc string, env ...string) error {
		env = append(common(svc), env...)
		if profile != "" || name == "ingest" {
			// The ingest's metrics are read (storage); every process's
			// /debug/pprof when profiling.
			addr := fmt.Sprintf("127.0.0.1:%d", freePort())
			env = append(env, "CALLOUT_"+strings.ToUpper(svc)+"_METRICS_ADDR="+addr)
			b.metrics[name] = addr
			if profile != "" {
				profiles = append(profiles, name+" "+addr)
				b.pprof[name] = addr
			}
		}
		p, err := stack.Start(dir, name, filepath.Join(bin, svc), nil, env)
		if err != nil {
			return err
		}
		b.procs[name] = p
		order = append(order, p)
		return nil
	}
	if err := launch("cachekeeper", "cachekeeper", "CALLOUT_CACHEKEEPER_STORE_WORKERS=32"); err != nil {
		return nil, stop, err
	}
	for _, n := range []string{"prober-1", "prober-2"} {
		if err := launch(n, "prober", "CALLOUT_PROBER_RANDOM_SECRET=bench", "CALLOUT_PROBER_RATE=100000",
			"CALLOUT_PROBER_MAX_CONNS=8", "CALLOUT_PROBER_WORKERS=64", "CALLOUT_PROBER_HELO_NAME=bench.test", os.Getenv("XPROBER")); err != nil {
			return nil, stop, err
		}
	}
	if err := launch("ingest", "ingest", "CALLOUT_INGEST_BRAKE_LIMIT=0", "CALLOUT_INGEST_POLICY_ADDR="); err != nil {
		return nil, stop, err
	}
	if profile != "" {
		b.profDir = filepath.Dir(profile)
		if err := os.WriteFile(profile, []byte(strings.Join(profiles, "\n")+"\n"), 0o644); err != nil {
			return nil, stop, err
		}
	}
	for _, svc := range []string{"callout-cache", "callout-ingest"} {
		if err := stack.WaitService(ctx, b.nc, svc); err != nil {
			return nil, stop, err
		}
	}
	for {
		if _, err := b.js.Consumer(ctx, b.names.ProbeStream(), b.names.ProbeConsumer()); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, stop, ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return b, stop, nil
}

// policies routes each domain to its destination and waits until the ingest
// answers for a static sentinel written after them.
func (b *bench) policies(route map[string]string) error {
	ctx := context.Background()
	for d, addr := range route {
		if err := domains.Put(ctx, b.kv, d, domains.Policy{Route: []string{addr}}); err != nil {
			return err
		}
	}
	sentinel := fmt.Sprintf("sync%d.bench", time.Now().UnixNano())
	if err := domains.Put(ctx, b.kv, sentinel, domains.Policy{Mode: domains.ModeStatic, Mailboxes: []string{"ok"}}); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if rep, err := b.verify("ok@"+sentinel, 5*time.Second); err == nil && rep.Verdict != nil && rep.Verdict.Reason == "listed" {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("policies not picked up")
}

func (b *bench) verify(addr string, timeout time.Duration) (wire.VerifyReply, error) {
	data, _ := wire.Encode(&wire.VerifyRequest{Address: addr})
	m, err := b.nc.Request(b.names.Verify(), data, timeout)
	if err != nil {
		return wire.VerifyReply{}, err
	}
	var rep wire.VerifyReply
	err = wire.Decode(m.Data, &rep)
	return rep, err
}

func (b *bench) flushAll() error {
	data, _ := wire.Encode(&wire.FlushCommand{Scope: wire.ScopeAll})
	_, err := b.nc.Request(b.names.Flush(), data, time.Minute)
	return err
}

// waitCached waits until every address answers from the cache.
func (b *bench) waitCached(addrs []string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for _, a := range addrs {
		for {
			rep, err := b.verify(a, 10*time.Second)
			if err == nil && rep.Verdict != nil && rep.Verdict.Source == verdict.SourceCache {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s never cached", a)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// mailDest is a scripted destination: u<n> with n%3 != 0 exists, as does
// postmaster (RFC 5321 requires it; the control probe asks it), catch-all
// domains accept anything.
func mailDest(catchAll func(domain string) bool) (*smtptest.Server, error) {
	return smtptest.Start("127.0.0.1:0", smtptest.Config{Rcpt: func(_, to string) string {
		local, domain, _ := strings.Cut(to, "@")
		if catchAll(domain) || local == "postmaster" {
			return "250 2.1.5 Ok"
		}
		if n, err := strconv.Atoi(strings.TrimPrefix(local, "u")); err == nil && strings.HasPrefix(local, "u") && n%3 != 0 {
			return "250 2.1.5 Ok"
		}
		return "550 5.1.1 <" + to + ">: Recipient address rejected: User unknown"
	}})
}

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
	dest, err := mailDest(func(string) bool { return false })
	if err != nil {
		return err
	}
	defer dest.Close()
	if err := b.policies(map[string]string{"hit.bench": dest.Addr()}); err != nil {
		return err
	}
	var addrs []string
	for i := 1; len(addrs) < 1000; i++ {
		if i%3 != 0 {
			addrs = append(addrs, fmt.Sprintf("u%d@hit.bench", i))
		}
	}
	for _, a := range addrs {
		if _, err := b.verify(a, 30*time.Second); err != nil {
			return err
		}
	}
	if err := b.waitCached(addrs); err != nil {
		return err
	}
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
			b.add(sec, p+"CPU per verify, ingest", (cpu1.procs["ingest"]-cpu0.procs["ingest"])/100/k*1e6, "µs")
			if cpu1.machine {
				b.add(sec, p+"machine: stolen by the host", (cpu1.stolen-cpu0.stolen)/100/el.Seconds(), "cores")
			}
		}
	}
	return b.flushAll()
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

// plainDialogue is the callout done directly: the same commands, one connection.
func plainDialogue(addr, rcpt string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	expect := func(prefix string) error {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return err
			}
			if len(line) < 4 || !strings.HasPrefix(line, prefix) {
				return fmt.Errorf("unexpected %q", line)
			}
			if line[3] == ' ' {
				return nil
			}
		}
	}
	if err := expect("220"); err != nil {
		return err
	}
	for _, step := range [][2]string{{"EHLO bench.test", "250"}, {"MAIL FROM:<>", "250"}, {"RCPT TO:<" + rcpt + ">", "250"}, {"QUIT", "221"}} {
		if _, err := fmt.Fprintf(c, "%s\r\n", step[0]); err != nil {
			return err
		}
		if err := expect(step[1]); err != nil {
			return err
		}
	}
	return nil
}

// 2. A verify for a new address against the same dialogue done directly.
func (b *bench) miss() error {
	dest, err := mailDest(func(string) bool { return false })
	if err != nil {
		return err
	}
	defer dest.Close()
	if err := b.policies(map[string]string{"miss.bench": dest.Addr()}); err != nil {
		return err
	}
	// The first callout learns that the domain is no catch-all; the rest skip
	// the random check, like the direct dialogue.
	if _, err := b.verify("u1@miss.bench", 30*time.Second); err != nil {
		return err
	}
	if err := b.waitCached([]string{"u1@miss.bench"}); err != nil {
		return err
	}
	var lv, ld latencies
	profiled := b.profile("miss", time.Second)
	defer profiled()
	for i := 2; len(lv) < 300; i++ {
		if i%3 == 0 {
			continue
		}
		a := fmt.Sprintf("u%d@miss.bench", i)
		t0 := time.Now()
		rep, err := b.verify(a, 30*time.Second)
		if err != nil || rep.Verdict.Source != verdict.SourceProbe {
			return fmt.Errorf("miss %s: %v", a, err)
		}
		lv = append(lv, time.Since(t0))
		t0 = time.Now()
		if err := plainDialogue(dest.Addr(), a); err != nil {
			return err
		}
		ld = append(ld, time.Since(t0))
	}
	sort.Slice(lv, func(i, j int) bool { return lv[i] < lv[j] })
	sort.Slice(ld, func(i, j int) bool { return ld[i] < ld[j] })
	b.add("2 miss", "verify of a new address p50", ms(lv.pct(50)), "ms")
	b.add("2 miss", "verify of a new address p99", ms(lv.pct(99)), "ms")
	b.add("2 miss", "direct SMTP dialogue p50", ms(ld.pct(50)), "ms")
	b.add("2 miss", "direct SMTP dialogue p99", ms(ld.pct(99)), "ms")
	b.add("2 miss", "overhead p50", ms(lv.pct(50)-ld.pct(50)), "ms")
	return b.flushAll()
}

// 6. Protection: 3 probers, 50 normal destinations and one that answers
// every RCPT after 5 s. The normal destinations' miss latency with and
// without a burst of jobs for the slow one, and the slow one's peak
// connections (MAX_CONNS holds across the probers).
func (b *bench) protection(bin string) error {
	p, err := stack.Start(b.dir, "prober-3", filepath.Join(bin, "prober"), nil, []string{
		"CALLOUT_PROBER_NATS_URL=" + b.url, "CALLOUT_PROBER_METRICS_ADDR=", "CALLOUT_PROBER_RANDOM_SECRET=bench", "CALLOUT_PROBER_RATE=100000",
		"CALLOUT_PROBER_MAX_CONNS=8", "CALLOUT_PROBER_WORKERS=64", "CALLOUT_PROBER_HELO_NAME=bench.test"})
	if err != nil {
		return err
	}
	defer func() { _ = p.Stop(10 * time.Second) }()
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

// 5. Saturation: 1 ingest, 1 cachekeeper, 2 probers, 90% cache hits.
func (b *bench) saturation() error {
	b.add("5 saturation", "machine: a fixed loop on one core, before the load", ms(calibrate()), "ms")
	dest, err := mailDest(func(string) bool { return false })
	if err != nil {
		return err
	}
	defer dest.Close()
	if err := b.policies(map[string]string{"sat.bench": dest.Addr()}); err != nil {
		return err
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
		return err
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
	cpu0, t0 := b.cpuTicks(), time.Now()
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
		return err
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
	b.addCPU("5 saturation", cpu0, b.cpuTicks(), time.Since(t0), total.Load())
	return b.flushAll()
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

// ingestGauge reads one unlabelled gauge from the ingest's /metrics (-1
// when it cannot).
func (b *bench) ingestGauge(name string) float64 {
	resp, err := http.Get("http://" + b.metrics["ingest"] + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return f
			}
		}
	}
	return -1
}

// 3. Callout economy: Zipf-distributed requests over many domains.
func (b *bench) economy(n int) error {
	const nDomains, perDomain, nDest = 1000, 50, 20
	catchAll := func(d string) bool {
		i, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(d, "d"), ".bench"))
		return i%10 == 0
	}
	var dests []*smtptest.Server
	for i := 0; i < nDest; i++ {
		d, err := mailDest(catchAll)
		if err != nil {
			return err
		}
		defer d.Close()
		dests = append(dests, d)
	}
	route := map[string]string{}
	for i := 0; i < nDomains; i++ {
		route[fmt.Sprintf("d%d.bench", i)] = dests[i%nDest].Addr()
	}
	if err := b.policies(route); err != nil {
		return err
	}
	rng := rand.New(rand.NewSource(1))
	zipf := rand.NewZipf(rng, 1.1, 1, nDomains*perDomain-1)
	reqs := make([]string, n)
	distinct, domainsAsked := map[string]bool{}, map[int]bool{}
	for i := range reqs {
		r := int(zipf.Uint64())
		reqs[i] = fmt.Sprintf("u%d@d%d.bench", r/nDomains+1, r%nDomains)
		distinct[reqs[i]] = true
		domainsAsked[r%nDomains] = true
	}
	conns := clients(b.url, 8)
	defer closeAll(conns)
	var idx atomic.Int64
	var failed atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := idx.Add(1) - 1
				if i >= int64(len(reqs)) {
					return
				}
				data, _ := wire.Encode(&wire.VerifyRequest{Address: reqs[i]})
				if _, err := conns[w%len(conns)].Request(b.names.Verify(), data, 30*time.Second); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	var conn, rcpt int
	for _, d := range dests {
		conn += d.Conns()
		rcpt += d.Rcpts()
	}
	sec := "3 economy"
	b.add(sec, "requests", float64(n), "")
	b.add(sec, "distinct addresses asked", float64(len(distinct)), "")
	b.add(sec, "requests unanswered", float64(failed.Load()), "")
	b.add(sec, "time", el.Seconds(), "s")
	b.add(sec, "connections (callout)", float64(conn), "")
	b.add(sec, "RCPTs (callout)", float64(rcpt), "")
	b.add(sec, "connections (naive: one per request)", float64(n), "")
	b.add(sec, "RCPTs (naive: random + real per request)", float64(2*n), "")
	b.add(sec, "connections naive/callout", float64(n)/float64(max(conn, 1)), "x")
	b.add(sec, "RCPTs naive/callout", float64(2*n)/float64(max(rcpt, 1)), "x")
	budget := len(distinct) + 2*len(domainsAsked)
	b.add(sec, fmt.Sprintf("RCPTs past the budget (%d distinct addresses + 2 per domain of %d)", len(distinct), len(domainsAsked)), float64(rcpt-budget), "")
	b.add(sec, "connections per RCPT", float64(conn)/float64(max(rcpt, 1)), "")
	return b.flushAll()
}

// cpuSample is CPU time in clock ticks of 1/100 s: of each process of
// the run and of the load generator ("bench"), and of the whole machine.
type cpuSample struct {
	procs map[string]float64
	// The machine's busy, idle and stolen time (/proc/stat's first line:
	// user, nice, system, idle, iowait, irq, softirq, steal), when read.
	// The host takes cores from this machine when it is busy itself: what
	// is stolen explains most of the spread between runs, and the
	// processes' own figures count some of it as theirs.
	machine            bool
	busy, idle, stolen float64
}

// procsSince is the ticks all processes used from before to c.
func (c cpuSample) procsSince(before cpuSample) float64 {
	all := 0.0
	for name, v := range c.procs {
		all += v - before.procs[name]
	}
	return all
}

func (b *bench) cpuTicks() cpuSample {
	pids := map[string]int{"bench": os.Getpid()}
	for name, p := range b.procs {
		pids[name] = p.Pid()
	}
	c := cpuSample{procs: map[string]float64{}}
	for name, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command (which may hold spaces): state is the
		// 3rd field, utime the 14th, stime the 15th.
		f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		c.procs[name] = u + st
	}
	if data, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		if f := strings.Fields(line); len(f) > 8 && f[0] == "cpu" {
			v := make([]float64, 8)
			for i := range v {
				v[i], _ = strconv.ParseFloat(f[i+1], 64)
			}
			c.machine = true
			c.busy, c.idle, c.stolen = v[0]+v[1]+v[2]+v[5]+v[6], v[3]+v[4], v[7]
		}
	}
	return c
}

// addCPU reports the cores each process and the machine used between two
// cpuTicks.
func (b *bench) addCPU(sec string, before, after cpuSample, el time.Duration, n int64) {
	names := make([]string, 0, len(after.procs))
	for n := range after.procs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b.add(sec, "CPU "+n, (after.procs[n]-before.procs[n])/100/el.Seconds(), "cores")
	}
	total := after.procsSince(before) / 100
	b.add(sec, "CPU, all processes", total/el.Seconds(), "cores")
	if after.machine {
		b.add(sec, "machine: busy", (after.busy-before.busy)/100/el.Seconds(), "cores")
		b.add(sec, "machine: idle", (after.idle-before.idle)/100/el.Seconds(), "cores")
		b.add(sec, "machine: stolen by the host", (after.stolen-before.stolen)/100/el.Seconds(), "cores")
	}
	if n > 0 {
		b.add(sec, "CPU per verify, all processes", total/float64(n)*1e6, "µs")
		if after.machine {
			b.add(sec, "CPU per verify, machine (stolen time left out)", (after.busy-before.busy)/100/float64(n)*1e6, "µs")
		}
	}
}

func rssKB(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[1], 64)
			return v
		}
	}
	return 0
}

func dirBytes(root string) int64 {
	var n int64
	_ = filepath.Walk(root, func(_ string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			n += info.Size()
		}
		return nil
	})
	return n
}

// ingestLiveHeap is the ingest's live heap: a heap profile asked with
// gc=1 collects garbage first, and the metrics read right after.
func (b *bench) ingestLiveHeap() float64 {
	resp, err := http.Get("http://" + b.metrics["ingest"] + "/debug/pprof/heap?gc=1")
	if err != nil {
		return -1
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return b.ingestGauge("go_memstats_heap_alloc_bytes")
}

// 4. Storage: n entries written as the cachekeeper writes them, then flushes.
func (b *bench) storage(n int) error {
	ctx := context.Background()
	const perDomain = 1000
	// The ingest's memory is measured against itself empty: what the
	// sections before left in the cache goes first.
	if data, err := wire.Encode(&wire.FlushCommand{Scope: wire.ScopeAll}); err == nil {
		if _, err := b.nc.Request(b.names.Flush(), data, 5*time.Minute); err != nil {
			return fmt.Errorf("storage: flush before: %w", err)
		}
	}
	heapEmpty := b.ingestLiveHeap()
	now := time.Now()
	start := time.Now()
	for i := 0; i < n; i++ {
		d := fmt.Sprintf("s%d.bench", i/perDomain)
		local := fmt.Sprintf("u%d", i%perDomain)
		v := verdict.Verdict{Kind: verdict.KindAddress, Address: local + "@" + d, Domain: d, Status: verdict.Valid, Reason: "accepted",
			Code: 250, Enhanced: "2.1.5", Text: "Ok", Host: "127.0.0.1:25", CheckedAt: now, ExpiresAt: now.Add(96 * time.Hour), Source: verdict.SourceProbe}
		data, _ := wire.EncodeEntry(v)
		// As the cachekeeper writes an entry of the longest class: no TTL header.
		if _, err := b.js.PublishAsync("$KV."+b.names.CacheBucket()+"."+kvkey.Address(d, local, verdict.Recipient, ""), data); err != nil {
			return err
		}
		if i%10000 == 9999 {
			select {
			case <-b.js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				return fmt.Errorf("storage: publish stalled")
			}
		}
	}
	<-b.js.PublishAsyncComplete()
	wrote := time.Since(start)
	st, err := b.js.Stream(ctx, "KV_"+b.names.CacheBucket())
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	sec := "4 storage"
	b.add(sec, "entries", float64(info.State.Msgs), "")
	b.add(sec, "write rate (direct KV publish)", float64(n)/wrote.Seconds(), "entries/s")
	b.add(sec, "KV stream bytes", float64(info.State.Bytes)/(1<<20), "MiB")
	// The bucket's own stream directory: the other streams' blocks (jobs
	// and verdicts of the earlier sections) are not the cache's.
	kvDir := filepath.Join(b.dir, "var", "nats", "jetstream", "$G", "streams", "KV_"+b.names.CacheBucket())
	b.add(sec, "KV bytes on disk", float64(dirBytes(kvDir))/(1<<20), "MiB")
	b.add(sec, "bytes per entry on disk", float64(dirBytes(kvDir))/float64(max(info.State.Msgs, 1)), "B")
	b.add(sec, "all streams on disk", float64(dirBytes(filepath.Join(b.dir, "var")))/(1<<20), "MiB")
	b.add(sec, "cachekeeper RSS", rssKB(b.procs["cachekeeper"].Pid())/1024, "MiB")
	b.add(sec, "nats-server RSS", rssKB(b.procs["nats-server"].Pid())/1024, "MiB")
	// The ingest's index of the bucket's keys, once its watch has them all.
	deadline := time.Now().Add(2 * time.Minute)
	for b.ingestGauge("callout_ingest_known_keys") < float64(n) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // polling a gauge of another process
	}
	keys := b.ingestGauge("callout_ingest_known_keys")
	heapIndexed := b.ingestLiveHeap()
	b.add(sec, "ingest heap per known key", (heapIndexed-heapEmpty)/max(keys, 1), "B")
	// The ingest with its near cache full at its default bound (100,000):
	// verify that many stored addresses, then read its memory.
	const near = 100000
	route := map[string]string{}
	for d := 0; d < near/perDomain; d++ {
		route[fmt.Sprintf("s%d.bench", d)] = "127.0.0.1:9" // never called: every address is cached
	}
	if err := b.policies(route); err != nil {
		return err
	}
	conns := clients(b.url, 8)
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := w; n < near; n += 64 {
				data, _ := wire.Encode(&wire.VerifyRequest{Address: fmt.Sprintf("u%d@s%d.bench", n%perDomain, n/perDomain)})
				if _, err := conns[w%len(conns)].Request(b.names.Verify(), data, 10*time.Second); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	closeAll(conns)
	if e := failed.Load(); e != nil {
		return e.(error)
	}
	b.add(sec, "ingest RSS, near cache full (100,000 entries)", rssKB(b.procs["ingest"].Pid())/1024, "MiB")
	b.add(sec, "ingest heap per near-cache entry", (b.ingestLiveHeap()-heapIndexed)/near, "B")
	b.add(sec, "ingest known keys (index of the bucket)", b.ingestGauge("callout_ingest_known_keys"), "")
	flush := func(cmd wire.FlushCommand) (time.Duration, uint64, error) {
		data, _ := wire.Encode(&cmd)
		t0 := time.Now()
		m, err := b.nc.Request(b.names.Flush(), data, 5*time.Minute)
		if err != nil {
			return 0, 0, err
		}
		el := time.Since(t0)
		var rep wire.FlushReply
		if err := wire.Decode(m.Data, &rep); err != nil || rep.Error != "" {
			return 0, 0, fmt.Errorf("flush: %v %s", err, rep.Error)
		}
		return el, rep.Removed, nil
	}
	// Three domains, one after another: the median, with min and max.
	var took []float64
	var removed uint64
	for _, d := range []string{"s7.bench", "s8.bench", "s9.bench"} {
		el, n, err := flush(wire.FlushCommand{Scope: wire.ScopeDomain, Domain: d})
		if err != nil {
			return err
		}
		took, removed = append(took, ms(el)), n
	}
	sort.Float64s(took)
	b.add(sec, fmt.Sprintf("domain flush (%d entries) time", removed), took[1], "ms")
	r := &b.rows[len(b.rows)-1]
	r.Min, r.Max, r.Reps = &took[0], &took[2], len(took)
	el, removed, err := flush(wire.FlushCommand{Scope: wire.ScopeAll})
	if err != nil {
		return err
	}
	b.add(sec, fmt.Sprintf("full flush (%d entries) time", removed), ms(el), "ms")
	return nil
}
