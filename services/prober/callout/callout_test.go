package callout

import (
	"bufio"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

var secret = []byte("test-secret")

func server(t *testing.T, cfg smtptest.Config) *smtptest.Server {
	t.Helper()
	return smtptest.Run(t, cfg)
}

func verifier(dcfg destination.Config) *Verifier {
	if dcfg.MaxConns == 0 {
		dcfg.MaxConns = 2
	}
	if dcfg.Rate == 0 {
		dcfg.Rate = 1000
	}
	return New(Config{
		SMTP:         smtpprobe.Config{ConnectTimeout: time.Second, BannerTimeout: time.Second, CommandTimeout: time.Second, HeloName: "verifier.test"},
		RandomSecret: secret,
	}, destination.NewPool(dcfg, nil))
}

func addr(t *testing.T, s string) address.Address {
	t.Helper()
	a, err := address.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func fact(r Result, name string) *verdict.Verdict {
	for i := range r.Facts {
		if r.Facts[i].Fact == name {
			return &r.Facts[i]
		}
	}
	return nil
}

// deadHost is a loopback address where nothing listens.
func deadHost(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().String()
	ln.Close()
	return a
}

func TestVerify(t *testing.T) {
	boxes := []string{"alice@example.org", "bob@example.org"}
	tests := []struct {
		name      string
		cfg       smtptest.Config
		target    Target
		status    verdict.Status
		reason    verdict.Reason
		catchAll  verdict.Status // "" when no catch-all fact is expected
		access    verdict.Reason // reason of the access fact, "" when none
		rcpts     int
		sender    string
		wantCode  int
		wantEnhcd string
	}{
		{name: "valid", cfg: smtptest.Config{Mailboxes: boxes},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.Valid, reason: "accepted", catchAll: verdict.NotCatchAll, rcpts: 2, wantCode: 250},
		{name: "invalid", cfg: smtptest.Config{Mailboxes: boxes},
			target: Target{Address: address.Address{Local: "nobody", Domain: "example.org"}},
			// The random address, nobody, then postmaster (the control
			// probe a user unknown needs).
			status: verdict.Invalid, reason: "user_unknown", catchAll: verdict.NotCatchAll, rcpts: 3, wantCode: 550, wantEnhcd: "5.1.1"},
		{name: "catch-all: no real RCPT", cfg: smtptest.Config{CatchAll: []string{"example.org"}},
			target: Target{Address: address.Address{Local: "anyone", Domain: "example.org"}},
			status: verdict.CatchAll, reason: verdict.ReasonRandomAccepted, catchAll: verdict.CatchAll, rcpts: 1, wantCode: 250},
		{name: "known not catch-all skips the random check", cfg: smtptest.Config{Mailboxes: boxes},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}, SkipRandom: true},
			status: verdict.Valid, reason: "accepted", rcpts: 1, wantCode: 250},
		{name: "greylisted random: the real one asked too, no domain fact", cfg: smtptest.Config{Rcpt: smtptest.Greylist(smtptest.Mailboxes(boxes, nil))},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.TempFail, reason: "temporary", rcpts: 2, wantCode: 450},
		{name: "throttled random: nothing more asked", cfg: smtptest.Config{Rcpt: func(_, _ string) string { return "451 4.7.500 Server busy, try again later" }},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.TempFail, reason: verdict.ReasonRandomDeferred, rcpts: 1, wantCode: 451},
		{name: "inconclusive random (524 5.2.4): the real one verified, no domain fact", cfg: smtptest.Config{Rcpt: func(_, to string) string {
			if to == "alice@example.org" {
				return "250 2.1.5 Ok"
			}
			if strings.HasPrefix(to, "nobody") {
				return "550 5.1.1 unknown"
			}
			return "524 5.2.4 Mailing list expansion problem"
		}},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.Valid, reason: "accepted", rcpts: 2, wantCode: 250},
		{name: "null sender refused", cfg: smtptest.Config{Mailboxes: boxes, Mail: func(f string) string {
			if f == "" {
				return "550 5.7.1 null sender not accepted here"
			}
			return "250 ok"
		}},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			// The RCPT pipelined with the refused MAIL went out (and got 503).
			status: verdict.Unverifiable, reason: verdict.ReasonNullSenderRejected, access: verdict.ReasonNullSenderRejected, rcpts: 1, wantCode: 550},
		{name: "null sender refused, no pipelining", cfg: smtptest.Config{Mailboxes: boxes, EHLO: "250-mx.test\r\n250 ENHANCEDSTATUSCODES", Mail: func(f string) string {
			if f == "" {
				return "550 5.7.1 null sender not accepted here"
			}
			return "250 ok"
		}},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.Unverifiable, reason: verdict.ReasonNullSenderRejected, access: verdict.ReasonNullSenderRejected, rcpts: 0, wantCode: 550},
		{name: "null sender refused, fallback sender used", cfg: smtptest.Config{Mailboxes: boxes, Mail: func(f string) string {
			if f == "" {
				return "550 5.7.1 null sender not accepted here"
			}
			return "250 ok"
		}},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}, FallbackSender: "verify@gw.test"},
			status: verdict.Valid, reason: "accepted", catchAll: verdict.NotCatchAll, access: verdict.ReasonNullSenderRejected, rcpts: 3, sender: "verify@gw.test", wantCode: 250},
		{name: "null sender refused at RCPT (smtpd_delay_reject), fallback sender used", cfg: smtptest.Config{Rcpt: func(from, to string) string {
			if from == "" {
				return "554 5.7.1 <>: Sender address rejected: Access denied"
			}
			return smtptest.Mailboxes(boxes, nil)(from, to)
		}},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}, FallbackSender: "verify@gw.test"},
			status: verdict.Valid, reason: "accepted", catchAll: verdict.NotCatchAll, access: verdict.ReasonNullSenderRejected, rcpts: 3, sender: "verify@gw.test", wantCode: 250},
		{name: "both senders refused at RCPT: the fallback's refusal is the fact", cfg: smtptest.Config{Rcpt: func(from, to string) string {
			return "553 5.1.8 <" + from + ">: Sender address rejected: Domain not found"
		}},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}, FallbackSender: "verify@gw.test"},
			status: verdict.Unverifiable, reason: verdict.ReasonSenderRejected, access: verdict.ReasonSenderRejected, rcpts: 2, sender: "verify@gw.test", wantCode: 553},
		{name: "5.7.1 block is unverifiable", cfg: smtptest.Config{Rcpt: func(_, _ string) string {
			return "550 5.7.1 Service unavailable; client host blocked using zen.spamhaus.org"
		}},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.Unverifiable, reason: "policy", rcpts: 2, wantCode: 550, wantEnhcd: "5.7.1"},
		{name: "554 banner is a domain fact", cfg: smtptest.Config{Banner: "554 5.7.1 go away"},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.Unverifiable, reason: verdict.ReasonRefusedBanner, access: verdict.ReasonRefusedBanner, rcpts: 0, wantCode: 554},
		{name: "421 banner is temporary", cfg: smtptest.Config{Banner: "421 4.3.2 busy"},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.TempFail, reason: verdict.ReasonDeferred, rcpts: 0, wantCode: 421},
		{name: "EHLO and HELO refused", cfg: smtptest.Config{EHLO: "550 5.7.1 not you", HELO: "550 5.7.1 not you either"},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.Unverifiable, reason: verdict.ReasonRefusedHelo, access: verdict.ReasonRefusedHelo, rcpts: 0},
		{name: "server drops the connection after an unknown recipient", cfg: smtptest.Config{Mailboxes: boxes, DropAfterUnknown: true},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.Valid, reason: "accepted", catchAll: verdict.NotCatchAll, rcpts: 2, wantCode: 250},
		{name: "one recipient per transaction", cfg: smtptest.Config{Mailboxes: boxes, OneRcptPerMail: true},
			target: Target{Address: address.Address{Local: "bob", Domain: "example.org"}},
			status: verdict.Valid, reason: "accepted", catchAll: verdict.NotCatchAll, rcpts: 2, wantCode: 250},
		{name: "252 cannot verify", cfg: smtptest.Config{Rcpt: func(_, to string) string {
			if to == "alice@example.org" {
				return "252 2.1.5 Cannot VRFY user"
			}
			return "550 5.1.1 unknown"
		}},
			target: Target{Address: address.Address{Local: "alice", Domain: "example.org"}},
			status: verdict.Unverifiable, reason: "cannot_verify", catchAll: verdict.NotCatchAll, rcpts: 2, wantCode: 252},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := server(t, tt.cfg)
			v := verifier(destination.Config{})
			tt.target.Hosts = []string{s.Addr()}
			r := v.Verify(context.Background(), tt.target)
			a := r.Address
			if a.Status != tt.status || a.Reason != tt.reason {
				t.Fatalf("verdict %s/%s (%d %s %q), want %s/%s", a.Status, a.Reason, a.Code, a.Enhanced, a.Text, tt.status, tt.reason)
			}
			if tt.wantCode != 0 && a.Code != tt.wantCode || a.Enhanced != tt.wantEnhcd && tt.wantEnhcd != "" {
				t.Errorf("code %d %s, want %d %s", a.Code, a.Enhanced, tt.wantCode, tt.wantEnhcd)
			}
			if a.Sender != tt.sender {
				t.Errorf("sender %q, want %q", a.Sender, tt.sender)
			}
			if a.Host != s.Addr() || a.Source != verdict.SourceProbe || a.CheckedAt.IsZero() || a.Address != tt.target.Address.String() {
				t.Errorf("verdict metadata: %+v", a)
			}
			f := fact(r, kvkey.FactCatchAll)
			switch {
			case tt.catchAll == "" && f != nil:
				t.Errorf("unexpected catch-all fact %s", f.Status)
			case tt.catchAll != "" && (f == nil || f.Status != tt.catchAll || f.Kind != verdict.KindDomain):
				t.Errorf("catch-all fact %+v, want %s", f, tt.catchAll)
			}
			accs := 0
			for _, f := range r.Facts {
				if f.Fact == kvkey.FactAccess {
					accs++
				}
			}
			if accs > 1 {
				t.Errorf("%d access facts: one key holds one", accs)
			}
			acc := fact(r, kvkey.FactAccess)
			switch {
			case tt.access == "" && acc != nil:
				t.Errorf("unexpected access fact %+v", acc)
			case tt.access != "" && (acc == nil || acc.Reason != tt.access || acc.Status != verdict.Unverifiable):
				t.Errorf("access fact %+v, want %s", acc, tt.access)
			}
			if s.Rcpts() != tt.rcpts || r.Rcpts != tt.rcpts {
				t.Errorf("server saw %d RCPTs, result says %d, want %d", s.Rcpts(), r.Rcpts, tt.rcpts)
			}
		})
	}
}

