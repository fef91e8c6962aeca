// Package smtptest is a scriptable SMTP server on loopback for tests and the
// demo: mailboxes, catch-all, greylisting, refused null sender, blocks, slow
// and hostile peers. It counts connections and RCPT commands.
package smtptest

// Over 400 lines on purpose: one scripted server, whose session loop
// reads best whole.

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Config scripts the server. Zero values give a well-behaved server that
// knows no mailbox.
type Config struct {
	Hostname string
	Banner   string                       // full banner line; default "220 <host> ESMTP"
	EHLO     string                       // reply to EHLO (may be multi-line with \r\n); default 250 with PIPELINING, ENHANCEDSTATUSCODES
	HELO     string                       // reply to HELO; default 250
	Mail     func(from string) string     // reply to MAIL FROM; default 250
	Rcpt     func(from, to string) string // reply to RCPT TO; default Mailboxes(cfg.Mailboxes)
	Rset     string                       // reply to RSET; default 250
	Delay    time.Duration                // before every reply
	// Hold, when set, is called with each command's verb (upper case)
	// before it is answered: a test blocks in it to hold a reply back.
	Hold func(verb string)
	// Raw, when set, takes over every connection after accept.
	Raw func(c net.Conn)
	// Mailboxes are the addresses (local@domain, lower-case domain) that exist.
	Mailboxes []string
	// CatchAll domains accept any recipient.
	CatchAll []string
	// DropAfterUnknown closes the connection after a refused RCPT.
	DropAfterUnknown bool
	// OneRcptPerMail refuses a second RCPT in one transaction with 452.
	OneRcptPerMail bool
	// TLS offers STARTTLS with this config.
	TLS *tls.Config
	// MaxNonMail, when set, closes a connection with 421 after that many
	// non-mail commands (EHLO, HELO, STARTTLS, RSET, NOOP), as Exim does with
	// smtp_accept_max_nonmail (default 10). As Exim, it leaves the first
	// HELO or EHLO, the first STARTTLS and the first RSET uncounted.
	MaxNonMail int
	// StartTLS, when set, offers STARTTLS and answers it with this reply
	// (a refusal such as "454 4.7.0 TLS not available due to local problem").
	StartTLS string
	// Tarpit, when set, holds the answer to a refused RCPT this long, and
	// twice as long for each further one on the same connection, as
	// tarpitting servers do to slow down address harvesting.
	Tarpit time.Duration
}

// Server is a running scripted server.
type Server struct {
	cfg    Config
	ln     net.Listener
	wg     sync.WaitGroup
	conns  atomic.Int64
	rcpts  atomic.Int64
	active atomic.Int64
	peak   atomic.Int64
	mu     sync.Mutex
	log    map[string]int // RCPT count per address
	verbs  map[string]int // commands received, per verb
	times  []time.Time    // when each connection was accepted
	lines  []string       // every command line received, in order
	open   map[net.Conn]struct{}
	done   chan struct{}
	once   sync.Once
}

// Start listens on addr (e.g. "127.0.0.1:0").
func Start(addr string, cfg Config) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "mx.test"
	}
	if cfg.Banner == "" {
		cfg.Banner = "220 " + cfg.Hostname + " ESMTP scripted"
	}
	if cfg.EHLO == "" {
		cfg.EHLO = "250-" + cfg.Hostname + "\r\n250-PIPELINING\r\n"
		if cfg.TLS != nil || cfg.StartTLS != "" {
			cfg.EHLO += "250-STARTTLS\r\n"
		}
		cfg.EHLO += "250 ENHANCEDSTATUSCODES"
	}
	if cfg.HELO == "" {
		cfg.HELO = "250 " + cfg.Hostname
	}
	if cfg.Mail == nil {
		cfg.Mail = func(string) string { return "250 2.1.0 Ok" }
	}
	if cfg.Rcpt == nil {
		cfg.Rcpt = Mailboxes(cfg.Mailboxes, cfg.CatchAll)
	}
	if cfg.Rset == "" {
		cfg.Rset = "250 2.0.0 Ok"
	}
	s := &Server{cfg: cfg, ln: ln, log: map[string]int{}, verbs: map[string]int{}, open: map[net.Conn]struct{}{}, done: make(chan struct{})}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Addr is the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Conns is the number of connections accepted.
