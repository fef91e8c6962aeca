package milterd

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/d--j/go-milter"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// decide answers by local part, as a verify service would; slow@ takes
// longer than the client's read timeout, to be answered thanks to the
// progress sent meanwhile.
func decide(seen *[]wire.VerifyRequest) VerifyFunc {
	return func(ctx context.Context, req wire.VerifyRequest) wire.VerifyReply {
		*seen = append(*seen, req)
		a := req.Address
		switch {
		case strings.HasPrefix(a, "unknown@"):
			return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Reject, Code: 550, Enhanced: "5.1.1", Text: "<" + a + ">: Recipient address rejected: User unknown"}}
		case strings.HasPrefix(a, "grey@"):
			return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Defer, Code: 450, Enhanced: "4.4.3", Text: "<" + a + ">: try again later"}}
		case strings.HasPrefix(a, "forged@") && req.Purpose == verdict.Sender:
			return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Reject, Code: 550, Enhanced: "5.1.0", Text: "<" + a + ">: Sender address rejected"}}
		case strings.HasPrefix(a, "slow@"):
			select {
			case <-time.After(1500 * time.Millisecond):
			case <-ctx.Done():
			}
		case a == "bad\r\naddress":
			return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Reject, Code: 501, Enhanced: "5.1.3"}, Verdict: &verdict.Verdict{Status: verdict.Malformed}}
		}
		return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Accept, Code: 250, Enhanced: "2.1.5"}}
	}
}

func serve(t *testing.T, cfg Config, verify VerifyFunc) (string, *Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := New(cfg, verify, slog.New(slog.NewTextHandler(io.Discard, nil)))
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String(), s
}

func openSession(t *testing.T, addr string, readTimeout time.Duration) *milter.ClientSession {
	t.Helper()
	return openSessionAs(t, addr, readTimeout, postfix)
}

// The MTA versions (macro v) Postfix and Sendmail send.
const (
	postfix  = "Postfix 3.7.11"
	sendmail = "8.17.1.9"
)

