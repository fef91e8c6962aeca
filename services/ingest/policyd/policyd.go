// Package policyd speaks the Postfix policy delegation protocol
// (SMTPD_POLICY_README) so that Postfix can ask for verification with
// check_policy_service. Each request is name=value lines ended by an empty
// line; each answer is "action=..." and an empty line. Connections are
// persistent; a client that half-closes after one request (Exim's
// readsocket) gets its answer and a clean close.
package policyd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// Limits on what a client may send.
const (
	maxLine  = 2048
	maxAttrs = 128
)

// VerifyFunc answers one verify request.
type VerifyFunc func(ctx context.Context, req wire.VerifyRequest) wire.VerifyReply

// Config is the adapter's behaviour.
type Config struct {
	Senders        bool          // verify the sender too
	MalformedDefer bool          // answer malformed requests with a defer instead of DUNNO
	DeferIfPermit  bool          // answer defers as DEFER_IF_PERMIT
	MaxConns       int           // connections at once
	IdleTimeout    time.Duration // close an idle connection after this
	Timeout        time.Duration // per-request verify deadline
}

// Server is the policy listener.
type Server struct {
	cfg    Config
	verify VerifyFunc
	log    *slog.Logger
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

// New returns a server.
func New(cfg Config, verify VerifyFunc, log *slog.Logger) *Server {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = 1000
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 300 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 25 * time.Second
	}
	return &Server{cfg: cfg, verify: verify, log: log, conns: map[net.Conn]struct{}{}}
}

// Serve accepts connections on ln until ctx ends, then closes them all.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			// Let a request in progress finish its answer; idle ones close now.
			_ = c.SetReadDeadline(time.Now())
		}
		s.mu.Unlock()
	})
	defer stop()
	sem := make(chan struct{}, s.cfg.MaxConns)
	for {
		c, err := ln.Accept()
		if err != nil {
			s.wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			c.Close()
			continue
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
				<-sem
				s.wg.Done()
			}()
			s.handle(ctx, c)
		}()
	}
}

// errMalformed marks a request that cannot be understood but was read whole.
var errMalformed = errors.New("malformed policy request")

func (s *Server) handle(ctx context.Context, c net.Conn) {
	r := bufio.NewReaderSize(c, maxLine)
	var req request
	var out []byte
	for {
		_ = c.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		err := readRequest(r, &req)
		if err != nil && !errors.Is(err, errMalformed) {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				s.log.Debug("policy connection closed", "remote", c.RemoteAddr(), "err", err)
			}
			return
		}
		var action string
		if err != nil {
			action = s.malformed(c, err)
		} else {
			action = s.answer(ctx, c, &req)
		}
		_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		out = append(append(append(out[:0], "action="...), action...), "\n\n"...)
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func (s *Server) malformed(c net.Conn, err error) string {
	s.log.Warn("policy request malformed", "remote", c.RemoteAddr(), "err", err)
	if s.cfg.MalformedDefer {
		return "451 4.3.5 Policy request not understood"
	}
	return "DUNNO"
}

// request holds the attributes of a policy request that this server uses.
// Postfix sends about thirty; the others are checked and skipped without
// being kept (a map of them all cost a fifth of a cached answer).
type request struct {
	request   string // request: smtpd_access_policy
	recipient string
	sender    string
	client    string // client_address
	helo      string // helo_name
	timeout   string // callout_timeout: a shorter deadline (Exim's ACL)
	text      string // callout_text: "full" for the whole reply text
	attrs     int    // attributes read
}

// readRequest reads attributes up to the empty line into req. A request
// that breaks the limits is read to its end and reported as errMalformed,
// so the connection stays in step.
func readRequest(r *bufio.Reader, req *request) error {
	*req = request{}
	var bad error
	for lines := 0; ; lines++ {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// Skip the rest of an over-long line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			if err != nil {
				return err
			}
			bad = fmt.Errorf("%w: line longer than %d bytes", errMalformed, maxLine)
			continue
		}
		if err != nil {
			if len(line) > 0 || lines > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			if lines == 0 {
				// A stray empty line: nothing to answer yet.
				lines = -1
				continue
			}
			return bad
		}
		eq := bytes.IndexByte(line, '=')
		switch {
		case eq <= 0:
			bad = fmt.Errorf("%w: line without name=value", errMalformed)
			continue
		case req.attrs >= maxAttrs:
			bad = fmt.Errorf("%w: more than %d attributes", errMalformed, maxAttrs)
			continue
		case bytes.IndexByte(line[eq+1:], 0) >= 0:
			bad = fmt.Errorf("%w: NUL in %s", errMalformed, line[:eq])
			continue
		}
		req.attrs++
		var field *string
		switch string(line[:eq]) { // no allocation: compared in place
		case "request":
			field = &req.request
		case "recipient":
			field = &req.recipient
		case "sender":
			field = &req.sender
		case "client_address":
			field = &req.client
		case "helo_name":
			field = &req.helo
		case "callout_timeout":
			field = &req.timeout
		case "callout_text":
			field = &req.text
		default:
			continue
		}
		*field = string(line[eq+1:])
	}
}

