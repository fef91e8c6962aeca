// Command bench measures callout on loopback and prints one table; the same
// figures go to a JSON file. It starts nats-server and the services as
// processes (binaries from -bin) and scripted destinations in-process.
// These are measurements, not pass/fail checks.
package main

// Over 400 lines on purpose: the bench's set-up of the processes and the
// table it prints; each section has a file of its own.

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
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
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/domains"
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

type bench struct {
	dir, url   string
	nc         *nats.Conn
	js         jetstream.JetStream
	names      subjects.Names
	procs      map[string]*stack.Proc
	rows       []row
	kv         *domains.Store
	pprof      map[string]string // process -> its /debug/pprof address (CALLOUT_BENCH_PROFILE)
	policyAddr string            // the ingest's Postfix policy listener
	milterAddr string            // the ingest's milter listener
	metrics    map[string]string // process -> its /metrics address
	monitor    string            // nats-server's monitoring address (http://host:port)
	profDir    string
	// launch starts (or starts again) a process: name, service, settings.
	launch func(name, svc string, env ...string) error
	// goThreads starts every service with Go's default GOMAXPROCS (see threads).
	goThreads bool
	// settings (-set) go to every service the bench starts, before a
	// section's own: each service reads only its own prefix.
	settings []string
}

// threads is the GOMAXPROCS setting of a service the bench starts: the
// cachekeeper and the probers run on one thread, as docs/deploy.md
// advises when the services share a host of few cores (with -go-threads,
// every service has Go's default, a thread per core).
func (b *bench) threads(svc string) []string {
	if b.goThreads || (svc != "cachekeeper" && svc != "prober") {
		return nil
	}
	return []string{"GOMAXPROCS=1"}
}

// proberSettings are the bench's prober settings under the variable
// prefix up (CALLOUT_PROBER_): every prober it starts calls out to the
// local destinations without a rate limit in the way.
func proberSettings(up string) []string {
	return []string{up + "RANDOM_SECRET=bench", up + "RATE=100000", up + "MAX_CONNS=8", up + "HELO_NAME=bench.test"}
}

// ingestSettings are the bench's ingest settings: no brake, the Postfix
// policy and milter listeners on policy and milter, then extra.
func ingestSettings(policy, milter string, extra ...string) []string {
	return append([]string{"CALLOUT_INGEST_BRAKE_LIMIT=0", "CALLOUT_INGEST_POLICY_ADDR=" + policy, "CALLOUT_INGEST_MILTER_ADDR=" + milter}, extra...)
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
	bin := flag.String("bin", "bin", "directory with nats-server and the service binaries (run from the repository root)")
	out := flag.String("out", "bench/results.json", "JSON output")
	requests := flag.Int("requests", 100000, "callout economy: verify requests")
	entries := flag.Int("entries", 1000000, "storage: cached entries")
	only := flag.String("only", "", "run these sections, in this order (comma-separated): hit, miss, saturation, economy, storage, protection, mta, postfix, lists, regions, decisions, decisions-search")
	records := flag.Int("records", 10000000, "decisions-search: records in the log")
	reps := flag.Int("reps", 3, "repetitions of the hit, miss, saturation and MTA-path sections")
	goThreads := flag.Bool("go-threads", false, "start every service with Go's default GOMAXPROCS, the cachekeeper and the probers too")
	var settings settingList
	flag.Var(&settings, "set", "a setting for the services, NAME=VALUE (CALLOUT_INGEST_DECISION_LOG=false); repeatable; a section's own settings win")
	flag.Parse()
	absBin, _ := filepath.Abs(*bin)
	b, stop, err := start(absBin, *goThreads, settings)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer stop()
	fmt.Fprintf(os.Stderr, "bench: %d CPUs, %s\n", runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339))
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
	sections := map[string]func() error{
		"hit": three(b.cacheHit), "miss": three(b.miss), "saturation": three(b.saturation), "mta": three(b.mtaPaths),
		"economy":    func() error { return b.economy(*requests) },
		"storage":    func() error { return b.storage(*entries) },
		"protection": b.protection, "lists": b.staticLists,
		"postfix":          func() error { return b.throughPostfix(*reps) },
		"regions":          func() error { return b.regions(absBin) },
		"decisions":        func() error { return b.decisionLog(*reps) },
		"decisions-search": func() error { return b.decisionSearch(*records) },
	}
	// Storage first: its bytes on disk are then the million entries', not
	// also blocks the other sections' entries left behind them (the file
	// store compacts them later). It ends with a full flush.
	steps := []func() error{sections["storage"]}
	for i := 0; i < *reps; i++ {
		steps = append(steps, b.cacheHit, b.miss, b.saturation)
	}
	for _, name := range []string{"economy", "protection", "mta", "postfix", "lists", "regions", "decisions"} {
		steps = append(steps, sections[name])
	}
	if *only != "" {
		steps = nil
		for _, name := range strings.Split(*only, ",") {
			f, ok := sections[name]
			if !ok {
				fmt.Fprintf(os.Stderr, "bench: no section %q\n", name)
				stop()
				os.Exit(2)
			}
			steps = append(steps, f)
		}
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
	threads := "GOMAXPROCS=1 for the cachekeeper and the probers"
	if b.goThreads {
		threads = "Go's default GOMAXPROCS for every service"
	}
	fmt.Println("threads:", threads)
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
			fmt.Fprintf(tw, "%s\t%s %s %s\t%s\t%s\t\n", c.Name, c.Op, strconv.FormatFloat(c.Bound, 'f', -1, 64), c.Unit, shownValue(c.Value, c.Bound), met)
		}
		tw.Flush()
	}
	res := map[string]any{"date": time.Now().UTC().Format(time.RFC3339), "cpus": runtime.NumCPU(), "go": runtime.Version(), "threads": threads, "results": b.rows, "targets": checks}
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

