package domains

// The policy bucket: writes checked where they are made.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
)

// Bucket opens (creating if missing) the policy bucket of names.
func Bucket(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (jetstream.KeyValue, error) {
	name := n.DomainsBucket()
	kv, err := js.CreateKeyValue(ctx, streams.DomainsConfig(n, replicas))
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, name)
	}
	if err != nil {
		return nil, fmt.Errorf("domain policy bucket %s: %w", name, err)
	}
	return kv, nil
}

// Put checks and stores the policy of a domain: a policy that does not
// pass is refused here, where it is written, with a message naming the field.
func Put(ctx context.Context, kv jetstream.KeyValue, domain string, p Policy) error {
	_, err := PutRevision(ctx, kv, domain, p, AnyRevision)
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
func PutRevision(ctx context.Context, kv jetstream.KeyValue, domain string, p Policy, rev uint64) (uint64, error) {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return 0, fieldErr("domain", "%v", err)
	}
	if p, err = p.Normalize(d); err != nil {
		return 0, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return 0, err
	}
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
	return n, err
}
