package console

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/natsconn"
)

// EnvPrefix begins the name of every setting (CALLOUT_CONSOLE_TIMEOUT, ...).
const EnvPrefix = "CALLOUT_CONSOLE"

// Config is the console's settings, from CALLOUT_CONSOLE_* variables.
type Config struct {
	config.Common
	NATS           natsconn.Config `envconfig:"NATS"`
	ViewerUser     string          `envconfig:"VIEWER_NATS_USER" desc:"NATS user (read-only role) for viewers' requests; empty: viewers' requests use the admin connection, limited by the console"`
	ViewerPassword string          `envconfig:"VIEWER_NATS_PASSWORD" desc:"password of CALLOUT_CONSOLE_VIEWER_NATS_USER"`
	ViewerInbox    string          `envconfig:"VIEWER_NATS_INBOX_PREFIX" default:"_INBOX_viewer" desc:"reply inbox prefix of the viewer NATS user"`
	Listen         string          `default:"127.0.0.1:8080" desc:"HTTP(S) listen address"`
	TLSCert        string          `envconfig:"TLS_CERT" desc:"certificate file (PEM); with TLS_KEY the console serves HTTPS only"`
	TLSKey         string          `envconfig:"TLS_KEY" desc:"private key file (PEM)"`
	UsersFile      string          `envconfig:"USERS_FILE" desc:"the first users (more are made in the console), one per line: name:role:bcrypt-hash[:sha256-of-api-token] (role admin, or viewer: an admin that only reads)"`
	Users          string          `desc:"users in the same form, separated by spaces (added to USERS_FILE's)"`
	PasswordCost   int             `envconfig:"PASSWORD_COST" default:"12" desc:"bcrypt cost of the password hashes the console makes (at least 12)"`
	SessionTTL     time.Duration   `envconfig:"SESSION_TTL" default:"12h" desc:"a login lasts this long (idle or not)"`
	LoginRate      int             `envconfig:"LOGIN_RATE" default:"10" desc:"login attempts allowed per client address per minute (successes give theirs back); each user name also backs off after 5 failures in a row, up to a minute"`
	FlushRate      int             `envconfig:"FLUSH_RATE" default:"30" desc:"flushes (and cache entry deletions) allowed per user per minute; more are refused with 429, not audited"`
	TrustedProxies []string        `envconfig:"TRUSTED_PROXIES" desc:"addresses or CIDR prefixes of reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (comma-separated; empty: none)"`
	HistoryEvery   time.Duration   `envconfig:"HISTORY_EVERY" default:"5s" desc:"how often the fleet figures are sampled for the dashboard's charts"`
	HistorySize    int             `envconfig:"HISTORY_SIZE" default:"720" desc:"samples kept for the charts (720 at 5s: one hour)"`
	MetricsAddr    string          `envconfig:"METRICS_ADDR" default:"127.0.0.1:9104" desc:"Prometheus /metrics listen address (empty: off)"`
}

// NATSConfig is the admin connection's settings.
func (c *Config) NATSConfig() natsconn.Config { return c.NATS }

// MetricsListen is the metrics address.
func (c *Config) MetricsListen() string { return c.MetricsAddr }

// Validate checks values envconfig cannot.
func (c *Config) Validate() error {
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("CALLOUT_CONSOLE_TLS_CERT and _TLS_KEY go together")
	}
	if c.PasswordCost < 12 || c.PasswordCost > 31 {
		return errors.New("CALLOUT_CONSOLE_PASSWORD_COST: 12 to 31")
	}
	if c.SessionTTL < time.Minute || c.LoginRate < 1 || c.FlushRate < 1 || c.HistoryEvery < 100*time.Millisecond || c.HistorySize < 2 {
		return errors.New("CALLOUT_CONSOLE_SESSION_TTL at least 1m, _LOGIN_RATE and _FLUSH_RATE at least 1, _HISTORY_EVERY at least 100ms, _HISTORY_SIZE at least 2")
	}
	if _, err := parseProxies(c.TrustedProxies); err != nil {
		return err
	}
	if _, err := c.LoadUsers(); err != nil {
		return err
	}
	return nil
}

// LoadUsers reads the users from the file and the inline setting.
func (c *Config) LoadUsers() (*Users, error) {
	var text string
	if c.UsersFile != "" {
		b, err := os.ReadFile(c.UsersFile)
		if err != nil {
			return nil, fmt.Errorf("CALLOUT_CONSOLE_USERS_FILE: %w", err)
		}
		text = string(b)
	}
	u, err := ParseUsers(text + "\n" + c.Users)
	if err != nil {
		return nil, fmt.Errorf("console users: %w", err)
	}
	if u.Len() == 0 {
		return nil, errors.New("console users: none configured (CALLOUT_CONSOLE_USERS_FILE or CALLOUT_CONSOLE_USERS)")
	}
	return u, nil
}
