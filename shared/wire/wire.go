// Package wire holds the messages the services exchange, encoded as msgpack
// with a version field. Decoding never panics: garbage or an unknown
// version is an error.
package wire

// Over 400 lines on purpose: the message types of the wire protocol, kept
// in one place so that a change of one is seen beside the others.

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/callout-mail/callout/shared/verdict"
)

// Version is the wire version this code speaks.
const Version = 1

// VerifyRequestVersion is the newest version of a VerifyRequest: 2 adds
// the transaction's other party and the client's HELO (Sender,
// Recipient, Helo), kept in the decision log. A request that carries
// none of them is encoded as version 1, which every ingest reads; one
// that carries them is version 2, which an older ingest refuses by name
// (ErrVersion) rather than dropping the fields unseen.
const VerifyRequestVersion = 2

// MaxMessage bounds any message before it is decoded.
const MaxMessage = 64 << 10

var (
	ErrEmpty      = errors.New("empty message")
	ErrTooLarge   = errors.New("message too large")
	ErrGarbage    = errors.New("undecodable message")
	ErrVersion    = errors.New("unsupported message version")
	ErrMissing    = errors.New("required field missing")
	ContentType   = "Content-Type"
	JSONMediaType = "application/json"
)

// Message is any wire message.
type Message interface {
	version() int
	validate() error
}

// VerifyRequest asks whether mail for (or from) Address should be accepted.
type VerifyRequest struct {
	V             int             `msgpack:"v" json:"v,omitempty"`
	Address       string          `msgpack:"address" json:"address"`
	Purpose       verdict.Purpose `msgpack:"purpose,omitempty" json:"purpose,omitempty"`               // recipient (default) or sender
	ClientAddress string          `msgpack:"client_address,omitempty" json:"client_address,omitempty"` // the SMTP client's IP, for the dictionary-attack brake
	TimeoutMS     int             `msgpack:"timeout_ms,omitempty" json:"timeout_ms,omitempty"`         // the caller's deadline; capped by the service
	Trace         bool            `msgpack:"trace,omitempty" json:"trace,omitempty"`                   // a fresh, recorded callout: only on callout.verify.trace
	// Version 2: what the MTA knows of the transaction besides the
	// address checked, for the decision log (never for the decision).
	Sender    string `msgpack:"sender,omitempty" json:"sender,omitempty"`       // the envelope sender, when a recipient is checked
	Recipient string `msgpack:"recipient,omitempty" json:"recipient,omitempty"` // the envelope recipient, when a sender is checked
	Helo      string `msgpack:"helo,omitempty" json:"helo,omitempty"`           // the client's HELO/EHLO name
}

// hasV2 reports fields of version 2.
func (m *VerifyRequest) hasV2() bool { return m.Sender != "" || m.Recipient != "" || m.Helo != "" }

// HostInfo is what an operator sees of one destination host of a prober.
type HostInfo struct {
	Host      string  `json:"host"`
	Breaker   string  `json:"breaker"`
	Rate      float64 `json:"rate"`
	Backoff   int     `json:"backoff"`
	InUse     int     `json:"in_use"`
	Idle      int     `json:"idle"`
	Reuse     bool    `json:"reuse"`
	PlainText bool    `json:"plaintext"`
	LastReply string  `json:"last_reply,omitempty"`
	// RefusesVerifier is the last domain whose control probe (RCPT
	// postmaster) this host refused: its 5xx say nothing of users.
	RefusesVerifier string  `json:"refuses_verifier,omitempty"`
	Calls           uint64  `json:"calls"`  // dialogues with the host since the prober started
	P50MS           float64 `json:"p50_ms"` // dialogue time, over the last 128
	P99MS           float64 `json:"p99_ms"`
}

// HostsReply is a prober's answer on the hosts subject (JSON), and the
// extra part of its stats messages.
type HostsReply struct {
	Instance string     `json:"instance"`
	Region   string     `json:"region,omitempty"` // in a fleet over regions`
	Waiting  int64      `json:"waiting"`
	Hosts    []HostInfo `json:"hosts"`
}

// TraceReply is a prober's answer to a traced job: the verdicts it
// published and the transcript.
type TraceReply struct {
	V          int               `msgpack:"v"`
	Verdict    verdict.Verdict   `msgpack:"verdict"`
	Facts      []verdict.Verdict `msgpack:"facts,omitempty"`
	Transcript []TraceLine       `msgpack:"transcript,omitempty"`
	Error      string            `msgpack:"error,omitempty"`
}

