package main

// Section 3: the callout economy.

import (
	"fmt"
	"math/rand"
	_ "net/http/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/wire"
)

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
