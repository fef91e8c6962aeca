// Package audit records every change an operator makes (a policy set or
// removed, a flush of any scope, a monitor switch) as an event on
// <prefix>.audit.<what>, kept 90 days in a stream with a size cap. Events are
// JSON, readable with `nats stream view`; `calloutctl audit` lists them.
package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/subjects"
)

// What an event records.
const (
	PolicySet    = "policy.set"
	PolicyRemove = "policy.rm"
	Flush        = "flush"
	Login        = "login"        // a console login
	LoginFailed  = "login.failed" // a refused one (wrong password, or limited)
	UserSet      = "user.set"     // a console user made or changed
	UserRemove   = "user.rm"
	TokenAdd     = "token.add" // an API token made
	TokenRevoke  = "token.rm"
	LogErase     = "log.erase" // a domain's decision records erased
)

// Kinds are every What, sorted.
var Kinds = []string{Flush, LogErase, Login, LoginFailed, PolicyRemove, PolicySet, TokenAdd, TokenRevoke, UserRemove, UserSet}

// Event is one operator change.
type Event struct {
	At      time.Time       `json:"at"`
	Who     string          `json:"who"` // the NATS user, or the console user
	What    string          `json:"what"`
	Domain  string          `json:"domain,omitempty"`
	Address string          `json:"address,omitempty"`
	Scope   string          `json:"scope,omitempty"` // flushes: all, domain, address
	Only    string          `json:"only,omitempty"`  // flushes: valid or invalid
	Before  json.RawMessage `json:"before,omitempty"`
	After   json.RawMessage `json:"after,omitempty"`
	Result  string          `json:"result,omitempty"` // e.g. "removed 12 entries"
	Client  string          `json:"client,omitempty"` // the console client's address
	Target  string          `json:"target,omitempty"` // users and tokens: the user acted on
	// Lists says what a policy change did to its mailbox and bypass lists;
	// Before and After then hold each list's size, never the list, so that
	// an event always fits in a message whatever the list's size.
	Lists map[string]ListChange `json:"lists,omitempty"`
}

// ListChange is what one change did to a list.
type ListChange struct {
	Count        int      `json:"count"` // entries after the change
	AddedCount   int      `json:"added_count"`
	RemovedCount int      `json:"removed_count"`
	Added        []string `json:"added,omitempty"` // the first ListSample of them
	Removed      []string `json:"removed,omitempty"`
}

// ListSample is how many added or removed entries an event names.
const ListSample = 50

// PolicyChange fills ev's Before, After and Lists from two stored policies
// (JSON; nil when there is none): the lists (the "mailboxes" and "bypass"
// arrays) are replaced by their sizes and summarized in Lists.
func PolicyChange(ev *Event, before, after []byte) {
	b, bl := summarize(before)
	a, al := summarize(after)
	ev.Before, ev.After = b, a
	for _, name := range []string{"mailboxes", "bypass"} {
		if len(bl[name]) == 0 && len(al[name]) == 0 {
			continue
		}
		if ev.Lists == nil {
			ev.Lists = map[string]ListChange{}
		}
		ev.Lists[name] = DiffList(bl[name], al[name])
	}
}

// DiffList is what going from list before to list after changed. Entries
// compare without case, as the ingests compare them.
func DiffList(before, after []string) ListChange {
	had := map[string]bool{}
	for _, e := range before {
		had[strings.ToLower(e)] = true
	}
	lc := ListChange{Count: len(after)}
	kept := map[string]bool{}
	for _, e := range after {
		if k := strings.ToLower(e); had[k] {
			kept[k] = true
			continue
		}
		lc.AddedCount++
		if len(lc.Added) < ListSample {
			lc.Added = append(lc.Added, e)
		}
	}
	for _, e := range before {
		if kept[strings.ToLower(e)] {
			continue
		}
		lc.RemovedCount++
		if len(lc.Removed) < ListSample {
			lc.Removed = append(lc.Removed, e)
		}
	}
	return lc
}

// summarize is a stored policy with its lists replaced by their sizes,
// and the lists. Other JSON is kept as it is, and what is not JSON as a
// string, so that the event still encodes.
func summarize(raw []byte) (json.RawMessage, map[string][]string) {
	if raw == nil {
		return nil, nil
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		if json.Valid(raw) {
			return json.RawMessage(raw), nil
		}
		s, _ := json.Marshal(string(raw)) // not JSON: kept, as a string
		return s, nil
	}
	lists := map[string][]string{}
	for _, name := range []string{"mailboxes", "bypass"} {
		var l []string
		if v, ok := fields[name]; ok && json.Unmarshal(v, &l) == nil {
			lists[name] = l
			fields[name], _ = json.Marshal(len(l))
		}
	}
	out, err := json.Marshal(fields)
	if err != nil {
		return json.RawMessage(raw), lists
	}
	return out, lists
}

// Limits of the audit stream: events are kept by age, with a size cap
// (the oldest go first past it). A count would let a flood of cheap events
// push last week's out; the console also limits flushes per user.
type Limits struct {
	MaxAge   time.Duration
	MaxBytes int64
}

// DefaultLimits keep 90 days of events, in at most 1 GiB.
var DefaultLimits = Limits{MaxAge: 90 * 24 * time.Hour, MaxBytes: 1 << 30}

// StreamConfig is the audit stream.
func StreamConfig(n subjects.Names, replicas int, l Limits) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        n.AuditStream(),
		Description: "callout operator changes (JSON)",
		Subjects:    []string{n.AuditAll()},
		MaxAge:      l.MaxAge,
		MaxBytes:    l.MaxBytes,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// Record stores ev (stamped now when At is zero), creating the stream with
// the default limits when it is missing.
func Record(ctx context.Context, js jetstream.JetStream, n subjects.Names, ev Event) error {
	if ev.At.IsZero() {
		ev.At = time.Now().UTC()
	}
	if ev.Who == "" {
		ev.Who = "unknown"
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	_, err = js.Publish(ctx, n.Audit(ev.What), b)
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		if _, cerr := js.CreateStream(ctx, StreamConfig(n, 1, DefaultLimits)); cerr != nil && !errors.Is(cerr, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("audit stream: %w", cerr)
		}
		_, err = js.Publish(ctx, n.Audit(ev.What), b)
	}
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

// List returns the newest events, at most n, oldest first.
func List(ctx context.Context, js jetstream.JetStream, names subjects.Names, n int) ([]Event, error) {
	s, err := js.Stream(ctx, names.AuditStream())
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	start := info.State.FirstSeq
	if n > 0 && info.State.LastSeq >= uint64(n) && info.State.LastSeq-uint64(n)+1 > start {
		start = info.State.LastSeq - uint64(n) + 1
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start})
	if err != nil {
		return nil, err
	}
	var out []Event
	for {
		batch, err := c.FetchNoWait(256)
		if err != nil {
			return out, err
		}
		got := 0
		for m := range batch.Messages() {
			got++
			var ev Event
			if json.Unmarshal(m.Data(), &ev) == nil {
				out = append(out, ev)
			}
			md, _ := m.Metadata()
			if md != nil && md.Sequence.Stream >= info.State.LastSeq {
				return out, nil
			}
		}
		if got == 0 {
			return out, batch.Error()
		}
	}
}