// VerifyReply is the decision for the MTA with the verdict behind it.
type VerifyReply struct {
	V        int              `msgpack:"v" json:"v"`
	Decision verdict.Decision `msgpack:"decision" json:"decision"`
	Verdict  *verdict.Verdict `msgpack:"verdict,omitempty" json:"verdict,omitempty"`
	Error    string           `msgpack:"error,omitempty" json:"error,omitempty"`
	// Monitor mode: the decision callout mode would have made, when it is
	// not an accept (the MTA is told to accept).
	Would       *verdict.Decision `msgpack:"would,omitempty" json:"would,omitempty"`
	WouldReject bool              `msgpack:"would_reject,omitempty" json:"would_reject,omitempty"`
	// Transcript of a traced callout (callout.verify.trace, operators only).
	Transcript []TraceLine `msgpack:"transcript,omitempty" json:"transcript,omitempty"`
}

// TraceLine is one line of a traced callout's transcript: "C" a command
// sent, "S" a reply line received, "*" a note (host chosen, connection,
// TLS, classification).
type TraceLine struct {
	AtMS float64 `msgpack:"at_ms" json:"at_ms"` // since the callout started
	Host string  `msgpack:"host,omitempty" json:"host,omitempty"`
	Kind string  `msgpack:"kind" json:"kind"`
	Text string  `msgpack:"text" json:"text"`
}

// ProbeJob asks a prober to call out for one address.
type ProbeJob struct {
	V           int             `msgpack:"v"`
	Address     string          `msgpack:"address"`
	Purpose     verdict.Purpose `msgpack:"purpose"`
	SkipRandom  bool            `msgpack:"skip_random,omitempty"` // the domain is known not to be a catch-all
	RequestedAt time.Time       `msgpack:"requested_at"`
	// Routed says the sender of the job decided where to call: Route (empty
	// or ["mx"]: by MX) and the probe senders. Otherwise the prober uses
	// its own view of the domain policy.
	Routed         bool     `msgpack:"routed,omitempty"`
	Route          []string `msgpack:"route,omitempty"`
	Sender         string   `msgpack:"sender,omitempty"`
	FallbackSender string   `msgpack:"fallback_sender,omitempty"`
	// Control is what is known of the domain's control probe: "" nothing
	// (the prober asks postmaster when a user-unknown needs it), or one
	// of the Control* values.
	Control string `msgpack:"control,omitempty"`
	// Refresh marks a re-probe of an old valid entry: delivered again,
	// it is answered only by a verdict from after it was asked (see the
	// prober's answered check).
	Refresh bool `msgpack:"refresh,omitempty"`
}

// What a job says of its domain's control probe.
const (
	ControlAccepted = "accepted" // postmaster accepted: user unknowns stand
	ControlRefused  = "refused"  // postmaster refused: the verifier is refused, no 5xx is a user unknown
	ControlOff      = "off"      // the domain's policy turns the control probe off
)

// LookupRequest asks the cache what it knows about Address. Senders lists the
// probe senders whose results count, in order ("" is the null sender).
type LookupRequest struct {
	V       int             `msgpack:"v"`
	Address string          `msgpack:"address"`
	Purpose verdict.Purpose `msgpack:"purpose,omitempty"` // the view; "" is recipient
	Senders []string        `msgpack:"senders,omitempty"`
	// Rev is the cache bucket revision the asker (an ingest's near cache)
	// had applied: a cachekeeper whose copy has come that far answers the
	// domain facts from it. 0: unknown, everything is read from the bucket.
	Rev uint64 `msgpack:"rev,omitempty"`
	// Job, when set, is queued by the cachekeeper on a miss (adjusted to
	// what the cache knows, see Adjust), sparing the asker a round trip
	// before its callout starts; the reply says how it went.
	Job *ProbeJob `msgpack:"job,omitempty"`
}

// LookupReply answers a LookupRequest. Verdict is the answer that applies
// (the address's own entry or a domain fact); CatchAll is the domain's
// catch-all fact when known, so a miss can skip the random-address check.
type LookupReply struct {
	V        int              `msgpack:"v"`
	Hit      bool             `msgpack:"hit"`
	Verdict  *verdict.Verdict `msgpack:"verdict,omitempty"`
	CatchAll *verdict.Verdict `msgpack:"catch_all,omitempty"`
	// Refused, on a miss, is the domain's refusal of a probe sender that a
	// later sender may still pass (the null sender refused, a fallback
	// configured): the next callout starts with the fallback.
	Refused *verdict.Verdict `msgpack:"refused,omitempty"`
	// Control, on a miss, is the domain's control probe fact, when known.
	Control *verdict.Verdict `msgpack:"control,omitempty"`
	// For a request with a Job, on a miss: queued, or one for the same
	// target was pending already, or QueueError says why it was not queued
	// (then the asker queues it). All unset: the job was not looked at.
	Queued     bool   `msgpack:"queued,omitempty"`
	Pending    bool   `msgpack:"pending,omitempty"`
	QueueError string `msgpack:"queue_error,omitempty"`
}