func TestRandomLocalIsStablePerDomain(t *testing.T) {
	a, b := RandomLocal(secret, "example.org"), RandomLocal(secret, "example.org")
	if a != b {
		t.Fatal("random local part changes between calls")
	}
	if a == RandomLocal(secret, "example.net") || a == RandomLocal([]byte("other"), "example.org") {
		t.Fatal("random local part does not depend on domain and secret")
	}
	if _, err := address.Parse(a + "@example.org"); err != nil {
		t.Fatalf("random local part %q is not a valid address: %v", a, err)
	}
}

// A greylister that defers every new (sender, recipient) pair, the random
// address's too (Postfix with a greylisting policy server in its default
// set-up), lets the real address through on the second callout: the
// first asked the real RCPT after the random one's greylisting, and the
// random local part is the same each time.
func TestGreylistPassesOnRetry(t *testing.T) {
	s := server(t, smtptest.Config{Rcpt: smtptest.Greylist(smtptest.Mailboxes([]string{"alice@example.org"}, nil))})
	v := verifier(destination.Config{})
	target := Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}}
	if r := v.Verify(context.Background(), target); r.Address.Status != verdict.TempFail || s.RcptsFor("alice@example.org") != 1 {
		t.Fatalf("first callout: %s, %d RCPTs of alice", r.Address.Status, s.RcptsFor("alice@example.org"))
	}
	r := v.Verify(context.Background(), target)
	if r.Address.Status != verdict.Valid {
		t.Fatalf("second callout: %s %s", r.Address.Status, r.Address.Text)
	}
	if f := fact(r, kvkey.FactCatchAll); f == nil || f.Status != verdict.NotCatchAll {
		t.Fatalf("second callout's catch-all fact: %+v", f)
	}
}

