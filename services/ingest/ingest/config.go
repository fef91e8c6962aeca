package ingest

import (
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/natsconn"
	"github.com/callout-mail/callout/shared/verdict"
)

// EnvPrefix begins the name of every setting (CALLOUT_INGEST_TIMEOUT, ...).
const EnvPrefix = "CALLOUT_INGEST"

// Config is the ingest's settings, from CALLOUT_INGEST_* variables.
type Config struct {
	config.Common
	NATS                     natsconn.Config `envconfig:"NATS"`
	Timeout                  time.Duration   `default:"25s" desc:"answer deadline when the request names none"`
	MaxTimeout               time.Duration   `envconfig:"MAX_TIMEOUT" default:"25s" desc:"cap on a request's own deadline"`
	LookupTimeout            time.Duration   `envconfig:"LOOKUP_TIMEOUT" default:"1s" desc:"wait for the cache; then go on as a miss"`
	Workers                  int             `default:"2048" desc:"requests handled at once"`
	NearCacheEntries         int             `envconfig:"NEAR_CACHE_ENTRIES" default:"100000" desc:"cache hits kept in this ingest, answered with no further hop (0: off)"`
	KnownKeys                int             `envconfig:"KNOWN_KEYS" default:"2000000" desc:"address keys of the cache bucket this ingest indexes (with the near cache on), so that a miss for an address without any is known without asking the cachekeeper; past it every miss asks (0: off)"`
	RefreshAge               time.Duration   `envconfig:"REFRESH_AGE" default:"48h" desc:"a valid entry older than this that the near cache answers is re-probed in the background, at most once per address per period (0: off; the cachekeeper's own REFRESH_AGE covers the lookups it answers)"`
	PendingRetry             time.Duration   `envconfig:"PENDING_RETRY" default:"500ms" desc:"while another's job for an address is pending and its verdict was not seen, try to queue one this often"`
	Replicas                 int             `default:"1" desc:"JetStream replicas of streams and buckets"`
	UnknownDomains           string          `envconfig:"UNKNOWN_DOMAINS" default:"accept" desc:"recipient domains without a policy: accept (unverifiable; relay control stays with the MTA), reject (550 5.7.1) or callout (by MX)"`
	RecipientDelimiter       string          `envconfig:"RECIPIENT_DELIMITER" default:"+" desc:"sub-address delimiters, as Postfix's recipient_delimiter: static mode lists alice for alice+tag (empty: none)"`
	SenderOnTempfail         verdict.Action  `envconfig:"SENDER_ON_TEMPFAIL" default:"accept" desc:"sender verification that cannot finish: accept or defer"`
	SenderOnUnverifiable     verdict.Action  `envconfig:"SENDER_ON_UNVERIFIABLE" default:"accept" desc:"sender whose server refuses us: accept or defer"`
	RejectText               string          `envconfig:"REJECT_TEXT" desc:"text for rejects; {address} is replaced (default: Recipient address rejected: User unknown)"`
	DeferText                string          `envconfig:"DEFER_TEXT" desc:"text for defers; {address} is replaced"`
	ReplyDetails             bool            `envconfig:"REPLY_DETAILS" default:"false" desc:"include the destination host and its text in replies (they are always logged)"`
	BrakeLimit               int             `envconfig:"BRAKE_LIMIT" default:"50" desc:"unknown recipients from one client address before its further unknown recipients are deferred (0: off)"`
	BrakeWindow              time.Duration   `envconfig:"BRAKE_WINDOW" default:"10m" desc:"window of the dictionary-attack brake"`
	BrakeMaxClients          int             `envconfig:"BRAKE_MAX_CLIENTS" default:"100000" desc:"clients the brake remembers at most (the least recently seen are forgotten)"`
	BrakeIPv6Prefix          int             `envconfig:"BRAKE_IPV6_PREFIX" default:"64" desc:"IPv6 clients are counted per prefix of this length"`
	ProbeSenders             []string        `envconfig:"PROBE_SENDERS" desc:"more addresses never to verify (other verifiers' probe senders), comma-separated"`
	PolicyAddr               string          `envconfig:"POLICY_ADDR" default:"127.0.0.1:10040" desc:"Postfix policy listener: host:port, or unix:/path for a UNIX-domain socket, cheaper for a Postfix on the same machine (empty: off)"`
	PolicySocketMode         string          `envconfig:"POLICY_SOCKET_MODE" default:"0660" desc:"permissions of a unix: policy socket, octal: Postfix's smtpd (user postfix) must be able to connect"`
	PolicySenders            bool            `envconfig:"POLICY_SENDERS" default:"false" desc:"verify the sender too in Postfix policy requests"`
	PolicyMalformed          string          `envconfig:"POLICY_MALFORMED" default:"defer" desc:"answer to a malformed policy request: dunno or defer"`
	PolicyDeferIfPermit      bool            `envconfig:"POLICY_DEFER_IF_PERMIT" default:"false" desc:"answer defers as DEFER_IF_PERMIT instead of 450"`
	PolicyMaxConns           int             `envconfig:"POLICY_MAX_CONNS" default:"1000" desc:"policy connections at once"`
	PolicyIdleTimeout        time.Duration   `envconfig:"POLICY_IDLE_TIMEOUT" default:"300s" desc:"close an idle policy connection after this"`
	MilterAddr               string          `envconfig:"MILTER_ADDR" desc:"milter listener (protocol v6, for Sendmail, Postfix's smtpd_milters and other milter MTAs): host:port, or unix:/path (empty: off)"`
	MilterSenders            bool            `envconfig:"MILTER_SENDERS" default:"false" desc:"verify the sender at MAIL FROM too in milter sessions"`
	MilterMaxConns           int             `envconfig:"MILTER_MAX_CONNS" default:"2000" desc:"milter connections at once: one per SMTP session, so above the MTA's smtpd process limit; past it a session gets the MTA's default action"`
	MilterIdleTimeout        time.Duration   `envconfig:"MILTER_IDLE_TIMEOUT" default:"300s" desc:"close a milter connection the MTA sends nothing on for this long"`
	MilterProgress           time.Duration   `envconfig:"MILTER_PROGRESS" default:"5s" desc:"while a recipient's verdict is pending, tell Postfix to keep waiting this often (below its milter command_timeout; Sendmail takes no progress at RCPT and gets none)"`
	DecisionLog              bool            `envconfig:"DECISION_LOG" default:"true" desc:"record every answer in the decision log (docs/decisions.md)"`
	DecisionLogCachedAccepts float64         `envconfig:"DECISION_LOG_CACHED_ACCEPTS" default:"1" desc:"fraction of the accepts answered from a cache that are recorded: 1 all, 0.1 one in ten, 0 none (rejects, defers and other answers are always recorded; the counts per domain count them all)"`
	DecisionLogBuffer        int             `envconfig:"DECISION_LOG_BUFFER" default:"16384" desc:"records waiting for the log at most; past it (the log slow or down) records are dropped and counted, answers go on"`
	HistoryInterval          time.Duration   `envconfig:"HISTORY_INTERVAL" default:"30s" desc:"how often this ingest adds its counts per domain per hour to the history bucket (0: off)"`
	MetricsAddr              string          `envconfig:"METRICS_ADDR" default:"127.0.0.1:9101" desc:"Prometheus /metrics listen address (empty: off)"`
}

