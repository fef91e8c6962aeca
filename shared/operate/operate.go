// Package operate is what an operator does over NATS, for calloutctl and the
// console alike: verify, flush, edit domain policies (each change recorded
// in the audit trail), ask the probers about their destinations.
package operate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Client acts for one operator (Who, recorded in audit events).
type Client struct {
	NC    *nats.Conn
	JS    jetstream.JetStream
	Names subjects.Names
}

// New returns a client on an open connection.
func New(nc *nats.Conn, names subjects.Names) (*Client, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return &Client{NC: nc, JS: js, Names: names}, nil
}

// ErrNotRecorded is returned when a change was made but its audit event
// could not be stored.
var ErrNotRecorded = errors.New("the change is made, but not recorded in the audit trail")

// Made reports whether a change was made: err is nil, or says only that
// its audit event is missing.
func Made(err error) bool { return err == nil || errors.Is(err, ErrNotRecorded) }

// ErrUnavailable wraps a request no service answered.
var ErrUnavailable = errors.New("no service answered")

// Verify asks the ingest as an MTA does, or for a traced callout when
// req.Trace is set (admin only).
func (c *Client) Verify(ctx context.Context, req wire.VerifyRequest) (wire.VerifyReply, error) {
	var rep wire.VerifyReply
	// Operators' verifies are not mail: their own subject, which the
	// dictionary-attack brake does not count.
	subject := c.Names.VerifyConsole()
	if req.Trace {
		subject = c.Names.VerifyTrace()
	}
	timeout := req.Timeout(25*time.Second, 10*time.Minute)
	b, err := wire.Encode(&req)
	if err != nil {
		return rep, err
	}
	rctx, cancel := context.WithTimeout(ctx, timeout+2*time.Second)
	defer cancel()
	m, err := c.NC.RequestWithContext(rctx, subject, b)
	if err != nil {
		return rep, fmt.Errorf("verify: %w", unavailable(err))
	}
	if e := m.Header.Get(micro.ErrorHeader); e != "" && len(m.Data) == 0 {
		return rep, fmt.Errorf("verify: %s", e)
	}
	if err := wire.Decode(m.Data, &rep); err != nil {
		return rep, err
	}
	if rep.Error != "" {
		return rep, fmt.Errorf("verify: %s", rep.Error)
	}
	return rep, nil
}

