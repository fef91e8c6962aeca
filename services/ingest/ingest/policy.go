package ingest

// The Postfix policy listener beside the NATS service.

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/ingest/policyd"
)

// withPolicy runs the Postfix policy listener beside the NATS service.
type withPolicy struct {
	*Service
	srv  *policyd.Server
	addr string
}

// NewWithPolicy builds the ingest with its Postfix policy listener (when
// PolicyAddr is set).
func NewWithPolicy(cfg Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*withPolicy, error) {
	s, err := New(cfg, nc, reg, log)
	if err != nil {
		return nil, err
	}
	w := &withPolicy{Service: s, addr: cfg.PolicyAddr}
	if cfg.PolicyAddr != "" {
		w.srv = policyd.New(policyd.Config{
			Senders: cfg.PolicySenders, MalformedDefer: cfg.PolicyMalformed == "defer", DeferIfPermit: cfg.PolicyDeferIfPermit,
			MaxConns: cfg.PolicyMaxConns, IdleTimeout: cfg.PolicyIdleTimeout, Timeout: cfg.Timeout,
		}, s.Verify, log)
	}
	return w, nil
}

// Run serves NATS and the policy listener until ctx ends.
func (w *withPolicy) Run(ctx context.Context) error {
	if w.srv == nil {
		return w.Service.Run(ctx)
	}
	ln, err := net.Listen("tcp", w.addr)
	if err != nil {
		return fmt.Errorf("policy listener: %w", err)
	}
	w.log.Info("postfix policy listener", "addr", ln.Addr().String())
	errc := make(chan error, 1)
	go func() { errc <- w.srv.Serve(ctx, ln) }()
	err = w.Service.Run(ctx)
	ln.Close()
	if perr := <-errc; err == nil {
		err = perr
	}
	return err
}