// Validate checks values envconfig cannot.
func (c *Config) Validate() error {
	switch {
	case c.Timeout <= 0 || c.MaxTimeout <= 0 || c.LookupTimeout <= 0 || c.PendingRetry <= 0:
		return errors.New("CALLOUT_INGEST_TIMEOUT, _MAX_TIMEOUT, _LOOKUP_TIMEOUT and _PENDING_RETRY must be positive")
	case c.BrakeMaxClients < 1 || c.BrakeIPv6Prefix < 1 || c.BrakeIPv6Prefix > 128:
		return errors.New("CALLOUT_INGEST_BRAKE_MAX_CLIENTS must be at least 1, _BRAKE_IPV6_PREFIX 1 to 128")
	case c.NearCacheEntries < 0:
		return errors.New("CALLOUT_INGEST_NEAR_CACHE_ENTRIES must not be negative")
	case c.Workers < 1:
		return errors.New("CALLOUT_INGEST_WORKERS must be at least 1")
	case c.UnknownDomains != "accept" && c.UnknownDomains != "reject" && c.UnknownDomains != "callout":
		return errors.New("CALLOUT_INGEST_UNKNOWN_DOMAINS must be accept, reject or callout")
	case strings.ContainsAny(c.RecipientDelimiter, "@\"\r\n\x00 "):
		return errors.New("CALLOUT_INGEST_RECIPIENT_DELIMITER: characters of a local part, not @, quote or space")
	case c.SenderOnTempfail != verdict.Accept && c.SenderOnTempfail != verdict.Defer,
		c.SenderOnUnverifiable != verdict.Accept && c.SenderOnUnverifiable != verdict.Defer:
		return errors.New("CALLOUT_INGEST_SENDER_ON_*: accept or defer")
	case c.MilterMaxConns < 1 || c.MilterIdleTimeout <= 0 || c.MilterProgress < 100*time.Millisecond:
		return errors.New("CALLOUT_INGEST_MILTER_MAX_CONNS must be at least 1, _MILTER_IDLE_TIMEOUT positive, _MILTER_PROGRESS at least 100ms")
	case !validMode(c.PolicySocketMode):
		return errors.New("CALLOUT_INGEST_POLICY_SOCKET_MODE: octal permissions such as 0660")
	case c.PolicyMalformed != "dunno" && c.PolicyMalformed != "defer":
		return errors.New("CALLOUT_INGEST_POLICY_MALFORMED must be dunno or defer")
	case !(c.DecisionLogCachedAccepts >= 0 && c.DecisionLogCachedAccepts <= 1):
		return errors.New("CALLOUT_INGEST_DECISION_LOG_CACHED_ACCEPTS: a fraction from 0 to 1")
	case c.DecisionLogBuffer < 1 || c.HistoryInterval < 0:
		return errors.New("CALLOUT_INGEST_DECISION_LOG_BUFFER must be at least 1, _HISTORY_INTERVAL not negative")
	case strings.ContainsAny(c.RejectText+c.DeferText, "\r\n\x00"):
		return errors.New("CALLOUT_INGEST_REJECT_TEXT/_DEFER_TEXT: one line")
	}
	return nil
}

// validMode reports octal file permissions (0660, 666).
func validMode(m string) bool {
	v, err := strconv.ParseUint(m, 8, 32)
	return err == nil && v <= 0o777
}

// NATSConfig is the connection part of the settings.
func (c *Config) NATSConfig() natsconn.Config { return c.NATS }

// MetricsListen is the metrics listen address.
func (c *Config) MetricsListen() string { return c.MetricsAddr }
