package callout

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/callout-mail/callout/services/prober/destination"
	"github.com/callout-mail/callout/services/prober/smtpprobe"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/waitfor"
	"github.com/callout-mail/callout/shared/wire"
)

func protectVerifier(dcfg destination.Config) (*Verifier, *destination.Pool) {
	pool := destination.NewPool(dcfg, nil)
	return New(Config{
		SMTP:         smtpprobe.Config{ConnectTimeout: time.Second, BannerTimeout: time.Second, CommandTimeout: time.Second, HeloName: "verifier.test"},
		RandomSecret: secret,
	}, pool), pool
}

// A host that says it is overloaded or limits us slows down: its rate and
// RCPTs per connection halve, and come back after a quiet period.
func TestBackoff(t *testing.T) {
	for _, reply := range []string{
		"421 4.7.0 mx.test Error: too many connections",
		"451 4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77719)",
		"450 4.7.1 Client host rejected: too many connections",
		"452 4.5.3 Too many recipients (AS780090)",
	} {
		s := server(t, smtptest.Config{Rcpt: func(_, to string) string {
			if strings.HasPrefix(to, "busy@") {
				return reply
			}
			return "250 2.1.5 Ok"
		}})
		v, pool := protectVerifier(destination.Config{MaxConns: 2, Rate: 100, ReuseMaxRcpts: 8, IdleTimeout: time.Minute, BackoffQuiet: 300 * time.Millisecond})
		r := v.Verify(context.Background(), Target{Address: addr(t, "busy@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true})
		if r.Address.Status == verdict.Invalid || r.Address.Status == verdict.Valid {
			t.Fatalf("%s: verdict %s", reply, r.Address.Status)
		}
		d := pool.Get(s.Addr())
		info := d.Info()
		if info.Backoff < 1 || info.Rate > 50 || d.MaxRcpts() > 4 || info.LastReply == "" {
			t.Fatalf("%s: not slowed: %+v, %d RCPTs per connection", reply, info, d.MaxRcpts())
		}
		// Quiet: step by step back to the configured figures.
		waitfor.Cond(t, 5*time.Second, func() bool {
			if slot, ok := d.TryAcquire(context.Background()); ok { // taking a slot lets the host ease
				slot.Release()
			}
			return d.Info().Backoff == 0 && d.Info().Rate == 100 && d.MaxRcpts() == 8
		})
	}
}

// firstTooMany answers the first RCPT with 452 4.5.3 (too many
// recipients), and the others as rest does.
func firstTooMany(rest func(to string) string) func(from, to string) string {
	var mu sync.Mutex
	first := true
	return func(_, to string) string {
		mu.Lock()
		defer mu.Unlock()
		if first {
			first = false
			return "452 4.5.3 Too many recipients"
		}
		return rest(to)
	}
}

// 452 4.5.3 (too many recipients) is no verdict: the RCPT is asked again
// on a fresh connection.
func TestTooManyRecipientsRetried(t *testing.T) {
	s := server(t, smtptest.Config{Rcpt: firstTooMany(func(to string) string {
		return "550 5.1.1 <" + to + ">: Recipient address rejected: User unknown in local recipient table"
	})})
	v, _ := protectVerifier(destination.Config{MaxConns: 2, Rate: 100})
	r := v.Verify(context.Background(), Target{Address: addr(t, "nobody@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true, Control: wire.ControlAccepted})
	if r.Address.Status != verdict.Invalid || s.Conns() != 2 {
		t.Fatalf("verdict %s/%s after %d connections", r.Address.Status, r.Address.Reason, s.Conns())
	}
}

// 452 4.5.3 on the random address is no answer about the domain either:
// asked again on a fresh connection, once, and the callout goes on.
func TestTooManyRecipientsOnRandomRetried(t *testing.T) {
	s := server(t, smtptest.Config{Rcpt: firstTooMany(func(to string) string {
		if to == "alice@example.org" {
			return "250 2.1.5 Ok"
		}
		return "550 5.1.1 <" + to + ">: Recipient address rejected: User unknown in local recipient table"
	})})
	v, _ := protectVerifier(destination.Config{MaxConns: 2, Rate: 100})
	r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}})
	if r.Address.Status != verdict.Valid || s.Conns() != 2 || s.Rcpts() != 3 {
		t.Fatalf("verdict %s/%s after %d connections, %d RCPTs", r.Address.Status, r.Address.Reason, s.Conns(), s.Rcpts())
	}
	if f := fact(r, kvkey.FactCatchAll); f == nil || f.Status != verdict.NotCatchAll {
		t.Fatalf("catch-all fact %+v", f)
	}
}

// Reuse stays within what Exim tolerates (10 non-mail commands, RSET
// counts): many callouts on reused connections, none dropped with 421, no
// verdict lost.
func TestReuseWithinNonMailLimit(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, MaxNonMail: 10})
	v, pool := protectVerifier(destination.Config{MaxConns: 1, Rate: 1000, ReuseMaxRcpts: 100, IdleTimeout: time.Minute})
	for i := 0; i < 30; i++ {
		a, want := "alice@example.org", verdict.Valid
		if i%3 == 0 {
			a, want = "nobody@example.org", verdict.Invalid
		}
		r := v.Verify(context.Background(), Target{Address: addr(t, a), Hosts: []string{s.Addr()}, SkipRandom: i%2 == 0})
		if r.Address.Status != want {
			t.Fatalf("callout %d: %s/%s", i, r.Address.Status, r.Address.Reason)
		}
	}
	if n := s.Commands("421"); n != 0 {
		t.Fatalf("the destination dropped %d connections for too many non-mail commands", n)
	}
	if s.Conns() >= 30 {
		t.Fatalf("%d connections for 30 callouts: no reuse", s.Conns())
	}
	// What operators see of the host: its calls and their times.
	if info := pool.Get(s.Addr()).Info(); info.Calls != 30 || info.P50MS <= 0 || info.P99MS < info.P50MS {
		t.Fatalf("host info %+v", info)
	}
}

// Counted as Exim counts (the EHLO and the first RSET are free), a
// connection carries 8 callouts of a domain known not to be a catch-all
// within the default limit of 8 non-mail commands, with room to spare
// under Exim's 10.
func TestCalloutsPerConnection(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, MaxNonMail: 10})
	v, _ := protectVerifier(destination.Config{MaxConns: 1, Rate: 1000, ReuseMaxRcpts: 100, IdleTimeout: time.Minute})
	for i := 0; i < 24; i++ {
		if r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true}); r.Address.Status != verdict.Valid {
			t.Fatalf("callout %d: %s/%s", i, r.Address.Status, r.Address.Reason)
		}
	}
	if s.Conns() != 3 || s.Commands("421") != 0 {
		t.Fatalf("%d connections (%d dropped) for 24 callouts, want 3", s.Conns(), s.Commands("421"))
	}
}

