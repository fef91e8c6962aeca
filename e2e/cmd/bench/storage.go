package main

// Section 4: storage, memory and flushes at a million entries.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	_ "net/http/pprof"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

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
