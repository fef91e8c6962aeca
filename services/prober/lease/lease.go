// Package lease holds a destination host's limits across every prober: a
// connection slot or a rate token is a message on its own subject in one
// small stream, published only if the subject is empty (expected last
// sequence 0) and carrying its own TTL. A prober that dies keeps nothing
// past the TTL; a finished callout purges its slot.
//
// Subjects: <prefix>.lease.conn.<host>.<slot> (MAX_CONNS slots, TTL
// LEASE_TTL, renewed while the dialogue runs) and
// <prefix>.lease.rate.<host>.<token> (at most 32 tokens, each granting
// RATE/32 callouts, or one when RATE is below 64, for the second it
// lives). Taking both costs one round trip: they are asked at once.
package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
)

// Config sets the fleet-wide limits of every host.
type Config struct {
	MaxConns int           // connections at once per host, all probers together
	Rate     float64       // callouts per second per host, all probers together
	TTL      time.Duration // a connection slot's lease, renewed while in use
	Instance string        // this prober, written into its leases
	Replicas int           // of the lease stream, when it is made again
}

// Leases takes and gives back fleet-wide slots.
type Leases struct {
	cfg    Config
	nc     *nats.Conn
	names  subjects.Names
	tokens int           // rate tokens per host
	grant  int           // callouts one token allows
	tokTTL time.Duration // life of one token
	mu     sync.Mutex
	grants map[string]grant // host -> what is left of the token last taken
	// Connection slots this prober holds, and slots found taken lately:
	// neither is asked for again (each ask is a round trip, and a refused
	// one an error to parse), until it is released or the mark expires.
	held     map[string]bool
	taken    map[string]takenMark
	asks     atomic.Int64 // connection slots asked of the lease stream
	takenFor time.Duration

	remadeMu sync.Mutex
	remade   time.Time // when the stream was last found missing and made
}

// takenFor is how long a slot found taken is not asked for again: a slot
// is held for a connection's life, seconds, and a prober that waits asks
// again within 20-500 ms anyway. A slot found taken again as soon as its
// mark ends is marked twice as long, up to 16 times takenFor: under
// sustained load another prober keeps its slots across its connections,
// and asking for them 20 times a second was most of the lease stream's
// traffic.
const takenFor = 50 * time.Millisecond

// takenMark is a slot found taken: not asked for again until until; n
// counts the findings in a row.
type takenMark struct {
	until time.Time
	n     int
}

// grant is what is left of a rate token this prober took: callouts it may
// still start before the token's life ends.
type grant struct {
	left  int
	until time.Time
}

// maxTokens bounds the rate tokens of a host: above it a token grants
// several callouts, so a fast destination costs a round trip per batch
// instead of one per callout (and the lease stream holds a few subjects
// per host, not RATE of them).
const maxTokens = 32

// New returns leases over the lease stream (streams.LeasesConfig; it must exist).
func New(cfg Config, nc *nats.Conn, n subjects.Names) *Leases {
	// n tokens of g callouts that each live ceil(n*g/rate) seconds allow
	// rate per second on average and never more than n*g in any such
	// window. g = rate/32 (rounded down) keeps n*g within 3% of rate.
	g := max(1, int(math.Floor(cfg.Rate/maxTokens)))
	tokens := max(1, int(math.Floor(cfg.Rate/float64(g))))
	ttl := time.Duration(math.Ceil(float64(tokens*g)/cfg.Rate)) * time.Second
	return &Leases{cfg: cfg, nc: nc, names: n, tokens: tokens, grant: g, tokTTL: max(ttl, time.Second), grants: map[string]grant{},
		held: map[string]bool{}, taken: map[string]takenMark{}, takenFor: takenFor}
}

// spend starts one callout on what is left of host's last token, if any.
func (l *Leases) spend(host string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	g, ok := l.grants[host]
	if !ok || g.left == 0 || !time.Now().Before(g.until) {
		delete(l.grants, host)
		return false
	}
	g.left--
	l.grants[host] = g
	return true
}

// rate takes a rate token of host (or starts on what is left of the last
// one): ErrBusy when the host is at its rate.
func (l *Leases) rate(ctx context.Context, host string) error {
	if l.spend(host) {
		return nil
	}
	return l.token(ctx, host)
}

// token takes a new rate token of host and keeps what it grants beyond
// this callout.
func (l *Leases) token(ctx context.Context, host string) error {
	// The token's life is counted from before it is asked: the server's
	// starts later, so no grant outlives its token.
	start := time.Now()
	if _, _, err := l.take(ctx, "rate", kvkey.Token(host), l.tokens, l.tokTTL); err != nil {
		return err
	}
	if l.grant > 1 {
		l.mu.Lock()
		l.grants[host] = grant{left: l.grant - 1, until: start.Add(l.tokTTL)}
		l.mu.Unlock()
	}
	return nil
}

// ErrBusy means every slot or token of the host is taken now.
var ErrBusy = errors.New("destination host at its fleet-wide limit")

