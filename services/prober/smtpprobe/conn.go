package smtpprobe

// Over 400 lines on purpose: one SMTP connection's commands and their
// bounded reads, each small, which share the connection's state.

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// Stage names a step of the dialogue.
type Stage string

const (
	StageConnect  Stage = "connect"
	StageBanner   Stage = "banner"
	StageEHLO     Stage = "ehlo"
	StageHELO     Stage = "helo"
	StageSTARTTLS Stage = "starttls"
	StageMail     Stage = "mail"
	StageRcpt     Stage = "rcpt"
	StageRset     Stage = "rset"
	StageQuit     Stage = "quit"
)

// Error is a failure at one stage: a network error, a timeout or a broken
// reply. A well-formed reply, whatever its code, is not an Error.
type Error struct {
	Stage Stage
	Host  string
	Err   error
}

func (e *Error) Error() string { return fmt.Sprintf("smtp %s %s: %v", e.Host, e.Stage, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Timeout reports whether the error is a timeout.
func (e *Error) Timeout() bool {
	var ne net.Error
	return errors.Is(e.Err, context.DeadlineExceeded) || errors.As(e.Err, &ne) && ne.Timeout()
}

// Config holds the client's settings.
type Config struct {
	HeloName       string
	ConnectTimeout time.Duration
	BannerTimeout  time.Duration
	CommandTimeout time.Duration
	QuitTimeout    time.Duration
	StartTLS       bool // use STARTTLS when offered
	TLSVerify      bool // verify the server's certificate
	Limits         Limits
	Dialer         *net.Dialer
	Trace          *Transcript // when set, the dialogue is recorded
}

// CommandWait is how long a reply is waited for: CommandTimeout, or its
// default when unset.
func (c Config) CommandWait() time.Duration {
	if c.CommandTimeout == 0 {
		return 30 * time.Second
	}
	return c.CommandTimeout
}

func (c *Config) defaults() {
	if c.HeloName == "" {
		c.HeloName = "localhost"
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.BannerTimeout == 0 {
		c.BannerTimeout = 30 * time.Second
	}
	c.CommandTimeout = c.CommandWait()
	if c.QuitTimeout == 0 {
		c.QuitTimeout = time.Second
	}
	if c.Limits.MaxLine == 0 {
		c.Limits = DefaultLimits
	}
	if c.Dialer == nil {
		c.Dialer = &net.Dialer{}
	}
}

// Conn is one SMTP connection after the greeting.
type Conn struct {
	cfg    Config
	host   string
	nc     net.Conn
	r      *bufio.Reader
	ext    map[string]string
	tls    bool
	broken bool // a timeout or protocol error: no more commands, no QUIT

	tlsRefused Reply // the reply to a refused STARTTLS
	nonMail    int   // non-mail commands counted as Exim counts them (see NonMail)
	sentOnce   map[Stage]bool

	// An RSET deferred to the next command (ResetLater), and one sent
	// whose reply is still to be read before that command's.
	resetDue, resetSent bool
	resetFailed         bool // a deferred RSET was refused or went unanswered
}

// ErrResetRefused is the failure of an RSET sent ahead of a command
// (ResetLater): the commands after it are not answered for, and the
// connection is broken.
var ErrResetRefused = errors.New("RSET refused")

// NonMail is the number of non-mail commands sent on the connection as
// Exim counts them: it drops a connection after 10 by default
// (smtp_accept_max_nonmail), and leaves uncounted the first HELO or EHLO,
// the first STARTTLS and the first RSET (for clients that send one between
// messages). The EHLO after STARTTLS, which Exim does not count either, is
// counted here.
func (c *Conn) NonMail() int { return c.nonMail }

// countNonMail counts one more non-mail command of stage st.
func (c *Conn) countNonMail(st Stage) {
	if st == StageHELO {
		st = StageEHLO // one of the two is free, not one each
	}
	if c.sentOnce[st] {
		c.nonMail++
		return
	}
	if c.sentOnce == nil {
		c.sentOnce = map[Stage]bool{}
	}
	c.sentOnce[st] = true
}

// Dial connects to host (host:port) and reads the banner. A banner that is
// not 2xx is returned as the reply with a nil error; the connection is then
// closed.
func Dial(ctx context.Context, host string, cfg Config) (*Conn, Reply, error) {
	cfg.defaults()
	dctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	t0 := time.Now()
	nc, err := cfg.Dialer.DialContext(dctx, "tcp", host)
	cancel()
	if err != nil {
		cfg.Trace.Add(host, "*", "connect failed after %v: %v", time.Since(t0).Round(time.Microsecond), err)
		return nil, Reply{}, &Error{Stage: StageConnect, Host: host, Err: err}
	}
	cfg.Trace.Add(host, "*", "connected to %s in %v", nc.RemoteAddr(), time.Since(t0).Round(time.Microsecond))
	c := &Conn{cfg: cfg, host: host, nc: nc}
	c.r = bufio.NewReaderSize(nc, cfg.Limits.MaxLine)
	rep, err := c.read(ctx, StageBanner, cfg.BannerTimeout)
	if err != nil {
		c.Close()
		return nil, rep, err
	}
	if rep.Class() != 2 {
		c.Quit(ctx)
		return nil, rep, nil
	}
	return c, rep, nil
}

// Host is the host:port this connection goes to.
func (c *Conn) Host() string { return c.host }

// TLS reports whether STARTTLS succeeded.
func (c *Conn) TLS() bool { return c.tls }

// Broken reports whether the connection may no longer be used.
func (c *Conn) Broken() bool { return c.broken }

func (c *Conn) read(ctx context.Context, st Stage, timeout time.Duration) (Reply, error) {
	deadline := time.Now().Add(timeout)
	ctxDeadline := false
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline, ctxDeadline = d, true
	}
	_ = c.nc.SetReadDeadline(deadline)
	// A cancelled context interrupts a blocked read.
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetReadDeadline(time.Now()) })
	defer stop()
	if c.resetSent {
		// The RSET sent ahead answers first; what follows it counts
		// only if it succeeded.
		c.resetSent = false
		rep, err := readReply(c.r, c.cfg.Limits)
		if err != nil || rep.Class() != 2 {
			c.broken, c.resetFailed = true, true
			if err == nil {
				c.cfg.Trace.reply(c.host, rep)
				err = fmt.Errorf("%w: %s", ErrResetRefused, rep)
			} else {
				err = fmt.Errorf("%w: %w", ErrResetRefused, err)
			}
			return Reply{}, &Error{Stage: StageRset, Host: c.host, Err: err}
		}
		c.cfg.Trace.reply(c.host, rep)
	}
	rep, err := readReply(c.r, c.cfg.Limits)
	if err == nil {
		c.cfg.Trace.reply(c.host, rep)
	}
	if err != nil {
		c.cfg.Trace.Add(c.host, "*", "%s: no reply: %v", st, err)
		c.broken = true
		if errors.Is(err, io.EOF) {
			err = fmt.Errorf("connection closed: %w", err)
		}
		var ne net.Error
		if cerr := ctx.Err(); cerr != nil {
			err = fmt.Errorf("%w: %v", cerr, err)
		} else if ctxDeadline && errors.As(err, &ne) && ne.Timeout() {
			err = fmt.Errorf("%w: %v", context.DeadlineExceeded, err)
		}
		return rep, &Error{Stage: st, Host: c.host, Err: err}
	}
	return rep, nil
}

