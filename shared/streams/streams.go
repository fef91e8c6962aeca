// Package streams defines the JetStream streams and buckets the services
// share. Each service creates what it uses when it is missing; the
// definitions are identical, so whichever starts first creates them.
// Changing settings of what exists is the admin's (Setup).
package streams

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/audit"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/subjects"
)

// ProbeMaxAge drops a job nobody finished, so its subject takes new jobs again.
const ProbeMaxAge = 15 * time.Minute

// Transient is the persist mode of a stream whose messages are work in
// passing (jobs, verdicts on their way to a cache, decision records):
// on one server (one replica) its writes are flushed to disk in the
// background rather than each before its acknowledgement, which cost
// nats-server a file write per job, per verdict and per removal. A hard
// kill of the server loses the last few milliseconds of them: their
// requests are deferred or called out again, never answered wrong. With
// replicas the server flushes in the background already, the replicas
// keeping what one loses. Flush records and the cache are never
// transient: a lost flush would bring back a verdict it removed. The
// server cannot change the mode of a stream that exists: one made with
// the other mode keeps it (an idle probe or verdict stream can be
// deleted for the services to make it again).
func Transient(replicas int) jetstream.PersistModeType {
	if replicas > 1 {
		return jetstream.DefaultPersistMode
	}
	return jetstream.AsyncPersistMode
}

// VerdictMaxAge bounds how long verdicts wait for a cachekeeper.
const VerdictMaxAge = 24 * time.Hour

// ProbesConfig is the work queue of probe jobs: one subject per target, at
// most one job per subject, a second publish refused (error 10077) while
// the first is pending. That is what coalesces callouts across instances.
func ProbesConfig(n subjects.Names, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:                 n.ProbeStream(),
		Description:          "callout probe jobs, one per target address",
		Subjects:             []string{n.ProbeAll()},
		Retention:            jetstream.WorkQueuePolicy,
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		MaxAge:               ProbeMaxAge,
		Storage:              jetstream.FileStorage,
		Replicas:             max(replicas, 1),
		PersistMode:          Transient(replicas),
	}
}

// VerdictsConfig is the stream that keeps verdicts until a cachekeeper has
// stored them, so none is lost while no cachekeeper runs.
//
// In a fleet spread over regions, every region's cachekeepers store every
// verdict (a consumer per region): the stream keeps a verdict until each
// region has it (interest retention), and a region that comes back
// after a loss catches up from its consumer.
func VerdictsConfig(n subjects.Names, replicas int) jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:        n.VerdictStream(),
		Description: "callout verdicts waiting to be cached",
		Subjects:    []string{n.VerdictAll()},
		Retention:   jetstream.WorkQueuePolicy,
		MaxAge:      VerdictMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		PersistMode: Transient(replicas),
	}
	if n.Region != "" {
		cfg.Retention = jetstream.InterestPolicy
		cfg.Description = "callout verdicts waiting to be cached in every region"
	}
	return cfg
}

// FlushLogMaxAge is how long the flush log keeps a flush: a region away
// longer flushes its whole cache when it returns.
const FlushLogMaxAge = 7 * 24 * time.Hour

// FlushLogConfig is the stream of flushes over regions (see
// subjects.FlushLog).
func FlushLogConfig(n subjects.Names, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        n.FlushLogStream(),
		Description: "callout flushes, for regions that were away",
		Subjects:    []string{n.FlushLog()},
		MaxAge:      FlushLogMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// RegionsConfig is the bucket of the fleet's regions: each region's
// cachekeepers put the region in it, and a flush waits for every region
// named there.
func RegionsConfig(n subjects.Names, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: n.RegionsBucket(), History: 1, Replicas: max(replicas, 1),
		Description: "callout regions of the fleet",
	}
}

