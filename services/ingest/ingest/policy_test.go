package ingest

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/callout-mail/callout/services/ingest/policyd"
	"github.com/callout-mail/callout/shared/verdict"
	"github.com/callout-mail/callout/shared/wire"
)

// A unix: policy address is a UNIX-domain socket with the configured
// permissions that Postfix can ask over; one left by an earlier run is
// replaced, any other file there is left alone.
func TestPolicyUnixSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.sock")
	if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := policyListener("unix:"+path, "0660"); err == nil {
		t.Fatal("a regular file was replaced by the socket")
	}
	os.Remove(path)
	for round := 0; round < 2; round++ { // the second finds the first's socket
		ln, err := policyListener("unix:"+path, "0666")
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o666 {
			t.Fatalf("socket mode %v %v", fi.Mode(), err)
		}
		srv := policyd.New(policyd.Config{}, func(_ context.Context, req wire.VerifyRequest) wire.VerifyReply {
			return wire.VerifyReply{Decision: verdict.Decision{Action: verdict.Reject, Code: 550, Enhanced: "5.1.1", Text: "<" + req.Address + ">: Recipient address rejected: User unknown"}}
		}, quiet)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
		c, err := net.DialTimeout("unix", path, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, "request=smtpd_access_policy\nrecipient=nobody@example.org\n\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "action=550 5.1.1 User unknown\n" {
			t.Fatalf("answer %q %v", line, err)
		}
		c.Close()
		cancel()
		<-done
		// Closing a unix listener removes its socket; leave one behind as
		// a crashed ingest would, for the next round.
		if round == 0 {
			if l, err := net.Listen("unix", path); err == nil {
				l.(*net.UnixListener).SetUnlinkOnClose(false)
				l.Close()
			}
		}
	}
	cfg := ingestConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.PolicySocketMode = "0999"
	if err := cfg.Validate(); err == nil {
		t.Fatal("a mode that is not octal was taken")
	}
}