// TryAcquire takes a connection slot and a rate token of host, or nothing.
// It returns ErrBusy when the host is at its limit; other errors mean the
// lease stream could not be asked.
func (l *Leases) TryAcquire(ctx context.Context, host string) (release func(), err error) {
	tok := kvkey.Token(host)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var connSeq uint64
	var connSubj string
	var connErr, rateErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		connSubj, connSeq, connErr = l.take(ctx, "conn", tok, l.cfg.MaxConns, l.cfg.TTL)
	}()
	go func() {
		defer wg.Done()
		rateErr = l.rate(ctx, host)
	}()
	wg.Wait()
	if connErr != nil || rateErr != nil {
		if connErr == nil {
			l.purge(connSubj)
		}
		// A spent rate token stays spent: it expires by itself.
		return nil, errors.Join(connErr, rateErr)
	}
	// Renew the connection slot while it is in use.
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(l.cfg.TTL / 3)
		defer t.Stop()
		seq := connSeq
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
				if s, err := l.publish(rctx, connSubj, seq, l.cfg.TTL); err == nil {
					seq = s
				}
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			stop()
			<-done
			l.purge(connSubj)
		})
	}, nil
}

// TryRate takes a rate token of host alone: a callout on a kept connection
// already holds its connection slot.
func (l *Leases) TryRate(ctx context.Context, host string) error {
	if l.spend(host) {
		return nil // what is left of the last token: no round trip, no timer
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return l.token(ctx, host)
}

// Want asks every prober keeping an idle connection to host to close one
// (subject <prefix>.prober.want.<host>): this one waits for a slot, and an
// idle connection keeps its slot until it is closed.
func (l *Leases) Want(host string) {
	_ = l.nc.Publish(l.names.LeaseWant(kvkey.Token(host)), []byte(l.cfg.Instance))
}

// Wanted calls yield with the host of every other prober's want, until the
// subscription ends.
func (l *Leases) Wanted(yield func(host string)) (*nats.Subscription, error) {
	return l.nc.Subscribe(l.names.LeaseWant("*"), func(m *nats.Msg) {
		if string(m.Data) == l.cfg.Instance {
			return // this prober's own ask
		}
		tok := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		if host, err := kvkey.ParseToken(tok); err == nil {
			yield(host)
		}
	})
}

// take publishes into the first free of n subjects, starting at a random
// one so that probers do not collide; ErrBusy when all are taken.
// Connection slots this prober holds or found taken lately are skipped.
func (l *Leases) take(ctx context.Context, kind, host string, n int, ttl time.Duration) (string, uint64, error) {
	start := rand.IntN(n)
	conn := kind == "conn"
	for i := 0; i < n; i++ {
		subj := l.names.Lease(kind, host, (start+i)%n)
		if conn && l.skip(subj) {
			continue
		}
		seq, err := l.publish(ctx, subj, 0, ttl)
		if err == nil {
			if conn {
				l.mu.Lock()
				l.held[subj] = true
				delete(l.taken, subj)
				l.mu.Unlock()
			}
			return subj, seq, nil
		}
		if streams.WrongLastSequence(err) {
			if conn {
				l.markTaken(subj)
			}
			continue // taken
		}
		return "", 0, fmt.Errorf("lease %s: %w", subj, err)
	}
	return "", 0, ErrBusy
}

// markTaken notes a slot another prober holds, for longer each time in a
// row; marks long expired go once there are many.
func (l *Leases) markTaken(subj string) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.taken) >= 4096 {
		for k, m := range l.taken {
			if now.Sub(m.until) > l.takenFor {
				delete(l.taken, k)
			}
		}
	}
	m := l.taken[subj]
	// In a row: found taken again within takenFor of its mark's end.
	if m.until.IsZero() || now.Sub(m.until) > l.takenFor {
		m.n = 0
	}
	l.taken[subj] = takenMark{until: now.Add(l.takenFor << min(m.n, 4)), n: m.n + 1}
}

// skip reports whether a connection slot is held here or was found taken
// lately.
func (l *Leases) skip(subj string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held[subj] {
		return true
	}
	m, ok := l.taken[subj]
	return ok && time.Now().Before(m.until)
}

func (l *Leases) publish(ctx context.Context, subj string, last uint64, ttl time.Duration) (uint64, error) {
	if strings.Contains(subj, ".lease.conn.") {
		l.asks.Add(1)
	}
	m := streams.ExpectLast(subj, []byte(l.cfg.Instance), last, ttl)
	seq, err := streams.Publish(ctx, l.nc, m)
	if errors.Is(err, jetstream.ErrNoStreamResponse) && l.remake(ctx) {
		seq, err = streams.Publish(ctx, l.nc, m)
	}
	return seq, err
}

// remakeEvery bounds how often a missing stream is made again: the
// callouts that found it missing at once make it once.
const remakeEvery = time.Second

// remake makes the lease stream again when nobody answers for it: a
// single nats-server forgets its memory streams when it restarts (a
// cluster keeps their settings). It reports whether the stream is there
// to be asked again.
func (l *Leases) remake(ctx context.Context) bool {
	l.remadeMu.Lock()
	defer l.remadeMu.Unlock()
	if time.Since(l.remade) < remakeEvery {
		return true // made by another callout a moment ago
	}
	js, err := jetstream.New(l.nc)
	if err != nil {
		return false
	}
	var drift *streams.DriftError
	if _, err := streams.Leases(ctx, js, l.names, l.cfg.Replicas); err != nil && !errors.As(err, &drift) {
		return false
	}
	l.remade = time.Now()
	return true
}

// purge gives a slot back at once; it is not waited for (the TTL frees it
// anyway).
func (l *Leases) purge(subj string) {
	l.mu.Lock()
	delete(l.held, subj)
	l.mu.Unlock()
	req, _ := json.Marshal(map[string]string{"filter": subj})
	_ = l.nc.Publish("$JS.API.STREAM.PURGE."+l.names.LeaseStream(), req)
}

// Busy reports whether err means the host is at its fleet-wide limit.
func (l *Leases) Busy(err error) bool { return errors.Is(err, ErrBusy) }
