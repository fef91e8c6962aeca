// Package cache stores verdicts in one JetStream KV bucket with a TTL per
// class of verdict, answers lookups, and flushes by subject purge.
//
// One bucket, per-message TTLs: the bucket's MaxAge is the longest class
// (valid, 96 h by default), LimitMarkerTTL is on, History is 1, and every
// entry is written with its own TTL. One Get serves a lookup, where a bucket
// per class would need one Get per class.
package cache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/cachecopy"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
)

// TTLs is how long each class of verdict is kept. Zero means not cached.
type TTLs struct {
	Valid        time.Duration // the mailbox exists
	Invalid      time.Duration // user unknown
	Disabled     time.Duration // 5.2.1 mailbox disabled: accounts come back
	CatchAll     time.Duration // domain fact: random address accepted
	NotCatchAll  time.Duration // domain fact: random address refused
	Unverifiable time.Duration // the destination refuses us (address or domain)
	TempFail     time.Duration // 4xx, timeouts
}

// DefaultTTLs are the classic gateway figures.
var DefaultTTLs = TTLs{
	Valid: 96 * time.Hour, Invalid: 2 * time.Hour, Disabled: 30 * time.Minute,
	CatchAll: 96 * time.Hour, NotCatchAll: 2 * time.Hour, Unverifiable: 2 * time.Hour,
}

// For returns the TTL of v, zero when v is not stored.
func (t TTLs) For(v verdict.Verdict) time.Duration {
	if v.Kind == verdict.KindDomain {
		switch v.Status {
		case verdict.CatchAll:
			return t.CatchAll
		case verdict.NotCatchAll:
			return t.NotCatchAll
		case verdict.Unverifiable:
			return t.Unverifiable
		case verdict.Valid: // the control probe's postmaster accepted
			return t.Valid
		case verdict.Invalid: // postmaster refused
			return t.Invalid
		}
		return 0
	}
	switch v.Status {
	case verdict.Valid:
		return t.Valid
	case verdict.Invalid:
		if !verdict.Definite(v) {
			return 0
		}
		if v.Reason == verdict.ReasonMailboxDisabled {
			return t.Disabled
		}
		return t.Invalid
	case verdict.Unverifiable:
		return t.Unverifiable
	case verdict.TempFail:
		return t.TempFail
	}
	// catch_all address verdicts are covered by the domain fact.
	return 0
}

func (t TTLs) longest() time.Duration {
	return max(t.Valid, t.Invalid, t.Disabled, t.CatchAll, t.NotCatchAll, t.Unverifiable, t.TempFail, time.Second)
}

// Store is the cache bucket.
type Store struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	stream jetstream.Stream
	bucket string
	ttls   TTLs
	now    func() time.Time
	fl     *cachecopy.Copy
}

// Open creates the bucket when it is missing and returns the store. An
// existing bucket is left as it is (the cachekeeper's role may not change
// it); if its TTL is shorter than the longest class the store comes with a
// *streams.DriftError, and entries of that class end at the bucket's TTL.
func Open(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, n subjects.Names, replicas int, ttls TTLs) (*Store, error) {
	cfg := streams.CacheConfig(n, replicas, ttls.longest())
	bucket := cfg.Bucket
	kv, err := js.CreateKeyValue(ctx, cfg)
	var drift error
	if errors.Is(err, jetstream.ErrBucketExists) {
		if kv, err = js.KeyValue(ctx, bucket); err == nil {
			var st jetstream.KeyValueStatus
			if st, err = kv.Status(ctx); err == nil {
				switch {
				case st.LimitMarkerTTL() == 0:
					err = fmt.Errorf("cache bucket %s has no limit markers (per-entry TTLs): run `calloutctl setup` as admin", bucket)
				case st.TTL() < cfg.TTL:
					drift = &streams.DriftError{Name: bucket, What: fmt.Sprintf("ttl %v, want %v", st.TTL(), cfg.TTL)}
				}
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("cache bucket %s: %w", bucket, err)
	}
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return nil, fmt.Errorf("cache bucket stream: %w", err)
	}
	return &Store{nc: nc, js: js, kv: kv, stream: st, bucket: bucket, ttls: ttls, now: time.Now, fl: cachecopy.New(0)}, drift
}

// ErrNoView is a verdict that does not say whether a recipient or a sender
// check made it (a prober of the layout without views): it is not stored.
var ErrNoView = errors.New("verdict without purpose")

// KeyOf returns the KV key a verdict is stored under.
func KeyOf(v verdict.Verdict) (string, error) {
	return keyOf(v, v.Sender)
}

// SubjectKey is the key part of the subject a verdict travels on: its KV key
// without the probe sender.
func SubjectKey(v verdict.Verdict) (string, error) {
	return keyOf(v, "")
}

func keyOf(v verdict.Verdict, sender string) (string, error) {
	if v.Purpose != verdict.Recipient && v.Purpose != verdict.Sender {
		return "", fmt.Errorf("%w: %q", ErrNoView, v.Purpose)
	}
	if v.Kind == verdict.KindDomain {
		if v.Fact != kvkey.FactCatchAll && v.Fact != kvkey.FactAccess && v.Fact != kvkey.FactControl {
			return "", fmt.Errorf("unknown domain fact %q", v.Fact)
		}
		d, err := address.NormalizeDomain(v.Domain)
		if err != nil || d != v.Domain {
			return "", fmt.Errorf("domain fact for %q: not a normalized domain", v.Domain)
		}
		return kvkey.Domain(v.Domain, v.Purpose, v.Fact), nil
	}
	a, err := address.Parse(v.Address)
	if err != nil {
		return "", err
	}
	if a.Domain != v.Domain {
		return "", fmt.Errorf("verdict for %q names domain %q", v.Address, v.Domain)
	}
	return kvkey.Address(a.Domain, a.Local, v.Purpose, sender), nil
}

// Stats returns the number of live messages and bytes in the bucket.
func (s *Store) Stats(ctx context.Context) (msgs, bytes uint64, err error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.State.Msgs, info.State.Bytes, nil
}
