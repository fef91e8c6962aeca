package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callout-mail/callout/e2e/postfix"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/verdict"
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
	s := newSystem(t, options{env: map[string][]string{"ingest": {"CALLOUT_INGEST_TIMEOUT=8s", "CALLOUT_INGEST_HISTORY_INTERVAL=500ms"}}})
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
	t.Run("Postfix's decisions are in the decision log and the day's report", func(t *testing.T) {
		ctl := func(args ...string) []byte {
			out, err := exec.Command(filepath.Join(binDir, "calloutctl"), append([]string{"-server", s.url}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("calloutctl %v: %v\n%s", args, err, out)
			}
			return out
		}
		var page operate.SearchResult
		waitFor(t, 10*time.Second, func() bool {
			page = operate.SearchResult{}
			_ = json.Unmarshal(ctl("log", "-domain", "dest.example", "-json"), &page)
			return len(page.Records) >= 2
		})
		want := map[string]verdict.Action{"alice@dest.example": verdict.Accept, "nobody@dest.example": verdict.Reject}
		for _, r := range page.Records {
			w, ok := want[r.Recipient]
			if !ok {
				continue
			}
			delete(want, r.Recipient)
			if r.Action != w || r.Via != decisions.ViaPolicy || r.Client != "127.0.0.1" || r.Helo != "client.example.net" || r.Sender != "sender@example.net" || r.Instance == "" {
				t.Errorf("record of %s: %+v", r.Recipient, r)
			}
			if w == verdict.Reject && (r.Code != 550 || r.Reason != verdict.ReasonUserUnknown || r.DestCode != 550) {
				t.Errorf("the reject's record: %+v", r)
			}
		}
		if len(want) > 0 {
			t.Fatalf("not in the log: %v (page %+v)", want, page)
		}
		// Its own batch (records go by action), which may reach the index
		// after the others.
		var deferred operate.SearchResult
		waitFor(t, 10*time.Second, func() bool {
			deferred = operate.SearchResult{}
			_ = json.Unmarshal(ctl("log", "-recipient", "someone@down.example", "-action", "defer", "-json"), &deferred)
			return len(deferred.Records) > 0
		})
		if len(deferred.Records) != 1 || deferred.Records[0].Code != 450 || deferred.Records[0].Reason == "" {
			t.Fatalf("the defer's record: %+v", deferred)
		}
		// The day's counts: what Postfix was answered.
		waitFor(t, 10*time.Second, func() bool {
			var day map[string]*decisions.Counts
			_ = json.Unmarshal(ctl("report", "-day", time.Now().UTC().Format("2006-01-02"), "-json"), &day)
			d, all := day["dest.example"], day[decisions.AllDomains]
			return d != nil && d.Accept >= 1 && d.Reject >= 1 && d.Reasons["reject/user_unknown"] >= 1 && all != nil && all.Defer >= 1
		})
		if out := string(ctl("report", "-day", time.Now().UTC().Format("2006-01-02"))); !strings.Contains(out, "dest.example") || !strings.Contains(out, "reject/user_unknown") {
			t.Fatalf("report:\n%s", out)
		}
	})
}

// hostPort turns 127.0.0.1:25 into 127.0.0.1]:25 for smtp:[host]:port.
func hostPort(addr string) string {
	h, p, _ := net.SplitHostPort(addr)
	return h + "]:" + p
}

