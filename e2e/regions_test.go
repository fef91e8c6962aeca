package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
	"github.com/callout-mail/callout/tools/stack"
)

// fleet is three regions on loopback: in each a nats-server of the
// cluster of deploy/nats/regions/ and an ingest, a cachekeeper and a
// prober that name the region and connect to its server only.
type fleet struct {
	t       *testing.T
	dir     string
	regions []string
	servers map[string]*stack.Proc
	args    map[string][]string // each server's command line, to restart it
	urls    map[string]string   // client URL per region
	monitor map[string]int      // HTTP monitoring port per region
	procs   map[string][]*stack.Proc
	conns   map[string]*nats.Conn // a client per region, on its server
	env     []string              // extra environment for every service
	links   map[[2]string]*link   // the routes, by region from and to
	mtas    map[string]*nats.Conn // an MTA per region, on its server
}

// connect connects to region r's server as user (its dev password and
// reply-inbox prefix, deploy/nats/auth.conf).
func (f *fleet) connect(t *testing.T, r, user string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(f.urls[r], nats.UserInfo(user, user+"-dev-password"), nats.CustomInboxPrefix("_INBOX_"+user),
		nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// cut cuts (or mends) every route between region r and the others.
func (f *fleet) cut(r string, cut bool) {
	for k, l := range f.links {
		if k[0] == r || k[1] == r {
			l.setCut(cut)
		}
	}
}

// link forwards TCP connections on loopback to one server's route port,
// and can be cut (its connections closed, new ones refused) and mended.
type link struct {
	ln    net.Listener
	to    string
	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]bool
}

func newLink(t *testing.T, to string) *link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln, to: to, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { _ = ln.Close(); l.setCut(true) })
	go l.serve()
	return l
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.cut {
			l.mu.Unlock()
			_ = c.Close()
			continue
		}
		l.mu.Unlock()
		d, err := net.DialTimeout("tcp", l.to, 2*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		l.mu.Lock()
		if l.cut {
			l.mu.Unlock()
			_ = c.Close()
			_ = d.Close()
			continue
		}
		l.conns[c], l.conns[d] = true, true
		l.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		go pipe(d, c)
		go pipe(c, d)
	}
}

func (l *link) setCut(cut bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cut = cut
	if cut {
		for c := range l.conns {
			_ = c.Close()
		}
		l.conns = map[net.Conn]bool{}
	}
}