func (s *Server) Conns() int { return int(s.conns.Load()) }

// Rcpts is the number of RCPT commands received.
func (s *Server) Rcpts() int { return int(s.rcpts.Load()) }

// Peak is the largest number of connections open at once.
func (s *Server) Peak() int { return int(s.peak.Load()) }

// Lines is every command line received, in order (the first 10,000).
func (s *Server) Lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

// Accepted is when each connection was accepted, in order.
func (s *Server) Accepted() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.times...)
}

// Active is the number of connections open now.
func (s *Server) Active() int { return int(s.active.Load()) }

// Commands is the number of commands received with verb ("" for all).
func (s *Server) Commands(verb string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if verb != "" {
		return s.verbs[strings.ToUpper(verb)]
	}
	n := 0
	for _, c := range s.verbs {
		n += c
	}
	return n
}

// RcptsFor is the number of RCPT commands for one address.
func (s *Server) RcptsFor(addr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log[strings.ToLower(addr)]
}

// Close stops the server and drops every connection.
func (s *Server) Close() {
	s.once.Do(func() {
		close(s.done)
		s.ln.Close()
		s.mu.Lock()
		for c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
	})
	s.wg.Wait()
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.conns.Add(1)
		if n := s.active.Add(1); n > s.peak.Load() {
			s.peak.Store(n)
		}
		s.mu.Lock()
		s.times = append(s.times, time.Now())
		s.open[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			released := false
			defer func() {
				if !released {
					s.active.Add(-1)
				}
				c.Close()
				s.mu.Lock()
				delete(s.open, c)
				s.mu.Unlock()
			}()
			if s.cfg.Raw != nil {
				s.cfg.Raw(c)
				return
			}
			released = s.session(c)
		}()
	}
}

