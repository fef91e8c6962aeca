package main

// Sections 7 and 8: the MTAs' own paths to the ingest. Postfix asks over
// the policy delegation protocol on persistent connections; Exim's
// ${readsocket} opens one connection per request, writes it, half-closes
// and reads the answer. Each is measured against a bare server in this
// process with the same framing (read a request to its empty line, answer
// action=DUNNO), which is the ceiling of the path.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"
)

// postfixRequest is what Postfix 3.7 sends at RCPT time: about thirty
// attributes, most of them empty for a plain SMTP client.
func postfixRequest(rcpt string, i int) string {
	var b strings.Builder
	for _, kv := range [][2]string{
		{"request", "smtpd_access_policy"}, {"protocol_state", "RCPT"}, {"protocol_name", "ESMTP"},
		{"client_address", "192.0.2.10"}, {"client_name", "mail.sender.example"}, {"client_port", "52001"},
		{"reverse_client_name", "mail.sender.example"}, {"server_address", "127.0.0.1"}, {"server_port", "25"},
		{"helo_name", "mail.sender.example"}, {"sender", "someone@sender.example"}, {"recipient", rcpt},
		{"recipient_count", "0"}, {"queue_id", ""}, {"instance", fmt.Sprintf("1a2b.6534e0f1.%x.0", i)},
		{"size", "0"}, {"etrn_domain", ""}, {"stress", ""}, {"sasl_method", ""}, {"sasl_username", ""},
		{"sasl_sender", ""}, {"ccert_subject", ""}, {"ccert_issuer", ""}, {"ccert_fingerprint", ""},
		{"ccert_pubkey_fingerprint", ""}, {"encryption_protocol", "TLSv1.3"}, {"encryption_cipher", "TLS_AES_256_GCM_SHA384"},
		{"encryption_keysize", "256"}, {"policy_context", ""}, {"compatibility_level", "3.6"}, {"mail_version", "3.7.11"},
	} {
		b.WriteString(kv[0] + "=" + kv[1] + "\n")
	}
	b.WriteString("\n")
	return b.String()
}

// readAnswer reads one policy answer (lines up to an empty one).
func readAnswer(r *bufio.Reader) (string, error) {
	var first string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			return first, nil
		}
		if first == "" {
			first = line
		}
	}
}