func startFleet(t *testing.T, env ...string) *fleet {
	t.Helper()
	f := &fleet{t: t, dir: t.TempDir(), regions: []string{"a", "b", "c"}, servers: map[string]*stack.Proc{}, args: map[string][]string{},
		urls: map[string]string{}, monitor: map[string]int{}, procs: map[string][]*stack.Proc{}, conns: map[string]*nats.Conn{}, env: env}
	// Every route between two regions goes through a link of the test's
	// (one per direction), which it can cut: a partition on loopback. The
	// servers advertise a closed port, so none finds a way around a cut
	// link.
	routes := map[string]int{}
	for _, r := range f.regions {
		routes[r] = freePort(t)
	}
	f.links = map[[2]string]*link{}
	for _, from := range f.regions {
		for _, to := range f.regions {
			if from != to {
				f.links[[2]string{from, to}] = newLink(t, fmt.Sprintf("127.0.0.1:%d", routes[to]))
			}
		}
	}
	dead := freePort(t)
	for _, r := range f.regions {
		port := freePort(t)
		f.monitor[r] = freePort(t)
		f.urls[r] = fmt.Sprintf("nats://127.0.0.1:%d", port)
		var routeURLs []string
		for _, to := range f.regions {
			if to != r {
				routeURLs = append(routeURLs, "nats-route://"+f.links[[2]string{r, to}].addr())
			}
		}
		// The region's server config with the fleet's users
		// (deploy/nats/regions/auth.conf): every process runs as its role.
		conf := filepath.Join(f.dir, r+"-auth.conf")
		server, err := os.ReadFile("../deploy/nats/regions/" + r + ".conf")
		if err != nil {
			t.Fatal(err)
		}
		users, err := os.ReadFile("../deploy/nats/regions/auth.conf")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(conf, append(append(server, '\n'), users...), 0o644); err != nil {
			t.Fatal(err)
		}
		f.args[r] = []string{"-c", conf, "-p", strconv.Itoa(port), "-m", strconv.Itoa(f.monitor[r]),
			"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", routes[r]), "--routes", strings.Join(routeURLs, ","),
			"--cluster_advertise", fmt.Sprintf("127.0.0.1:%d", dead)}
		f.startServer(r)
	}
	t.Cleanup(func() {
		for _, r := range f.regions {
			for _, p := range f.procs[r] {
				_ = p.Stop(10 * time.Second)
			}
		}
		for _, p := range f.servers {
			_ = p.Stop(10 * time.Second)
		}
		if t.Failed() {
			f.dumpLogs()
		}
	})
	// In each region: the operators' admin, and an MTA.
	f.mtas = map[string]*nats.Conn{}
	for _, r := range f.regions {
		f.conns[r] = f.connect(t, r, "admin")
		f.mtas[r] = f.connect(t, r, "mta-mx1")
	}
	js := f.js("a")
	var lastErr error
	waitFor(t, 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, lastErr = js.AccountInfo(ctx)
		if lastErr != nil {
			t.Log(lastErr)
		}
		return lastErr == nil
	})
	// The operator's one-time step, as for one cluster: every stream and
	// bucket with three replicas (one per region), each region's cache.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mjs, _ := jetstream.New(f.connect(t, "a", "maintenance"), jetstream.WithDefaultTimeout(30*time.Second))
	// Until every server has joined, an R3 stream finds no peers: the
	// operator runs setup again.
	waitFor(t, 60*time.Second, func() bool {
		_, err := streams.SetupWith(ctx, mjs, subjects.New(""), 3, 96*time.Hour, streams.DefaultLimits, f.regions...)
		if err != nil {
			t.Logf("setup: %v", err)
		}
		return err == nil
	})
	for _, r := range f.regions {
		f.startServices(r)
	}
	for _, r := range f.regions {
		f.waitRegion(r)
	}
	return f
}

func (f *fleet) startServer(r string) {
	f.t.Helper()
	p, err := stack.StartIn(f.dir, f.dir, "nats-"+r, filepath.Join(binDir, "nats-server"), f.args[r], nil)
	if err != nil {
		f.t.Fatal(err)
	}
	f.servers[r] = p
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := stack.WaitNATS(ctx, f.urls[r], nats.UserInfo("admin", "admin-dev-password")); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fleet) js(r string) jetstream.JetStream {
	js, _ := jetstream.New(f.conns[r], jetstream.WithDefaultTimeout(30*time.Second))
	return js
}

func (f *fleet) startServices(r string) {
	f.t.Helper()
	for _, name := range []string{"cachekeeper", "prober", "ingest"} {
		up := "CALLOUT_" + strings.ToUpper(name) + "_"
		user := name + "-" + r // a region's own user (deploy/nats/regions/auth.conf)
		if name == "prober" {
			user = name // one for the fleet
		}
		env := []string{up + "NATS_URL=" + f.urls[r], up + "NATS_REGION=" + r, up + "REPLICAS=3", up + "METRICS_ADDR=",
			up + "NATS_USER=" + user, up + "NATS_PASSWORD=" + name + "-dev-password", up + "NATS_INBOX_PREFIX=_INBOX_" + user}
		switch name {
		case "prober":
			env = append(env, up+"RANDOM_SECRET=e2e", up+"HELO_NAME=verifier.test", up+"ACK_WAIT=2s", up+"CONNECT_TIMEOUT=1s",
				up+"BANNER_TIMEOUT=5s", up+"COMMAND_TIMEOUT=5s")
		case "ingest":
			env = append(env, up+"POLICY_ADDR=127.0.0.1:"+strconv.Itoa(freePort(f.t)), up+"TIMEOUT=10s", up+"MAX_TIMEOUT=15s")
		}
		for _, e := range f.env {
			if strings.HasPrefix(e, up) {
				env = append(env, e)
			}
		}
		p, err := stack.Start(f.dir, fmt.Sprintf("%s-%s-%d", name, r, len(f.procs[r])), filepath.Join(binDir, name), nil, env)
		if err != nil {
			f.t.Fatal(err)
		}
		f.procs[r] = append(f.procs[r], p)
	}
}