// settingList is -set, repeated.
type settingList []string

func (l *settingList) String() string { return strings.Join(*l, " ") }

func (l *settingList) Set(v string) error {
	// Go's own settings too: GODEBUG=gctrace=1 puts each service's
	// collections in its log.
	name, _, ok := strings.Cut(v, "=")
	if !ok || !strings.HasPrefix(name, "CALLOUT_") && !slices.Contains([]string{"GOMAXPROCS", "GOGC", "GOMEMLIMIT", "GODEBUG"}, name) {
		return fmt.Errorf("want CALLOUT_<SERVICE>_<NAME>=VALUE (or GOMAXPROCS, GOGC, GOMEMLIMIT, GODEBUG), not %q", v)
	}
	*l = append(*l, v)
	return nil
}

func start(bin string, goThreads bool, settings []string) (*bench, func(), error) {
	dir, err := os.MkdirTemp("", "callout-bench")
	if err != nil {
		return nil, nil, err
	}
	b := &bench{dir: dir, names: subjects.New(""), procs: map[string]*stack.Proc{}, pprof: map[string]string{}, metrics: map[string]string{}, goThreads: goThreads, settings: settings}
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
	conf, _ := filepath.Abs("deploy/nats/dev.conf")
	// CALLOUT_BENCH_PROFILE (a file) gives every process a /debug/pprof
	// address and lists them there, one "name address" line each, to
	// profile a run from outside.
	profile := os.Getenv("CALLOUT_BENCH_PROFILE")
	var profiles []string
	mport := freePort()
	b.monitor = fmt.Sprintf("http://127.0.0.1:%d", mport)
	args := []string{"-c", conf, "-p", strconv.Itoa(port), "-m", strconv.Itoa(mport)}
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
		env = append(append(append(common(svc), b.threads(svc)...), b.settings...), env...)
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
	b.launch = launch
	if err := launch("cachekeeper", "cachekeeper", "CALLOUT_CACHEKEEPER_STORE_WORKERS=32"); err != nil {
		return nil, stop, err
	}
	for _, n := range []string{"prober-1", "prober-2"} {
		if err := launch(n, "prober", append(proberSettings("CALLOUT_PROBER_"), "CALLOUT_PROBER_WORKERS=64")...); err != nil {
			return nil, stop, err
		}
	}
	b.policyAddr = fmt.Sprintf("127.0.0.1:%d", freePort())
	b.milterAddr = fmt.Sprintf("127.0.0.1:%d", freePort())
	if err := launch("ingest", "ingest", ingestSettings(b.policyAddr, b.milterAddr)...); err != nil {
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
	return b.verifyOn(b.nc, addr, timeout)
}

// verifyOn asks over the connection nc.
func (b *bench) verifyOn(nc *nats.Conn, addr string, timeout time.Duration) (wire.VerifyReply, error) {
	data, _ := wire.Encode(&wire.VerifyRequest{Address: addr})
	m, err := nc.Request(b.names.Verify(), data, timeout)
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
