package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callout-mail/callout/e2e/postfix"
	"github.com/callout-mail/callout/shared/domains"
)

// needPostfix makes sure Postfix and swaks are installed, installing them
// with apt-get when running as root; otherwise the test is skipped.
func needPostfix(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the Postfix scenarios need root (Postfix runs its daemons as its own user)")
	}
	aptInstall(t, "postfix", "postfix", "swaks")
	aptInstall(t, "swaks", "postfix", "swaks")
}

// postfixInstance is one Postfix with its own config, queue and port.
type postfixInstance struct {
	dir  string
	addr string
}

func startPostfix(t *testing.T, mainCf string, listen string, policy string, files map[string]string) *postfixInstance {
	t.Helper()
	data := map[string]string{"Policy": policy}
	if policy != "" {
		// The restrictions and policy client settings are the docs'.
		data["DocPolicy"] = strings.ReplaceAll(docSnippet(t, "postfix main.cf"), "127.0.0.1:10040", policy)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := postfix.Start(ctx, mainCf, listen, data, files)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- %s maillog\n%s", filepath.Base(p.Dir), p.Maillog())
		}
		_ = p.Stop()
	})
	return &postfixInstance{dir: p.Dir, addr: p.Addr}
}

// swaks sends one message through server and returns swaks' transcript.
func swaks(t *testing.T, server, to string) string {
	t.Helper()
	out, _ := exec.Command("swaks", "--server", server, "--from", "sender@example.net", "--to", to,
		"--helo", "client.example.net", "--timeout", "60", "--body", "callout e2e").CombinedOutput()
	return string(out)
}

// finalReply is the server's answer to RCPT in a swaks transcript.
func rcptReply(transcript string) string {
	lines := strings.Split(transcript, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, " -> RCPT TO:") && i+1 < len(lines) {
			return strings.TrimSpace(strings.TrimLeft(lines[i+1], "<~*- "))
		}
	}
	return ""
}

// A real mail flow: swaks -> front-end Postfix (check_policy_service ->
// ingest) -> destination Postfix.
func TestPostfixFlow(t *testing.T) {
	needPostfix(t)
	destAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	deadAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// postmaster is provisioned, as RFC 5321 requires and Postfix's
	// VIRTUAL_README advises: the control probe asks it before a user
	// unknown is taken as one.
	dest := startPostfix(t, "dest-main.cf", destAddr, "", map[string]string{
		"vmailbox": "alice@dest.example alice/\nbob@dest.example bob/\npostmaster@dest.example postmaster/\n",
	})
	s := newSystem(t, options{env: map[string][]string{"ingest": {"CALLOUT_INGEST_TIMEOUT=8s"}}})
	s.setPolicy("dest.example", domains.Policy{Route: []string{destAddr}})
	s.setPolicy("down.example", domains.Policy{Route: []string{deadAddr}})
	frontAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startPostfix(t, "front-main.cf", frontAddr, s.policy, map[string]string{
		"transport": fmt.Sprintf("dest.example smtp:[%s\ndown.example smtp:[%s\n", hostPort(destAddr), hostPort(deadAddr)),
	})

	t.Run("known mailbox accepted and delivered", func(t *testing.T) {
		tr := swaks(t, frontAddr, "alice@dest.example")
		if r := rcptReply(tr); !strings.HasPrefix(r, "250") {
			t.Fatalf("RCPT answer %q\n%s", r, tr)
		}
		if !strings.Contains(tr, "queued as") {
			t.Fatalf("message not queued:\n%s", tr)
		}
		// The front-end relays it to the destination, which delivers it.
		waitFor(t, 60*time.Second, func() bool {
			files, _ := filepath.Glob(filepath.Join(dest.dir, "vmail", "alice", "new", "*"))
			return len(files) > 0
		})
	})
	t.Run("unknown mailbox rejected with 550 5.1.1", func(t *testing.T) {
		tr := swaks(t, frontAddr, "nobody@dest.example")
		// Postfix writes "<address>: Recipient address rejected:" once,
		// itself, in front of the policy's text.
		if r := rcptReply(tr); r != "550 5.1.1 <nobody@dest.example>: Recipient address rejected: User unknown" {
			t.Fatalf("RCPT answer %q\n%s", r, tr)
		}
		if strings.Contains(tr, destAddr) {
			t.Fatal("the answer reveals the destination")
		}
	})
	t.Run("destination down gives 450", func(t *testing.T) {
		tr := swaks(t, frontAddr, "someone@down.example")
		if r := rcptReply(tr); !strings.HasPrefix(r, "450") {
			t.Fatalf("RCPT answer %q\n%s", r, tr)
		}
	})
}

// hostPort turns 127.0.0.1:25 into 127.0.0.1]:25 for smtp:[host]:port.
func hostPort(addr string) string {
	h, p, _ := net.SplitHostPort(addr)
	return h + "]:" + p
}