// TestPostfixMilter: Postfix with smtpd_milters pointed at the ingest
// (the docs' settings): a known recipient accepted, an unknown one
// rejected 550 5.1.1, a greylisting destination deferred 4xx; with the
// ingest stopped, Postfix's default action (tempfail) defers.
func TestPostfixMilter(t *testing.T) {
	needPostfix(t)
	destAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startPostfix(t, "dest-main.cf", destAddr, "", map[string]string{
		"vmailbox": "alice@dest.example alice/\npostmaster@dest.example postmaster/\n",
	})
	// A destination that takes 4 s to answer RCPT: longer than the
	// milter command timeout Postfix is given here (3 s), so only the
	// ingest's progress keeps Postfix waiting for the verdict.
	s, milterAddr, grey, slow := milterSystem(t, destAddr)
	frontAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := postfix.Start(ctx, "milter-main.cf", frontAddr, map[string]string{
		"DocMilter": strings.NewReplacer("127.0.0.1:10041", milterAddr, "command_timeout=30s", "command_timeout=3s").Replace(docSnippet(t, "postfix milter")),
	}, map[string]string{"transport": fmt.Sprintf("dest.example smtp:[%s\ngrey.example smtp:[%s\nslow.example smtp:[%s\n", hostPort(destAddr), hostPort(grey.Addr()), hostPort(slow.Addr()))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("--- maillog\n%s", p.Maillog())
		}
		_ = p.Stop()
	})
	milterCases(t, frontAddr, "<nobody@dest.example>: Recipient address rejected: User unknown") // slow: 4 s, past the 3 s command timeout: progress
	// The ingest down: Postfix's default action, a temporary failure.
	ingestDownDefers(t, s, frontAddr)
}

// milterSystem is the system a milter test asks: the ingest's milter
// listener (its address returned) and three routed domains:
// dest.example to dest, grey.example to a greylisting destination and
// slow.example to one that answers RCPT for slow* in 4 s.
func milterSystem(t *testing.T, dest string) (s *system, milterAddr string, grey, slow *smtptest.Server) {
	t.Helper()
	grey = destination(t, smtptest.Config{Rcpt: func(_, _ string) string { return "451 4.7.1 greylisted, try again later" }})
	slow = destination(t, smtptest.Config{Rcpt: func(_, to string) string {
		switch {
		case strings.HasPrefix(to, "slow"):
			time.Sleep(4 * time.Second)
			return "250 2.1.5 ok"
		case strings.HasPrefix(to, "postmaster@"):
			return "250 2.1.5 ok"
		}
		return "550 5.1.1 no such user" // the random address: no catch-all
	}})
	milterAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s = newSystem(t, options{env: map[string][]string{"ingest": {"CALLOUT_INGEST_TIMEOUT=12s", "CALLOUT_INGEST_MILTER_ADDR=" + milterAddr, "CALLOUT_INGEST_MILTER_PROGRESS=1s"}}})
	s.setPolicy("dest.example", domains.Policy{Route: []string{dest}})
	s.setPolicy("grey.example", domains.Policy{Route: []string{grey.Addr()}})
	s.setPolicy("slow.example", domains.Policy{Route: []string{slow.Addr()}})
	return s, milterAddr, grey, slow
}

// milterCases sends the milter tests' recipients through the MTA at
// front: known 250, unknown 550 5.1.1 with the text the MTA gives
// (unknown), greylisted 4xx, the 4 s callout 250.
func milterCases(t *testing.T, front, unknown string) {
	t.Helper()
	for _, tt := range []struct{ to, want string }{
		{"alice@dest.example", "250"},
		{"nobody@dest.example", "550 5.1.1 " + unknown},
		{"someone@grey.example", "45"},
		{"slow@slow.example", "250"},
	} {
		tr := swaks(t, front, tt.to)
		if r := rcptReply(tr); !strings.HasPrefix(r, tt.want) {
			t.Fatalf("%s: RCPT answer %q, want %q\n%s", tt.to, r, tt.want, tr)
		}
	}
}

// ingestDownDefers stops the ingest: the MTA at front must defer (its
// default action), at RCPT, MAIL or connect.
func ingestDownDefers(t *testing.T, s *system, front string) {
	t.Helper()
	for _, p := range s.procs["ingest"] {
		_ = p.Stop(10 * time.Second)
	}
	tr := swaks(t, front, "alice@dest.example")
	if r := rcptReply(tr); !strings.HasPrefix(r, "4") && !strings.Contains(tr, "<** 4") && !strings.Contains(tr, "<-  4") && !strings.Contains(tr, "<~  4") {
		t.Fatalf("with the ingest down: %q\n%s", r, tr)
	}
}