// RegisterRegion puts region in the fleet's list of regions (the regions
// bucket), with the cache bucket it keeps.
func RegisterRegion(ctx context.Context, kv jetstream.KeyValue, prefix, region string) error {
	b, _ := json.Marshal(map[string]string{"bucket": subjects.NewIn(prefix, region).CacheBucket()})
	if _, err := kv.Put(ctx, region, b); err != nil {
		return fmt.Errorf("register region %s: %w", region, err)
	}
	return nil
}

// RegionTag is the server tag that places a region's own streams on the
// region's servers (nats-server's server_tags).
func RegionTag(region string) string { return "region:" + region }

// DomainsConfig is the bucket of per-domain policy. Its history lets a bad
// stored policy fall back to the last good one.
func DomainsConfig(n subjects.Names, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: n.DomainsBucket(), History: 5, Replicas: max(replicas, 1),
		Description: "callout per-domain policy (JSON)",
	}
}

// ListsConfig is the bucket of the policies' long lists: chunks named by
// their content, which a policy record lists (see package domains). A
// chunk never changes once written, so no history is kept. A chunk no
// policy names is purged with a marker that expires (per-message TTLs,
// which LimitMarkerTTL turns on), so removed chunks leave nothing behind.
func ListsConfig(n subjects.Names, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: n.ListsBucket(), History: 1, Replicas: max(replicas, 1),
		Description:    "callout policy lists in chunks (one entry per line)",
		LimitMarkerTTL: time.Hour,
	}
}

// AccountsConfig is the bucket of the console's users and API tokens
// (JSON; passwords as bcrypt hashes, tokens as SHA-256).
func AccountsConfig(n subjects.Names, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: n.AccountsBucket(), History: 5, Replicas: max(replicas, 1),
		Description: "callout console users and API tokens (JSON)",
	}
}

// CacheConfig is the verdict bucket: one bucket with per-entry TTLs, its
// MaxAge the longest TTL class, limit markers on, no history.
//
// A region's bucket is placed on its region's servers, one replica: the
// servers of a fleet over regions keep one replica of the fleet's
// streams per region (unique_tag), so a region holds one of its own.
// Its verdicts are all in the verdict stream, so the bucket can be
// refilled from there.
func CacheConfig(n subjects.Names, replicas int, maxAge time.Duration) jetstream.KeyValueConfig {
	if n.Region != "" {
		cfg := cacheConfig(n, 1, maxAge)
		cfg.Placement = &jetstream.Placement{Tags: []string{RegionTag(n.Region)}}
		cfg.Description += "; region " + n.Region
		return cfg
	}
	return cacheConfig(n, replicas, maxAge)
}

func cacheConfig(n subjects.Names, replicas int, maxAge time.Duration) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         n.CacheBucket(),
		Description:    "callout verdicts (msgpack), keys addr.<domain>.<local>.<view>[.<sender>], domain.<domain>.<view>.<fact>, flush.<scope>",
		History:        1,
		TTL:            maxAge,
		LimitMarkerTTL: time.Minute,
		Storage:        jetstream.FileStorage,
		Replicas:       max(replicas, 1),
	}
}

// LeasesConfig is the stream of destination limits across probers: memory,
// per-message TTLs, one message per subject, no delete markers (an
// expired lease simply goes).
func LeasesConfig(n subjects.Names, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              n.LeaseStream(),
		Description:       "callout destination limits across probers (connection slots, rate tokens)",
		Subjects:          []string{n.LeaseAll()},
		MaxMsgsPerSubject: 1,
		AllowMsgTTL:       true,
		MaxAge:            time.Hour,
		Storage:           jetstream.MemoryStorage,
		Replicas:          max(replicas, 1),
	}
}

