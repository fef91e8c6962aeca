// Package dnstest runs an authoritative DNS server on loopback for tests:
// never real DNS. Names under "fail." answer SERVFAIL; names under "slow."
// never answer; unknown names are NXDOMAIN.
package dnstest

import (
	"net"
	"testing"

	"github.com/miekg/dns"
)

// Start serves records (zone-file lines such as "a.example. 60 IN MX 10 mx.a.example.")
// and returns the server's host:port.
func Start(t testing.TB, records ...string) string {
	t.Helper()
	zone := map[string][]dns.RR{}
	for _, r := range records {
		rr, err := dns.NewRR(r)
		if err != nil {
			t.Fatalf("record %q: %v", r, err)
		}
		zone[rr.Header().Name] = append(zone[rr.Header().Name], rr)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		m.Authoritative = true
		name := q.Question[0].Name
		switch {
		case dns.IsSubDomain("slow.", name):
			return
		case dns.IsSubDomain("fail.", name):
			m.Rcode = dns.RcodeServerFailure
		default:
			rrs, ok := zone[name]
			if !ok {
				m.Rcode = dns.RcodeNameError
			}
			for _, rr := range rrs {
				if rr.Header().Rrtype == q.Question[0].Qtype {
					m.Answer = append(m.Answer, rr)
				}
			}
		}
		_ = w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: h}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}
