// Package lease holds a destination host's limits across every prober: a
// connection slot or a rate token is a message on its own subject in one
// small stream, published only if the subject is empty (expected last
// sequence 0) and carrying its own TTL. A prober that dies keeps nothing
// past the TTL; a finished callout purges its slot.
//
// Subjects: <prefix>.lease.conn.<host>.<slot> (MAX_CONNS slots, TTL
// LEASE_TTL, renewed while the dialogue runs) and
// <prefix>.lease.rate.<host>.<token> (RATE tokens per second: each lives
// one second). Taking both costs one round trip: they are asked at once.
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
}

// Leases takes and gives back fleet-wide slots.
type Leases struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	names  subjects.Names
	tokens int           // rate tokens per host
	tokTTL time.Duration // life of one token
}

// New returns leases over the lease stream (streams.LeasesConfig; it must exist).
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, n subjects.Names) *Leases {
	// n tokens that each live ceil(n/rate) seconds allow rate per second on
	// average and never more than n in any such window.
	tokens := max(1, int(math.Floor(cfg.Rate)))
	ttl := time.Duration(math.Ceil(float64(tokens)/cfg.Rate)) * time.Second
	return &Leases{cfg: cfg, nc: nc, js: js, names: n, tokens: tokens, tokTTL: max(ttl, time.Second)}
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
		_, _, rateErr = l.take(ctx, "rate", tok, l.tokens, l.tokTTL)
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
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, _, err := l.take(ctx, "rate", kvkey.Token(host), l.tokens, l.tokTTL)
	return err
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
func (l *Leases) take(ctx context.Context, kind, host string, n int, ttl time.Duration) (string, uint64, error) {
	start := rand.IntN(n)
	for i := 0; i < n; i++ {
		subj := l.names.Lease(kind, host, (start+i)%n)
		seq, err := l.publish(ctx, subj, 0, ttl)
		if err == nil {
			return subj, seq, nil
		}
		if streams.WrongLastSequence(err) {
			continue // taken
		}
		return "", 0, fmt.Errorf("lease %s: %w", subj, err)
	}
	return "", 0, ErrBusy
}

func (l *Leases) publish(ctx context.Context, subj string, last uint64, ttl time.Duration) (uint64, error) {
	ack, err := l.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: []byte(l.cfg.Instance)},
		jetstream.WithMsgTTL(ttl), jetstream.WithExpectLastSequencePerSubject(last))
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

// purge gives a slot back at once; it is not waited for (the TTL frees it
// anyway).
func (l *Leases) purge(subj string) {
	req, _ := json.Marshal(map[string]string{"filter": subj})
	_ = l.nc.Publish("$JS.API.STREAM.PURGE."+l.names.LeaseStream(), req)
}

// Busy reports whether err means the host is at its fleet-wide limit.
func (l *Leases) Busy(err error) bool { return errors.Is(err, ErrBusy) }