// A host whose RSET failed gets reuse back after a while.
func TestReuseResumes(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	v, pool := protectVerifier(destination.Config{MaxConns: 1, Rate: 1000, ReuseMaxRcpts: 100, IdleTimeout: time.Minute, ReuseRetry: 300 * time.Millisecond})
	d := pool.Get(s.Addr())
	d.DisableReuse() // as after a failed RSET
	if d.ReuseEnabled() {
		t.Fatal("reuse still on")
	}
	waitfor.Cond(t, 5*time.Second, d.ReuseEnabled)
	before := s.Conns()
	for i := 0; i < 3; i++ {
		if r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true}); r.Address.Status != verdict.Valid {
			t.Fatal(r.Address.Status)
		}
	}
	if n := s.Conns() - before; n != 1 {
		t.Fatalf("%d connections for 3 callouts once reuse resumed", n)
	}
}

// countingFleet is a fleet that grants everything and counts.
type countingFleet struct {
	mu                        sync.Mutex
	acquired, released, rates int
}

func (f *countingFleet) TryAcquire(context.Context, string) (func(), error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acquired++
	return func() { f.mu.Lock(); f.released++; f.mu.Unlock() }, nil
}

func (f *countingFleet) TryRate(context.Context, string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rates++
	return nil
}

func (f *countingFleet) Want(string)     {}
func (f *countingFleet) Busy(error) bool { return false }

