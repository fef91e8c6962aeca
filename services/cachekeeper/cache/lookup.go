package cache

// Lookups: the address's own entry, else the domain's facts; never an entry a flush covers.

import (
	"context"
	"errors"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/cachecopy"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

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
	return s.LookupAsOf(ctx, addr, purpose, senders, 0)
}

// found is one key's live entry, if any.
type found struct {
	v   verdict.Verdict
	ok  bool
	err error
}

// LookupAsOf is Lookup for an asker that had applied bucket revision rev
// (an ingest; 0: unknown). Once this cachekeeper's copy has come that far,
// the domain facts come from the copy and only the address's own keys are
// read: the copy then holds every change the asker saw, flushes included.
func (s *Store) LookupAsOf(ctx context.Context, addr address.Address, purpose verdict.Purpose, senders []string, rev uint64) (wire.LookupReply, error) {
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
		covered, err := s.covered(ctx, res[i].v, copied)
		if err != nil {
			return err
		}
		if covered {
			res[i] = found{}
		}
	}
	return nil
}
