package smtpprobe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/smtptest"
)

func TestReadReply(t *testing.T) {
	tests := []struct {
		raw      string
		code     int
		enhanced string
		text     string
		err      error
	}{
		{"250 OK\r\n", 250, "", "OK", nil},
		{"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n", 250, "", "mx.test PIPELINING SIZE 100", nil},
		{"550 5.1.1 <a@b>: User unknown\r\n", 550, "5.1.1", "<a@b>: User unknown", nil},
		{"550-5.7.1 line one\r\n550 5.7.1 line two\r\n", 550, "5.7.1", "line one line two", nil},
		{"550 4.1.1 class mismatch\r\n", 550, "", "4.1.1 class mismatch", nil},
		{"550 5.01.001 padded\r\n", 550, "5.1.1", "padded", nil},
		{"220\r\n", 220, "", "", nil},
		{"250 no CR\n", 250, "", "no CR", nil},
		{"999 what\r\n", 0, "", "", ErrMalformed},
		{"abc def\r\n", 0, "", "", ErrMalformed},
		{"099 low\r\n", 0, "", "", ErrMalformed},
		{"25\r\n", 0, "", "", ErrMalformed},
		{"250x nope\r\n", 0, "", "", ErrMalformed},
		{"250-one\r\n550 two\r\n", 0, "", "", ErrMalformed},
		{strings.Repeat("250-x\r\n", 100) + "250 end\r\n", 0, "", "", ErrTooMany},
		{"250 " + strings.Repeat("x", 5000) + "\r\n", 0, "", "", ErrLineLong},
	}
	for _, tt := range tests {
		r, err := readReply(bufio.NewReaderSize(strings.NewReader(tt.raw), DefaultLimits.MaxLine), DefaultLimits)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("%q: error %v, want %v", tt.raw, err, tt.err)
			}
			continue
		}
		if err != nil || r.Code != tt.code || r.Enhanced != tt.enhanced || r.Text() != tt.text {
			t.Errorf("%q: got %d %q %q %v", tt.raw, r.Code, r.Enhanced, r.Text(), err)
		}
	}
	big := strings.Repeat("250-"+strings.Repeat("y", 1000)+"\r\n", 30) + "250 end\r\n"
	if _, err := readReply(bufio.NewReaderSize(strings.NewReader(big), DefaultLimits.MaxLine), DefaultLimits); !errors.Is(err, ErrTooBig) {
		t.Errorf("30 KB reply: %v, want ErrTooBig", err)
	}
}

func hostile(t *testing.T, raw func(net.Conn)) string {
	t.Helper()
	s, err := smtptest.Start("127.0.0.1:0", smtptest.Config{Raw: raw})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s.Addr()
}