func (f *countingFleet) counts() (acquired, released int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.acquired, f.released
}

// A connection closed at its limits (non-mail commands, RCPTs) leaves its
// slot to the next callout: the fleet is asked for a slot once, not once
// per connection; the slot goes back after the idle timeout.
func TestSlotOutlivesItsConnection(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, MaxNonMail: 10})
	v, pool := protectVerifier(destination.Config{MaxConns: 1, Rate: 1000, ReuseMaxRcpts: 3, MaxNonMail: 8, IdleTimeout: 300 * time.Millisecond})
	f := &countingFleet{}
	pool.SetFleet(f, nil)
	for i := 0; i < 12; i++ {
		if r := v.Verify(context.Background(), Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true}); r.Address.Status != verdict.Valid {
			t.Fatalf("callout %d: %s/%s", i, r.Address.Status, r.Address.Reason)
		}
	}
	if s.Conns() < 4 {
		t.Fatalf("%d connections for 12 callouts of at most 3 RCPTs each", s.Conns())
	}
	if acq, rel := f.counts(); acq != 1 || rel != 0 {
		t.Fatalf("fleet slots: %d taken, %d given back; want 1, 0", acq, rel)
	}
	waitfor.Cond(t, 5*time.Second, func() bool {
		pool.Sweep(context.Background(), time.Hour)
		_, rel := f.counts()
		return rel == 1
	})
}

// A kept connection's RSET leaves with the next callout's MAIL FROM and
// RCPT, in one write, when the destination offers PIPELINING: ending a
// callout costs no round trip, and the next one on the connection costs one.
func TestRsetWithNextCallout(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}})
	v, _ := protectVerifier(destination.Config{MaxConns: 1, Rate: 1000, ReuseMaxRcpts: 100, MaxNonMail: 8, IdleTimeout: time.Minute})
	target := Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true}
	res, end := v.VerifyResultFirst(context.Background(), target, nil)
	end()
	if res.Address.Status != verdict.Valid {
		t.Fatalf("%s/%s", res.Address.Status, res.Address.Reason)
	}
	if n := s.Commands("RSET"); n != 0 {
		t.Fatalf("%d RSETs sent when the callout ended, want none yet", n)
	}
	if r := v.Verify(context.Background(), target); r.Address.Status != verdict.Valid || !r.Reused || s.Conns() != 1 {
		t.Fatalf("second callout: %s, reused %v, %d connections", r.Address.Status, r.Reused, s.Conns())
	}
	lines := s.Lines()
	want := []string{"RSET", "MAIL FROM:<>", "RCPT TO:<alice@example.org>"}
	if len(lines) < 3 || !slices.Equal(lines[len(lines)-3:], want) {
		t.Fatalf("dialogue %q, want it to end with %q", lines, want)
	}
}

// Without PIPELINING the RSET is sent when the callout ends, off the
// verdict's path: the result is known before the RSET is answered, and the
// connection is kept once it is.
func TestResultBeforeRset(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	hold := func(verb string) {
		if verb == "RSET" {
			<-release
		}
	}
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, Hold: hold, EHLO: "250-mx.test\r\n250 ENHANCEDSTATUSCODES"})
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	v, _ := protectVerifier(destination.Config{MaxConns: 1, Rate: 1000, ReuseMaxRcpts: 100, MaxNonMail: 8, IdleTimeout: time.Minute})
	target := Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true}
	res, end := v.VerifyResultFirst(context.Background(), target, nil)
	if res.Address.Status != verdict.Valid {
		t.Fatalf("%s/%s", res.Address.Status, res.Address.Reason)
	}
	ended := make(chan struct{})
	go func() { defer close(ended); end() }()
	waitfor.Cond(t, 5*time.Second, func() bool { return s.Commands("RSET") == 1 })
	select {
	case <-ended:
		t.Fatal("the connection ended before its RSET was answered")
	default:
	}
	once.Do(func() { close(release) })
	<-ended
	if r := v.Verify(context.Background(), target); r.Address.Status != verdict.Valid || !r.Reused || s.Conns() != 1 {
		t.Fatalf("after the RSET: %s, reused %v, %d connections", r.Address.Status, r.Reused, s.Conns())
	}
}