// policyEcho is the ceiling: a server that reads requests to their empty
// line and answers action=DUNNO, on persistent connections or one per
// request.
func policyEcho() (net.Listener, error) {
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
			go func() {
				defer c.Close()
				r := bufio.NewReaderSize(c, 4096)
				for {
					for {
						line, err := r.ReadSlice('\n')
						if err != nil {
							return
						}
						if len(bytes.TrimRight(line, "\r\n")) == 0 {
							break
						}
					}
					if _, err := io.WriteString(c, "action=DUNNO\n\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln, nil
}

// 7, 8 and 7m. Cache hits over the policy protocol (persistent
// connections), in Exim's pattern (a connection per request) and over
// the milter protocol, each against a bare server with the same framing.
func (b *bench) mtaPaths() error {
	addrs, done, err := b.cachedAddrs("mta.bench", 1000)
	if err != nil {
		return err
	}
	defer func() { _ = done() }()
	echo, err := policyEcho()
	if err != nil {
		return err
	}
	defer echo.Close()
	for _, c := range []int{16, 64} {
		if err := b.policyPersistent(c, addrs, echo.Addr().String()); err != nil {
			return err
		}
	}
	for _, c := range []int{1, 16} {
		if err := b.policyPerRequest(c, addrs, echo.Addr().String()); err != nil {
			return err
		}
	}
	mecho, stop, err := milterEcho()
	if err != nil {
		return err
	}
	defer stop()
	for _, c := range []int{16, 64} {
		if err := b.milterPersistent(c, addrs, mecho.Addr().String()); err != nil {
			return err
		}
	}
	return nil
}

// persistentLoad is c workers, each on its own connection to addr, asking
// for the cached addresses in turn for d.
func persistentLoad(c int, d time.Duration, addr string, addrs []string, n *atomic.Int64) (float64, latencies, error) {
	conns := make([]net.Conn, c)
	readers := make([]*bufio.Reader, c)
	for i := range conns {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return 0, nil, err
		}
		defer conn.Close()
		conns[i], readers[i] = conn, bufio.NewReader(conn)
	}
	return load(c, d, func(w, i int) error {
		n.Add(1)
		if _, err := io.WriteString(conns[w], postfixRequest(addrs[(w*7919+i)%len(addrs)], i)); err != nil {
			return err
		}
		a, err := readAnswer(readers[w])
		if err == nil && a != "action=DUNNO" {
			err = fmt.Errorf("answer %q for a cached valid address", a)
		}
		return err
	})
}

// measurePath runs ask from c requesters against the ingest's address
// (profiled, its CPU counted), then against the bare server's, and
// records the path's rows.
func (b *bench) measurePath(sec, profile string, c int, ingest, echo string, ask func(addr string, n *atomic.Int64) (float64, latencies, error)) error {
	var n, en atomic.Int64
	profiled := b.profile(fmt.Sprintf("%s%d", profile, c), 2*time.Second)
	cpu0 := b.cpuTicks()
	rate, lat, err := ask(ingest, &n)
	cpu1 := b.cpuTicks()
	profiled()
	if err != nil {
		return err
	}
	erate, elat, err := ask(echo, &en)
	if err != nil {
		return err
	}
	b.pathRows(sec, fmt.Sprintf("c=%d ", c), rate, lat, erate, elat, cpu0, cpu1, n.Load())
	return nil
}

func (b *bench) policyPersistent(c int, addrs []string, echo string) error {
	return b.measurePath("7 policy", "policy", c, b.policyAddr, echo, func(addr string, n *atomic.Int64) (float64, latencies, error) {
		return persistentLoad(c, 3*time.Second, addr, addrs, n)
	})
}

// perRequest is Exim's readsocket: connect, write, half-close, read to
// EOF, close.
func perRequest(addr, req string) (string, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		return "", err
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	data, err := io.ReadAll(conn)
	if err != nil {
		return "", err
	}
	first, _, _ := strings.Cut(string(data), "\n")
	return first, nil
}

func (b *bench) policyPerRequest(c int, addrs []string, echo string) error {
	ask := func(addr string, n *atomic.Int64) (float64, latencies, error) {
		return load(c, 3*time.Second, func(w, i int) error {
			n.Add(1)
			// The shipped Exim ACL's request.
			req := "request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=" + addrs[(w*7919+i)%len(addrs)] +
				"\nsender=someone@sender.example\nclient_address=192.0.2.10\ncallout_timeout=25s\ncallout_text=full\n\n"
			a, err := perRequest(addr, req)
			if err == nil && a != "action=DUNNO" {
				err = fmt.Errorf("answer %q for a cached valid address", a)
			}
			return err
		})
	}
	return b.measurePath("8 readsocket", "readsocket", c, b.policyAddr, echo, ask)
}

// pathRows records one path's figures against its ceiling.
func (b *bench) pathRows(sec, p string, rate float64, lat latencies, erate float64, elat latencies, cpu0, cpu1 cpuSample, n int64) {
	b.add(sec, p+"hit rate", rate, "req/s")
	b.add(sec, p+"hit p50", ms(lat.pct(50)), "ms")
	b.add(sec, p+"hit p99", ms(lat.pct(99)), "ms")
	b.add(sec, p+"bare server rate (ceiling)", erate, "req/s")
	b.add(sec, p+"bare server p50", ms(elat.pct(50)), "ms")
	b.add(sec, p+"bare server p99", ms(elat.pct(99)), "ms")
	b.add(sec, p+"hit/bare rate ratio", rate/erate, "")
	if n > 0 {
		b.add(sec, p+"CPU per request, ingest", (cpu1.procs["ingest"]-cpu0.procs["ingest"])/100/float64(n)*1e6, "µs")
		b.add(sec, p+"CPU per request, all processes", cpu1.procsSince(cpu0)/100/float64(n)*1e6, "µs")
	}
}
