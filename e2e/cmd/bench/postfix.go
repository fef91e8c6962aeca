package main

// Section 9: through a real Postfix. The same cached recipients asked of
// three front-end Postfix instances: no recipient check (the ceiling),
// Postfix's own reject_unverified_recipient (verify(8), its cache warmed),
// and check_policy_service to the ingest, taking turns three times.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"github.com/callout-mail/callout/e2e/postfix"
)

// smtpSession is one client session of the load: MAIL FROM, then RCPT TO
// one at a time, RSET every perMail recipients; never DATA.
type smtpSession struct {
	c       net.Conn
	r       *bufio.Reader
	inMail  int
	perMail int
}

func dialSMTP(addr string, perMail int) (*smtpSession, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &smtpSession{c: c, r: bufio.NewReader(c), perMail: perMail}
	if _, err := s.reply(); err != nil { // banner
		c.Close()
		return nil, err
	}
	if _, err := s.cmd("EHLO load.bench"); err != nil {
		c.Close()
		return nil, err
	}
	return s, nil
}

// reply reads one reply (its last line).
func (s *smtpSession) reply() (string, error) {
	_ = s.c.SetReadDeadline(time.Now().Add(90 * time.Second))
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return "", err
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n"), nil
		}
	}
}

func (s *smtpSession) cmd(line string) (string, error) {
	if _, err := s.c.Write([]byte(line + "\r\n")); err != nil {
		return "", err
	}
	return s.reply()
}

// rcpt asks for one recipient, in a transaction of its own every perMail.
func (s *smtpSession) rcpt(addr string) (string, error) {
	if s.inMail == s.perMail {
		if _, err := s.cmd("RSET"); err != nil {
			return "", err
		}
		s.inMail = 0
	}
	if s.inMail == 0 {
		if r, err := s.cmd("MAIL FROM:<someone@sender.example>"); err != nil || !strings.HasPrefix(r, "250") {
			return r, fmt.Errorf("MAIL FROM: %q %v", r, err)
		}
	}
	s.inMail++
	return s.cmd("RCPT TO:<" + addr + ">")
}

func (s *smtpSession) close() {
	_, _ = s.cmd("QUIT")
	s.c.Close()
}

// havePostfix says why the section cannot run, if it cannot.
func havePostfix() error {
	if os.Geteuid() != 0 {
		return errors.New("not root: Postfix runs its daemons as its own user")
	}
	if _, err := exec.LookPath("postfix"); err == nil {
		return nil
	}
	out, err := exec.Command("bash", "-c", "apt-get install -y -q postfix >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix)").CombinedOutput()
	if err != nil {
		return fmt.Errorf("cannot install postfix: %v %s", err, out)
	}
	return nil
}

