package cachekeeper

// The cachekeeper's settings, from CALLOUT_CACHEKEEPER_* variables.

import (
	"errors"
	"time"

	"github.com/callout-mail/callout/services/cachekeeper/cache"
	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/natsconn"
)

// EnvPrefix begins the name of every setting (CALLOUT_CACHEKEEPER_TIMEOUT, ...).
const EnvPrefix = "CALLOUT_CACHEKEEPER"

// Config is the cachekeeper's settings, from CALLOUT_CACHEKEEPER_* variables.
type Config struct {
	config.Common
	NATS                  natsconn.Config `envconfig:"NATS"`
	Replicas              int             `default:"1" desc:"replicas of the cache bucket and streams (3 in a cluster)"`
	TTLValid              time.Duration   `envconfig:"TTL_VALID" default:"96h" desc:"how long an existing mailbox is cached"`
	TTLInvalid            time.Duration   `envconfig:"TTL_INVALID" default:"2h" desc:"how long a user-unknown is cached"`
	TTLDisabled           time.Duration   `envconfig:"TTL_DISABLED" default:"30m" desc:"how long a disabled mailbox (5.2.1) is cached"`
	TTLCatchAll           time.Duration   `envconfig:"TTL_CATCH_ALL" default:"96h" desc:"how long a catch-all domain fact is cached"`
	TTLNotCatchAll        time.Duration   `envconfig:"TTL_NOT_CATCH_ALL" default:"2h" desc:"how long a not-catch-all domain fact is cached"`
	TTLUnverifiable       time.Duration   `envconfig:"TTL_UNVERIFIABLE" default:"2h" desc:"how long a refusal of us (null sender refused, blocked) is cached"`
	TTLTempfail           time.Duration   `envconfig:"TTL_TEMPFAIL" default:"0s" desc:"how long a temporary failure is cached (0: never)"`
	RefreshAge            time.Duration   `envconfig:"REFRESH_AGE" default:"48h" desc:"a valid entry older than this is re-probed in the background when looked up (0: off)"`
	Workers               int             `default:"64" desc:"lookups served at once"`
	StoreWorkers          int             `envconfig:"STORE_WORKERS" default:"8" desc:"verdicts written at once"`
	DecisionLogMaxAge     time.Duration   `envconfig:"DECISION_LOG_MAX_AGE" default:"192h" desc:"the decision log keeps records this long (8 days), when the stream is made; calloutctl setup -log-max-age changes it"`
	DecisionLogMaxBytes   int64           `envconfig:"DECISION_LOG_MAX_BYTES" default:"2147483648" desc:"the decision log's size at most (bytes), when the stream is made; the oldest records go first"`
	DecisionSearchMaxRead int             `envconfig:"DECISION_SEARCH_MAX_READ" default:"500000" desc:"a search with a sender, client, reason or purpose filter reads at most this many records, else it is refused (narrow the search)"`
	MetricsAddr           string          `envconfig:"METRICS_ADDR" default:"127.0.0.1:9103" desc:"Prometheus /metrics listen address (empty: off)"`
}

// Validate checks values envconfig cannot.
func (c *Config) Validate() error {
	if c.DecisionLogMaxAge < time.Second || c.DecisionLogMaxBytes < 1<<20 || c.DecisionSearchMaxRead < 1 {
		return errors.New("CALLOUT_CACHEKEEPER_DECISION_LOG_MAX_AGE (at least 1s), _MAX_BYTES (at least 1 MiB) and _DECISION_SEARCH_MAX_READ (at least 1)")
	}
	if c.Workers < 1 || c.StoreWorkers < 1 {
		return errors.New("CALLOUT_CACHEKEEPER_WORKERS and _STORE_WORKERS must be at least 1")
	}
	for _, d := range []time.Duration{c.TTLValid, c.TTLInvalid, c.TTLDisabled, c.TTLCatchAll, c.TTLNotCatchAll, c.TTLUnverifiable, c.TTLTempfail} {
		if d < 0 || (d > 0 && d < time.Second) {
			return errors.New("CALLOUT_CACHEKEEPER_TTL_*: a TTL is 0 (not cached) or at least 1s")
		}
	}
	return nil
}

// TTLs returns the cache TTL classes.
func (c Config) TTLs() cache.TTLs {
	return cache.TTLs{Valid: c.TTLValid, Invalid: c.TTLInvalid, Disabled: c.TTLDisabled, CatchAll: c.TTLCatchAll,
		NotCatchAll: c.TTLNotCatchAll, Unverifiable: c.TTLUnverifiable, TempFail: c.TTLTempfail}
}

// NATSConfig is the connection part of the settings.
func (c *Config) NATSConfig() natsconn.Config { return c.NATS }

// MetricsListen is the metrics listen address.
func (c *Config) MetricsListen() string { return c.MetricsAddr }
