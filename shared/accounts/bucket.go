package accounts

// The bucket, and each console's copy of it.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/streams"
	"github.com/callout-mail/callout/shared/subjects"
)

// Bucket opens (creating if missing) the accounts bucket of names.
func Bucket(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateKeyValue(ctx, streams.AccountsConfig(n, replicas))
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, n.AccountsBucket())
	}
	if err != nil {
		return nil, fmt.Errorf("accounts bucket %s: %w", n.AccountsBucket(), err)
	}
	return kv, nil
}

// ErrRevision is returned when a user was changed by someone else since
// it was read, or already exists when it is created.
var ErrRevision = errors.New("the user was changed by someone else")

// ErrNotFound is returned for a user or token that does not exist.
var ErrNotFound = errors.New("no such user or token")

// GetUser reads one user.
func GetUser(ctx context.Context, kv jetstream.KeyValue, name string) (User, error) {
	e, err := kv.Get(ctx, userKey(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return User{}, fmt.Errorf("%w: user %s", ErrNotFound, name)
	}
	if err != nil {
		return User{}, err
	}
	var u User
	if err := json.Unmarshal(e.Value(), &u); err != nil {
		return User{}, fmt.Errorf("user %s: stored value: %w", name, err)
	}
	u.Revision = e.Revision()
	return u, nil
}

// PutUser stores u if the stored one is still at rev (0: u is new).
func PutUser(ctx context.Context, kv jetstream.KeyValue, u User, rev uint64) (uint64, error) {
	u, err := u.Normalize()
	if err != nil {
		return 0, err
	}
	b, err := json.Marshal(u)
	if err != nil {
		return 0, err
	}
	var n uint64
	if rev == 0 {
		n, err = kv.Create(ctx, userKey(u.Name), b)
	} else {
		n, err = kv.Update(ctx, userKey(u.Name), b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || isWrongSequence(err) {
		return 0, fmt.Errorf("%w: %s", ErrRevision, u.Name)
	}
	return n, err
}

func isWrongSequence(err error) bool {
	var ae *jetstream.APIError
	return errors.As(err, &ae) && ae.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// DeleteUser removes a user and its tokens.
func DeleteUser(ctx context.Context, kv jetstream.KeyValue, name string, rev uint64) error {
	toks, err := List[Token](ctx, kv, "token.")
	if err != nil {
		return err
	}
	if err := kv.Delete(ctx, userKey(name), jetstream.LastRevision(rev)); err != nil {
		if isWrongSequence(err) {
			return fmt.Errorf("%w: %s", ErrRevision, name)
		}
		return err
	}
	for _, t := range toks {
		if t.User == name {
			if err := kv.Delete(ctx, tokenKey(t.ID)); err != nil {
				return fmt.Errorf("token %s of %s: %w", t.ID, name, err)
			}
		}
	}
	return nil
}

// PutToken stores a new token.
func PutToken(ctx context.Context, kv jetstream.KeyValue, t Token) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	_, err = kv.Create(ctx, tokenKey(t.ID), b)
	return err
}

// GetToken reads one token.
func GetToken(ctx context.Context, kv jetstream.KeyValue, id string) (Token, error) {
	e, err := kv.Get(ctx, tokenKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return Token{}, fmt.Errorf("%w: token %s", ErrNotFound, id)
	}
	if err != nil {
		return Token{}, err
	}
	var t Token
	return t, json.Unmarshal(e.Value(), &t)
}

// DeleteToken revokes a token.
func DeleteToken(ctx context.Context, kv jetstream.KeyValue, id string) error {
	return kv.Delete(ctx, tokenKey(id))
}

// List reads every user ("user.") or token ("token.") stored, by name.
func List[T User | Token](ctx context.Context, kv jetstream.KeyValue, prefix string) ([]T, error) {
	keys, err := kv.ListKeysFiltered(ctx, prefix+">")
	if err != nil {
		return nil, err
	}
	var out []T
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var v T
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			return nil, fmt.Errorf("%s: stored value: %w", k, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// Table is a console's copy of the bucket, kept by a watch, with the
// users of the users file before it: lookups on every request cost a map
// read.
type Table struct {
	mu     sync.RWMutex
	file   map[string]User
	users  map[string]User
	tokens map[string]Token
}

// NewTable is a table of the users file's users.
func NewTable(file []User) *Table {
	t := &Table{file: map[string]User{}, users: map[string]User{}, tokens: map[string]Token{}}
	for _, u := range file {
		u.File = true
		t.file[u.Name] = u
	}
	return t
}

// User is the user named name: the users file's, else the bucket's.
func (t *Table) User(name string) (User, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if u, ok := t.file[name]; ok {
		return u, true
	}
	u, ok := t.users[name]
	return u, ok
}

// Token is the token of id.
func (t *Table) Token(id string) (Token, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	tok, ok := t.tokens[id]
	return tok, ok
}

// Users are every user, by name.
func (t *Table) Users() []User {
	t.mu.RLock()
	out := make([]User, 0, len(t.file)+len(t.users))
	for _, u := range t.file {
		out = append(out, u)
	}
	for name, u := range t.users {
		if _, shadowed := t.file[name]; !shadowed {
			out = append(out, u)
		}
	}
	t.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Tokens are every token, by user then id.
func (t *Table) Tokens() []Token {
	t.mu.RLock()
	out := make([]Token, 0, len(t.tokens))
	for _, tok := range t.tokens {
		out = append(out, tok)
	}
	t.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		return out[i].User < out[j].User || out[i].User == out[j].User && out[i].ID < out[j].ID
	})
	return out
}

// FileUsers are the users file's users.
func (t *Table) FileUsers() []User {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]User, 0, len(t.file))
	for _, u := range t.file {
		out = append(out, u)
	}
	return out
}

// PutUser puts u in the table at once, for the writer to read its own
// write before the watch brings it (which then changes nothing).
func (t *Table) PutUser(u User) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.users[u.Name]; !ok || old.Revision < u.Revision {
		t.users[u.Name] = u
	}
}

// PutToken puts tok in the table at once (see PutUser).
func (t *Table) PutToken(tok Token) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tokens[tok.ID] = tok
}

