package main

// Section 12: the decision log: its cost at saturation and on disk, and
// (-only decisions-search) searches of a log of ten million records.

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/tools/stack"
)

// restartIngest starts the ingest again with extra settings.
func (b *bench) restartIngest(env ...string) error {
	if p := b.procs["ingest"]; p != nil {
		if err := p.Stop(10 * time.Second); err != nil {
			return err
		}
	}
	if err := b.launch("ingest", "ingest", ingestSettings(b.policyAddr, b.milterAddr, env...)...); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return stack.WaitService(ctx, b.nc, "callout-ingest")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// 12. Saturation with the log off and on (every decision recorded),
// alternated in the same run; the bytes a record takes on disk; records
// dropped.
func (b *bench) decisionLog(reps int) error {
	const sec = "12 decision log"
	st, err := b.js.Stream(context.Background(), b.names.DecisionStream())
	if err != nil {
		return err
	}
	info0, _ := st.Info(context.Background())
	var off, on []float64
	// Each process's CPU per verify, log off and on: where the log's
	// cost falls, steadier than the rates on a busy host.
	cpuOff, cpuOn := map[string][]float64{}, map[string][]float64{}
	for i := 0; i < reps; i++ {
		// Off, on, then on, off, ...: a host that slows down (or speeds
		// up) through the section does not always land on the second of
		// each pair.
		order := []bool{false, true}
		if i%2 == 1 {
			order = []bool{true, false}
		}
		for _, logOn := range order {
			if err := b.restartIngest("CALLOUT_INGEST_DECISION_LOG=" + strconv.FormatBool(logOn)); err != nil {
				return err
			}
			run, err := b.saturate(false)
			if err != nil {
				return err
			}
			name, cpu := "verifies/s, log off", cpuOff
			if logOn {
				name, cpu, on = "verifies/s, log on (every decision)", cpuOn, append(on, run.rate)
			} else {
				off = append(off, run.rate)
			}
			for p, v := range run.perCPU {
				cpu[p] = append(cpu[p], v)
			}
			b.add(sec, name, run.rate, "req/s")
		}
	}
	b.add(sec, "log on / log off (medians)", median(on)/median(off), "")
	procs := make([]string, 0, len(cpuOn))
	for p := range cpuOn {
		procs = append(procs, p)
	}
	slices.Sort(procs)
	allOff, allOn := 0.0, 0.0
	for _, p := range procs {
		mOff, mOn := median(cpuOff[p]), median(cpuOn[p])
		allOff, allOn = allOff+mOff, allOn+mOn
		b.add(sec, "CPU per verify "+p+", log off", mOff, "µs")
		b.add(sec, "CPU per verify "+p+", log on", mOn, "µs")
	}
	b.add(sec, "CPU per verify, all processes, log off (sum of medians)", allOff, "µs")
	b.add(sec, "CPU per verify, all processes, log on (sum of medians)", allOn, "µs")
	dropped := b.ingestCounterSum("callout_ingest_decisions_dropped_total")
	b.add(sec, "records dropped, last run with the log on", dropped, "")
	info, err := st.Info(context.Background())
	if err != nil {
		return err
	}
	var seqs []uint64
	for seq := info0.State.LastSeq + 1; seq <= info.State.LastSeq; seq++ {
		seqs = append(seqs, seq)
	}
	n := 0
	_ = decisions.StreamReader{NC: b.nc, Stream: b.names.DecisionStream()}.Messages(context.Background(), seqs, func(_ uint64, _ string, data []byte) {
		_ = decisions.DecodeBatch(data, func(int, *decisions.Record) bool { n++; return true })
	})
	if n > 0 {
		b.add(sec, "bytes per record on disk", float64(info.State.Bytes-info0.State.Bytes)/float64(n), "B")
		b.add(sec, "records in the runs with the log on", float64(n), "")
		b.add(sec, "records per message", float64(n)/float64(len(seqs)), "")
	}
	// The ingest as every other section has it.
	return b.restartIngest()
}

// ingestCounterSum sums a counter's series in the ingest's /metrics.
func (b *bench) ingestCounterSum(name string) float64 {
	resp, err := http.Get("http://" + b.metrics["ingest"] + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			f := strings.Fields(line)
			if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				sum += v
			}
		}
	}
	return sum
}