// When the RSET sent ahead of a callout is refused, the replies after it
// belong to no transaction of ours: none of them becomes a verdict (here
// the RCPT after it is refused as unknown), the callout runs again on a
// fresh connection, and the host gets no reuse.
func TestRefusedRsetAheadIsNoVerdict(t *testing.T) {
	var rcpts atomic.Int32
	s := server(t, smtptest.Config{Rset: "502 5.5.1 no RSET", Rcpt: func(_, _ string) string {
		if rcpts.Add(1) == 2 {
			return "550 5.1.1 unknown user"
		}
		return "250 2.1.5 ok"
	}})
	v, pool := protectVerifier(destination.Config{MaxConns: 1, Rate: 1000, ReuseMaxRcpts: 100, MaxNonMail: 8, IdleTimeout: time.Minute})
	target := Target{Address: addr(t, "alice@example.org"), Hosts: []string{s.Addr()}, SkipRandom: true}
	for i := 0; i < 2; i++ {
		if r := v.Verify(context.Background(), target); r.Address.Status != verdict.Valid {
			t.Fatalf("callout %d: %s/%s (%d %s)", i, r.Address.Status, r.Address.Reason, r.Address.Code, r.Address.Text)
		}
	}
	if rcpts.Load() != 3 || s.Conns() != 2 || s.Commands("RSET") != 1 {
		t.Fatalf("%d RCPTs, %d connections, %d RSETs; want 3, 2, 1", rcpts.Load(), s.Conns(), s.Commands("RSET"))
	}
	if pool.Get(s.Addr()).ReuseEnabled() {
		t.Fatal("reuse still on after a refused RSET")
	}
}

// A destination that tarpits refused RCPTs (each held longer than the
// last on one connection, 8 s doubling in the wild) would bring a first
// ask of an unknown user, three RCPTs, near the MTA's deadline: after a
// slow refusal the next step takes a fresh connection, so no RCPT waits
// more than the first delay, and a tarpit's connection is not kept.
func TestTarpitTakesFreshConnections(t *testing.T) {
	s := server(t, smtptest.Config{Mailboxes: []string{"alice@example.org"}, Tarpit: 300 * time.Millisecond})
	v := New(Config{
		SMTP:         smtpprobe.Config{ConnectTimeout: time.Second, BannerTimeout: time.Second, CommandTimeout: 5 * time.Second, HeloName: "verifier.test"},
		RandomSecret: secret, TarpitAfter: 150 * time.Millisecond,
	}, destination.NewPool(destination.Config{MaxConns: 2, Rate: 1000, ReuseMaxRcpts: 20, MaxNonMail: 8}, nil))
	r := v.Verify(context.Background(), Target{Address: addr(t, "nobody@example.org"), Hosts: []string{s.Addr()}})
	if r.Address.Status != verdict.Invalid {
		t.Fatalf("verdict %s/%s", r.Address.Status, r.Address.Reason)
	}
	// The random address, nobody and postmaster, each on its own
	// connection: two slow refusals, none doubled.
	if s.Conns() != 3 || s.Rcpts() != 3 {
		t.Fatalf("%d connections, %d RCPTs: want 3 and 3", s.Conns(), s.Rcpts())
	}
	if idle := v.pool.Hosts(1)[0].Idle; idle != 0 {
		t.Fatalf("%d idle connections kept after a tarpit", idle)
	}
}
