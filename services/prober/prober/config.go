package prober

import (
	"errors"
	"os"
	"time"

	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/natsconn"
)

// EnvPrefix begins the name of every setting (CALLOUT_PROBER_TIMEOUT, ...).
const EnvPrefix = "CALLOUT_PROBER"

// Config is the prober's settings, from CALLOUT_PROBER_* variables.
type Config struct {
	config.Common
	NATS            natsconn.Config `envconfig:"NATS"`
	Workers         int             `default:"16" desc:"concurrent callouts per instance"`
	HeloName        string          `envconfig:"HELO_NAME" desc:"name sent in EHLO/HELO (default: the host name)"`
	ConnectTimeout  time.Duration   `envconfig:"CONNECT_TIMEOUT" default:"10s" desc:"TCP connect timeout"`
	BannerTimeout   time.Duration   `envconfig:"BANNER_TIMEOUT" default:"30s" desc:"wait for the greeting"`
	CommandTimeout  time.Duration   `envconfig:"COMMAND_TIMEOUT" default:"30s" desc:"wait for each reply"`
	DialogueTimeout time.Duration   `envconfig:"DIALOGUE_TIMEOUT" default:"60s" desc:"one host, connect to QUIT"`
	Budget          time.Duration   `default:"120s" desc:"all hosts of one callout"`
	StartTLS        bool            `envconfig:"STARTTLS" default:"true" desc:"use STARTTLS when offered"`
	TLSVerify       bool            `envconfig:"TLS_VERIFY" default:"false" desc:"verify destination certificates"`
	TLSFallback     time.Duration   `envconfig:"TLS_FALLBACK" default:"1h" desc:"how long a host that refused STARTTLS or failed its handshake is spoken to in plaintext (opportunistic TLS only)"`
	MaxReplyLine    int             `envconfig:"MAX_REPLY_LINE" default:"2048" desc:"longest reply line accepted (bytes)"`
	MaxReplyLines   int             `envconfig:"MAX_REPLY_LINES" default:"64" desc:"most lines in one reply"`
	MaxReplyBytes   int             `envconfig:"MAX_REPLY_BYTES" default:"16384" desc:"largest reply accepted (bytes)"`
	MaxConns        int             `envconfig:"MAX_CONNS" default:"2" desc:"connections at once per destination host, all probers together"`
	Rate            float64         `default:"10" desc:"callouts per second per destination host, all probers together"`
	FleetLimits     bool            `envconfig:"FLEET_LIMITS" default:"true" desc:"hold MAX_CONNS and RATE across every prober through NATS leases (false: per instance)"`
	LeaseTTL        time.Duration   `envconfig:"LEASE_TTL" default:"30s" desc:"a fleet-wide connection slot's lease, renewed while in use: what a dead prober keeps at most"`
	BreakerFailures uint32          `envconfig:"BREAKER_FAILURES" default:"5" desc:"consecutive failures (refused, timeout, 421) that open a host's breaker"`
	BreakerOpen     time.Duration   `envconfig:"BREAKER_OPEN" default:"30s" desc:"how long a breaker stays open before one trial callout"`
	ReuseMaxRcpts   int             `envconfig:"REUSE_MAX_RCPTS" default:"20" desc:"RCPTs on one connection before it is closed (0: no reuse)"`
	IdleTimeout     time.Duration   `envconfig:"IDLE_TIMEOUT" default:"10s" desc:"how long an idle connection is kept for reuse"`
	MaxNonMail      int             `envconfig:"MAX_NONMAIL" default:"8" desc:"non-mail commands (EHLO, STARTTLS, RSET) on one connection at most, counted as Exim does (the first of each is free); Exim drops a connection after 10"`
	ReuseRetry      time.Duration   `envconfig:"REUSE_RETRY" default:"10m" desc:"after a failed RSET switched reuse off for a host, try reuse again after this"`
	BackoffQuiet    time.Duration   `envconfig:"BACKOFF_QUIET" default:"60s" desc:"a throttling host (421, 451 4.7.x, 452 4.5.3) gets half the rate and RCPTs per connection; each quiet period doubles them back"`
	MaxWaiting      int             `envconfig:"MAX_WAITING" default:"1000" desc:"jobs held waiting for a busy destination host, without a worker"`
	MXLimit         int             `envconfig:"MX_LIMIT" default:"5" desc:"MX hosts tried at most per callout (as Postfix's smtp_mx_address_limit)"`
	RandomSecret    string          `envconfig:"RANDOM_SECRET" desc:"secret that derives each domain's catch-all probe local part (set it, the same on every instance)"`
	DNSServer       string          `envconfig:"DNS_SERVER" desc:"DNS server host:port for MX lookups (default: the system resolver)"`
	MXPort          int             `envconfig:"MX_PORT" default:"25" desc:"SMTP port of hosts found by MX lookup"`
	SenderNXDomain  string          `envconfig:"SENDER_NXDOMAIN" default:"defer" desc:"a sender domain DNS says does not exist (NXDOMAIN): defer (450 4.1.8; it may be newly registered) or reject (550 5.1.8)"`
	AckWait         time.Duration   `envconfig:"ACK_WAIT" default:"30s" desc:"job redelivered if not acked or heartbeated in this time"`
	MaxDeliver      int             `envconfig:"MAX_DELIVER" default:"4" desc:"deliveries of a job before a final tempfail verdict"`
	Replicas        int             `default:"1" desc:"JetStream replicas of streams and buckets"`
	MetricsAddr     string          `envconfig:"METRICS_ADDR" default:"127.0.0.1:9102" desc:"Prometheus /metrics listen address (empty: off)"`
}

// Validate checks values envconfig cannot.
func (c *Config) Validate() error {
	switch {
	case c.Workers < 1:
		return errors.New("CALLOUT_PROBER_WORKERS must be at least 1")
	case c.SenderNXDomain != "defer" && c.SenderNXDomain != "reject":
		return errors.New("CALLOUT_PROBER_SENDER_NXDOMAIN must be defer or reject")
	case c.MaxConns < 1:
		return errors.New("CALLOUT_PROBER_MAX_CONNS must be at least 1")
	case c.Rate <= 0:
		return errors.New("CALLOUT_PROBER_RATE must be positive")
	case c.MaxNonMail < 3 || c.MXLimit < 1 || c.MaxWaiting < 0:
		return errors.New("CALLOUT_PROBER_MAX_NONMAIL at least 3, _MX_LIMIT at least 1, _MAX_WAITING not negative")
	case c.FleetLimits && c.LeaseTTL < 3*time.Second:
		return errors.New("CALLOUT_PROBER_LEASE_TTL must be at least 3s")
	case c.MaxDeliver < 1:
		return errors.New("CALLOUT_PROBER_MAX_DELIVER must be at least 1")
	case c.AckWait < time.Second:
		return errors.New("CALLOUT_PROBER_ACK_WAIT must be at least 1s")
	case c.MaxReplyLine < 512 || c.MaxReplyLines < 1 || c.MaxReplyBytes < c.MaxReplyLine:
		return errors.New("CALLOUT_PROBER_MAX_REPLY_*: line >= 512, lines >= 1, bytes >= line")
	}
	if c.HeloName == "" {
		c.HeloName, _ = os.Hostname()
	}
	return nil
}

// NATSConfig is the connection part of the settings.
func (c *Config) NATSConfig() natsconn.Config { return c.NATS }

// MetricsListen is the metrics listen address.
func (c *Config) MetricsListen() string { return c.MetricsAddr }
