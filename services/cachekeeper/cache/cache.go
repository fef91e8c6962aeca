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
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/cachecopy"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
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
	if s.fl.Running() != nil {
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

func (s *Store) flushRecord(ctx context.Context, key string) (cachecopy.Record, uint64, error) {
	m, err := s.stream.GetLastMsgForSubject(ctx, "$KV."+s.bucket+"."+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return cachecopy.Record{}, 0, nil
	}
	if err != nil {
		return cachecopy.Record{}, 0, fmt.Errorf("read %s: %w", key, err)
	}
	var r cachecopy.Record
	if m.Header.Get("KV-Operation") == "" && m.Header.Get("Nats-Marker-Reason") == "" && len(m.Data) > 0 {
		_ = json.Unmarshal(m.Data, &r) // garbage reads as no flush
	}
	return r, m.Sequence, nil
}

// record notes that key's scope was flushed at now, for the status filter
// only. Every cachekeeper applies every flush: the record keeps the latest.
// It lives as long as the longest TTL, past which no verdict it could
// cover would be stored anyway.
func (s *Store) record(ctx context.Context, key string, only verdict.Status, now time.Time) (uint64, error) {
	subject := "$KV." + s.bucket + "." + key
	ttl := s.ttls.longest()
	for attempt := 0; attempt < 8; attempt++ {
		var r cachecopy.Record
		var last uint64
		var err error
		if attempt == 0 && s.fl.Running() != nil {
			// The copy knows the record and its revision, unless it is
			// behind: then the write is refused and the bucket is read.
			r, last = s.fl.RecordAt(key)
		} else if r, last, err = s.flushRecord(ctx, key); err != nil {
			return 0, err
		}
		if slot := r.Slot(only); now.After(*slot) {
			*slot = now
		}
		data, _ := json.Marshal(r)
		ack, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: data},
			jetstream.WithMsgTTL(ttl), jetstream.WithExpectLastSequencePerSubject(last))
		if err == nil {
			return ack.Sequence, nil
		}
		if streams.WrongLastSequence(err) {
			continue
		}
		return 0, fmt.Errorf("record flush %s: %w", key, err)
	}
	return 0, ErrConflict
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

// get returns the live entry under key.
func (s *Store) get(ctx context.Context, key string) (verdict.Verdict, bool, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return verdict.Verdict{}, false, nil
	}
	if err != nil {
		return verdict.Verdict{}, false, err
	}
	v, ok := s.fresh(key, e.Value())
	if !ok {
		return verdict.Verdict{}, false, nil
	}
	v.Source = verdict.SourceCache
	return v, true, nil
}

// Lookup returns what applies to addr: its own entry for one of the senders,
// else the domain's catch-all fact, else a domain access fact that covers
// the senders. CatchAll carries the domain's catch-all fact on a miss.
func (s *Store) Lookup(ctx context.Context, addr address.Address, purpose verdict.Purpose, senders []string) (wire.LookupReply, error) {
	return s.LookupAfter(ctx, addr, purpose, senders, 0)
}

// found is one key's live entry, if any.
type found struct {
	v   verdict.Verdict
	ok  bool
	err error
}

