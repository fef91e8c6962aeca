// Package natsconn opens the services' NATS connections: named, reconnecting
// forever with backoff, logging state changes through slog.
package natsconn

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/callout-mail/callout/shared/subjects"
)

// Config is the connection part of every service's settings.
type Config struct {
	URL         string `default:"nats://127.0.0.1:4222" desc:"NATS server URLs, comma-separated"`
	User        string `desc:"NATS user name"`
	Password    string `desc:"NATS password"`
	Creds       string `desc:"NATS credentials file (JWT and nkey)"`
	NKeyFile    string `envconfig:"NKEY_FILE" desc:"NATS nkey seed file"`
	InboxPrefix string `envconfig:"INBOX_PREFIX" desc:"reply inbox prefix; must match the user's permissions (default _INBOX)"`
	Prefix      string `default:"callout" desc:"subject, stream and bucket name prefix"`
	Region      string `desc:"the region this instance runs in, in a fleet spread over regions (a name of letters, digits and -; empty: one region)"`
}

// Names are the subjects, streams and buckets of the configured prefix and
// region; a region name that cannot be a subject token and part of a
// bucket name is refused.
func (c Config) Names() (subjects.Names, error) {
	for _, r := range c.Region {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return subjects.Names{}, fmt.Errorf("region %q: letters, digits and - only", c.Region)
		}
	}
	return subjects.NewIn(c.Prefix, c.Region), nil
}

// Connect dials the servers and waits for the first connection until ctx
// ends; afterwards the connection reconnects on its own, forever.
func Connect(ctx context.Context, cfg Config, name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.CustomReconnectDelay(func(attempts int) time.Duration {
			d := time.Duration(attempts) * 250 * time.Millisecond
			return min(d, 2*time.Second)
		}),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("nats disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "url", c.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subj := ""
			if s != nil {
				subj = s.Subject
			}
			log.Error("nats error", "subject", subj, "err", err)
		}),
		nats.ClosedHandler(func(*nats.Conn) { log.Info("nats connection closed") }),
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if cfg.NKeyFile != "" {
		o, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey: %w", err)
		}
		opts = append(opts, o)
	}
	if cfg.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect %s: %w", cfg.URL, err)
	}
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("nats connect %s: %w", cfg.URL, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if err := nc.LastError(); err != nil && nc.Status() == nats.CLOSED {
			return nil, fmt.Errorf("nats connect %s: %w", cfg.URL, err)
		}
	}
	log.Info("nats connected", "url", nc.ConnectedUrlRedacted(), "name", name)
	return nc, nil
}

// Drain drains nc, waiting at most timeout for it to close.
func Drain(nc *nats.Conn, timeout time.Duration) {
	if nc == nil || nc.IsClosed() {
		return
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(timeout):
		nc.Close()
	}
}
