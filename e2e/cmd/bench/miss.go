package main

// Section 2: a miss against a plain SMTP dialogue.

import (
	"bufio"
	"fmt"
	"net"
	_ "net/http/pprof"
	"sort"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

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

// misses times n verifies of new addresses u<i>@domain that exist (i not
// a multiple of 3, see mailDest), each against the same dialogue done
// directly with the destination: both sorted.
func misses(n int, domain, dest string, verify func(addr string) (wire.VerifyReply, error)) (lv, ld latencies, err error) {
	for i := 2; len(lv) < n; i++ {
		if i%3 == 0 {
			continue
		}
		a := fmt.Sprintf("u%d@%s", i, domain)
		t0 := time.Now()
		rep, err := verify(a)
		if err != nil || rep.Verdict == nil || rep.Verdict.Source != verdict.SourceProbe {
			return nil, nil, fmt.Errorf("miss %s: %v", a, err)
		}
		lv = append(lv, time.Since(t0))
		t0 = time.Now()
		if err := plainDialogue(dest, a); err != nil {
			return nil, nil, err
		}
		ld = append(ld, time.Since(t0))
	}
	sort.Slice(lv, func(i, j int) bool { return lv[i] < lv[j] })
	sort.Slice(ld, func(i, j int) bool { return ld[i] < ld[j] })
	return lv, ld, nil
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
	profiled := b.profile("miss", time.Second)
	defer profiled()
	lv, ld, err := misses(300, "miss.bench", dest.Addr(), func(a string) (wire.VerifyReply, error) { return b.verify(a, 30*time.Second) })
	if err != nil {
		return err
	}
	b.add("2 miss", "verify of a new address p50", ms(lv.pct(50)), "ms")
	b.add("2 miss", "verify of a new address p99", ms(lv.pct(99)), "ms")
	b.add("2 miss", "direct SMTP dialogue p50", ms(ld.pct(50)), "ms")
	b.add("2 miss", "direct SMTP dialogue p99", ms(ld.pct(99)), "ms")
	b.add("2 miss", "overhead p50", ms(lv.pct(50)-ld.pct(50)), "ms")
	return b.flushAll()
}