// LookupAfter is Lookup for an asker that had applied bucket revision rev
// (an ingest; 0: unknown). Once this cachekeeper's copy has come that far,
// the domain facts come from the copy and only the address's own keys are
// read: the copy then holds every change the asker saw, flushes included.
func (s *Store) LookupAfter(ctx context.Context, addr address.Address, purpose verdict.Purpose, senders []string, rev uint64) (wire.LookupReply, error) {
	if len(senders) == 0 {
		senders = []string{""}
	}
	keys := cachecopy.LookupKeys(addr, purpose, senders)
	res := make([]found, len(keys))
	read := keys
	copied := false
	if m := s.fl.Running(); rev > 0 && m != nil && m.Wait(rev, flushWait) {
		copied = true
		read = keys[:len(senders)]
		for i, data := range s.fl.HeldFacts(keys[len(senders):]...) {
			if data == nil {
				continue
			}
			if v, ok := s.fresh(keys[len(senders)+i], data); ok {
				res[len(senders)+i] = found{v: v, ok: true}
			}
		}
	}
	// The keys to read are read at once: one round trip to the bucket
	// instead of one after another (a miss reads them all anyway).
	var wg sync.WaitGroup
	for i, k := range read[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &res[i+1]
			r.v, r.ok, r.err = s.get(ctx, k)
		}()
	}
	res[0].v, res[0].ok, res[0].err = s.get(ctx, read[0])
	wg.Wait()
	for _, r := range res {
		if r.err != nil {
			return wire.LookupReply{}, r.err
		}
	}
	// An entry a flush covers is not served, even while its purge has not
	// reached it yet (a purge of many keys takes seconds, and a
	// cachekeeper may stop in between): the flush's record is in the
	// bucket before the purge starts.
	if err := s.dropCovered(ctx, res, copied); err != nil {
		return wire.LookupReply{}, err
	}
	var own, ca, acc *verdict.Verdict
	for i := range res[:len(senders)] {
		if res[i].ok {
			own = &res[i].v
			break
		}
	}
	if r := res[len(senders)]; r.ok {
		ca = &r.v
	}
	if r := res[len(senders)+1]; r.ok {
		acc = &r.v
	}
	var ctl *verdict.Verdict
	if r := res[len(senders)+2]; r.ok {
		ctl = &r.v
	}
	return cachecopy.Reply(addr, senders, own, ca, acc, ctl), nil
}

// dropCovered marks absent the entries found that a flush covers. copied
// says this cachekeeper's copy holds every record the asker had seen;
// otherwise the records are read from the bucket (only for what was found:
// a miss costs nothing more).
func (s *Store) dropCovered(ctx context.Context, res []found, copied bool) error {
	for i := range res {
		if !res[i].ok {
			continue
		}
		covered := false
		if copied {
			covered = s.fl.Covers(res[i].v)
		} else {
			var err error
			if covered, err = s.readFlushed(ctx, res[i].v); err != nil {
				return err
			}
		}
		if covered {
			res[i] = found{}
		}
	}
	return nil
}

// Flush removes entries in the command's scope and returns how many, with
// the bucket revision of its flush record. It first records the flush, so
// that a verdict whose callout started before it and arrives later is not
// stored (Put), and the ingests' near caches drop what it covers.
func (s *Store) Flush(ctx context.Context, c wire.FlushCommand) (removed, rev uint64, err error) {
	return s.FlushThen(ctx, c, nil)
}