// Cmd sends one command line (without CRLF) and reads the reply.
func (c *Conn) Cmd(ctx context.Context, st Stage, line string) (Reply, error) {
	if err := c.send(ctx, st, line); err != nil {
		return Reply{}, err
	}
	return c.read(ctx, st, c.cfg.CommandTimeout)
}

// send writes command lines (without CRLF) in one write.
func (c *Conn) send(ctx context.Context, st Stage, lines ...string) error {
	if c.broken {
		return &Error{Stage: st, Host: c.host, Err: errors.New("connection is broken")}
	}
	if c.resetDue {
		// RFC 2920 lets RSET lead a pipelined group.
		c.resetDue, c.resetSent = false, true
		lines = append([]string{"RSET"}, lines...)
		c.countNonMail(StageRset)
	}
	n := 0
	for _, line := range lines {
		if strings.ContainsAny(line, "\r\n\x00") {
			// Addresses are checked before they get here; this is the last guard.
			return &Error{Stage: st, Host: c.host, Err: errors.New("refusing to send a command with CR, LF or NUL")}
		}
		n += len(line) + 2
	}
	switch st {
	case StageEHLO, StageHELO, StageSTARTTLS, StageRset:
		c.countNonMail(st)
	}
	deadline := time.Now().Add(c.cfg.CommandTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.nc.SetWriteDeadline(deadline)
	b := make([]byte, 0, n)
	for _, line := range lines {
		c.cfg.Trace.Add(c.host, "C", "%s", line)
		b = append(append(b, line...), '\r', '\n')
	}
	if _, err := c.nc.Write(b); err != nil {
		c.broken = true
		return &Error{Stage: st, Host: c.host, Err: err}
	}
	return nil
}

// ErrTLS marks a failed TLS handshake after STARTTLS was accepted: the
// session state is unknown and the connection is broken.
var ErrTLS = errors.New("TLS handshake failed")

// Hello sends EHLO, falling back to HELO when EHLO is refused, and then
// STARTTLS when offered and enabled. A refusal comes back as the reply.
//
// Opportunistic TLS as Postfix and Exim do it: a refused STARTTLS leaves
// the session as it was (RFC 3207), so it carries on in plaintext on the
// same connection (TLSRefused tells); a failed handshake is an ErrTLS. It
// never loops: at most EHLO, STARTTLS, EHLO.
func (c *Conn) Hello(ctx context.Context) (Reply, error) {
	rep, err := c.ehlo(ctx)
	if err != nil || rep.Class() != 2 {
		return rep, err
	}
	if _, ok := c.ext["STARTTLS"]; !ok || !c.cfg.StartTLS || c.tls {
		return rep, nil
	}
	srep, err := c.Cmd(ctx, StageSTARTTLS, "STARTTLS")
	if err != nil {
		return srep, err
	}
	if srep.Class() != 2 {
		c.tlsRefused = srep
		delete(c.ext, "STARTTLS")
		c.cfg.Trace.Add(c.host, "*", "STARTTLS refused: carrying on in plaintext on this connection")
		return rep, nil
	}
	host, _, _ := net.SplitHostPort(c.host)
	tc := tls.Client(c.nc, &tls.Config{ServerName: host, InsecureSkipVerify: !c.cfg.TLSVerify, MinVersion: tls.VersionTLS12}) //nolint:gosec // opportunistic by default, a setting
	hctx, cancel := context.WithTimeout(ctx, c.cfg.CommandTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.cfg.Trace.Add(c.host, "*", "TLS handshake failed: %v", err)
		c.broken = true
		return Reply{}, &Error{Stage: StageSTARTTLS, Host: c.host, Err: fmt.Errorf("%w: %v", ErrTLS, err)}
	}
	c.nc = tc
	c.r = bufio.NewReaderSize(tc, c.cfg.Limits.MaxLine)
	c.tls = true
	st := tc.ConnectionState()
	c.cfg.Trace.Add(c.host, "*", "TLS %s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite))
	return c.ehlo(ctx)
}

// ehlo sends EHLO (HELO when refused with 5xx) and records the extensions.
func (c *Conn) ehlo(ctx context.Context) (Reply, error) {
	rep, err := c.Cmd(ctx, StageEHLO, "EHLO "+c.cfg.HeloName)
	if err != nil {
		return rep, err
	}
	if rep.Class() != 2 {
		if rep.Class() == 4 {
			return rep, nil
		}
		c.ext = map[string]string{}
		return c.Cmd(ctx, StageHELO, "HELO "+c.cfg.HeloName)
	}
	c.ext = parseExtensions(rep)
	return rep, nil
}

// TLSRefused is the server's refusal of STARTTLS, if it refused (Code 0
// otherwise).
func (c *Conn) TLSRefused() Reply { return c.tlsRefused }

func parseExtensions(rep Reply) map[string]string {
	ext := map[string]string{}
	for _, l := range rep.Lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		ext[strings.ToUpper(k)] = v
	}
	return ext
}

// Has reports whether the server announced an EHLO extension.
func (c *Conn) Has(ext string) bool { _, ok := c.ext[ext]; return ok }

// Mail sends MAIL FROM with sender ("" for the null sender). No SIZE=:
// a size refusal must never become a cached fact about an address.
func (c *Conn) Mail(ctx context.Context, sender string) (Reply, error) {
	return c.Cmd(ctx, StageMail, "MAIL FROM:<"+sender+">")
}

// MailRcpt sends MAIL FROM with sender and RCPT TO with rcpt. With
// PIPELINING (RFC 2920) both go in one write and both replies are read,
// which saves a round trip; without it RCPT is sent only once MAIL is
// accepted. rcptRep is nil unless MAIL was accepted: after a refused MAIL
// the reply to a pipelined RCPT (503, say) says nothing about the address.
// sent says whether RCPT went out; an error with MAIL accepted is the
// RCPT's.
func (c *Conn) MailRcpt(ctx context.Context, sender, rcpt string) (mail Reply, rcptRep *Reply, sent bool, err error) {
	mailLine, rcptLine := "MAIL FROM:<"+sender+">", "RCPT TO:<"+rcpt+">"
	if !c.Has("PIPELINING") {
		if mail, err = c.Cmd(ctx, StageMail, mailLine); err != nil || mail.Class() != 2 {
			return mail, nil, false, err
		}
		r, err := c.Cmd(ctx, StageRcpt, rcptLine)
		return mail, &r, true, err
	}
	if err = c.send(ctx, StageMail, mailLine, rcptLine); err != nil {
		return Reply{}, nil, false, err
	}
	if mail, err = c.read(ctx, StageMail, c.cfg.CommandTimeout); err != nil {
		// After a refused RSET ahead of them, the RCPT counts as not sent.
		return mail, nil, !errors.Is(err, ErrResetRefused), err
	}
	r, rerr := c.read(ctx, StageRcpt, c.cfg.CommandTimeout)
	if mail.Class() != 2 {
		return mail, nil, true, nil // the connection is broken if the RCPT's reply was not read
	}
	return mail, &r, true, rerr
}

// Rcpt sends RCPT TO for one address.
func (c *Conn) Rcpt(ctx context.Context, addr string) (Reply, error) {
	return c.Cmd(ctx, StageRcpt, "RCPT TO:<"+addr+">")
}

// ResetLater defers the RSET that ends a transaction to the next command,
// in the same write, when the server offers PIPELINING: a kept connection
// then costs no round trip of its own between two callouts. It reports
// false (nothing deferred) without PIPELINING; Reset is then the way.
// The next command's reply is returned only if the RSET succeeded;
// otherwise its error wraps ErrResetRefused and the connection is broken.
func (c *Conn) ResetLater() bool {
	if c.broken || !c.Has("PIPELINING") {
		return false
	}
	c.resetDue = true
	return true
}

// ResetFailed reports whether an RSET sent ahead of a command failed.
func (c *Conn) ResetFailed() bool { return c.resetFailed }

// Reset sends RSET; it reports whether the server took it.
func (c *Conn) Reset(ctx context.Context) bool {
	c.resetDue = false // this one serves
	rep, err := c.Cmd(ctx, StageRset, "RSET")
	if err != nil || rep.Class() != 2 {
		c.broken = true
		return false
	}
	return true
}

// Quit says goodbye, waiting briefly for the answer, and closes. After a
// timeout or a protocol error it just closes.
func (c *Conn) Quit(ctx context.Context) {
	if !c.broken {
		_ = c.nc.SetWriteDeadline(time.Now().Add(c.cfg.QuitTimeout))
		c.cfg.Trace.Add(c.host, "C", "QUIT")
		if _, err := io.WriteString(c.nc, "QUIT\r\n"); err == nil {
			qctx, cancel := context.WithTimeout(ctx, c.cfg.QuitTimeout)
			_, _ = c.read(qctx, StageQuit, c.cfg.QuitTimeout)
			cancel()
		}
	}
	c.Close()
}

// Close drops the connection.
func (c *Conn) Close() {
	c.broken = true
	_ = c.nc.Close()
}