func TestFailover(t *testing.T) {
	good := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	refusing := server(t, smtptest.Config{Banner: "554 5.7.1 no"})
	busy := server(t, smtptest.Config{Banner: "421 4.3.2 busy"})
	v := verifier(destination.Config{})
	r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{deadHost(t), refusing.Addr(), busy.Addr(), good.Addr()}})
	if r.Address.Status != verdict.Valid || r.Address.Host != good.Addr() {
		t.Fatalf("failover: %+v", r.Address)
	}
	if fact(r, kvkey.FactAccess) != nil {
		t.Fatal("a refusing host that was passed over left a domain fact")
	}
}

func TestTimeoutIsTempfail(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, Delay: 3 * time.Second})
	v := New(Config{SMTP: smtpprobe.Config{BannerTimeout: 200 * time.Millisecond}, RandomSecret: secret}, destination.NewPool(destination.Config{Rate: 1000}, nil))
	r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}})
	if r.Address.Status != verdict.TempFail || r.Address.Reason != verdict.ReasonTimeout {
		t.Fatalf("slow server: %+v", r.Address)
	}
}

func TestBudgetBoundsAllHosts(t *testing.T) {
	slow := server(t, smtptest.Config{Delay: 3 * time.Second})
	v := New(Config{SMTP: smtpprobe.Config{BannerTimeout: time.Minute}, Budget: 300 * time.Millisecond, RandomSecret: secret},
		destination.NewPool(destination.Config{Rate: 1000, MaxConns: 4}, nil))
	done := make(chan Result, 1)
	go func() {
		done <- v.Verify(context.Background(), Target{Address: addr(t, "a@example.org"), Hosts: []string{slow.Addr(), slow.Addr(), slow.Addr()}})
	}()
	select {
	case r := <-done:
		if r.Address.Status != verdict.TempFail {
			t.Fatalf("status %s", r.Address.Status)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("budget did not bound the callout")
	}
}

func TestBreaker(t *testing.T) {
	dead := deadHost(t)
	v := verifier(destination.Config{BreakerFailures: 2, BreakerOpen: 200 * time.Millisecond})
	target := Target{Address: addr(t, "alice@example.org"), Hosts: []string{dead}}
	for i := 0; i < 2; i++ {
		if r := v.Verify(context.Background(), target); r.Address.Reason != verdict.ReasonConnect {
			t.Fatalf("attempt %d: %s", i, r.Address.Reason)
		}
	}
	if r := v.Verify(context.Background(), target); r.Address.Reason != verdict.ReasonBreakerOpen || r.Address.Status != verdict.TempFail {
		t.Fatalf("breaker not open: %+v", r.Address)
	}
	// The destination comes back on the same port: after the open period the
	// half-open trial goes through and closes the breaker.
	s, err := smtptest.Start(dead, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	if err != nil {
		t.Skipf("port %s taken again: %v", dead, err)
	}
	defer s.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := v.Verify(context.Background(), target)
		if r.Address.Status == verdict.Valid {
			break
		}
		if r.Address.Reason != verdict.ReasonBreakerOpen || time.Now().After(deadline) {
			t.Fatalf("after recovery: %+v", r.Address)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conns := s.Conns()
	if conns != 1 {
		t.Fatalf("half-open trial used %d connections", conns)
	}
}

// A 5xx user unknown counts as a success for the breaker.
func TestUserUnknownKeepsBreakerClosed(t *testing.T) {
	s := server(t, smtptest.Config{})
	v := verifier(destination.Config{BreakerFailures: 1})
	for i := 0; i < 3; i++ {
		r := v.Verify(context.Background(), Target{Address: addr(t, "x@example.org"), Hosts: []string{s.Addr()}})
		if r.Address.Status != verdict.Invalid {
			t.Fatalf("attempt %d: %s %s", i, r.Address.Status, r.Address.Reason)
		}
	}
}

func TestConnectionReuse(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"a@example.org", "b@example.org", "c@example.org"}})
	v := verifier(destination.Config{ReuseMaxRcpts: 10, IdleTimeout: time.Minute})
	var reused int
	for _, a := range []string{"a@example.org", "b@example.org", "c@example.org", "d@example.org"} {
		r := v.Verify(context.Background(), Target{Address: addr(t, a), Hosts: []string{s.Addr()}, SkipRandom: true})
		if r.Reused {
			reused++
		}
	}
	if s.Conns() != 1 || reused != 3 {
		t.Fatalf("%d connections, %d reused; want 1 and 3", s.Conns(), reused)
	}
	// A connection that has served its share of RCPTs is closed.
	v2 := verifier(destination.Config{ReuseMaxRcpts: 2, IdleTimeout: time.Minute})
	s2 := server(t, smtptest.Config{Mailboxes: []string{"a@example.org"}})
	for i := 0; i < 4; i++ {
		v2.Verify(context.Background(), Target{Address: addr(t, "a@example.org"), Hosts: []string{s2.Addr()}, SkipRandom: true})
	}
	if s2.Conns() != 2 {
		t.Fatalf("RCPT cap: %d connections, want 2", s2.Conns())
	}
}