// RemoveToken takes a revoked token out of the table at once.
func (t *Table) RemoveToken(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.tokens, id)
}

// RemoveUser takes a removed user and its tokens out of the table at once.
func (t *Table) RemoveUser(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.users, name)
	for id, tok := range t.tokens {
		if tok.User == name {
			delete(t.tokens, id)
		}
	}
}

// Watch fills the table from kv and keeps it in step until ctx ends; it
// returns once the stored values are read.
func (t *Table) Watch(ctx context.Context, kv jetstream.KeyValue, log *slog.Logger) error {
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("accounts watch: %w", err)
	}
	loaded := make(chan struct{})
	go func() {
		defer func() { _ = w.Stop() }()
		once := sync.OnceFunc(func() { close(loaded) })
		for {
			select {
			case <-ctx.Done():
				once()
				return
			case e, ok := <-w.Updates():
				if !ok {
					once()
					return
				}
				if e == nil {
					once()
					continue
				}
				t.apply(e, log)
			}
		}
	}()
	select {
	case <-loaded:
		return ctx.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (t *Table) apply(e jetstream.KeyValueEntry, log *slog.Logger) {
	t.mu.Lock()
	defer t.mu.Unlock()
	gone := e.Operation() != jetstream.KeyValuePut
	switch k := e.Key(); {
	case strings.HasPrefix(k, "user."):
		var u User
		if !gone {
			if err := json.Unmarshal(e.Value(), &u); err != nil || u.Name == "" {
				log.Warn("accounts: a stored user does not parse; it cannot log in", "key", k, "err", err)
				gone = true
			}
		}
		if gone {
			if name, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(k, "user.")); err == nil {
				delete(t.users, string(name))
			}
			return
		}
		u.Revision = e.Revision()
		t.users[u.Name] = u
	case strings.HasPrefix(k, "token."):
		id := strings.TrimPrefix(k, "token.")
		var tok Token
		if !gone {
			if err := json.Unmarshal(e.Value(), &tok); err != nil || tok.ID != id {
				log.Warn("accounts: a stored token does not parse; it is refused", "key", k, "err", err)
				gone = true
			}
		}
		if gone {
			delete(t.tokens, id)
			return
		}
		t.tokens[id] = tok
	}
}
