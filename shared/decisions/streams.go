package decisions

import (
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/subjects"
)

// Limits bound a region's log. The defaults keep 8 days of a site that
// answers 500,000 recipients a day (about 100 bytes a record on disk at
// that rate, its batches compressed: 0.4 GB) in at most 2 GiB; past
// either limit the oldest records go.
type Limits struct {
	MaxAge   time.Duration
	MaxBytes int64
}

// DefaultLimits are the log's limits when none are set.
var DefaultLimits = Limits{MaxAge: 8 * 24 * time.Hour, MaxBytes: 2 << 30}

// HistoryAge is how long counts per domain per hour are kept.
const HistoryAge = 90 * 24 * time.Hour

// StreamConfig is a region's decision log: file storage, direct gets
// (a search reads records by sequence), no compression (a search reads
// scattered blocks; compressed ones would each be decompressed whole).
// In a fleet over regions the log is its region's own, placed on its
// servers.
func StreamConfig(n subjects.Names, replicas int, l Limits, placement *jetstream.Placement) jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:        n.DecisionStream(),
		Description: "callout decision log (batches of msgpack records, decisions.Record), subjects by action",
		Subjects:    []string{n.DecisionAll()},
		MaxAge:      l.MaxAge,
		MaxBytes:    l.MaxBytes,
		Discard:     jetstream.DiscardOld,
		AllowDirect: true,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
	if placement != nil {
		cfg.Replicas, cfg.Placement = 1, placement
		cfg.Description += "; region " + n.Region
	}
	if cfg.Replicas == 1 {
		// Records are kept best-effort (see streams.Transient): on one
		// server, written to disk in the background.
		cfg.PersistMode = jetstream.AsyncPersistMode
	}
	return cfg
}

// HistoryConfig is the bucket of counts per domain per hour, keys
// <YYYYMMDD>.<HH>.<domain> (Counts, JSON), one for the fleet.
func HistoryConfig(n subjects.Names, replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      n.HistoryBucket(),
		Description: "callout decisions per domain per hour (JSON), keys <YYYYMMDD>.<HH>.<domain>; _all is every domain",
		History:     1,
		TTL:         HistoryAge,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// Token is a domain as a key part of the history bucket: the domain
// itself when it is plain (lower-case letters, digits and hyphens in
// labels between dots), else "_" (no domain, or one that cannot be a
// key).
func Token(domain string) string {
	if plain(domain) {
		return domain
	}
	return "_"
}

func plain(d string) bool {
	if d == "" || len(d) > 253 || d[0] == '.' || d[len(d)-1] == '.' || strings.Contains(d, "..") {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