func TestFailedRsetTurnsReuseOff(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"a@example.org"}, Rset: "502 5.5.1 no RSET"})
	v := verifier(destination.Config{ReuseMaxRcpts: 10, IdleTimeout: time.Minute})
	for i := 0; i < 3; i++ {
		if r := v.Verify(context.Background(), Target{Address: addr(t, "a@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true}); r.Address.Status != verdict.Valid {
			t.Fatalf("attempt %d: %s", i, r.Address.Status)
		}
	}
	if s.Conns() != 3 {
		t.Fatalf("%d connections, want 3 (no reuse)", s.Conns())
	}
}

func TestPerDestinationConcurrency(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"a@example.org"}, Delay: 20 * time.Millisecond})
	v := verifier(destination.Config{MaxConns: 2})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := v.Verify(context.Background(), Target{Address: addr(t, "a@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true}); r.Address.Status != verdict.Valid {
				t.Errorf("status %s", r.Address.Status)
			}
		}()
	}
	wg.Wait()
	if s.Peak() > 2 {
		t.Fatalf("%d connections at once, limit 2", s.Peak())
	}
	if s.Conns() != 8 {
		t.Fatalf("%d connections, want 8: no job dropped", s.Conns())
	}
}

func TestRateLimit(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"a@example.org"}})
	v := verifier(destination.Config{MaxConns: 1, Rate: 5})
	start := time.Now()
	for i := 0; i < 4; i++ {
		v.Verify(context.Background(), Target{Address: addr(t, "a@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true})
	}
	// 4 callouts at 5/s with a burst of 1 take at least 3 intervals.
	if el := time.Since(start); el < 550*time.Millisecond {
		t.Fatalf("4 callouts at 5/s took %v", el)
	}
}

// The whole dialogue on one host is bounded, even when each reply is in time.
func TestDialogueTimeout(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"a@example.org"}, Delay: 150 * time.Millisecond})
	v := New(Config{SMTP: smtpprobe.Config{BannerTimeout: time.Second, CommandTimeout: time.Second}, DialogueTimeout: 400 * time.Millisecond, RandomSecret: secret},
		destination.NewPool(destination.Config{Rate: 1000}, nil))
	r := v.Verify(context.Background(), Target{Address: addr(t, "a@example.org"), Hosts: []string{s.Addr()}})
	if r.Address.Status != verdict.TempFail || r.Address.Reason != verdict.ReasonTimeout {
		t.Fatalf("slow dialogue: %+v", r.Address)
	}
}