// Adjust fits a job to what a lookup's miss knows: a domain known not to
// be a catch-all skips the random-address check, and a domain known to
// refuse the first probe sender starts with the fallback sender.
func (r *LookupReply) Adjust(job *ProbeJob) {
	job.SkipRandom = r.CatchAll != nil && r.CatchAll.Status == verdict.NotCatchAll
	if f := r.Control; f != nil && job.Control == "" {
		job.Control = ControlAccepted
		if f.Status == verdict.Invalid {
			job.Control = ControlRefused
		}
	}
	if f := r.Refused; f != nil && verdict.SenderSpecific(*f) && f.Sender == job.Sender && job.FallbackSender != "" {
		job.Sender, job.FallbackSender = job.FallbackSender, ""
	}
}

// Flush scopes.
const (
	ScopeAll     = "all"
	ScopeDomain  = "domain"
	ScopeAddress = "address"
)

// FlushCommand removes cache entries. Only limits it to valid or invalid entries.
type FlushCommand struct {
	V       int            `msgpack:"v" json:"v,omitempty"`
	Scope   string         `msgpack:"scope" json:"scope"`
	Domain  string         `msgpack:"domain,omitempty" json:"domain,omitempty"`
	Address string         `msgpack:"address,omitempty" json:"address,omitempty"`
	Only    verdict.Status `msgpack:"only,omitempty" json:"only,omitempty"`
}

// RegionBeat is what a region's cachekeepers say every second (JSON, on
// subjects.RegionBeat): the region is there, whether it has applied every
// flush of the flush log, and the cache bucket revision of the last one
// it applied.
type RegionBeat struct {
	Region   string `json:"region"`
	CaughtUp bool   `json:"caught_up"`
	Rev      uint64 `json:"rev,omitempty"`
}

// FlushSeqHeader carries, on a flush over regions, the command's sequence
// in the flush log: a cachekeeper that applied it live skips it there.
const FlushSeqHeader = "Callout-Flush-Seq"

// FlushReply tells how many entries one cachekeeper removed.
type FlushReply struct {
	V       int    `msgpack:"v" json:"v"`
	Removed uint64 `msgpack:"removed" json:"removed"`
	Error   string `msgpack:"error,omitempty" json:"error,omitempty"`
	// Unconfirmed names the ingests (micro service ids) that did not
	// confirm the flush in time: they are fenced (they serve nothing
	// from their near caches until they have applied it).
	Unconfirmed []string `msgpack:"unconfirmed,omitempty" json:"unconfirmed,omitempty"`
	// Region is the region of the cachekeeper that answered ("" in a
	// fleet in one region). A flush over regions is answered with the
	// regions that applied it (Regions) and those that did not answer in
	// time (UnconfirmedRegions: they apply it from the flush log).
	Region             string   `msgpack:"region,omitempty" json:"region,omitempty"`
	Regions            []string `msgpack:"regions,omitempty" json:"regions,omitempty"`
	UnconfirmedRegions []string `msgpack:"unconfirmed_regions,omitempty" json:"unconfirmed_regions,omitempty"`
}

func (m *VerifyRequest) version() int { return m.V }

// Timeout is the deadline the request asks for (TimeoutMS; def when it
// names none), capped at max before it becomes a duration, so that a huge
// value cannot wrap to a negative one.
func (m *VerifyRequest) Timeout(def, max time.Duration) time.Duration {
	if m.TimeoutMS <= 0 {
		return min(def, max)
	}
	if int64(m.TimeoutMS) >= int64(max/time.Millisecond) {
		return max
	}
	return time.Duration(m.TimeoutMS) * time.Millisecond
}
func (m *VerifyReply) version() int   { return m.V }
func (m *ProbeJob) version() int      { return m.V }
func (m *LookupRequest) version() int { return m.V }
func (m *LookupReply) version() int   { return m.V }
func (m *FlushCommand) version() int  { return m.V }
func (m *FlushReply) version() int    { return m.V }
func (m *TraceReply) version() int    { return m.V }
func (m *verdictMsg) version() int    { return m.V }

func required(name, v string) error {
	if v == "" {
		return fmt.Errorf("%w: %s", ErrMissing, name)
	}
	return nil
}