// waitRegion waits until the region's ingest answers on the region's
// subject and its cachekeeper keeps its bucket.
func (f *fleet) waitRegion(r string) {
	f.t.Helper()
	waitFor(f.t, 60*time.Second, func() bool {
		b, _ := wire.Encode(&wire.VerifyRequest{Address: "postmaster@example.org"})
		_, err := f.mtas[r].Request(subjects.NewIn("", r).VerifyRegion(), b, 2*time.Second)
		if err != nil {
			return false
		}
		_, err = f.conns[r].Request(subjects.NewIn("", r).CacheLookup(), []byte("x"), 2*time.Second)
		return err == nil
	})
}

// killRegion kills every process of a region, its server included.
func (f *fleet) killRegion(r string) {
	for _, p := range f.procs[r] {
		p.Kill()
	}
	f.procs[r] = nil
	f.servers[r].Kill()
}

func (f *fleet) verify(r, addr string) wire.VerifyReply {
	f.t.Helper()
	b, _ := wire.Encode(&wire.VerifyRequest{Address: addr})
	m, err := f.mtas[r].Request(subjects.NewIn("", r).VerifyRegion(), b, 20*time.Second)
	if err != nil {
		f.t.Fatalf("verify %s in %s: %v", addr, r, err)
	}
	var rep wire.VerifyReply
	if err := wire.Decode(m.Data, &rep); err != nil {
		f.t.Fatal(err)
	}
	if rep.Verdict == nil {
		f.t.Fatalf("verify %s in %s: no verdict", addr, r)
	}
	return rep
}

// tryCalloutctl runs calloutctl against region r's server.
func (f *fleet) tryCalloutctl(r string, args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(binDir, "calloutctl"), append([]string{"-server", f.urls[r], "-user", "admin",
		"-password", "admin-dev-password", "-inbox-prefix", "_INBOX_admin"}, args...)...).CombinedOutput()
	if err != nil {
		f.t.Logf("calloutctl %v: %v: %s", args, err, out)
	}
	return string(out), err
}

// flushAddress flushes addr as an operator in region a would. Right after
// a region is lost or cut off the replicated streams may be electing new
// leaders: the operator's tool is told so and tries again.
func (f *fleet) flushAddress(t *testing.T, addr string) (wire.FlushReply, error) {
	t.Helper()
	op, err := operate.New(f.conns["a"], subjects.New(""))
	if err != nil {
		return wire.FlushReply{}, err
	}
	var rep wire.FlushReply
	// A stream whose leader was in the lost region elects another within
	// seconds (several, on two cores with every stream's group electing).
	deadline := time.Now().Add(30 * time.Second)
	for try := 1; ; try++ {
		if rep, err = op.Flush(context.Background(), "e2e", wire.FlushCommand{Scope: wire.ScopeAddress, Address: addr}); err == nil || time.Now().After(deadline) {
			break
		}
		t.Logf("flush of %s, try %d: %v", addr, try, err)
		time.Sleep(500 * time.Millisecond)
	}
	return rep, err
}

