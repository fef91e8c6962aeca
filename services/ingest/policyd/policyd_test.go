package policyd

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// decide answers by local part, the way a verify service would.
func decide(_ context.Context, req wire.VerifyRequest) wire.VerifyReply {
	a := req.Address
	switch {
	case strings.HasPrefix(a, "unknown@"):
		return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Reject, Code: 550, Enhanced: "5.1.1", Text: "<" + a + ">: Recipient address rejected: User unknown"}}
	case strings.HasPrefix(a, "slow@"):
		return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Defer, Code: 450, Enhanced: "4.4.3", Text: "<" + a + ">: try again later"}}
	case strings.HasPrefix(a, "forged@") && req.Purpose == verdict.Sender:
		return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Reject, Code: 550, Enhanced: "5.1.0", Text: "<" + a + ">: Sender address rejected: undeliverable address"}}
	}
	return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Accept, Code: 250, Enhanced: "2.1.5"}}
}

func serve(t *testing.T, cfg Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := New(cfg, decide, slog.New(slog.NewTextHandler(io.Discard, nil)))
	done := make(chan struct{})
	go func() { _ = s.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func policyRequest(attrs ...string) string {
	return strings.Join(append([]string{"request=smtpd_access_policy", "protocol_state=RCPT", "client_address=192.0.2.7"}, attrs...), "\n") + "\n\n"
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, req string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	empty, err := r.ReadString('\n')
	if err != nil || empty != "\n" {
		t.Fatalf("answer not ended by an empty line: %q %v", empty, err)
	}
	return strings.TrimSuffix(line, "\n")
}

func TestProtocol(t *testing.T) {
	addr := serve(t, Config{Senders: true, MalformedDefer: true})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	tests := []struct{ req, want string }{
		{policyRequest("sender=a@b.example", "recipient=alice@example.org"), "action=DUNNO"},
		// Postfix puts "<unknown@example.org>: Recipient address rejected: "
		// in front of the text itself.
		{policyRequest("sender=a@b.example", "recipient=unknown@example.org"), "action=550 5.1.1 User unknown"},
		{policyRequest("sender=a@b.example", "recipient=slow@example.org"), "action=450 4.4.3 try again later"},
		// A client that shows the text as it is asks for all of it.
		{policyRequest("recipient=unknown@example.org", "callout_text=full"), "action=550 5.1.1 <unknown@example.org>: Recipient address rejected: User unknown"},
		{policyRequest("sender=forged@b.example", "recipient=alice@example.org"), "action=550 5.1.0 <forged@b.example>: Sender address rejected: undeliverable address"},
		{policyRequest("sender=", "recipient=alice@example.org", "unknown_attribute=whatever"), "action=DUNNO"},
		{"request=smtpd_access_policy\nprotocol_state=MAIL\nsender=a@b.example\n\n", "action=DUNNO"},
		{"this is not an attribute\nrecipient=alice@example.org\n\n", "action=451 4.3.5 Policy request not understood"},
		{"request=other\nrecipient=alice@example.org\n\n", "action=451 4.3.5 Policy request not understood"},
		{"recipient=" + strings.Repeat("x", 5000) + "\n\n", "action=451 4.3.5 Policy request not understood"},
		// The connection is still in step after all that.
		{policyRequest("recipient=unknown@example.org"), "action=550 5.1.1 User unknown"},
	}
	for _, tt := range tests {
		if got := roundTrip(t, c, r, tt.req); got != tt.want {
			t.Errorf("request %q\n got %q\nwant %q", tt.req[:min(len(tt.req), 80)], got, tt.want)
		}
	}
}

func TestMalformedDunnoAndDeferIfPermit(t *testing.T) {
	addr := serve(t, Config{DeferIfPermit: true})
	c, _ := net.Dial("tcp", addr)
	defer c.Close()
	r := bufio.NewReader(c)
	if got := roundTrip(t, c, r, "garbage\n\n"); got != "action=DUNNO" {
		t.Fatalf("malformed: %q", got)
	}
	if got := roundTrip(t, c, r, policyRequest("recipient=slow@example.org")); got != "action=DEFER_IF_PERMIT 4.4.3 try again later" {
		t.Fatalf("defer: %q", got)
	}
	// Sender verification off: a forged sender is not looked at.
	if got := roundTrip(t, c, r, policyRequest("sender=forged@b.example", "recipient=alice@example.org")); got != "action=DUNNO" {
		t.Fatalf("sender checked though off: %q", got)
	}
}

// Exim's readsocket writes one request, half-closes and reads to EOF.
func TestHalfClose(t *testing.T) {
	addr := serve(t, Config{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, policyRequest("recipient=unknown@example.org", "callout_text=full"))
	c.(*net.TCPConn).CloseWrite()
	all, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(all) != "action=550 5.1.1 <unknown@example.org>: Recipient address rejected: User unknown\n\n" {
		t.Fatalf("got %q", all)
	}
}

// Postfix opens many connections and sends many requests on each.
func TestManyConnections(t *testing.T) {
	addr := serve(t, Config{})
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			for j := 0; j < 20; j++ {
				want := "action=DUNNO"
				rcpt := "alice@example.org"
				if j%2 == 1 {
					rcpt, want = "unknown@example.org", "action=550 5.1.1 User unknown"
				}
				if got := roundTrip(t, c, r, policyRequest("recipient="+rcpt)); got != want {
					t.Errorf("got %q want %q", got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
}