func (m *VerifyRequest) validate() error {
	switch m.Purpose {
	case "", verdict.Recipient:
	case verdict.Sender:
		return nil // "" is the null sender
	default:
		return fmt.Errorf("%w: purpose %q", ErrGarbage, m.Purpose)
	}
	return required("address", m.Address)
}
func (m *VerifyReply) validate() error   { return nil }
func (m *ProbeJob) validate() error      { return required("address", m.Address) }
func (m *LookupRequest) validate() error { return required("address", m.Address) }
func (m *LookupReply) validate() error   { return nil }
func (m *FlushReply) validate() error    { return nil }
func (m *TraceReply) validate() error    { return nil }
func (m *FlushCommand) validate() error {
	switch m.Scope {
	case ScopeAll:
	case ScopeDomain:
		if err := required("domain", m.Domain); err != nil {
			return err
		}
	case ScopeAddress:
		if err := required("address", m.Address); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: scope %q (want all, domain or address)", ErrGarbage, m.Scope)
	}
	switch m.Only {
	case "", verdict.Valid, verdict.Invalid:
	default:
		return fmt.Errorf("%w: only %q (want valid or invalid)", ErrGarbage, m.Only)
	}
	return nil
}

// verdictMsg carries a verdict with its version.
type verdictMsg struct {
	V       int `msgpack:"v"`
	Verdict verdict.Verdict
}

func (m *verdictMsg) validate() error {
	if m.Verdict.Domain == "" || m.Verdict.Status == "" {
		return fmt.Errorf("%w: verdict domain and status", ErrMissing)
	}
	return nil
}

// appender is a message written byte by byte (fastenc.go).
type appender interface {
	AppendMsgpack(dst []byte) ([]byte, error)
}

// Encode marshals m with the current version.
func Encode(m Message) ([]byte, error) {
	return AppendEncode(make([]byte, 0, 384), m)
}

// AppendEncode is Encode appending to dst, for a caller that reuses its
// buffer (a reply, copied out by the publish that sends it).
func AppendEncode(dst []byte, m Message) ([]byte, error) {
	setVersion(m)
	if a, ok := m.(appender); ok {
		return a.AppendMsgpack(dst) // the hot path's messages: no encoder
	}
	b, err := msgpack.Marshal(m)
	return append(dst, b...), err
}

func setVersion(m Message) {
	switch t := m.(type) {
	case *VerifyRequest:
		t.V = Version
		if t.hasV2() {
			t.V = VerifyRequestVersion
		}
	case *VerifyReply:
		t.V = Version
	case *ProbeJob:
		t.V = Version
	case *LookupRequest:
		t.V = Version
	case *LookupReply:
		t.V = Version
	case *FlushCommand:
		t.V = Version
	case *FlushReply:
		t.V = Version
	case *TraceReply:
		t.V = Version
	case *verdictMsg:
		t.V = Version
	}
}

// Decode unmarshals data into m and checks its version and required fields.
func Decode(data []byte, m Message) error {
	if len(data) == 0 {
		return ErrEmpty
	}
	if len(data) > MaxMessage {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(data))
	}
	if f, ok := m.(fastDecoder); !ok || !f.decodeFast(&reader{b: data}) {
		if err := decodeReflect(data, m); err != nil {
			return err
		}
	}
	if err := checkVersion(m); err != nil {
		return err
	}
	return m.validate()
}

// checkVersion accepts the versions of m this side reads.
func checkVersion(m Message) error {
	v := m.version()
	if _, ok := m.(*VerifyRequest); ok && v >= Version && v <= VerifyRequestVersion {
		return nil
	}
	if v != Version {
		return fmt.Errorf("%w: %d (this side speaks %d)", ErrVersion, v, Version)
	}
	return nil
}

// decodeReflect is the general decoder, for every message and form.
func decodeReflect(data []byte, m Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrGarbage, r)
		}
	}()
	if err := checkMsgpack(data); err != nil {
		return err
	}
	if err := msgpack.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w: %v", ErrGarbage, err)
	}
	return nil
}

// DecodeJSON is Decode for the JSON form people type; a missing version
// means the current one.
func DecodeJSON(data []byte, m Message) error {
	if len(data) == 0 {
		return ErrEmpty
	}
	if len(data) > MaxMessage {
		return fmt.Errorf("%w: %d bytes", ErrTooLarge, len(data))
	}
	if err := json.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w: %v", ErrGarbage, err)
	}
	if m.version() == 0 {
		setVersion(m)
	}
	if err := checkVersion(m); err != nil {
		return err
	}
	return m.validate()
}

// EncodeVerdict and DecodeVerdict carry a verdict on its own.
func EncodeVerdict(v verdict.Verdict) ([]byte, error) {
	return Encode(&verdictMsg{Verdict: v})
}

// DecodeVerdict decodes what EncodeVerdict made.
func DecodeVerdict(data []byte) (verdict.Verdict, error) {
	var m verdictMsg
	if err := Decode(data, &m); err != nil {
		return verdict.Verdict{}, err
	}
	return m.Verdict, nil
}
