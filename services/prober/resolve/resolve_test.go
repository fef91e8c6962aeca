package resolve

import (
	"context"
	"errors"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startDNS runs an authoritative server on loopback with the given zone
// data. Names under "fail." answer SERVFAIL; "slow." never answers.
func startDNS(t *testing.T, records map[string][]dns.RR) string {
	t.Helper()
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
			rrs, ok := records[name]
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

func rr(t *testing.T, s string) dns.RR {
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestMX(t *testing.T) {
	addr := startDNS(t, map[string][]dns.RR{
		"mx.example.":     {rr(t, "mx.example. 60 IN MX 20 b.mx.example."), rr(t, "mx.example. 60 IN MX 10 a.mx.example.")},
		"plain.example.":  {rr(t, "plain.example. 60 IN A 127.0.0.1")},
		"nullmx.example.": {rr(t, "nullmx.example. 60 IN MX 0 .")},
	})
	r := New(addr, 2525)
	r.Timeout = 2 * time.Second
	tests := []struct {
		domain string
		want   []string
		err    error
	}{
		{"mx.example", []string{"a.mx.example:2525", "b.mx.example:2525"}, nil},
		{"plain.example", []string{"plain.example:2525"}, nil},
		{"nullmx.example", nil, ErrNoMail},
		{"nxdomain.example", nil, ErrNoMail},
		{"x.fail", nil, ErrTemporary},
		{"x.slow", nil, ErrTemporary},
	}
	for _, tt := range tests {
		got, err := r.MX(context.Background(), tt.domain)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("%s: error %v, want %v", tt.domain, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: %v %v, want %v", tt.domain, got, err, tt.want)
		}
	}
}
