// Package milterd is the ingest's milter front-end (protocol v6, on
// github.com/d--j/go-milter): Sendmail, Postfix's smtpd_milters and every
// milter-speaking MTA ask it at RCPT TO, and it answers for that
// recipient only with the ingest's decision: continue, 5xx reject, 4xx
// defer. Everything after RCPT is negotiated away (no DATA, headers or
// body are sent). While a verdict is pending it sends Postfix progress
// every few seconds, so that it keeps waiting. Sendmail takes progress
// only at the end of a message: at RCPT it is a bogus reply to Sendmail,
// which then drops the milter and accepts the recipient unverified; it
// gets none, and its reply timeout (T=R:, with F=T a 4xx) must be above
// the ingest's deadline. Which MTA asks is told by the version macro v
// the listener requests at connect ("Postfix 3.7.11"; Sendmail's is its
// bare version); an MTA that does not say gets no progress.
package milterd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/d--j/go-milter"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// VerifyFunc answers one verify request.
type VerifyFunc func(ctx context.Context, req wire.VerifyRequest) wire.VerifyReply

// Config is the listener's behaviour.
type Config struct {
	Senders        bool          // verify the sender at MAIL FROM too
	MalformedDefer bool          // a recipient that is no address: 451 (else continue)
	MaxConns       int           // milter connections at once (one per SMTP session)
	IdleTimeout    time.Duration // close a connection the MTA sends nothing on
	Timeout        time.Duration // per-recipient verify deadline
	Progress       time.Duration // progress to Postfix while a verdict is pending
}

// Counters are what the listener counts, for the service's metrics.
type Counters struct {
	Conns   atomic.Int64  // open connections
	Refused atomic.Uint64 // connections closed at once: the cap reached
}

// Server is the milter listener.
type Server struct {
	cfg    Config
	verify VerifyFunc
	log    *slog.Logger
	C      Counters
}

// libraryLog sends the milter library's warnings (a connection closed
// on bad input, say) to the first server's log: the library has one
// hook for the process.
var libraryLog sync.Once

// New returns a server.
func New(cfg Config, verify VerifyFunc, log *slog.Logger) *Server {
	libraryLog.Do(func() {
		milter.LogWarning = func(format string, v ...any) { log.Warn("milter: " + fmt.Sprintf(format, v...)) }
	})
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 2000
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 300 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 25 * time.Second
	}
	if cfg.Progress <= 0 {
		cfg.Progress = 5 * time.Second
	}
	return &Server{cfg: cfg, verify: verify, log: log}
}

// Serve answers milter connections on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := milter.NewServer(
		milter.WithDynamicMilter(func(version uint32, action milter.OptAction, protocol milter.OptProtocol, maxData milter.DataSize) milter.Milter {
			return &session{s: s, ctx: ctx}
		}),
		// Only what a recipient's answer needs: the client, HELO, MAIL
		// and RCPT; nothing after RCPT is sent at all.
		milter.WithProtocol(milter.OptNoBody|milter.OptNoHeaders|milter.OptNoEOH|milter.OptNoUnknown|milter.OptNoData|
			milter.OptNoConnReply|milter.OptNoHeloReply),
		// The MTA's name and version: whether it takes progress at RCPT.
		milter.WithMacroRequest(milter.StageConnect, []milter.MacroName{milter.MacroMTAVersion}),
		milter.WithReadTimeout(s.cfg.IdleTimeout),
		milter.WithWriteTimeout(10*time.Second),
	)
	lim := &limited{Listener: ln, sem: make(chan struct{}, s.cfg.MaxConns), s: s}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	})
	defer stop()
	err := srv.Serve(lim)
	if errors.Is(err, milter.ErrServerClosed) || ctx.Err() != nil {
		return nil
	}
	return err
}

// limited closes at once a connection over the cap: the MTA applies its
// default action to that session (docs/services.md, Milter).
type limited struct {
	net.Listener
	sem chan struct{}
	s   *Server
}

