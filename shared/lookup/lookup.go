// Package lookup asks the cachekeepers what the cache holds for an address
// (the callout.cache.lookup endpoint): the one request the ingest, the
// prober and calloutctl make of them, and what can go wrong with it.
package lookup

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/wire"
)

// ErrRefused is a cachekeeper's error answer (micro's error headers): a
// request it could not read, or a cache it could not ask.
var ErrRefused = errors.New("cache lookup refused")

// ErrNoVerdict is a reply that says hit and carries no verdict.
var ErrNoVerdict = errors.New("cache lookup: hit without verdict")

// Ask sends req to subject (subjects.Names.CacheLookup) and returns the
// reply. ctx bounds the wait. A refusal wraps ErrRefused with the
// cachekeeper's text, a reply that does not decode wraps the decoder's
// error, and nobody answering is nats.ErrNoResponders.
func Ask(ctx context.Context, nc *nats.Conn, subject string, req *wire.LookupRequest) (wire.LookupReply, error) {
	b, err := wire.Encode(req)
	if err != nil {
		return wire.LookupReply{}, fmt.Errorf("cache lookup: %w", err)
	}
	m, err := nc.RequestWithContext(ctx, subject, b)
	if err != nil {
		return wire.LookupReply{}, fmt.Errorf("cache lookup: %w", err)
	}
	if e := m.Header.Get(micro.ErrorHeader); e != "" {
		return wire.LookupReply{}, fmt.Errorf("%w: %s %s", ErrRefused, m.Header.Get(micro.ErrorCodeHeader), e)
	}
	var r wire.LookupReply
	if err := wire.Decode(m.Data, &r); err != nil {
		return wire.LookupReply{}, fmt.Errorf("cache lookup reply: %w", err)
	}
	if r.Hit && r.Verdict == nil {
		return wire.LookupReply{}, ErrNoVerdict
	}
	return r, nil
}
