package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/smtptest"
)

// needSendmail returns the folder Debian's sendmail-bin and sendmail-cf
// are unpacked in (apt-get download, dpkg -x: they conflict with the
// installed Postfix), with what the binary needs installed (libwrap0,
// and m4 to make its configuration). Root only.
func needSendmail(t *testing.T) string {
	t.Helper()
	needPostfix(t) // root, apt-get and swaks
	aptInstall(t, "m4", "m4")
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Fatal("unshare (util-linux) missing")
	}
	dir := filepath.Join(os.TempDir(), "callout-sendmail")
	bin := filepath.Join(dir, "root", "usr", "libexec", "sendmail", "sendmail")
	// The macros are unpacked last: with them there, both packages are.
	unpackDebs(t, dir, filepath.Join(dir, "root", "usr", "share", "sendmail", "cf", "m4", "cf.m4"), "sendmail-bin", "sendmail-cf")
	// Even printing its version, Sendmail looks up its host name.
	files := isolation(t)
	version := func() (string, error) {
		cmd := isolated(files, bin, "-d0.1", "-bt", "-C", "/dev/null")
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, _ := version(); strings.Contains(out, "libwrap") {
		aptGet(t, dir, "install", "-y", "-qq", "libwrap0")
	}
	if out, _ := version(); !strings.Contains(out, "MILTER") {
		t.Fatalf("sendmail without milter support:\n%s", out)
	}
	return filepath.Join(dir, "root")
}

// isolation writes, into a new folder, the hosts, nsswitch.conf and
// resolv.conf that keep Sendmail's look-ups on this machine (see
// isolated), and the service.switch its configuration names.
func isolation(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	host, _ := os.Hostname()
	files := map[string]string{
		"service.switch": "hosts\tfiles\n",
		"nsswitch.conf":  "hosts: files\n",
		"resolv.conf":    "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
		"hosts":          fmt.Sprintf("127.0.0.1 localhost %[1]s mx.callout.test\n::1 localhost %[1]s mx.callout.test\n", host),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// isolated is the command args run in a mount namespace of its own whose
// /etc/hosts, nsswitch.conf and resolv.conf are those in dir: Sendmail
// looks up its own host name as it starts, in DNS too (the address the
// host's resolver names is no place for a test's queries); there every
// look-up stays on this machine (files, and a resolver on loopback).
func isolated(dir string, args ...string) *exec.Cmd {
	return exec.Command("unshare", append([]string{"-m", "sh", "-c",
		`mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/nsswitch.conf && mount --bind "$3" /etc/resolv.conf && shift 3 && exec "$@"`,
		"sh", filepath.Join(dir, "hosts"), filepath.Join(dir, "nsswitch.conf"), filepath.Join(dir, "resolv.conf")}, args...)...)
}

// startSendmail runs a front-end Sendmail on a free loopback port with
// the docs' INPUT_MAIL_FILTER line (the milter at milterAddr; its reply
// timeout R: replaced by replyTimeout unless empty), isolated, and
// returns its address.
func startSendmail(t *testing.T, root, milterAddr, replyTimeout string) string {
	t.Helper()
	dir := isolation(t)
	if err := os.Mkdir(filepath.Join(dir, "queue"), 0o700); err != nil {
		t.Fatal(err)
	}
	_, milterPort, _ := net.SplitHostPort(milterAddr)
	doc := docSnippet(t, "sendmail milter")
	if !strings.Contains(doc, "S=inet:10041@127.0.0.1") || !strings.Contains(doc, "R:30s") || !strings.Contains(doc, "F=T") {
		t.Fatalf("the docs' Sendmail line changed: %q", doc)
	}
	doc = strings.ReplaceAll(doc, "10041", milterPort)
	if replyTimeout != "" {
		doc = strings.ReplaceAll(doc, "R:30s", "R:"+replyTimeout)
	}
	port := freePort(t)
	tmpl, err := template.ParseFiles("sendmail/sendmail.mc")
	if err != nil {
		t.Fatal(err)
	}
	var mc bytes.Buffer
	if err := tmpl.Execute(&mc, map[string]any{"Root": root, "Dir": dir, "Port": port, "DocMilter": strings.TrimSpace(doc)}); err != nil {
		t.Fatal(err)
	}
	m4 := exec.Command("m4")
	m4.Stdin = &mc
	cf, err := m4.Output()
	if err != nil {
		t.Fatalf("m4 sendmail.mc: %v", err)
	}
	cfPath := filepath.Join(dir, "sendmail.cf")
	if err := os.WriteFile(cfPath, cf, 0o644); err != nil {
		t.Fatal(err)
	}
	traffic := filepath.Join(dir, "traffic.log")
	out := &bytes.Buffer{}
	cmd := isolated(dir, filepath.Join(root, "usr", "libexec", "sendmail", "sendmail"), "-bD", "-C", cfPath, "-X", traffic)
	cmd.Stdout, cmd.Stderr = out, out
	// A group of its own: the daemon's children (one per SMTP session)
	// are killed with it, and hold none of its output open after.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(traffic)
			t.Logf("--- sendmail output\n%s\n--- sendmail traffic\n%s", out, b)
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	waitFor(t, 30*time.Second, func() bool {
		select {
		case <-done:
			t.Fatalf("sendmail exited: %s", out)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return addr
}

// Sendmail with the docs' INPUT_MAIL_FILTER line asks the ingest's
// milter at RCPT: the same cases as Postfix's. Sendmail takes no progress
// at RCPT (it would drop the milter and accept the recipient unverified),
// so its reply timeout is what it waits: with the docs' 30 s a 4 s
// callout is answered; with 3 s, F=T defers it, never accepts it.
func TestSendmailMilter(t *testing.T) {
	root := needSendmail(t)
	known := destination(t, smtptest.Config{Mailboxes: []string{"alice@dest.example", "postmaster@dest.example"}})
	s, milterAddr, _, _ := milterSystem(t, known.Addr())
	front := startSendmail(t, root, milterAddr, "")
	// Sendmail puts the address before the milter's text; slow@ is
	// answered within the docs' R:30s.
	milterCases(t, front, "<nobody@dest.example>... <nobody@dest.example>: Recipient address rejected: User unknown")
	// A reply timeout shorter than the callout: deferred by F=T, never
	// accepted unverified.
	short := startSendmail(t, root, milterAddr, "3s")
	if tr := swaks(t, short, "slow2@slow.example"); !strings.HasPrefix(rcptReply(tr), "4") {
		t.Fatalf("a callout past Sendmail's reply timeout: RCPT answer %q, want 4xx\n%s", rcptReply(tr), tr)
	}
	// Sendmail's answers are in the decision log, with its session.
	waitFor(t, 10*time.Second, func() bool {
		out, err := exec.Command(filepath.Join(binDir, "calloutctl"), "-server", s.url, "log", "-domain", "dest.example", "-action", "reject", "-json").CombinedOutput()
		if err != nil {
			t.Fatalf("calloutctl log: %v\n%s", err, out)
		}
		var page operate.SearchResult
		_ = json.Unmarshal(out, &page)
		for _, r := range page.Records {
			if r.Recipient == "nobody@dest.example" && r.Via == decisions.ViaMilter && r.Sender == "sender@example.net" && r.Helo == "client.example.net" && r.Code == 550 {
				return true
			}
		}
		return false
	})
	// The ingest down: with F=T, Sendmail defers.
	ingestDownDefers(t, s, front)
}