// Every path closes what it opened: an idle connection that dies under a
// reused callout is closed, not dropped, so the destination is not left
// holding it.
func TestAbandonedConnectionsClosed(t *testing.T) {
	var mu sync.Mutex
	mails := map[net.Conn]int{}
	s := server(t, smtptest.Config{Raw: func(c net.Conn) {
		r := bufio.NewReader(c)
		say := func(l string) { _, _ = c.Write([]byte(l + "\r\n")) }
		say("220 mx.test ESMTP")
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return // the client closed
			}
			switch verb := strings.ToUpper(strings.Fields(line + " x")[0]); verb {
			case "MAIL":
				mu.Lock()
				mails[c]++
				n := mails[c]
				mu.Unlock()
				if n > 1 {
					continue // a second transaction on one connection: no answer
				}
				say("250 2.1.0 Ok")
			case "RCPT":
				say("250 2.1.5 Ok")
			case "QUIT":
				say("221 Bye")
				return
			default:
				say("250 mx.test")
			}
		}
	}})
	v := New(Config{
		SMTP:         smtpprobe.Config{ConnectTimeout: time.Second, BannerTimeout: time.Second, CommandTimeout: 200 * time.Millisecond, HeloName: "verifier.test"},
		RandomSecret: secret,
	}, destination.NewPool(destination.Config{MaxConns: 2, Rate: 1000, ReuseMaxRcpts: 20, IdleTimeout: time.Minute}, nil))
	for i := 0; i < 10; i++ {
		r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true})
		if r.Address.Status != verdict.Valid {
			t.Fatalf("callout %d: %+v", i, r.Address)
		}
	}
	// One connection may stay idle for reuse; every other one is closed.
	waitfor.Cond(t, 5*time.Second, func() bool { return s.Active() <= 1 })
}