// 9. Through a real Postfix.
func (b *bench) throughPostfix(reps int) error {
	if err := havePostfix(); err != nil {
		fmt.Fprintf(os.Stderr, "\nbench: SECTION 9 (through a real Postfix) SKIPPED: %v\n\n", err)
		b.add("9 postfix", "SKIPPED", 1, "")
		return nil
	}
	const domain = "mta.bench"
	known, done, err := b.cachedAddrs(domain, 1000)
	if err != nil {
		return err
	}
	defer func() { _ = done() }()
	// Unknown recipients, cached invalid, for the dictionary mix.
	var unknown []string
	for i := 3; len(unknown) < 300; i += 3 {
		unknown = append(unknown, fmt.Sprintf("u%d@%s", i, domain))
	}
	for _, a := range unknown {
		if _, err := b.verify(a, 30*time.Second); err != nil {
			return err
		}
	}
	if err := b.waitCached(unknown); err != nil {
		return err
	}
	dest, err := mailDest(func(string) bool { return false })
	if err != nil {
		return err
	}
	defer dest.Close()
	host, port, _ := net.SplitHostPort(dest.Addr())
	transport := map[string]string{"transport": domain + " smtp:[" + host + "]:" + port + "\n"}
	// Two ingests for this section alone, alike but for the decision
	// log, started and warmed the same way: what recording every
	// decision costs on the MTA's path, with nothing else between them
	// (the bench's own ingest has served every section before).
	warm := append(append([]string(nil), known...), unknown...)
	onAddr, err := b.sectionIngest(logOnIngest, warm)
	if err != nil {
		return err
	}
	defer b.stopProc(logOnIngest)
	offAddr, err := b.sectionIngest(logOffIngest, warm, "CALLOUT_INGEST_DECISION_LOG=false")
	if err != nil {
		return err
	}
	defer b.stopProc(logOffIngest)
	setups := []struct{ name, check, ingest string }{
		{"no check", "", ""},
		{"verify(8)", ", reject_unverified_recipient", ""},
		{"callout", ", check_policy_service inet:" + onAddr, logOnIngest},
		{"callout, log off", ", check_policy_service inet:" + offAddr, logOffIngest},
	}
	inst := map[string]*postfix.Instance{}
	for _, su := range setups {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		p, err := postfix.Start(ctx, "bench-main.cf", fmt.Sprintf("127.0.0.1:%d", freePort()), map[string]string{"Domain": domain, "Check": su.check}, transport)
		cancel()
		if err != nil {
			return err
		}
		defer p.Stop()
		inst[su.name] = p
	}
	if err := warmVerify(inst["verify(8)"].Addr, warm); err != nil {
		return fmt.Errorf("%w; its log's last distinct deferrals, warnings and errors:\n%s", err, deferrals(inst["verify(8)"].Dir+"/maillog", 20))
	}
	for _, mix := range []struct {
		name    string
		unknown int // in ten
	}{{"known", 0}, {"30% unknown", 3}} {
		for r := 0; r < reps; r++ {
			got := map[string]postfixResult{}
			// Every other repetition takes the set-ups the other way
			// round: on a host whose speed drifts, none is always measured
			// after another.
			for k := range setups {
				su := setups[k]
				if r%2 == 1 {
					su = setups[len(setups)-1-k]
				}
				res, err := b.postfixLoad(inst[su.name], su.name, su.ingest, mix.name, mix.unknown, known, unknown)
				if err != nil {
					return fmt.Errorf("%s, %s: %w", su.name, mix.name, err)
				}
				got[su.name] = res
			}
			c, v, none, off := got["callout"], got["verify(8)"], got["no check"], got["callout, log off"]
			pre := mix.name + ": "
			b.add("9 postfix", pre+"callout/verify(8) rate ratio", c.rate/v.rate, "")
			b.add("9 postfix", pre+"callout/no check rate ratio", c.rate/none.rate, "")
			b.add("9 postfix", pre+"callout/verify(8) p99 ratio", c.p99/v.p99, "")
			b.add("9 postfix", pre+"callout/verify(8) CPU per RCPT ratio", (c.postfixCPU+c.ingestCPU)/v.postfixCPU, "")
			b.add("9 postfix", pre+"callout log on/off rate ratio", c.rate/off.rate, "")
			b.add("9 postfix", pre+"callout log on/off p99 ratio", c.p99/off.p99, "")
			b.add("9 postfix", pre+"callout log on/off CPU per RCPT ratio", (c.postfixCPU+c.ingestCPU)/(off.postfixCPU+off.ingestCPU), "")
			if c.machineCPU > 0 && off.machineCPU > 0 {
				// The log's whole cost: its store and index too.
				b.add("9 postfix", pre+"callout log on/off machine CPU per RCPT ratio", c.machineCPU/off.machineCPU, "")
			}
		}
	}
	return nil
}

// warmVerify asks verify(8) for every address until it answers from its
// cache: 250 for a known one, 550 for an unknown one.
func warmVerify(addr string, addrs []string) error {
	s, err := dialSMTP(addr, 1000)
	if err != nil {
		return err
	}
	defer s.close()
	deadline := time.Now().Add(5 * time.Minute)
	pending := addrs
	for len(pending) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("verify(8) still probing %d addresses", len(pending))
		}
		var next []string
		for _, a := range pending {
			r, err := s.rcpt(a)
			if err != nil {
				return err
			}
			if strings.HasPrefix(r, "4") {
				next = append(next, a) // probe in progress
			}
		}
		pending = next
		if len(pending) > 0 {
			time.Sleep(time.Second)
		}
	}
	return nil
}