func unavailable(err error) error {
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

// ErrBadFlush is returned for a flush command that names no valid scope.
var ErrBadFlush = errors.New("bad flush")

// FlushError names the field of a flush command that is wrong. It is an
// ErrBadFlush.
type FlushError struct {
	Field string // scope, domain, address or only
	Msg   string
}

func (e *FlushError) Error() string { return ErrBadFlush.Error() + ": " + e.Field + ": " + e.Msg }

// Unwrap makes a FlushError an ErrBadFlush.
func (e *FlushError) Unwrap() error { return ErrBadFlush }

func flushErr(field, format string, args ...any) error {
	return &FlushError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// CheckFlush normalizes a flush command or says what is wrong with it.
func CheckFlush(cmd wire.FlushCommand) (wire.FlushCommand, error) {
	switch cmd.Only {
	case "", verdict.Valid, verdict.Invalid:
	default:
		return cmd, flushErr("only", "%q (want valid or invalid)", cmd.Only)
	}
	switch cmd.Scope {
	case wire.ScopeAll:
		cmd.Domain, cmd.Address = "", ""
	case wire.ScopeDomain:
		d, err := address.NormalizeDomain(cmd.Domain)
		if err != nil {
			return cmd, flushErr("domain", "%v", err)
		}
		cmd.Domain, cmd.Address = d, ""
	case wire.ScopeAddress:
		a, err := address.Parse(cmd.Address)
		if err != nil {
			return cmd, flushErr("address", "%v", err)
		}
		cmd.Address, cmd.Domain = a.String(), ""
	default:
		return cmd, flushErr("scope", "%q (want all, domain or address)", cmd.Scope)
	}
	return cmd, nil
}

// Flush removes cache entries (every ingest's near cache too, before the
// answer) and records who did it.
func (c *Client) Flush(ctx context.Context, who string, cmd wire.FlushCommand) (wire.FlushReply, error) {
	var rep wire.FlushReply
	cmd, err := CheckFlush(cmd)
	if err != nil {
		return rep, err
	}
	b, err := wire.Encode(&cmd)
	if err != nil {
		return rep, err
	}
	regions, err := c.Regions(ctx)
	if err != nil {
		return rep, fmt.Errorf("flush: %w", unavailable(err))
	}
	if len(regions) > 0 {
		rep, err = c.flushRegions(ctx, b, regions)
	} else {
		rep, err = c.flushOne(ctx, b)
	}
	if err != nil {
		return rep, err
	}
	result := fmt.Sprintf("removed %d entries", rep.Removed)
	if len(rep.Unconfirmed) > 0 {
		result += fmt.Sprintf("; not confirmed in time, fenced until they apply it: %s", strings.Join(rep.Unconfirmed, ", "))
	}
	if len(rep.Regions) > 0 {
		result += "; regions " + strings.Join(rep.Regions, ", ")
	}
	if len(rep.UnconfirmedRegions) > 0 {
		result += "; not confirmed by regions " + strings.Join(rep.UnconfirmedRegions, ", ") + " (each applies it from the flush log before it answers again)"
	}
	return rep, c.record(ctx, who, audit.Event{What: audit.Flush, Scope: cmd.Scope, Domain: cmd.Domain, Address: cmd.Address, Only: string(cmd.Only),
		Result: result})
}

// flushOne asks the cachekeepers of a fleet in one region: the first
// answer is the bucket's.
func (c *Client) flushOne(ctx context.Context, b []byte) (wire.FlushReply, error) {
	var rep wire.FlushReply
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	m, err := c.NC.RequestWithContext(rctx, c.Names.Flush(), b)
	if err != nil {
		return rep, fmt.Errorf("flush: %w", unavailable(err))
	}
	if e := m.Header.Get(micro.ErrorHeader); e != "" {
		return rep, fmt.Errorf("flush: %s", e)
	}
	if err := wire.Decode(m.Data, &rep); err != nil {
		return rep, err
	}
	if rep.Error != "" {
		return rep, fmt.Errorf("flush: %s", rep.Error)
	}
	return rep, nil
}

// RegionWait is how long a flush over regions waits for the regions that
// have not answered once one has.
const RegionWait = 10 * time.Second

// flushRegions writes the flush to the flush log (replicated over the
// regions: once written, every region applies it, now or when it is
// back), then asks every region's cachekeepers and waits for an answer
// from each region of the fleet, naming those that did not answer.
func (c *Client) flushRegions(ctx context.Context, b []byte, regions []string) (wire.FlushReply, error) {
	var rep wire.FlushReply
	ack, err := c.JS.Publish(ctx, c.Names.FlushLog(), b)
	if err != nil {
		return rep, fmt.Errorf("flush log: %w", unavailable(err))
	}
	inbox := c.NC.NewRespInbox()
	sub, err := c.NC.SubscribeSync(inbox)
	if err != nil {
		return rep, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	msg := nats.NewMsg(c.Names.Flush())
	msg.Reply, msg.Data = inbox, b
	msg.Header.Set(wire.FlushSeqHeader, strconv.FormatUint(ack.Sequence, 10))
	if err := c.NC.PublishMsg(msg); err != nil {
		return rep, fmt.Errorf("flush: %w", unavailable(err))
	}
	waiting := map[string]bool{}
	for _, r := range regions {
		waiting[r] = true
	}
	deadline := time.Now().Add(time.Minute)
	for len(waiting) > 0 {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var one wire.FlushReply
		if m.Header.Get(micro.ErrorHeader) != "" || wire.Decode(m.Data, &one) != nil || one.Error != "" || !waiting[one.Region] {
			continue // the region applies it from the log
		}
		delete(waiting, one.Region)
		rep.Regions = append(rep.Regions, one.Region)
		rep.Removed = max(rep.Removed, one.Removed)
		rep.Unconfirmed = append(rep.Unconfirmed, one.Unconfirmed...)
		if d := time.Now().Add(RegionWait); len(rep.Regions) == 1 && d.Before(deadline) {
			deadline = d
		}
	}
	slices.Sort(rep.Regions)
	for r := range waiting {
		rep.UnconfirmedRegions = append(rep.UnconfirmedRegions, r)
	}
	slices.Sort(rep.UnconfirmedRegions)
	return rep, nil
}

// Regions lists the regions of a fleet spread over regions (none for a
// fleet in one region).
func (c *Client) Regions(ctx context.Context) ([]string, error) {
	kv, err := c.JS.KeyValue(ctx, c.Names.RegionsBucket())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	keys, err := kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	return keys, err
}

// Stored is one domain's stored policy.
type Stored struct {
	Domain   string          `json:"domain"`
	Revision uint64          `json:"revision"`
	Policy   domains.Policy  `json:"policy"`
	Raw      json.RawMessage `json:"raw,omitempty"`   // as stored, when it does not parse
	Error    string          `json:"error,omitempty"` // why the stored policy does not parse
	Updated  time.Time       `json:"updated"`
}

// ErrNoPolicy is returned for a domain without a policy.
var ErrNoPolicy = errors.New("no policy for this domain")

// bucket opens the policy buckets for a write, creating them when missing.
func (c *Client) bucket(ctx context.Context) (*domains.Store, error) {
	return domains.Bucket(ctx, c.JS, c.Names, 1)
}

// readBucket opens the policy buckets for reading (a read-only role may
// not create them); nil when there is none yet, and no Lists when there
// are no long lists yet.
func (c *Client) readBucket(ctx context.Context) (*domains.Store, error) {
	kv, err := c.JS.KeyValue(ctx, c.Names.DomainsBucket())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("domain policy bucket: %w", err)
	}
	st := &domains.Store{KeyValue: kv}
	st.Lists, err = c.JS.KeyValue(ctx, c.Names.ListsBucket())
	if err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("domain lists bucket: %w", err)
	}
	return st, nil
}

func stored(e jetstream.KeyValueEntry) Stored {
	s := Stored{Domain: e.Key(), Revision: e.Revision(), Updated: e.Created()}
	p, err := domains.Parse(e.Key(), e.Value())
	if err != nil {
		s.Raw, s.Error = json.RawMessage(e.Value()), err.Error()
		if !json.Valid(e.Value()) {
			s.Raw, _ = json.Marshal(string(e.Value()))
		}
		return s
	}
	s.Policy = p
	return s
}

// Policies lists every stored policy, by domain.
func (c *Client) Policies(ctx context.Context) ([]Stored, error) {
	out := []Stored{}
	kv, err := c.readBucket(ctx)
	if err != nil || kv == nil {
		return out, err
	}
	// One watch delivers every domain's current value: one consumer, not
	// a request per domain (10,000 domains in one read).
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // the current values are all there
				sort.Slice(out, func(i, j int) bool { return out[i].Domain < out[j].Domain })
				return out, nil
			}
			out = append(out, stored(e))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Policy returns one domain's stored policy.
func (c *Client) Policy(ctx context.Context, domain string) (Stored, error) {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return Stored{}, &domains.FieldError{Field: "domain", Msg: err.Error()}
	}
	kv, err := c.readBucket(ctx)
	if err != nil {
		return Stored{}, err
	}
	if kv == nil {
		return Stored{}, fmt.Errorf("%s: %w", d, ErrNoPolicy)
	}
	return load(ctx, kv, d)
}