// Leases ensures the lease stream exists (see Ensure).
func Leases(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (jetstream.Stream, error) {
	return Ensure(ctx, js, LeasesConfig(n, replicas))
}

// Probes ensures the probe job stream exists (see Ensure).
func Probes(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (jetstream.Stream, error) {
	return Ensure(ctx, js, ProbesConfig(n, replicas))
}

// Verdicts ensures the verdict stream exists (see Ensure).
func Verdicts(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (jetstream.Stream, error) {
	return Ensure(ctx, js, VerdictsConfig(n, replicas))
}

// DriftError says a stream or bucket exists with other settings than this
// instance would give it. Services never change what exists (their roles
// may not): they run with it and say so; `calloutctl setup`, as admin,
// applies the settings.
type DriftError struct {
	Name, What string
}

func (e *DriftError) Error() string {
	return fmt.Sprintf("%s exists with other settings (%s): run `calloutctl setup` as admin to apply them", e.Name, e.What)
}

// Warn logs a DriftError and clears it; other errors pass.
func Warn(log *slog.Logger, err error) error {
	var d *DriftError
	if errors.As(err, &d) {
		log.Warn("settings differ", "name", d.Name, "differ", d.What, "fix", "calloutctl setup")
		return nil
	}
	return err
}

// Ensure creates the stream when it is missing. An existing stream is left
// as it is; if its settings differ, the stream comes with a *DriftError.
// (Services start together, and concurrent no-op updates race with
// consumer creation in the server; and no service role may update.)
func Ensure(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.CreateStream(ctx, cfg)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	s, err = js.Stream(ctx, cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	if d := streamDiff(s.CachedInfo().Config, cfg); d != "" {
		return s, &DriftError{Name: cfg.Name, What: d}
	}
	return s, nil
}

func streamDiff(cur, want jetstream.StreamConfig) string {
	var d []string
	if cur.MaxAge != want.MaxAge {
		d = append(d, fmt.Sprintf("max_age %v, want %v", cur.MaxAge, want.MaxAge))
	}
	if cur.Replicas != want.Replicas {
		d = append(d, fmt.Sprintf("replicas %d, want %d", cur.Replicas, want.Replicas))
	}
	// The server gives an unset per-subject limit (0) as -1.
	unset := func(n int64) int64 {
		if n <= 0 {
			return -1
		}
		return n
	}
	if unset(cur.MaxMsgsPerSubject) != unset(want.MaxMsgsPerSubject) || cur.DiscardNewPerSubject != want.DiscardNewPerSubject || cur.Discard != want.Discard {
		d = append(d, "discard policy")
	}
	if cur.Description != want.Description {
		d = append(d, "description")
	}
	return strings.Join(d, ", ")
}

// Setup creates or updates every stream and bucket with the given settings:
// the admin's one-time (or on-change) step. It returns what it did.
func Setup(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int, cacheMaxAge time.Duration) ([]string, error) {
	return SetupWith(ctx, js, n, replicas, cacheMaxAge, DefaultLimits)
}

// Limits are the limits of the streams that keep records for operators.
type Limits struct {
	Audit     audit.Limits
	Decisions decisions.Limits
}

// DefaultLimits are the streams' limits when none are set.
var DefaultLimits = Limits{Audit: audit.DefaultLimits, Decisions: decisions.DefaultLimits}

// SetupWith is Setup with the limits of the audit stream and the
// decision log and, for a fleet over regions, its regions: then the
// verdict stream keeps each verdict for every region, each region gets
// its cache bucket and its decision log, and the flush log and the list
// of regions are made.
func SetupWith(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int, cacheMaxAge time.Duration, lim Limits, regions ...string) ([]string, error) {
	var done []string
	verdicts, caches := VerdictsConfig(n, replicas), []jetstream.KeyValueConfig{CacheConfig(n, replicas, cacheMaxAge)}
	extra := []jetstream.StreamConfig{decisions.StreamConfig(n, replicas, lim.Decisions, nil)}
	if len(regions) > 0 {
		verdicts, caches, extra = VerdictsConfig(subjects.NewIn(n.Prefix, regions[0]), replicas), nil, nil
		for _, r := range regions {
			rn := subjects.NewIn(n.Prefix, r)
			caches = append(caches, CacheConfig(rn, replicas, cacheMaxAge))
			extra = append(extra, decisions.StreamConfig(rn, replicas, lim.Decisions, &jetstream.Placement{Tags: []string{RegionTag(r)}}))
		}
		extra = append(extra, FlushLogConfig(n, replicas))
	}
	for _, cfg := range append([]jetstream.StreamConfig{ProbesConfig(n, replicas), verdicts, LeasesConfig(n, replicas), audit.StreamConfig(n, replicas, lim.Audit)}, extra...) {
		if cur, err := js.Stream(ctx, cfg.Name); err == nil {
			// The server cannot change a stream's persist mode: an
			// existing stream keeps its own (see Transient).
			cfg.PersistMode = cur.CachedInfo().Config.PersistMode
		}
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return done, fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
		done = append(done, "stream "+cfg.Name)
	}
	for _, cfg := range append([]jetstream.KeyValueConfig{DomainsConfig(n, replicas), ListsConfig(n, replicas), AccountsConfig(n, replicas), decisions.HistoryConfig(n, replicas)}, caches...) {
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return done, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
		}
		done = append(done, "bucket "+cfg.Bucket)
	}
	if len(regions) > 0 {
		kv, err := js.CreateOrUpdateKeyValue(ctx, RegionsConfig(n, replicas))
		if err != nil {
			return done, fmt.Errorf("bucket %s: %w", n.RegionsBucket(), err)
		}
		for _, r := range regions {
			if err := RegisterRegion(ctx, kv, n.Prefix, r); err != nil {
				return done, err
			}
		}
		done = append(done, "bucket "+n.RegionsBucket()+" (regions "+strings.Join(regions, ", ")+")")
	}
	return done, nil
}

// QueueJob publishes an encoded probe job to its subject and waits for the
// stream's answer; pending says a job for the same target was already
// queued or in flight (the stream keeps one per target).
func QueueJob(ctx context.Context, js jetstream.JetStream, subject string, job []byte) (pending bool, err error) {
	_, err = Publish(ctx, js.Conn(), &nats.Msg{Subject: subject, Data: job})
	switch {
	case err == nil:
		return false, nil
	case JobPending(err):
		return true, nil
	}
	return false, fmt.Errorf("queue job: %w", err)
}

// JobPending reports whether a publish failed because a job for the same
// target is already queued or in flight (error 10077, "maximum messages per
// subject exceeded").
func JobPending(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10077 && strings.Contains(apiErr.Description, "per subject")
}

// LastMsg returns the data of the last message on subject in stream, by
// the stream's API (one request; the caller needs permission for
// $JS.API.STREAM.MSG.GET.<stream>). ok is false when there is none.
func LastMsg(ctx context.Context, nc *nats.Conn, stream, subject string) (data []byte, ok bool, err error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": subject})
	m, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, req)
	if err != nil {
		return nil, false, fmt.Errorf("last message on %s: %w", subject, err)
	}
	var resp struct {
		Message *struct {
			Data []byte `json:"data"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, false, fmt.Errorf("last message on %s: %w", subject, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, false, nil
	case resp.Error != nil:
		return nil, false, fmt.Errorf("last message on %s: %w", subject, resp.Error)
	case resp.Message == nil:
		return nil, false, nil
	}
	return resp.Message.Data, true, nil
}

// WrongLastSequence reports whether a publish with an expected last
// sequence failed because the subject moved on (a compare-and-set lost).
// Replicated streams report it as 10164, single ones as 10071.
func WrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == 10164)
}

// Workers ensures the durable pull consumer that all instances of a service
// share. The server redelivers without limit: the services decide
// themselves when to give up (the prober with a final verdict).
func Workers(ctx context.Context, js jetstream.JetStream, stream, durable string, ackWait time.Duration, replicas int) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "shared by all instances of a service",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: 10000,
		Replicas:      replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", durable, stream, err)
	}
	return c, nil
}