// session plays the dialogue; it reports whether it already took itself
// off the active count (at QUIT, before answering, so the count is exact
// for a client that waits for the answer).
func (s *Server) session(c net.Conn) bool {
	r := bufio.NewReader(c)
	w := bufio.NewWriter(c)
	defer func() { _ = w.Flush() }()
	say := func(line string) bool {
		if s.cfg.Delay > 0 {
			select {
			case <-time.After(s.cfg.Delay):
			case <-s.done:
				return false
			}
		}
		_, _ = w.WriteString(line)
		_, _ = w.WriteString("\r\n")
		// Replies to pipelined commands leave together, as Postfix sends
		// them: one waits while more commands are read already. A slow
		// server sends each when it is ready.
		if r.Buffered() > 0 && s.cfg.Delay == 0 {
			return true
		}
		return w.Flush() == nil
	}
	if !say(s.cfg.Banner) || !strings.HasPrefix(s.cfg.Banner, "2") {
		return false
	}
	from, inMail, rcpts, nonMail := "", false, 0, 0
	tarpit := s.cfg.Tarpit
	free := map[string]bool{"HELLO": true, "STARTTLS": true, "RSET": true}
	for {
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		line, err := r.ReadString('\n')
		if err != nil {
			return false
		}
		line = strings.TrimRight(line, "\r\n")
		verb, arg, _ := strings.Cut(line, " ")
		verb = strings.ToUpper(verb)
		s.mu.Lock()
		s.verbs[verb]++
		if len(s.lines) < 10000 {
			s.lines = append(s.lines, line)
		}
		s.mu.Unlock()
		if s.cfg.Hold != nil {
			s.cfg.Hold(verb)
		}
		switch verb {
		case "EHLO", "HELO", "STARTTLS", "RSET", "NOOP":
			kind := verb
			if kind == "EHLO" || kind == "HELO" {
				kind = "HELLO"
			}
			if free[kind] {
				free[kind] = false
				break
			}
			if nonMail++; s.cfg.MaxNonMail > 0 && nonMail > s.cfg.MaxNonMail {
				s.mu.Lock()
				s.verbs["421"]++
				s.mu.Unlock()
				say("421 4.7.0 mx.test too many nonmail commands")
				return false
			}
		}
		switch verb {
		case "EHLO":
			say(s.cfg.EHLO)
		case "HELO":
			say(s.cfg.HELO)
		case "STARTTLS":
			if s.cfg.StartTLS != "" {
				say(s.cfg.StartTLS)
				continue
			}
			if s.cfg.TLS == nil {
				say("502 5.5.1 not offered")
				continue
			}
			say("220 2.0.0 Ready to start TLS")
			tc := tls.Server(c, s.cfg.TLS)
			if err := tc.Handshake(); err != nil {
				return false
			}
			w = bufio.NewWriter(tc)
			r = bufio.NewReader(tc)
		case "MAIL":
			from = pathOf(arg)
			rep := s.cfg.Mail(from)
			inMail = strings.HasPrefix(rep, "2")
			rcpts = 0
			say(rep)
		case "RCPT":
			to := pathOf(arg)
			s.rcpts.Add(1)
			s.mu.Lock()
			s.log[strings.ToLower(to)]++
			s.mu.Unlock()
			if !inMail {
				say("503 5.5.1 Error: need MAIL command")
				continue
			}
			if s.cfg.OneRcptPerMail && rcpts > 0 {
				say("452 4.5.3 Too many recipients")
				continue
			}
			rcpts++
			rep := s.cfg.Rcpt(from, to)
			if tarpit > 0 && strings.HasPrefix(rep, "5") {
				select {
				case <-time.After(tarpit):
				case <-s.done:
					return false
				}
				tarpit *= 2
			}
			say(rep)
			if s.cfg.DropAfterUnknown && strings.HasPrefix(rep, "5") {
				return false
			}
		case "RSET":
			inMail = false
			say(s.cfg.Rset)
		case "NOOP":
			say("250 2.0.0 Ok")
		case "QUIT":
			s.active.Add(-1)
			say("221 2.0.0 Bye")
			return true
		case "DATA":
			say("554 5.5.1 this server takes no mail")
		default:
			say("502 5.5.2 Error: command not recognized")
		}
	}
}

func pathOf(arg string) string {
	_, p, ok := strings.Cut(arg, ":")
	if !ok {
		return ""
	}
	p = strings.TrimSpace(p)
	if i := strings.IndexByte(p, '>'); strings.HasPrefix(p, "<") && i > 0 {
		return p[1:i]
	}
	return p
}

// Mailboxes answers 250 for the listed addresses, for postmaster of every
// domain (RFC 5321 requires it) and for any address of a catch-all
// domain, and 550 5.1.1 for the rest.
func Mailboxes(boxes, catchAll []string) func(from, to string) string {
	known := map[string]bool{}
	for _, b := range boxes {
		known[strings.ToLower(b)] = true
	}
	all := map[string]bool{}
	for _, d := range catchAll {
		all[strings.ToLower(d)] = true
	}
	return func(_, to string) string {
		to = strings.ToLower(to)
		_, domain, _ := strings.Cut(to, "@")
		if known[to] || all[domain] || strings.HasPrefix(to, "postmaster@") {
			return "250 2.1.5 Ok"
		}
		return "550 5.1.1 <" + to + ">: Recipient address rejected: User unknown in local recipient table"
	}
}

// Greylist defers the first attempt for each (sender, recipient) pair and
// then answers as next does.
func Greylist(next func(from, to string) string) func(from, to string) string {
	var mu sync.Mutex
	seen := map[string]bool{}
	return func(from, to string) string {
		mu.Lock()
		k := from + "\x00" + strings.ToLower(to)
		first := !seen[k]
		seen[k] = true
		mu.Unlock()
		if first {
			return "450 4.2.0 <" + to + ">: Recipient address rejected: Greylisted, see https://postgrey.example/"
		}
		return next(from, to)
	}
}

// Run starts a server on a free loopback port for the test and closes it
// when the test ends.
func Run(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := Start("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}
