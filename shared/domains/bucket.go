package domains

// The policy bucket: writes checked where they are made.

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
)

// Bucket opens (creating if missing) the policy bucket of names and the
// bucket of long lists.
func Bucket(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (*Store, error) {
	st, err := PolicyBucket(ctx, js, n, replicas)
	if err != nil {
		return nil, err
	}
	if st.Lists, err = openKV(ctx, js, streams.ListsConfig(n, replicas)); err != nil {
		return nil, fmt.Errorf("domain lists bucket: %w", err)
	}
	return st, nil
}

// PolicyBucket opens (creating if missing) the policy bucket only, for a
// reader that needs no list (the prober).
func PolicyBucket(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (*Store, error) {
	kv, err := openKV(ctx, js, streams.DomainsConfig(n, replicas))
	if err != nil {
		return nil, fmt.Errorf("domain policy bucket: %w", err)
	}
	return &Store{KeyValue: kv}, nil
}

func openKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, cfg.Bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// Put checks and stores the policy of a domain: a policy that does not
// pass is refused here, where it is written, with a message naming the field.
func Put(ctx context.Context, st *Store, domain string, p Policy) error {
	_, err := PutRevision(ctx, st, domain, p, AnyRevision)
	return err
}

// AnyRevision as the expected revision writes whatever is stored.
const AnyRevision = ^uint64(0)

// ErrRevision is returned when the stored policy is not the revision the
// writer read: somebody else changed it in between.
var ErrRevision = errors.New("the domain policy was changed by someone else")

// PutRevision is Put with a compare-and-set: rev is the revision the
// writer read (0: the domain must have no policy; AnyRevision: no check).
// It returns the new revision.
//
// A list longer than InlineBytes is stored in chunks (lists.go), written
// before the policy that names them; chunks no longer named are removed
// after it. A policy read with its lists in chunks must be given with
// them loaded (Store.Load), as every list is written from p.
func PutRevision(ctx context.Context, st *Store, domain string, p Policy, rev uint64) (uint64, error) {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return 0, fieldErr("domain", "%v", err)
	}
	if !p.Complete() {
		return 0, fmt.Errorf("%w: %s", ErrListIncomplete, d)
	}
	p.refs = nil
	if p, err = p.Normalize(d); err != nil {
		return 0, err
	}
	b, chunks, err := encode(d, p)
	if err != nil {
		return 0, err
	}
	mark, err := st.writeChunks(ctx, d, chunks, rev)
	if err != nil {
		return 0, err
	}
	kv := st.KeyValue
	var n uint64
	switch rev {
	case AnyRevision:
		n, err = kv.Put(ctx, d, b)
	case 0:
		n, err = kv.Create(ctx, d, b)
		if errors.Is(err, jetstream.ErrKeyExists) {
			err = fmt.Errorf("%w: %s already has a policy", ErrRevision, d)
		}
	default:
		n, err = kv.Update(ctx, d, b, rev)
	}
	if streams.WrongLastSequence(err) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		err = fmt.Errorf("%w (%s)", ErrRevision, d)
	}
	if err != nil {
		return 0, err
	}
	keep := map[string]bool{}
	for k := range chunks {
		keep[k] = true
	}
	// The policy stands; chunks left over are only space.
	_ = st.removeChunks(ctx, d, keep, mark)
	return n, nil
}

// Remove deletes the policy of a domain (at revision rev; 0 or AnyRevision:
// whatever is stored) and then its list chunks.
func Remove(ctx context.Context, st *Store, domain string, rev uint64) error {
	mark, err := st.writeChunks(ctx, domain, nil, AnyRevision)
	if err != nil {
		return err
	}
	var opts []jetstream.KVDeleteOpt
	if rev != 0 && rev != AnyRevision {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	if err := st.Delete(ctx, domain, opts...); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || streams.WrongLastSequence(err) {
			return fmt.Errorf("%w (%s)", ErrRevision, domain)
		}
		return err
	}
	_ = st.removeChunks(ctx, domain, nil, mark)
	return nil
}
