package cache

// Writing a verdict: only if newer, never over a valid with a failure, never one a flush covers.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/cachecopy"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Outcome of a Put.
type Outcome string

const (
	Written     Outcome = "written"
	NotCached   Outcome = "not_cached"   // this class is not stored
	Older       Outcome = "older"        // a newer verdict is already there
	KeptValid   Outcome = "kept_valid"   // a tempfail/unverifiable does not replace a valid entry
	AlreadyGone Outcome = "already_gone" // its TTL ran out before it arrived
	Flushed     Outcome = "flushed"      // its callout started before a flush of its scope
)

// ErrConflict means the entry kept changing under concurrent writers.
var ErrConflict = errors.New("cache entry changed concurrently")

// Put stores v unless a newer verdict is there, or v is a failure that must
// not replace a valid entry (optimistic positives, as in Postfix).
func (s *Store) Put(ctx context.Context, v verdict.Verdict) (Outcome, error) {
	ttl := s.ttls.For(v)
	if ttl <= 0 {
		return NotCached, nil
	}
	key, err := KeyOf(v)
	if err != nil {
		return "", err
	}
	if v.CheckedAt.IsZero() {
		v.CheckedAt = s.now()
	}
	v.ExpiresAt = v.CheckedAt.Add(ttl)
	v.Source = verdict.SourceProbe
	left := v.ExpiresAt.Sub(s.now())
	if left <= 0 {
		return AlreadyGone, nil
	}
	// The server counts TTLs in whole seconds, at least one; lookups check
	// expires_at themselves, so rounding up never serves a stale entry.
	msgTTL := max((left + time.Second - 1).Truncate(time.Second), time.Second)
	data, err := wire.EncodeEntry(v)
	if err != nil {
		return "", err
	}
	// The longest class needs no TTL of its own: the bucket's is the same
	// (and expires_at is checked on every read), and the header is a fifth
	// of a stored entry.
	if ttl >= s.ttls.longest() {
		msgTTL = 0
	}
	if flushed, err := s.flushedSince(ctx, v); err != nil || flushed {
		if err != nil {
			return "", err
		}
		return Flushed, nil
	}
	subject := "$KV." + s.bucket + "." + key
	// Most keys are new (a first callout, or one whose entry expired and
	// went): write first, and read what is there only when the write finds
	// a message under the key.
	var last uint64
	for attempt := 0; attempt < 8; attempt++ {
		seq, err := streams.Publish(ctx, s.js.Conn(), streams.ExpectLast(subject, data, last, msgTTL))
		if err == nil {
			return s.afterWrite(ctx, v, key, seq)
		}
		if !streams.WrongLastSequence(err) {
			return "", fmt.Errorf("write %s: %w", key, err)
		}
		cur, err := s.stream.GetLastMsgForSubject(ctx, subject)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			last = 0
		case err != nil:
			return "", fmt.Errorf("read %s: %w", key, err)
		default:
			last = cur.Sequence
			if old, ok := s.live(key, cur); ok {
				if !old.CheckedAt.Before(v.CheckedAt) {
					return Older, nil
				}
				if old.Status == verdict.Valid && (v.Status == verdict.TempFail || v.Status == verdict.Unverifiable) {
					return KeptValid, nil
				}
			}
		}
	}
	return "", ErrConflict
}

// afterWrite closes the race with a flush that recorded itself between the
// check before the write and the write: the flush purges after recording,
// so either it removed this entry or this read sees its record.
func (s *Store) afterWrite(ctx context.Context, v verdict.Verdict, key string, seq uint64) (Outcome, error) {
	var flushed bool
	var err error
	if m := s.fl.Running(); m != nil && m.Wait(seq, flushWait) {
		flushed = s.fl.Covers(v) // every record before the write is in the copy
	} else {
		flushed, err = s.readFlushed(ctx, v)
	}
	if err != nil || !flushed {
		return Written, err
	}
	if err := s.kv.Delete(ctx, key, jetstream.LastRevision(seq)); err != nil {
		if streams.WrongLastSequence(err) {
			return Older, nil // a newer verdict replaced it already
		}
		return "", fmt.Errorf("remove flushed %s: %w", key, err)
	}
	return Flushed, nil
}

// flushedSince reports whether a flush of v's scope came after its callout
// started, as far as this cachekeeper knows now: its copy of the records,
// or the bucket while the copy is not kept. (Only afterWrite's answer
// decides; this one spares a write.)
func (s *Store) flushedSince(ctx context.Context, v verdict.Verdict) (bool, error) {
	return s.covered(ctx, v, s.fl.Running() != nil)
}

// covered reports whether a flush record covers v: from the copy when it
// holds every record that matters (fromCopy), else from the bucket.
func (s *Store) covered(ctx context.Context, v verdict.Verdict, fromCopy bool) (bool, error) {
	if fromCopy {
		return s.fl.Covers(v), nil
	}
	return s.readFlushed(ctx, v)
}

// readFlushed is flushedSince from the records in the bucket.
func (s *Store) readFlushed(ctx context.Context, v verdict.Verdict) (bool, error) {
	for _, k := range cachecopy.Records(v) {
		r, _, err := s.flushRecord(ctx, k)
		if err != nil {
			return false, err
		}
		if r.Covers(v) {
			return true, nil
		}
	}
	return false, nil
}

// live decodes a stored message, reporting false for delete and expiry
// markers, garbage and entries past their time.
func (s *Store) live(key string, m *jetstream.RawStreamMsg) (verdict.Verdict, bool) {
	if m.Header.Get("KV-Operation") != "" || m.Header.Get("Nats-Marker-Reason") != "" || len(m.Data) == 0 {
		return verdict.Verdict{}, false
	}
	return s.fresh(key, m.Data)
}

// fresh decodes a stored verdict (see cachecopy.Fresh).
func (s *Store) fresh(key string, data []byte) (verdict.Verdict, bool) {
	return cachecopy.Fresh(key, data, s.now())
}