// The control probe: a user unknown is checked against postmaster, once
// per domain while the fact is cached. A destination that refuses
// postmaster too (a server answering a relay refusal with the bare
// "550 Invalid recipient" it uses for unknown users, a block worded as a
// user unknown) is refusing the verifier: its 5xx is no user unknown.
func TestControlProbe(t *testing.T) {
	relay := func(_, to string) string {
		if to == "alice@example.org" {
			return "250 2.1.5 Ok"
		}
		return "550 Invalid recipient"
	}
	for _, tc := range []struct {
		name    string
		rcpt    func(from, to string) string
		control string
		addr    string
		status  verdict.Status
		reason  verdict.Reason
		fact    verdict.Status // the control fact published, "" none
		asked   int            // RCPTs of postmaster
	}{
		{"user unknown, postmaster accepted", smtptest.Mailboxes([]string{"alice@example.org"}, nil), "", "nobody", verdict.Invalid, "user_unknown", verdict.Valid, 1},
		{"postmaster refused too", relay, "", "nobody", verdict.Unverifiable, verdict.ReasonRefusesVerifier, verdict.Invalid, 1},
		{"known refused: not asked again", relay, wire.ControlRefused, "nobody", verdict.Unverifiable, verdict.ReasonRefusesVerifier, "", 0},
		{"known accepted: not asked again", relay, wire.ControlAccepted, "nobody", verdict.Invalid, "user_unknown", "", 0},
		{"off for the domain", relay, wire.ControlOff, "nobody", verdict.Invalid, "user_unknown", "", 0},
		{"valid needs no control", relay, "", "alice", verdict.Valid, "accepted", "", 0},
		{"greylisted postmaster: no fact, the user unknown stands", func(f, to string) string {
			if strings.HasPrefix(to, "postmaster@") {
				return "450 4.2.0 Greylisted"
			}
			return relay(f, to)
		}, "", "nobody", verdict.Invalid, "user_unknown", "", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := server(t, smtptest.Config{Rcpt: tc.rcpt})
			v := verifier(destination.Config{})
			r := v.Verify(context.Background(), Target{Address: addr(t, tc.addr+"@example.org"), Hosts: []string{s.Addr()}, Control: tc.control})
			if r.Address.Status != tc.status || r.Address.Reason != tc.reason {
				t.Fatalf("verdict %s/%s, want %s/%s", r.Address.Status, r.Address.Reason, tc.status, tc.reason)
			}
			f := fact(r, kvkey.FactControl)
			switch {
			case tc.fact == "" && f != nil:
				t.Fatalf("control fact %+v, want none", f)
			case tc.fact != "" && (f == nil || f.Status != tc.fact || f.Kind != verdict.KindDomain || f.Domain != "example.org"):
				t.Fatalf("control fact %+v, want %s", f, tc.fact)
			}
			if n := s.RcptsFor("postmaster@example.org"); n != tc.asked {
				t.Fatalf("postmaster asked %d times, want %d", n, tc.asked)
			}
			hosts := v.pool.Hosts(1)
			if refusing := tc.reason == verdict.ReasonRefusesVerifier; refusing != (len(hosts) == 1 && hosts[0].RefusesVerifier == "example.org") {
				t.Fatalf("host info %+v", hosts)
			}
		})
	}
}

// What one host's failure means for the next host and for its breaker:
// a host that cannot be spoken to sends the callout on to the next host
// either way; only a 421 or an unreachable host counts against its
// breaker, a 5xx refusal does not.
func TestHostFaults(t *testing.T) {
	good := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	for _, tc := range []struct {
		name      string
		bad       string
		reason    verdict.Reason
		unhealthy bool
	}{
		{"421 at banner", server(t, smtptest.Config{Banner: "421 4.3.2 shutting down"}).Addr(), verdict.ReasonDeferred, true},
		{"554 at banner", server(t, smtptest.Config{Banner: "554 5.7.1 no verifiers"}).Addr(), verdict.ReasonRefusedBanner, false},
		{"unreachable", deadHost(t), verdict.ReasonConnect, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := verifier(destination.Config{BreakerFailures: 1, BreakerOpen: time.Minute})
			both := Target{Address: addr(t, "alice@example.org"), Hosts: []string{tc.bad, good.Addr()}}
			if r := v.Verify(context.Background(), both); r.Address.Status != verdict.Valid {
				t.Fatalf("the next host was not asked: %s %s", r.Address.Status, r.Address.Reason)
			}
			alone := Target{Address: addr(t, "alice@example.org"), Hosts: []string{tc.bad}}
			want := tc.reason
			if tc.unhealthy {
				want = verdict.ReasonBreakerOpen
			}
			if r := v.Verify(context.Background(), alone); r.Address.Reason != want {
				t.Fatalf("then alone: %s, want %s", r.Address.Reason, want)
			}
		})
	}
}