// decisionSearch (-only decisions-search): a log of n records over 7
// days (500 domains, 100,000 recipients, a quarter rejects, a quarter
// defers, batched as the ingests batch them),
// then searches through the cachekeeper as the console asks them: one
// recipient, one domain and action, a sender (bounded), and the index's
// build time and size when the cachekeeper starts on that log.
func (b *bench) decisionSearch(n int) error {
	const sec = "12s decision search"
	ctx := context.Background()
	st, err := b.js.Stream(ctx, b.names.DecisionStream())
	if err != nil {
		return err
	}
	// Room for the records: the default 2 GiB holds 8 days of a
	// 500,000-recipient-a-day site, not ten million records.
	cfg := st.CachedInfo().Config
	cfg.MaxBytes = 6 << 30 // the bench's server has 8 GB for JetStream
	if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
		return err
	}
	info0, _ := st.Info(ctx)
	start := time.Now().Add(-7 * 24 * time.Hour)
	js, err := jetstream.New(b.nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return err
	}
	t0 := time.Now()
	actions := []verdict.Action{verdict.Accept, verdict.Accept, verdict.Reject, verdict.Defer}
	reasons := map[verdict.Action]verdict.Reason{verdict.Accept: verdict.ReasonAccepted, verdict.Reject: verdict.ReasonUserUnknown, verdict.Defer: verdict.ReasonDeferred}
	rnd := rand.New(rand.NewPCG(27, 10))
	var probe decisions.Record // one record from the middle: the searches' subject
	// The records of one action within one second go in one message, as
	// the ingests' recorders batch them.
	type pending struct {
		buf    []byte
		n      int
		second int64
	}
	batches := map[verdict.Action]*pending{}
	send := func(a verdict.Action, p *pending) error {
		m := decisions.BatchMsg(b.names.Decision(string(a)), p.buf, p.n)
		for {
			_, err := js.PublishMsgAsync(m)
			if err == nil {
				return nil
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(30 * time.Second):
				return err
			}
		}
	}
	for i := 0; i < n; i++ {
		a := actions[rnd.IntN(len(actions))]
		u := rnd.IntN(100000)
		d := u % 500 // 100,000 recipients, 200 a domain
		rec := decisions.Record{
			At: start.Add(time.Duration(i) * 7 * 24 * time.Hour / time.Duration(n)), Instance: "bench/ingest", Via: decisions.ViaPolicy,
			Client: fmt.Sprintf("192.0.2.%d", i%250), Helo: "mx.sender.example", Sender: fmt.Sprintf("s%d@sender%d.example", i%1000, i%97),
			Recipient: fmt.Sprintf("user%d@d%d.bench", u, d), Purpose: verdict.Recipient, Action: a, Code: 250,
			Status: verdict.Valid, Reason: reasons[a], Source: verdict.SourceCache, TookUS: 120,
		}
		if a != verdict.Accept {
			rec.Code, rec.Enhanced, rec.Text, rec.Source = 550, "5.1.1", "<"+rec.Recipient+">: Recipient address rejected: User unknown", verdict.SourceProbe
			rec.Host, rec.DestCode, rec.DestText = "127.0.0.1:25", 550, "5.1.1 user unknown"
		}
		if i == n/2 || probe.Recipient == "" && a == verdict.Reject && i > n/2 {
			probe = rec
		}
		data, err := decisions.Encode(&rec)
		if err != nil {
			return err
		}
		p := batches[a]
		if p != nil && (p.second != rec.At.Unix() || p.n >= decisions.MaxBatch || len(p.buf)+len(data) > decisions.MaxBatchBytes) {
			if err := send(a, p); err != nil {
				return err
			}
			p = nil
		}
		if p == nil {
			p = &pending{second: rec.At.Unix()}
			batches[a] = p
		}
		p.buf, p.n = append(p.buf, data...), p.n+1
	}
	for a, p := range batches {
		if err := send(a, p); err != nil {
			return err
		}
	}
	<-js.PublishAsyncComplete()
	gen := time.Since(t0)
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	b.add(sec, "records written", float64(n), "")
	b.add(sec, "messages written (a second's records of one action each)", float64(info.State.Msgs-info0.State.Msgs), "")
	b.add(sec, "written per second", float64(n)/gen.Seconds(), "rec/s")
	b.add(sec, "bytes per record on disk", float64(info.State.Bytes-info0.State.Bytes)/float64(n), "B")
	// The cachekeeper starts on the whole log: its index is built from it.
	if err := b.procs["cachekeeper"].Stop(30 * time.Second); err != nil {
		return err
	}
	t1 := time.Now()
	if err := b.launch("cachekeeper", "cachekeeper", "CALLOUT_CACHEKEEPER_STORE_WORKERS=32"); err != nil {
		return err
	}
	op := &operate.Client{NC: b.nc, JS: b.js, Names: b.names}
	for {
		res, err := op.SearchDecisions(ctx, decisions.Query{Domain: "d1.bench", Limit: 1}, "")
		if err == nil && len(res.Indexing) == 0 && len(res.Unanswered) == 0 {
			break
		}
		if time.Since(t1) > 10*time.Minute {
			return fmt.Errorf("the cachekeeper did not index the log in 10 minutes")
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.add(sec, "index built at start (records in the log)", time.Since(t1).Seconds(), "s")
	b.add(sec, "cachekeeper RSS with the index", rssKB(b.procs["cachekeeper"].Pid())/1024, "MiB")
	// Each search three times: the first reads blocks no search read
	// before (cold), the others find them in the server's cache.
	timeIt := func(name string, q decisions.Query) error {
		var first, rest time.Duration
		var got int
		for i := 0; i < 3; i++ {
			t := time.Now()
			res, err := op.SearchDecisions(ctx, q, "")
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if d := time.Since(t); i == 0 {
				first = d
			} else {
				rest = max(rest, d)
			}
			got = len(res.Records)
		}
		b.add(sec, name+" (first)", first.Seconds(), "s")
		b.add(sec, name+" (again)", rest.Seconds(), "s")
		b.add(sec, name+": records on the page", float64(got), "")
		return nil
	}
	other := probe
	other.Recipient = fmt.Sprintf("user%d@%s", (probeUser(probe.Recipient)+500)%100000, probe.Domain()) // the same domain
	if err := timeIt("one recipient, 7 days, every record", decisions.Query{Recipient: probe.Recipient, Limit: decisions.MaxLimit}); err != nil {
		return err
	}
	if err := timeIt("another recipient, 7 days, every record", decisions.Query{Recipient: other.Recipient, Limit: decisions.MaxLimit}); err != nil {
		return err
	}
	if err := timeIt("one domain and action, newest 50", decisions.Query{Domain: probe.Domain(), Action: verdict.Reject}); err != nil {
		return err
	}
	if err := timeIt("one domain, a sender (read bounded)", decisions.Query{Domain: probe.Domain(), Sender: probe.Sender}); err != nil {
		return err
	}
	_, err = op.SearchDecisions(ctx, decisions.Query{Sender: probe.Sender}, "")
	b.add(sec, "a sender alone over 10 million: refused (narrow the search)", boolFloat(err != nil && strings.Contains(err.Error(), "narrow")), "")
	return nil
}

// probeUser is the number of a generated recipient (user<N>@...).
func probeUser(addr string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(addr[:strings.IndexByte(addr, '@')], "user"))
	return n
}

func boolFloat(v bool) float64 {
	if v {
		return 1
	}
	return 0
}