// load reads a domain's stored policy with its lists, whole. A change
// landing between reading the policy and reading its chunks removes the
// chunks read for: then it reads again.
func load(ctx context.Context, kv *domains.Store, d string) (Stored, error) {
	for try := 1; ; try++ {
		st, err := loadOnce(ctx, kv, d)
		if !errors.Is(err, domains.ErrListIncomplete) || try == 3 {
			return st, err
		}
	}
}

func loadOnce(ctx context.Context, kv *domains.Store, d string) (Stored, error) {
	e, err := kv.Get(ctx, d)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Stored{}, fmt.Errorf("%s: %w", d, ErrNoPolicy)
	}
	if err != nil {
		return Stored{}, err
	}
	st := stored(e)
	if st.Error == "" {
		if st.Policy, err = kv.Load(ctx, d, st.Policy); err != nil {
			return Stored{}, err
		}
	}
	return st, nil
}

// SetPolicy validates and stores a domain's policy: rev is the revision
// the operator read (0 for a new domain, domains.AnyRevision for no check).
func (c *Client) SetPolicy(ctx context.Context, who, domain string, p domains.Policy, rev uint64) (Stored, error) {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return Stored{}, &domains.FieldError{Field: "domain", Msg: err.Error()}
	}
	kv, err := c.bucket(ctx)
	if err != nil {
		return Stored{}, err
	}
	// The audit event says what changed, lists as counts and samples of
	// entries added and removed: never the lists whole.
	was, err := auditForm(ctx, kv, d)
	if err != nil && !errors.Is(err, ErrNoPolicy) {
		return Stored{}, err
	}
	if _, err := domains.PutRevision(ctx, kv, d, p, rev); err != nil {
		return Stored{}, err
	}
	after, err := load(ctx, kv, d)
	if err != nil {
		return Stored{}, err
	}
	ev := audit.Event{What: audit.PolicySet, Domain: d}
	audit.PolicyChange(&ev, was, policyJSON(after))
	return after, c.record(ctx, who, ev)
}

