package ingest

// The Postfix policy listener beside the NATS service.

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/services/ingest/milterd"
	"github.com/callout-mail/callout/services/ingest/policyd"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/wire"
)

// withPolicy runs the Postfix policy listener and the milter listener
// beside the NATS service.
type withPolicy struct {
	*Service
	srv    *policyd.Server
	addr   string
	milter *milterd.Server
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
		}, s.verifyVia(decisions.ViaPolicy), log)
	}
	if cfg.MilterAddr != "" {
		w.milter = milterd.New(milterd.Config{
			Senders: cfg.MilterSenders, MalformedDefer: cfg.PolicyMalformed == "defer", MaxConns: cfg.MilterMaxConns,
			IdleTimeout: cfg.MilterIdleTimeout, Timeout: cfg.Timeout, Progress: cfg.MilterProgress,
		}, s.verifyVia(decisions.ViaMilter), log)
		s.m.milter(reg, w.milter)
	}
	return w, nil
}

// verifyVia is Verify for a listener: its answers are recorded as asked
// there.
func (s *Service) verifyVia(via string) func(context.Context, wire.VerifyRequest) wire.VerifyReply {
	return func(ctx context.Context, req wire.VerifyRequest) wire.VerifyReply {
		return s.Verify(context.WithValue(ctx, viaKey{}, via), req)
	}
}

// Run serves NATS and the listeners until ctx ends.
func (w *withPolicy) Run(ctx context.Context) error {
	var lns []net.Listener
	errc := make(chan error, 2)
	if w.srv != nil {
		ln, err := policyListener(w.addr, w.cfg.PolicySocketMode)
		if err != nil {
			return fmt.Errorf("policy listener: %w", err)
		}
		w.log.Info("postfix policy listener", "addr", ln.Addr().String())
		lns = append(lns, ln)
		go func() { errc <- w.srv.Serve(ctx, ln) }()
	}
	if w.milter != nil {
		ln, err := policyListener(w.cfg.MilterAddr, w.cfg.PolicySocketMode)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("milter listener: %w", err)
		}
		w.log.Info("milter listener", "addr", ln.Addr().String())
		lns = append(lns, ln)
		go func() { errc <- w.milter.Serve(ctx, ln) }()
	}
	err := w.Service.Run(ctx)
	for _, ln := range lns {
		ln.Close()
	}
	for range lns {
		if lerr := <-errc; err == nil {
			err = lerr
		}
	}
	return err
}

// policyListener listens on host:port, or on a UNIX-domain socket for
// unix:/path (a socket left by an earlier run is replaced; any other file
// there is an error) with the given octal permissions.
func policyListener(addr, mode string) (net.Listener, error) {
	path, ok := strings.CutPrefix(addr, "unix:")
	if !ok {
		return net.Listen("tcp", addr)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	perm, _ := strconv.ParseUint(mode, 8, 32) // checked by Validate
	if err := os.Chmod(path, fs.FileMode(perm)); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}