// waitCached waits until the cache of region r has a verdict for addr,
// asking its cachekeepers as an ingest does.
func (f *fleet) waitCached(r, addr string) {
	f.t.Helper()
	b, _ := wire.Encode(&wire.LookupRequest{Address: addr, Senders: []string{""}})
	waitFor(f.t, 15*time.Second, func() bool {
		m, err := f.conns[r].Request(subjects.NewIn("", r).CacheLookup(), b, 2*time.Second)
		if err != nil {
			return false
		}
		var rep wire.LookupReply
		return wire.Decode(m.Data, &rep) == nil && rep.Hit
	})
}

// setPolicy stores a policy and waits until every live region answers
// from it (a static sentinel written after it).
func (f *fleet) setPolicy(domain string, p domains.Policy, live ...string) {
	f.t.Helper()
	ctx := context.Background()
	st, err := domains.Bucket(ctx, f.js(live[0]), subjects.New(""), 3)
	if err != nil {
		f.t.Fatal(err)
	}
	if err := domains.Put(ctx, st, domain, p); err != nil {
		f.t.Fatal(err)
	}
	sentinel := fmt.Sprintf("sync%d.test", time.Now().UnixNano())
	if err := domains.Put(ctx, st, sentinel, domains.Policy{Mode: domains.ModeStatic, Mailboxes: []string{"ok"}}); err != nil {
		f.t.Fatal(err)
	}
	for _, r := range live {
		waitFor(f.t, 20*time.Second, func() bool { return f.verify(r, "ok@"+sentinel).Verdict.Reason == verdict.ReasonListed })
	}
}

