package operate

// Console users and API tokens: each change recorded in the audit trail.

import (
	"context"
	"encoding/json"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/accounts"
	"github.com/callout-mail/callout/shared/audit"
)

// Accounts opens the accounts bucket, creating it if missing.
func (c *Client) Accounts(ctx context.Context) (jetstream.KeyValue, error) {
	return accounts.Bucket(ctx, c.JS, c.Names, 1)
}

// shown is a user as an audit event keeps it: without its hash.
func shown(u *accounts.User) json.RawMessage {
	if u == nil {
		return nil
	}
	v := *u
	v.Hash = ""
	b, _ := json.Marshal(v)
	return b
}

// PutUser stores u (rev 0: a new user; else the revision read) and
// records it; note says what changed beyond the record (a password reset).
func (c *Client) PutUser(ctx context.Context, who string, u accounts.User, rev uint64, note string) (accounts.User, error) {
	kv, err := c.Accounts(ctx)
	if err != nil {
		return u, err
	}
	var before *accounts.User
	if rev != 0 {
		b, err := accounts.GetUser(ctx, kv, u.Name)
		if err != nil {
			return u, err
		}
		before = &b
	}
	if u.Revision, err = accounts.PutUser(ctx, kv, u, rev); err != nil {
		return u, err
	}
	u, _ = u.Normalize()
	ev := audit.Event{What: audit.UserSet, Target: u.Name, Before: shown(before), After: shown(&u), Result: note}
	return u, c.record(ctx, who, ev)
}

// RemoveUser deletes a user and its tokens, and records it.
func (c *Client) RemoveUser(ctx context.Context, who, name string, rev uint64) error {
	kv, err := c.Accounts(ctx)
	if err != nil {
		return err
	}
	before, err := accounts.GetUser(ctx, kv, name)
	if err != nil {
		return err
	}
	if err := accounts.DeleteUser(ctx, kv, name, rev); err != nil {
		return err
	}
	return c.record(ctx, who, audit.Event{What: audit.UserRemove, Target: name, Before: shown(&before)})
}

// AddToken stores a new token and records it (never its secret or hash).
func (c *Client) AddToken(ctx context.Context, who string, t accounts.Token) error {
	kv, err := c.Accounts(ctx)
	if err != nil {
		return err
	}
	if err := accounts.PutToken(ctx, kv, t); err != nil {
		return err
	}
	t.Hash = ""
	b, _ := json.Marshal(t)
	return c.record(ctx, who, audit.Event{What: audit.TokenAdd, Target: t.User, After: b})
}

// RevokeToken deletes a token and records it.
func (c *Client) RevokeToken(ctx context.Context, who, id string) error {
	kv, err := c.Accounts(ctx)
	if err != nil {
		return err
	}
	t, err := accounts.GetToken(ctx, kv, id)
	if err != nil {
		return err
	}
	if err := accounts.DeleteToken(ctx, kv, id); err != nil {
		return err
	}
	t.Hash = ""
	b, _ := json.Marshal(t)
	return c.record(ctx, who, audit.Event{What: audit.TokenRevoke, Target: t.User, Before: b})
}