// openSessionAs opens a session as the MTA whose version macro is
// version ("" for none).
func openSessionAs(t *testing.T, addr string, readTimeout time.Duration, version string) *milter.ClientSession {
	t.Helper()
	c := milter.NewClient("tcp", addr, milter.WithReadTimeout(readTimeout))
	macros := milter.NewMacroBag()
	if version != "" {
		macros.Set(milter.MacroMTAVersion, version)
	}
	s, err := c.Session(macros)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// start sends what an MTA sends before MAIL.
func start(t *testing.T, s *milter.ClientSession) {
	t.Helper()
	if _, err := s.Conn("mx.example.com", milter.FamilyInet, 25000, "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Helo("mx.example.com"); err != nil {
		t.Fatal(err)
	}
}

// One transaction, three recipients: each answered for itself; nothing
// after RCPT is asked of the MTA.
func TestRecipients(t *testing.T) {
	var seen []wire.VerifyRequest
	addr, _ := serve(t, Config{Progress: 200 * time.Millisecond}, decide(&seen))
	s := openSession(t, addr, 5*time.Second)
	for _, opt := range []milter.OptProtocol{milter.OptNoBody, milter.OptNoHeaders, milter.OptNoData, milter.OptNoEOH} {
		if !s.ProtocolOption(opt) {
			t.Errorf("protocol option %v not negotiated: the MTA would send what is not needed", opt)
		}
	}
	start(t, s)
	if act, err := s.Mail("someone@example.com", ""); err != nil || act.StopProcessing() {
		t.Fatalf("MAIL: %v %v", act, err)
	}
	for _, tt := range []struct {
		rcpt  string
		code  uint16
		reply string
	}{
		{"alice@example.org", 0, ""},
		{"unknown@example.org", 550, "550 5.1.1 <unknown@example.org>: Recipient address rejected: User unknown"},
		{"grey@example.org", 450, "450 4.4.3 <grey@example.org>: try again later"},
	} {
		act, err := s.Rcpt(tt.rcpt, "")
		if err != nil {
			t.Fatalf("%s: %v", tt.rcpt, err)
		}
		if tt.code == 0 && (act.StopProcessing() || act.Type != milter.ActionContinue) ||
			tt.code != 0 && (act.SMTPCode != tt.code || strings.TrimSpace(act.SMTPReply) != tt.reply || !act.StopProcessing()) {
			t.Errorf("%s: %v %d %q, want %d %q", tt.rcpt, act, act.SMTPCode, act.SMTPReply, tt.code, tt.reply)
		}
	}
	r := seen[len(seen)-1]
	if r.ClientAddress != "192.0.2.7" || r.Helo != "mx.example.com" || r.Sender != "someone@example.com" || r.Purpose != verdict.Recipient {
		t.Fatalf("the request carries %+v", r)
	}
}

// The sender is checked at MAIL FROM when asked to; a forged one is
// refused for the transaction.
func TestSender(t *testing.T) {
	var seen []wire.VerifyRequest
	addr, _ := serve(t, Config{Senders: true}, decide(&seen))
	s := openSession(t, addr, 5*time.Second)
	start(t, s)
	act, err := s.Mail("forged@example.com", "")
	if err != nil || act.SMTPCode != 550 || !strings.Contains(act.SMTPReply, "5.1.0") {
		t.Fatalf("forged sender: %v %v", act, err)
	}
	if len(seen) != 1 || seen[0].Purpose != verdict.Sender {
		t.Fatalf("requests %+v", seen)
	}
}

// A verdict slower than Postfix's reply timeout is still answered: the
// listener sends Postfix progress meanwhile. Sendmail takes progress only
// at the end of a message: at RCPT it counts as a bogus reply, drops the
// milter and accepts the recipient unverified. So Sendmail, and an MTA
// that does not say what it is, get none: their own reply timeout (with
// Sendmail's F=T, a 4xx) applies.
func TestProgress(t *testing.T) {
	for _, tt := range []struct {
		mta      string
		progress bool
	}{{postfix, true}, {sendmail, false}, {"", false}} {
		// A server each: a session timed out leaves its verify running.
		var seen []wire.VerifyRequest
		addr, _ := serve(t, Config{Progress: 200 * time.Millisecond}, decide(&seen))
		s := openSessionAs(t, addr, 700*time.Millisecond, tt.mta) // shorter than the verdict
		start(t, s)
		if _, err := s.Mail("", ""); err != nil {
			t.Fatal(err)
		}
		act, err := s.Rcpt("slow@example.org", "")
		if tt.progress && (err != nil || act.StopProcessing()) {
			t.Fatalf("%q: slow recipient: %v %v", tt.mta, act, err)
		}
		if !tt.progress && (err == nil || !strings.Contains(err.Error(), "timeout")) {
			t.Fatalf("%q: the reply came with progress or in time: %v %v", tt.mta, act, err)
		}
	}
}

// Garbage, an over-long packet, or another protocol close that
// connection; the listener goes on serving.
func TestBadInput(t *testing.T) {
	var seen []wire.VerifyRequest
	addr, _ := serve(t, Config{}, decide(&seen))
	for _, junk := range [][]byte{
		[]byte("EHLO hello\r\n"),                  // SMTP, not milter
		{0x7f, 0xff, 0xff, 0xff, 'O', 1, 2, 3, 4}, // a packet of 2 GB announced
		{0, 0, 0, 1, 'Z'},                         // an unknown command
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(junk)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadAll(c); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Errorf("junk %q: the connection was not closed: %v", junk, err)
		}
		c.Close()
	}
	s := openSession(t, addr, 5*time.Second)
	start(t, s)
	if _, err := s.Mail("", ""); err != nil {
		t.Fatal(err)
	}
	if act, err := s.Rcpt("unknown@example.org", ""); err != nil || act.SMTPCode != 550 {
		t.Fatalf("after the junk: %v %v", act, err)
	}
	// Not an address at all: never a 5xx.
	if act, err := s.Rcpt("bad\r\naddress", ""); err != nil || act.StopProcessing() {
		t.Fatalf("malformed: %v %v", act, err)
	}
}

// Past the connection cap a connection is closed at once (the MTA
// applies its default action to that session), and counted.
func TestConnectionCap(t *testing.T) {
	var seen []wire.VerifyRequest
	addr, srv := serve(t, Config{MaxConns: 1}, decide(&seen))
	_ = openSession(t, addr, 5*time.Second)
	c := milter.NewClient("tcp", addr, milter.WithReadTimeout(2*time.Second))
	if s, err := c.Session(milter.NewMacroBag()); err == nil {
		_ = s.Close()
		t.Fatal("a second session was served past the cap")
	}
	var refused atomic.Uint64
	refused.Store(srv.C.Refused.Load())
	if refused.Load() != 1 {
		t.Fatalf("refused %d", refused.Load())
	}
}