func (l *limited) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			l.s.C.Conns.Add(1)
			return &counted{Conn: c, release: func() { <-l.sem; l.s.C.Conns.Add(-1) }}, nil
		default:
			l.s.C.Refused.Add(1)
			l.s.log.Warn("milter connection refused: at the connection cap", "remote", c.RemoteAddr(), "max", cap(l.sem))
			c.Close()
		}
	}
}

type counted struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *counted) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// session is one MTA milter connection: what it told of the client and
// the transaction so far.
type session struct {
	milter.NoOpMilter
	s      *Server
	ctx    context.Context
	client string
	helo   string
	sender string
	// progress: the MTA waits on progress at RCPT (Postfix).
	progress bool
}

func (m *session) Connect(host, family string, port uint16, addr string, mod milter.Modifier) (*milter.Response, error) {
	if family == "tcp4" || family == "tcp6" {
		m.client = addr
	}
	m.progress = strings.HasPrefix(mod.Get(milter.MacroMTAVersion), "Postfix")
	return milter.RespContinue, nil
}

func (m *session) Helo(name string, _ milter.Modifier) (*milter.Response, error) {
	m.helo = name
	return milter.RespContinue, nil
}

func (m *session) MailFrom(from, _ string, mod milter.Modifier) (*milter.Response, error) {
	m.sender = from
	if !m.s.cfg.Senders || from == "" {
		return milter.RespContinue, nil
	}
	rep := m.ask(wire.VerifyRequest{Address: from, Purpose: verdict.Sender, ClientAddress: m.client, Helo: m.helo}, mod)
	return m.s.response(rep, "sender "+from)
}

func (m *session) RcptTo(rcpt, _ string, mod milter.Modifier) (*milter.Response, error) {
	rep := m.ask(wire.VerifyRequest{Address: rcpt, Purpose: verdict.Recipient, ClientAddress: m.client, Sender: m.sender, Helo: m.helo}, mod)
	return m.s.response(rep, "recipient "+rcpt)
}

// ask verifies, sending progress to an MTA that takes it while the answer
// is pending.
func (m *session) ask(req wire.VerifyRequest, mod milter.Modifier) wire.VerifyReply {
	ctx, cancel := context.WithTimeout(m.ctx, m.s.cfg.Timeout)
	defer cancel()
	req.TimeoutMS = int(m.s.cfg.Timeout.Milliseconds())
	if !m.progress {
		return m.s.verify(ctx, req)
	}
	done := make(chan wire.VerifyReply, 1)
	go func() { done <- m.s.verify(ctx, req) }()
	t := time.NewTicker(m.s.cfg.Progress)
	defer t.Stop()
	for {
		select {
		case rep := <-done:
			return rep
		case <-t.C:
			if err := mod.Progress(); err != nil {
				m.s.log.Debug("milter progress", "err", err)
			}
		}
	}
}

// response maps a decision to the milter reply for one recipient (or
// sender). Input that is no address at all never gets a 5xx.
func (s *Server) response(rep wire.VerifyReply, what string) (*milter.Response, error) {
	d := rep.Decision
	if rep.Verdict != nil && rep.Verdict.Status == verdict.Malformed {
		s.log.Warn("milter: not an address", "what", what)
		if s.cfg.MalformedDefer {
			return milter.RejectWithCodeAndReason(451, "4.3.5 Address not understood")
		}
		return milter.RespContinue, nil
	}
	switch d.Action {
	case verdict.Reject, verdict.Defer:
		code := uint16(d.Code)
		if code < 400 || code > 599 {
			code = 451
		}
		r, err := milter.RejectWithCodeAndReason(code, strings.TrimSpace(d.Enhanced+" "+oneLine(d.Text)))
		if err != nil {
			return milter.RejectWithCodeAndReason(451, "4.3.0 "+fmt.Sprint(err))
		}
		return r, nil
	}
	return milter.RespContinue, nil
}

// oneLine keeps a reply text to one line.
func oneLine(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ", "\x00", " ").Replace(s)
}
