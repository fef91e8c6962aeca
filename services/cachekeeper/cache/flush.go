package cache

// Flushes: the record first, then the purge.

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
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

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

// Flush removes entries in the command's scope and returns how many, with
// the bucket revision of its flush record. It first records the flush, so
// that a verdict whose callout started before it and arrives later is not
// stored (Put), and the ingests' near caches drop what it covers.
func (s *Store) Flush(ctx context.Context, c wire.FlushCommand) (removed, rev uint64, err error) {
	return s.FlushOnRecord(ctx, c, nil)
}

// FlushOnRecord is Flush that calls recorded with the flush record's revision
// once it is written, before the purge: what needs only the record (the
// ingests' confirmation) can go on meanwhile.
func (s *Store) FlushOnRecord(ctx context.Context, c wire.FlushCommand, recorded func(rev uint64)) (removed, rev uint64, err error) {
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