// FlushThen is Flush that calls recorded with the flush record's revision
// once it is written, before the purge: what needs only the record (the
// ingests' confirmation) can go on meanwhile.
func (s *Store) FlushThen(ctx context.Context, c wire.FlushCommand, recorded func(rev uint64)) (removed, rev uint64, err error) {
	var filters []string
	var rec string
	switch c.Scope {
	case wire.ScopeAll:
		filters, rec = kvkey.EntryFilters(), kvkey.FlushAll
	case wire.ScopeDomain:
		d, err := address.NormalizeDomain(c.Domain)
		if err != nil {
			return 0, 0, err
		}
		filters, rec = kvkey.DomainFilters(d), kvkey.FlushDomain(d)
		if c.Only != "" {
			filters = filters[:1] // status filters apply to addresses
		}
	case wire.ScopeAddress:
		a, err := address.Parse(c.Address)
		if err != nil {
			return 0, 0, err
		}
		filters, rec = kvkey.AddressFilters(a.Domain, a.Local), kvkey.FlushAddress(a.Domain, a.Local)
		if c.Only == "" {
			// The local part in any other case: its keys are found by
			// listing the domain's (an operator's flush, not a hot path).
			others, err := s.otherCases(ctx, a)
			if err != nil {
				return 0, 0, err
			}
			filters = append(filters, others...)
		}
	default:
		return 0, 0, fmt.Errorf("unknown flush scope %q", c.Scope)
	}
	if rev, err = s.record(ctx, rec, c.Only, s.now()); err != nil {
		return 0, 0, err
	}
	if recorded != nil {
		recorded(rev)
	}
	if c.Only == "" && c.Scope == wire.ScopeAll {
		// Everything before the flush record goes in one purge by sequence
		// (much faster than by subject with a million entries). Older flush
		// records go too: the new one covers all they covered.
		records, err := s.subjects(ctx, "$KV."+s.bucket+".flush.>")
		if err != nil {
			return 0, rev, err
		}
		n, err := s.purgeBody(ctx, map[string]any{"seq": rev})
		if records > 0 && n >= records-1 {
			n -= records - 1 // the older records; the new one stays
		}
		return n, rev, err
	}
	if c.Only == "" {
		// The filters' purges are asked at once: one round trip.
		counts := make([]uint64, len(filters))
		errs := make([]error, len(filters))
		var wg sync.WaitGroup
		for i, f := range filters {
			wg.Add(1)
			go func() {
				defer wg.Done()
				counts[i], errs[i] = s.purge(ctx, "$KV."+s.bucket+"."+f)
			}()
		}
		wg.Wait()
		for _, n := range counts {
			removed += n
		}
		return removed, rev, errors.Join(errs...)
	}
	// Only valid or only invalid: entries must be read to know their status.
	lister, err := s.kv.ListKeysFiltered(ctx, filters...)
	if err != nil {
		return 0, 0, err
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	for _, k := range keys {
		v, ok, err := s.get(ctx, k)
		if err != nil {
			return removed, rev, err
		}
		if !ok || v.Status != c.Only {
			continue
		}
		n, err := s.purge(ctx, "$KV."+s.bucket+"."+k)
		removed += n
		if err != nil {
			return removed, rev, err
		}
	}
	return removed, rev, nil
}

// otherCases are the filters of a's address keys whose local part differs
// from a's only in case.
func (s *Store) otherCases(ctx context.Context, a address.Address) ([]string, error) {
	lister, err := s.kv.ListKeysFiltered(ctx, "addr."+kvkey.Token(a.Domain)+".>")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, err
	}
	prefix := "addr." + kvkey.Token(a.Domain) + "."
	seen := map[string]bool{a.Local: true}
	var out []string
	for k := range lister.Keys() {
		tok, _, _ := strings.Cut(strings.TrimPrefix(k, prefix), ".")
		local, err := kvkey.ParseToken(tok)
		if err != nil || seen[local] || !strings.EqualFold(local, a.Local) {
			continue
		}
		seen[local] = true
		out = append(out, kvkey.AddressFilters(a.Domain, local)...)
	}
	return out, nil
}

// purge removes every message on subject (a filter) with one API call and
// returns the count; it leaves no markers behind.
func (s *Store) purge(ctx context.Context, filter string) (uint64, error) {
	return s.purgeBody(ctx, map[string]any{"filter": filter})
}

// subjects counts the messages on subjects matching filter.
func (s *Store) subjects(ctx context.Context, filter string) (uint64, error) {
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}

// purgeBody sends one purge request (a filter, or a sequence to purge
// below) and returns how many messages went.
func (s *Store) purgeBody(ctx context.Context, body map[string]any) (uint64, error) {
	req, _ := json.Marshal(body)
	msg, err := s.nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE.KV_"+s.bucket, req)
	filter := fmt.Sprint(body)
	if err != nil {
		return 0, fmt.Errorf("purge %s: %w", filter, err)
	}
	var resp struct {
		Success bool                `json:"success"`
		Purged  uint64              `json:"purged"`
		Error   *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, fmt.Errorf("purge %s: %w", filter, err)
	}
	if resp.Error != nil {
		return 0, fmt.Errorf("purge %s: %w", filter, resp.Error)
	}
	return resp.Purged, nil
}

// Stats returns the number of live messages and bytes in the bucket.
func (s *Store) Stats(ctx context.Context) (msgs, bytes uint64, err error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.State.Msgs, info.State.Bytes, nil
}