// deferrals is the last n distinct lines of a Postfix log that say why
// a probe has not finished: deferred deliveries, warnings, and the fatal
// errors and panics of the daemons behind them (a warning that cleanup
// failed says only "Application error"; cleanup's own line says why).
func deferrals(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	seen := map[string]bool{}
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.Contains(l, "status=deferred") && !strings.Contains(l, "warning") && !strings.Contains(l, "fatal") && !strings.Contains(l, "panic") && !strings.Contains(l, "error") {
			continue
		}
		// The same message from the same daemon once: the text after
		// "postfix/<daemon>[pid]: ".
		key := l
		if i := strings.Index(l, "]: "); i >= 0 {
			key = l[i:]
		}
		if !seen[key] {
			seen[key] = true
			lines = append(lines, l)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// postfixResult is one load's figures.
type postfixResult struct {
	rate, p99             float64
	postfixCPU, ingestCPU float64 // µs per RCPT
	// nats-server's and the cachekeeper's (the decision log's store and
	// index), and the whole machine's, µs per RCPT.
	storeCPU, machineCPU float64
}

// postfixLoad runs 16 sessions against one instance for 3 s; unknown in
// ten recipients are unknown ones (cached invalid). ingest names the
// ingest process the instance asks ("" for none).
func (b *bench) postfixLoad(p *postfix.Instance, setup, ingest, mix string, unknownIn10 int, known, unknown []string) (postfixResult, error) {
	const sessions, perMail = 16, 50
	var ss []*smtpSession
	for i := 0; i < sessions; i++ {
		s, err := dialSMTP(p.Addr, perMail)
		if err != nil {
			return postfixResult{}, err
		}
		defer s.close()
		ss = append(ss, s)
	}
	var n, wrong atomic.Int64
	profiled := func() {}
	switch setup {
	case "callout":
		profiled = b.profile("postfix-"+strings.ReplaceAll(mix, " ", ""), 2*time.Second)
	case "callout, log off":
		profiled = b.profile("postfix-"+strings.ReplaceAll(mix, " ", "")+"-logoff", 2*time.Second)
	}
	pcpu0, _ := p.CPUTicks()
	cpu0 := b.cpuTicks()
	rate, lat, err := load(sessions, 3*time.Second, func(w, i int) error {
		n.Add(1)
		a, bad := known[(w*7919+i)%len(known)], i%10 < unknownIn10
		if bad {
			a = unknown[(w*31+i)%len(unknown)]
		}
		r, err := ss[w].rcpt(a)
		if err != nil {
			return err
		}
		want := "250"
		if bad && setup != "no check" {
			want = "550" // also mid-run: a cached reject still rejects
		}
		if !strings.HasPrefix(r, want) {
			wrong.Add(1)
		}
		return nil
	})
	cpu1 := b.cpuTicks()
	pcpu1, _ := p.CPUTicks()
	profiled()
	if err != nil {
		return postfixResult{}, err
	}
	if k := wrong.Load(); k > 0 {
		return postfixResult{}, fmt.Errorf("%d of %d RCPTs got the wrong answer", k, n.Load())
	}
	res := postfixResult{rate: rate, p99: ms(lat.pct(99))}
	if k := float64(n.Load()); k > 0 {
		// Clock ticks (100 a second) to µs per RCPT.
		perRCPT := func(ticks float64) float64 { return ticks / 100 / k * 1e6 }
		proc := func(name string) float64 { return cpu1.procs[name] - cpu0.procs[name] }
		res.postfixCPU = perRCPT(pcpu1 - pcpu0)
		res.ingestCPU = perRCPT(proc(ingest))
		res.storeCPU = perRCPT(proc("nats-server") + proc("cachekeeper"))
		if cpu0.machine && cpu1.machine {
			res.machineCPU = perRCPT(cpu1.busy - cpu0.busy)
		}
	}
	sec, pre := "9 postfix", mix+", "+setup+": "
	b.add(sec, pre+"RCPT rate", rate, "RCPT/s")
	b.add(sec, pre+"RCPT p50", ms(lat.pct(50)), "ms")
	b.add(sec, pre+"RCPT p99", res.p99, "ms")
	b.add(sec, pre+"CPU per RCPT, Postfix", res.postfixCPU, "µs")
	if ingest != "" {
		b.add(sec, pre+"CPU per RCPT, ingest", res.ingestCPU, "µs")
		b.add(sec, pre+"CPU per RCPT, nats-server and cachekeeper", res.storeCPU, "µs")
	}
	if res.machineCPU > 0 {
		b.add(sec, pre+"CPU per RCPT, machine", res.machineCPU, "µs")
	}
	return res, nil
}

// The Postfix section's ingests: the decision log at its setting (on by
// default) and off.
const (
	logOnIngest  = "ingest-log-on"
	logOffIngest = "ingest-log-off"
)

// sectionIngest starts an ingest of the Postfix section with extra
// settings and warms its near cache with addrs over its policy listener,
// whose address it returns.
func (b *bench) sectionIngest(name string, addrs []string, env ...string) (string, error) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort())
	if err := b.launch(name, "ingest", ingestSettings(addr, fmt.Sprintf("127.0.0.1:%d", freePort()), env...)...); err != nil {
		return "", err
	}
	var c net.Conn
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	for i, a := range addrs {
		if _, err := io.WriteString(c, postfixRequest(a, i)); err != nil {
			return "", err
		}
		if ans, err := readAnswer(r); err != nil || !strings.HasPrefix(ans, "action=") {
			return "", fmt.Errorf("%s warming %s: %q, %v", name, a, ans, err)
		}
	}
	return addr, nil
}

// stopProc stops a process the bench started for one section.
func (b *bench) stopProc(name string) {
	if p := b.procs[name]; p != nil {
		_ = p.Stop(10 * time.Second)
		delete(b.procs, name)
	}
}