// answer verifies the recipient (and the sender, when configured) and maps
// the decision to a Postfix access(5) action.
func (s *Server) answer(ctx context.Context, c net.Conn, req *request) string {
	if req.request != "" && req.request != "smtpd_access_policy" {
		return s.malformed(c, fmt.Errorf("%w: request=%s", errMalformed, req.request))
	}
	rcpt, sender, client := req.recipient, req.sender, req.client
	if rcpt == "" && (!s.cfg.Senders || sender == "") {
		// Nothing to check at this stage (e.g. MAIL without a recipient yet).
		return "DUNNO"
	}
	// A client may ask for a shorter deadline (Exim's readsocket has its own
	// timeout): callout_timeout=20s, or a number of seconds. Postfix sends
	// no such attribute.
	timeout := s.cfg.Timeout
	if v := req.timeout; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			if n, nerr := strconv.Atoi(v); nerr == nil {
				d, err = time.Duration(n)*time.Second, nil
			}
		}
		if err == nil && d > 0 && d < timeout {
			timeout = d
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var deferred string
	if s.cfg.Senders && sender != "" {
		rep := s.verify(ctx, wire.VerifyRequest{Address: sender, Purpose: verdict.Sender, ClientAddress: client, TimeoutMS: int(timeout.Milliseconds()), Recipient: rcpt, Helo: req.helo})
		if brokenInput(rep) {
			return s.malformed(c, fmt.Errorf("%w: sender %q: %s", errMalformed, sender, rep.Verdict.Text))
		}
		switch rep.Decision.Action {
		case verdict.Reject:
			return rep.Decision.String()
		case verdict.Defer:
			deferred = s.deferAction(rep.Decision)
		}
	}
	if rcpt != "" {
		rep := s.verify(ctx, wire.VerifyRequest{Address: rcpt, Purpose: verdict.Recipient, ClientAddress: client, TimeoutMS: int(timeout.Milliseconds()), Sender: sender, Helo: req.helo})
		if brokenInput(rep) {
			return s.malformed(c, fmt.Errorf("%w: recipient %q: %s", errMalformed, rcpt, rep.Verdict.Text))
		}
		if req.text != "full" {
			rep.Decision.Text = postfixText(rep.Decision.Text)
		}
		switch rep.Decision.Action {
		case verdict.Reject:
			return rep.Decision.String()
		case verdict.Defer:
			return s.deferAction(rep.Decision)
		}
	}
	if deferred != "" {
		return deferred
	}
	return "DUNNO"
}

// postfixText is a recipient decision's text as Postfix wants it from a
// policy: Postfix itself puts "<recipient>: Recipient address rejected: "
// in front of what the policy answers, so the text leaves out what would
// say it twice. A client that shows the text as it is (the shipped Exim
// ACL) asks for the whole text with callout_text=full.
func postfixText(text string) string {
	if strings.HasPrefix(text, "<") {
		if _, rest, ok := strings.Cut(text, ">: "); ok {
			text = rest
		}
	}
	return strings.TrimPrefix(text, "Recipient address rejected: ")
}

// brokenInput reports a verdict on input that is not an address at all.
// Postfix has parsed what it sends, so nothing is refused here for its
// form: such input gets the malformed answer (DUNNO or a defer), never a 5xx.
func brokenInput(rep wire.VerifyReply) bool {
	return rep.Verdict != nil && rep.Verdict.Status == verdict.Malformed
}

func (s *Server) deferAction(d verdict.Decision) string {
	if s.cfg.DeferIfPermit {
		return "DEFER_IF_PERMIT " + d.Enhanced + " " + d.Text
	}
	return d.String()
}