// A hostile server cannot hang or bloat the client: every case ends within
// the configured timeouts with an error.
func TestHostileServers(t *testing.T) {
	cfg := Config{BannerTimeout: 300 * time.Millisecond, CommandTimeout: 300 * time.Millisecond, ConnectTimeout: time.Second}
	tests := []struct {
		name string
		raw  func(net.Conn)
		want error
	}{
		{"silent", func(c net.Conn) { drain(c) }, nil},
		{"one byte a second", func(c net.Conn) {
			for _, b := range []byte("220 slow banner\r\n") {
				if _, err := c.Write([]byte{b}); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}, nil},
		{"endless continuation", func(c net.Conn) {
			for {
				if _, err := c.Write([]byte("220-more\r\n")); err != nil {
					return
				}
			}
		}, ErrTooMany},
		{"10 MB line", func(c net.Conn) {
			buf := []byte("220 " + strings.Repeat("x", 1<<20))
			for i := 0; i < 10; i++ {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}, ErrLineLong},
		{"bad code", func(c net.Conn) { c.Write([]byte("999 hello\r\n")); drain(c) }, ErrMalformed},
		{"letters", func(c net.Conn) { c.Write([]byte("abc hello\r\n")); drain(c) }, ErrMalformed},
		{"closes", func(c net.Conn) {}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := hostile(t, tt.raw)
			start := time.Now()
			c, _, err := Dial(context.Background(), addr, cfg)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded against a hostile server")
			}
			var se *Error
			if !errors.As(err, &se) || se.Stage != StageBanner {
				t.Fatalf("error %v is not a banner-stage *Error", err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if el := time.Since(start); el > 5*time.Second {
				t.Fatalf("took %v", el)
			}
		})
	}
}

func TestSlowCommandTimesOut(t *testing.T) {
	addr := hostile(t, func(c net.Conn) {
		c.Write([]byte("220 hi\r\n"))
		drain(c)
	})
	c, _, err := Dial(context.Background(), addr, Config{CommandTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Hello(context.Background())
	var se *Error
	if !errors.As(err, &se) || !se.Timeout() || se.Stage != StageEHLO {
		t.Fatalf("EHLO against a silent server: %v", err)
	}
	if !c.Broken() {
		t.Fatal("connection not marked broken after a timeout")
	}
}

func TestContextCancelInterruptsRead(t *testing.T) {
	addr := hostile(t, func(c net.Conn) { drain(c) })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, _, err := Dial(ctx, addr, Config{BannerTimeout: time.Minute})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want deadline exceeded", err)
	}
}

func TestRefusesInjection(t *testing.T) {
	s, err := smtptest.Start("127.0.0.1:0", smtptest.Config{Mailboxes: []string{"a@example.org"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, _, err := Dial(context.Background(), s.Addr(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Hello(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Rcpt(context.Background(), "a@example.org>\r\nDATA"); err == nil {
		t.Fatal("a command with CRLF was sent")
	}
	if s.Rcpts() != 0 {
		t.Fatalf("server saw %d RCPTs", s.Rcpts())
	}
}

func TestEHLOFallsBackToHELO(t *testing.T) {
	s, err := smtptest.Start("127.0.0.1:0", smtptest.Config{EHLO: "502 5.5.2 no EHLO here"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, _, err := Dial(context.Background(), s.Addr(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rep, err := c.Hello(context.Background())
	if err != nil || rep.Code != 250 {
		t.Fatalf("HELO fallback: %v %v", rep, err)
	}
}

// drain reads until the client or the server's Close ends the connection.
func drain(c net.Conn) { _, _ = io.Copy(io.Discard, c) }

// QUIT waits at most QuitTimeout for the server's answer.
func TestQuitDoesNotWaitLong(t *testing.T) {
	addr := hostile(t, func(c net.Conn) {
		c.Write([]byte("220 hi\r\n"))
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if strings.HasPrefix(line, "QUIT") {
				drain(c) // never answers QUIT
				return
			}
			c.Write([]byte("250 ok\r\n"))
		}
	})
	c, _, err := Dial(context.Background(), addr, Config{QuitTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Hello(context.Background()); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { c.Quit(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("QUIT waited for an answer that never came")
	}
}

// greeted is a connection to addr past its EHLO, closed when the test ends.
func greeted(t *testing.T, addr string) *Conn {
	t.Helper()
	c, _, err := Dial(context.Background(), addr, Config{CommandTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := c.Hello(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

// With PIPELINING, MAIL and RCPT go out together: this server answers
// only once it has read both lines, so a client waiting for MAIL's reply
// first would time out. Injection is refused in a pipelined RCPT too.
func TestMailRcptPipelined(t *testing.T) {
	addr := hostile(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		fmt.Fprint(c, "220 mx.test ESMTP\r\n")
		if _, err := r.ReadString('\n'); err != nil { // EHLO
			return
		}
		fmt.Fprint(c, "250-mx.test\r\n250 PIPELINING\r\n")
		for {
			mail, err1 := r.ReadString('\n')
			rcpt, err2 := r.ReadString('\n')
			if err1 != nil || err2 != nil {
				return
			}
			if strings.HasPrefix(mail, "MAIL FROM:<refused") {
				fmt.Fprint(c, "550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n")
				continue
			}
			if !strings.HasPrefix(mail, "MAIL FROM:<") || !strings.HasPrefix(rcpt, "RCPT TO:<") {
				return
			}
			fmt.Fprint(c, "250 2.1.0 ok\r\n550 5.1.1 no such user\r\n")
		}
	})
	c := greeted(t, addr)
	mail, rcpt, sent, err := c.MailRcpt(context.Background(), "", "nobody@example.org")
	if err != nil || mail.Code != 250 || !sent || rcpt == nil || rcpt.Code != 550 || rcpt.Enhanced != "5.1.1" {
		t.Fatalf("MAIL %v, RCPT %v, sent %v, %v", mail, rcpt, sent, err)
	}
	// After a refused MAIL the RCPT's 503 is read and not handed over.
	mail, rcpt, sent, err = c.MailRcpt(context.Background(), "refused@example.org", "nobody@example.org")
	if err != nil || mail.Code != 550 || !sent || rcpt != nil || c.Broken() {
		t.Fatalf("refused MAIL: %v, RCPT %v, sent %v, broken %v, %v", mail, rcpt, sent, c.Broken(), err)
	}
	if _, _, sent, err := c.MailRcpt(context.Background(), "", "a@example.org>\r\nDATA"); err == nil || sent {
		t.Fatal("a pipelined command with CRLF was sent")
	}
}

// An RSET deferred with ResetLater leads the next command group in the
// same write; its reply is read first, and a refused one makes the
// group's replies an ErrResetRefused error, not replies.
func TestResetAhead(t *testing.T) {
	chunks := make(chan []string, 10)
	addr := hostile(t, func(c net.Conn) {
		fmt.Fprint(c, "220 mx.test ESMTP\r\n")
		buf := make([]byte, 4096)
		resets := 0
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			lines := strings.Split(strings.TrimSuffix(string(buf[:n]), "\r\n"), "\r\n")
			chunks <- lines
			for _, l := range lines {
				switch {
				case strings.HasPrefix(l, "EHLO"):
					fmt.Fprint(c, "250-mx.test\r\n250 PIPELINING\r\n")
				case l == "RSET":
					if resets++; resets > 1 {
						fmt.Fprint(c, "502 5.5.1 no RSET\r\n")
					} else {
						fmt.Fprint(c, "250 2.0.0 ok\r\n")
					}
				case strings.HasPrefix(l, "MAIL"):
					fmt.Fprint(c, "250 2.1.0 ok\r\n")
				default:
					fmt.Fprint(c, "550 5.1.1 no such user\r\n")
				}
			}
		}
	})
	c := greeted(t, addr)
	<-chunks
	if _, _, _, err := c.MailRcpt(context.Background(), "", "a@example.org"); err != nil {
		t.Fatal(err)
	}
	<-chunks
	before := c.NonMail()
	if !c.ResetLater() {
		t.Fatal("nothing deferred on a PIPELINING connection")
	}
	mail, rcpt, sent, err := c.MailRcpt(context.Background(), "", "b@example.org")
	if err != nil || mail.Code != 250 || rcpt == nil || rcpt.Code != 550 || !sent {
		t.Fatalf("after RSET: MAIL %v, RCPT %v, sent %v, %v", mail, rcpt, sent, err)
	}
	if got, want := <-chunks, []string{"RSET", "MAIL FROM:<>", "RCPT TO:<b@example.org>"}; !slices.Equal(got, want) {
		t.Fatalf("one write carried %q, want %q", got, want)
	}
	if c.NonMail() != before {
		t.Fatalf("non-mail count %d after the first RSET, want %d (Exim leaves it uncounted)", c.NonMail(), before)
	}
	// Refused: the replies after it are not handed over.
	c.ResetLater()
	mail, rcpt, sent, err = c.MailRcpt(context.Background(), "", "c@example.org")
	if !errors.Is(err, ErrResetRefused) || sent || rcpt != nil || mail.Code != 0 || !c.Broken() || !c.ResetFailed() {
		t.Fatalf("refused RSET: MAIL %v, RCPT %v, sent %v, broken %v, %v", mail, rcpt, sent, c.Broken(), err)
	}
	var se *Error
	if !errors.As(err, &se) || se.Stage != StageRset {
		t.Fatalf("error %v, want an *Error at the RSET stage", err)
	}
}

// Non-mail commands are counted as Exim counts them: the first HELO or
// EHLO, STARTTLS and RSET are free, every later one counts.
func TestNonMailCount(t *testing.T) {
	s := smtptest.Run(t, smtptest.Config{})
	c, _, err := Dial(context.Background(), s.Addr(), Config{CommandTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	steps := []struct {
		name string
		do   func() error
		want int
	}{
		{"EHLO", func() error { _, err := c.Hello(context.Background()); return err }, 0},
		{"first RSET", func() error { c.Reset(context.Background()); return nil }, 0},
		{"second RSET", func() error { c.Reset(context.Background()); return nil }, 1},
		{"second EHLO", func() error { _, err := c.Cmd(context.Background(), StageEHLO, "EHLO verifier.test"); return err }, 2},
		{"HELO after EHLO", func() error { _, err := c.Cmd(context.Background(), StageHELO, "HELO verifier.test"); return err }, 3},
		{"MAIL is mail", func() error { _, err := c.Mail(context.Background(), ""); return err }, 3},
		{"deferred RSET", func() error { c.ResetLater(); _, err := c.Rcpt(context.Background(), "a@example.org"); return err }, 4},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := c.NonMail(); got != st.want {
			t.Fatalf("after %s: %d counted, want %d", st.name, got, st.want)
		}
	}
}