// routeMsgs is how many messages the server of region r has sent over its
// routes, to the other regions.
func (f *fleet) routeMsgs(r string) int64 {
	f.t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/routez", f.monitor[r]))
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	var rz struct {
		Routes []struct {
			OutMsgs int64 `json:"out_msgs"`
		} `json:"routes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&rz); err != nil {
		f.t.Fatal(err)
	}
	var n int64
	for _, rt := range rz.Routes {
		n += rt.OutMsgs
	}
	return n
}

func (f *fleet) dumpLogs() { logTails(f.t, f.dir, 30) }

// TestRegions runs one fleet over three regions and proves, with real
// processes: a verdict made in one region is answered from the cache in
// the others without a second callout; cache hits stay in their region
// (nothing crosses the routes for them); the destination's connection
// limit holds across the regions together; a flush is in effect in
// every region once answered; a policy change reaches every region; and
// the loss of a whole region loses nothing: the others answer on, every
// acknowledged verdict is still answered, and the region, back, catches
// up with the verdicts and the flushes it missed.
func TestRegions(t *testing.T) {
	var known sync.Map // addresses the destination accepts
	for _, a := range []string{"alice", "dave"} {
		known.Store(a+"@example.org", true)
	}
	var slow atomic.Bool
	dest := destination(t, smtptest.Config{Rcpt: func(from, to string) string {
		if slow.Load() {
			time.Sleep(150 * time.Millisecond)
		}
		if _, ok := known.Load(strings.ToLower(to)); ok || strings.HasPrefix(to, "many") || strings.HasPrefix(to, "postmaster@") {
			return "250 2.1.5 Ok"
		}
		return "550 5.1.1 User unknown"
	}})
	f := startFleet(t, "CALLOUT_PROBER_MAX_CONNS=2")
	f.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}}, f.regions...)

	t.Run("a verdict made in one region is answered from the cache in the others", func(t *testing.T) {
		rep := f.verify("a", "alice@example.org")
		if rep.Decision.Action != verdict.Accept || rep.Verdict.Source != verdict.SourceProbe {
			t.Fatalf("region a: %+v", rep.Verdict)
		}
		made := time.Now()
		for _, r := range []string{"b", "c"} {
			f.waitCached(r, "alice@example.org")
			t.Logf("region %s has the verdict in its cache %v after it was answered in a", r, time.Since(made).Round(time.Millisecond))
			if rep := f.verify(r, "alice@example.org"); rep.Verdict.Source != verdict.SourceCache || rep.Decision.Action != verdict.Accept {
				t.Fatalf("region %s: %+v", r, rep.Verdict)
			}
		}
		if n := dest.RcptsFor("alice@example.org"); n != 1 {
			t.Fatalf("%d RCPTs for alice: the callout was repeated in another region", n)
		}
	})

	t.Run("two regions asking for one new address at once make one callout", func(t *testing.T) {
		var wg sync.WaitGroup
		for _, r := range f.regions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if rep := f.verify(r, "grace@example.org"); rep.Decision.Action != verdict.Reject {
					t.Errorf("grace in %s: %+v", r, rep.Decision)
				}
			}()
		}
		wg.Wait()
		if n := dest.RcptsFor("grace@example.org"); n != 1 {
			t.Fatalf("%d RCPTs for grace asked in three regions at once, want 1", n)
		}
	})

	t.Run("cache hits stay in their region", func(t *testing.T) {
		window := func(load func()) int64 {
			var before int64
			for _, r := range f.regions {
				before += f.routeMsgs(r)
			}
			load()
			var after int64
			for _, r := range f.regions {
				after += f.routeMsgs(r)
			}
			return after - before
		}
		const hits = 1000
		idle := window(func() { time.Sleep(2 * time.Second) })
		busy := window(func() {
			start := time.Now()
			for range hits {
				if rep := f.verify("b", "alice@example.org"); rep.Verdict.Source != verdict.SourceCache {
					t.Fatalf("not a hit: %+v", rep.Verdict)
				}
			}
			time.Sleep(max(0, 2*time.Second-time.Since(start)))
		})
		t.Logf("messages over the routes: %d idle, %d during %d hits (same length)", idle, busy, hits)
		if busy > idle+hits/10 {
			t.Fatalf("%d hits sent %d messages over the routes (idle: %d)", hits, busy, idle)
		}
	})

	t.Run("a flush is in effect in every region once answered", func(t *testing.T) {
		for _, r := range f.regions {
			if rep := f.verify(r, "bob@example.org"); rep.Decision.Action != verdict.Reject {
				t.Fatalf("bob in %s: %+v", r, rep.Decision)
			}
		}
		for _, r := range f.regions {
			f.waitCached(r, "bob@example.org")
		}
		known.Store("bob@example.org", true) // the destination fixed bob
		op, err := operate.New(f.conns["a"], subjects.New(""))
		if err != nil {
			t.Fatal(err)
		}
		rep, err := op.Flush(context.Background(), "e2e", wire.FlushCommand{Scope: wire.ScopeAddress, Address: "bob@example.org"})
		if err != nil || !slices.Equal(rep.Regions, f.regions) || len(rep.UnconfirmedRegions) != 0 {
			t.Fatalf("flush: %+v %v", rep, err)
		}
		for _, r := range f.regions {
			if rep := f.verify(r, "bob@example.org"); rep.Decision.Action != verdict.Accept {
				t.Fatalf("bob in %s after the flush: %+v %+v", r, rep.Decision, rep.Verdict)
			}
		}
	})

	t.Run("a region's users reach only their region's names", func(t *testing.T) {
		ck := connectAsUser(t, f.urls["a"], "cachekeeper-a", "cachekeeper")
		_ = ck.Publish("$KV.callout_cache_b.addr.example/org.alice.rcpt", []byte("x")) // denied: another region's cache
		ck.denied(t, "Publish", "$KV.callout_cache_b")
		_ = ck.Publish("callout.region.beat.b", []byte("{}")) // denied: beat for another region
		ck.denied(t, "Publish", "callout.region.beat.b")
		in := connectAsUser(t, f.urls["a"], "ingest-a", "ingest")
		_, _ = in.SubscribeSync("callout.verify.in.b") // denied: answer another region's MTAs
		in.denied(t, "Subscription", "callout.verify.in.b")
		_ = in.Publish("callout.region.beat.a", []byte("{}")) // denied: only cachekeepers beat
		in.denied(t, "Publish", "callout.region.beat.a")
	})

	t.Run("the destination sees one fleet", func(t *testing.T) {
		slow.Store(true)
		defer slow.Store(false)
		var wg sync.WaitGroup
		for i := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := f.regions[i%3]
				if rep := f.verify(r, fmt.Sprintf("many%d@example.org", i)); rep.Decision.Action == verdict.Reject {
					t.Errorf("many%d rejected in %s", i, r)
				}
			}()
		}
		wg.Wait()
		if p := dest.Peak(); p > 2 {
			t.Fatalf("the destination saw %d connections at once from three regions (MAX_CONNS=2)", p)
		}
	})

	t.Run("each region keeps its decisions; a search and an erase reach them all", func(t *testing.T) {
		for _, r := range f.regions {
			f.verify(r, "zed-"+r+"@example.org")
		}
		search := func() operate.SearchResult {
			out, err := f.tryCalloutctl("b", "log", "-domain", "example.org", "-action", "reject", "-n", "1000", "-json")
			if err != nil {
				t.Fatal(err)
			}
			var res operate.SearchResult
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			return res
		}
		waitFor(t, 20*time.Second, func() bool {
			seen := map[string]bool{}
			res := search()
			for _, r := range res.Records {
				seen[r.Region] = seen[r.Region] || r.Recipient == "zed-"+r.Region+"@example.org"
			}
			return len(seen) == len(f.regions) && seen["a"] && seen["b"] && seen["c"]
		})
		out, err := f.tryCalloutctl("c", "log", "erase", "-domain", "example.org")
		if err != nil || !strings.Contains(out, "erased") {
			t.Fatalf("erase: %v %s", err, out)
		}
		if res := search(); len(res.Records) != 0 || len(res.Unanswered) != 0 {
			t.Fatalf("after the erase: %+v", res)
		}
	})
	t.Run("a region lost loses nothing and catches up when back", func(t *testing.T) {
		// carol is cached unknown in every region, then c is lost.
		for _, r := range f.regions {
			f.verify(r, "carol@example.org")
		}
		for _, r := range f.regions {
			f.waitCached(r, "carol@example.org")
		}
		f.killRegion("c")
		// The others answer on: hits, and misses by callout.
		for _, r := range []string{"a", "b"} {
			if rep := f.verify(r, "alice@example.org"); rep.Decision.Action != verdict.Accept {
				t.Fatalf("alice in %s with c lost: %+v", r, rep.Decision)
			}
		}
		// While the replicated streams elect new leaders (seconds), a miss
		// may be deferred; never rejected.
		waitFor(t, 30*time.Second, func() bool {
			rep := f.verify("a", "dave@example.org")
			if rep.Decision.Action == verdict.Reject {
				t.Fatalf("dave rejected in a with c lost: %+v", rep.Verdict)
			}
			return rep.Decision.Action == verdict.Accept
		})
		// carol is fixed and flushed while c is away: c cannot confirm.
		known.Store("carol@example.org", true)
		rep, err := f.flushAddress(t, "carol@example.org")
		if err != nil || !slices.Equal(rep.UnconfirmedRegions, []string{"c"}) {
			t.Fatalf("flush with c lost: %+v %v", rep, err)
		}
		// (carol is not asked again before c is back: a new verdict would
		// reach c and hide whether c applied the flush.)
		rcpts := dest.RcptsFor("dave@example.org")
		// c comes back: it applies the flush it missed and stores the
		// verdicts made meanwhile, without an operator.
		back := time.Now()
		f.startServer("c")
		f.startServices("c")
		f.waitRegion("c")
		t.Logf("region c answers again %v after its server started", time.Since(back).Round(time.Millisecond))
		f.waitCached("c", "dave@example.org")
		if rep := f.verify("c", "dave@example.org"); rep.Verdict.Source != verdict.SourceCache {
			t.Fatalf("dave in c, back: %+v", rep.Verdict)
		}
		if n := dest.RcptsFor("dave@example.org"); n != rcpts {
			t.Fatalf("dave called out again in c: %d RCPTs, %d before", n, rcpts)
		}
		if rep := f.verify("c", "carol@example.org"); rep.Decision.Action == verdict.Reject {
			t.Fatalf("c, back, rejects carol, flushed while it was away: %+v", rep.Verdict)
		}
	})
	f.noViolations()
}

// noViolations fails the test if a process hit a permission violation:
// every one runs as its role and must need nothing it was not given.
func (f *fleet) noViolations() {
	logs, _ := filepath.Glob(filepath.Join(f.dir, "*.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if strings.Contains(string(b), "Permissions Violation") || strings.Contains(string(b), "permissions violation") {
			f.t.Errorf("%s hit a permission violation:\n%s", filepath.Base(l), b)
		}
	}
}

// TestRegionCutOff cuts every route of one region (its server and
// services stay up, so its ingest sees no disconnect): within FenceAfter
// it stops rejecting from its cache, a flush made meanwhile names it and
// it rejects nothing the flush removed; the operator sees it in
// calloutctl and the console. With CALLOUT_REGIONS_MEND=1 (make soak) the
// routes are mended and the region must apply the flush and answer from
// its cache again: how long its server takes to be back in the cluster's
// JetStream varies from seconds to two minutes here.
func TestRegionCutOff(t *testing.T) {
	var known sync.Map
	dest := destination(t, smtptest.Config{Rcpt: func(from, to string) string {
		if _, ok := known.Load(strings.ToLower(to)); ok || strings.HasPrefix(to, "postmaster@") {
			return "250 2.1.5 Ok"
		}
		return "550 5.1.1 User unknown"
	}})
	f := startFleet(t)
	f.setPolicy("example.org", domains.Policy{Route: []string{dest.Addr()}}, f.regions...)
	t.Run("a region cut off fences its cached rejects; back, it applies what it missed", func(t *testing.T) {
		for _, r := range f.regions {
			f.waitRegion(r)
		}
		for _, r := range f.regions {
			f.verify(r, "erin@example.org")
			f.verify(r, "frank@example.org")
		}
		for _, r := range f.regions {
			f.waitCached(r, "erin@example.org")
			f.waitCached(r, "frank@example.org")
		}
		// Before the cut, c answers its cached rejects.
		waitFor(t, 30*time.Second, func() bool {
			rep := f.verify("c", "frank@example.org")
			return rep.Decision.Action == verdict.Reject && rep.Verdict.Source == verdict.SourceCache
		})
		cutAt := time.Now()
		f.cut("c", true)
		// c keeps its server and its services, so its ingest sees no
		// disconnect; within FenceAfter it stops rejecting from its cache.
		waitFor(t, 15*time.Second, func() bool {
			rep := f.verify("c", "frank@example.org")
			return rep.Decision.Action == verdict.Defer && rep.Verdict.Reason == verdict.ReasonUnconfirmed
		})
		t.Logf("region c fenced its cached rejects %v after the cut", time.Since(cutAt).Round(time.Millisecond))
		// The operator sees it: c not heard from a's side.
		// (Right after the cut the replicated streams may be electing
		// leaders: the operator's tool is told so and tries again.)
		// (Right after the cut, a's view of the flush log may still be
		// settling: "applying", its lag unknown; it is asked again.)
		var out string
		cutOff, aUp := regexp.MustCompile(`(?m)^c\s+not heard`), regexp.MustCompile(`(?m)^a\s+up\s+applied\s+\S+\s+\S+\s+1\s+1`)
		ok := false
		deadline := time.Now().Add(30 * time.Second)
		for !ok && time.Now().Before(deadline) {
			var err error
			out, err = f.tryCalloutctl("a", "regions")
			ok = err == nil && cutOff.MatchString(out) && aUp.MatchString(out)
			if !ok {
				time.Sleep(500 * time.Millisecond)
			}
		}
		if !ok {
			t.Fatalf("calloutctl regions with c cut off:\n%s", out)
		}
		t.Logf("calloutctl regions with c cut off:\n%s", out)
		// And the console, connected in region a.
		con := &system{t: t, dir: f.dir, url: f.urls["a"]}
		base := con.startConsole("admin-pw", "viewer-pw", "CALLOUT_CONSOLE_NATS_REGION=a",
			"CALLOUT_CONSOLE_NATS_USER=console", "CALLOUT_CONSOLE_NATS_PASSWORD=console-dev-password", "CALLOUT_CONSOLE_NATS_INBOX_PREFIX=_INBOX_console",
			"CALLOUT_CONSOLE_VIEWER_NATS_USER=viewer", "CALLOUT_CONSOLE_VIEWER_NATS_PASSWORD=viewer-dev-password")
		var regions []operate.RegionStatus
		waitFor(t, 30*time.Second, func() bool {
			st, b := consoleCall(t, http.DefaultClient, "", "GET", base+"/api/regions", "")
			return st == http.StatusOK && json.Unmarshal([]byte(b), &regions) == nil && len(regions) == 3
		})
		if regions[2].Region != "c" || regions[2].Heard || !regions[0].Heard || regions[0].Instances["callout-ingest"] != 1 {
			t.Fatalf("the console's regions with c cut off: %+v", regions)
		}
		hc, csrf := consoleLogin(t, base, "admin", "admin-pw")
		if st, b := consoleCall(t, hc, csrf, "GET", base+"/destinations", ""); st != http.StatusOK || !strings.Contains(b, `<tr data-region="c"><td>c</td><td class="down">`) {
			t.Fatalf("destinations page with c cut off: %d %s", st, b)
		}
		known.Store("erin@example.org", true)
		rep, err := f.flushAddress(t, "erin@example.org")
		if err != nil || !slices.Equal(rep.UnconfirmedRegions, []string{"c"}) || !slices.Equal(rep.Regions, []string{"a", "b"}) {
			t.Fatalf("flush with c cut off: %+v %v", rep, err)
		}
		if rep := f.verify("c", "erin@example.org"); rep.Decision.Action == verdict.Reject {
			t.Fatalf("c, cut off, rejects erin after the flush was answered: %+v", rep.Verdict)
		}
		// Mended: c applies the flush it missed, then answers again: erin
		// by a new callout, never the flushed reject; frank (not flushed)
		// rejected from its cache again. How long c's server takes to be
		// back in the cluster's JetStream varies from seconds to two
		// minutes here, so this part runs in make soak
		// (CALLOUT_REGIONS_MEND=1); a region coming back with the flushes
		// it missed is proven in TestRegions for a restarted one.
		if os.Getenv("CALLOUT_REGIONS_MEND") == "" {
			return
		}
		mended := time.Now()
		f.cut("c", false)
		waitFor(t, 5*time.Minute, func() bool {
			rep := f.verify("c", "erin@example.org")
			if rep.Decision.Action == verdict.Reject {
				t.Fatalf("c, mended, rejects erin, flushed while it was cut off: %+v", rep.Verdict)
			}
			return rep.Decision.Action == verdict.Accept
		})
		waitFor(t, 60*time.Second, func() bool {
			rep := f.verify("c", "frank@example.org")
			return rep.Decision.Action == verdict.Reject && rep.Verdict.Source == verdict.SourceCache
		})
		t.Logf("region c answers from its cache again %v after the routes were mended", time.Since(mended).Round(time.Millisecond))
		op, _ := operate.New(f.conns["a"], subjects.New(""))
		var status []operate.RegionStatus
		waitFor(t, 20*time.Second, func() bool {
			status, _ = op.RegionStatuses(context.Background(), time.Second)
			for _, st := range status {
				if !st.Heard || !st.CaughtUp || st.VerdictLag != 0 || st.FlushLag != 0 || st.Instances["callout-ingest"] != 1 {
					return false
				}
			}
			return len(status) == 3
		})
		t.Logf("regions after mending: %+v", status)
	})

	f.noViolations()
}