// auditForm is a domain's stored policy as the audit compares it: with
// its lists whole, or as stored when it does not parse or its lists
// cannot be read (a change then repairs it).
func auditForm(ctx context.Context, kv *domains.Store, d string) ([]byte, error) {
	st, err := load(ctx, kv, d)
	if errors.Is(err, domains.ErrListIncomplete) {
		e, gerr := kv.Get(ctx, d)
		if gerr != nil {
			return nil, gerr
		}
		return e.Value(), nil
	}
	if err != nil {
		return nil, err
	}
	return policyJSON(st), nil
}

// policyJSON is a stored policy as the audit compares it.
func policyJSON(st Stored) []byte {
	if st.Error != "" {
		return st.Raw
	}
	b, _ := json.Marshal(st.Policy)
	return b
}

// RemovePolicy deletes a domain's policy (rev as for SetPolicy; 0 means no
// check).
func (c *Client) RemovePolicy(ctx context.Context, who, domain string, rev uint64) error {
	d, err := address.NormalizeDomain(domain)
	if err != nil {
		return &domains.FieldError{Field: "domain", Msg: err.Error()}
	}
	kv, err := c.bucket(ctx)
	if err != nil {
		return err
	}
	was, err := auditForm(ctx, kv, d)
	if err != nil {
		return err
	}
	if err := domains.Remove(ctx, kv, d, rev); err != nil {
		return err
	}
	ev := audit.Event{What: audit.PolicyRemove, Domain: d}
	audit.PolicyChange(&ev, was, nil)
	return c.record(ctx, who, ev)
}

// Hosts asks every prober for its destination hosts, collecting answers
// for wait.
func (c *Client) Hosts(ctx context.Context, wait time.Duration) ([]wire.HostsReply, error) {
	inbox := c.NC.NewRespInbox()
	sub, err := c.NC.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.NC.PublishRequest(c.Names.ProberHosts(), inbox, nil); err != nil {
		return nil, err
	}
	all := []wire.HostsReply{}
	deadline := time.Now().Add(wait)
	for {
		d := time.Until(deadline)
		if d <= 0 || ctx.Err() != nil {
			break
		}
		m, err := sub.NextMsg(d)
		if err != nil {
			break
		}
		var ph wire.HostsReply
		if json.Unmarshal(m.Data, &ph) == nil {
			all = append(all, ph)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Instance < all[j].Instance })
	return all, nil
}

// Audit returns the newest n audit events, oldest first.
func (c *Client) Audit(ctx context.Context, n int) ([]audit.Event, error) {
	return audit.List(ctx, c.JS, c.Names, n)
}

// Record adds an event to the audit trail as who.
func (c *Client) Record(ctx context.Context, who string, ev audit.Event) error {
	return c.record(ctx, who, ev)
}

func (c *Client) record(ctx context.Context, who string, ev audit.Event) error {
	ev.Who = who
	if err := audit.Record(ctx, c.JS, c.Names, ev); err != nil {
		return fmt.Errorf("%w: %w", ErrNotRecorded, err)
	}
	return nil
}
