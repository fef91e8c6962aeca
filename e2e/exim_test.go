package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/smtptest"
)

// needExim returns an Exim binary. Debian's exim4 and postfix packages
// conflict, so Exim is not installed: exim4-daemon-light is downloaded and
// unpacked into a folder (apt-get download, dpkg -x), its one missing
// library installed, and its compiled-in user created. Root only.
func needExim(t *testing.T) string {
	t.Helper()
	needPostfix(t) // root, apt-get and swaks
	dir := filepath.Join(os.TempDir(), "callout-exim")
	bin := filepath.Join(dir, "root", "usr", "sbin", "exim4")
	unpackDebs(t, dir, bin, "exim4-daemon-light")
	if out, err := exec.Command(bin, "-C", "/dev/null", "-bV").CombinedOutput(); err != nil && strings.Contains(string(out), "libidn") {
		aptGet(t, dir, "install", "-y", "-qq", "libidn12")
	}
	if _, err := user.Lookup("Debian-exim"); err != nil {
		_ = exec.Command("groupadd", "--system", "Debian-exim").Run()
		if out, err := exec.Command("useradd", "--system", "-g", "Debian-exim", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", "Debian-exim").CombinedOutput(); err != nil {
			t.Fatalf("useradd Debian-exim: %v %s", err, out)
		}
	}
	if out, err := exec.Command(bin, "-C", "/dev/null", "-bV").CombinedOutput(); err != nil {
		t.Fatalf("exim -bV: %v %s", err, out)
	}
	return bin
}

// eximConf writes an Exim configuration that includes the shipped ACL.
func eximConf(t *testing.T, policy, down string) string {
	t.Helper()
	// Exim drops to its own user: its folders must be reachable by it.
	dir, err := os.MkdirTemp("", "callout-exim-conf-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	acl, _ := filepath.Abs("../deploy/exim/callout-rcpt.acl")
	tmpl, err := template.ParseFiles("exim/exim.conf")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	doc := docSnippet(t, "exim main")
	main, include, ok := strings.Cut(doc, "# in acl_check_rcpt")
	if !ok {
		t.Fatal("the docs' Exim snippet lost its acl_check_rcpt part")
	}
	main = strings.ReplaceAll(main, "127.0.0.1:10040", policy)
	var lines []string
	for _, l := range strings.Split(main, "\n") {
		if strings.HasPrefix(l, "CALLOUT_DOWN") {
			l = "CALLOUT_DOWN = " + down
		}
		lines = append(lines, l)
	}
	_, include, _ = strings.Cut(include, "\n") // the rest of the comment line
	include = strings.ReplaceAll(include, "/etc/exim4/callout-rcpt.acl", acl)
	if !strings.Contains(include, ".include "+acl) {
		t.Fatalf("the docs' Exim snippet does not include the ACL: %q", include)
	}
	if err := tmpl.Execute(&b, map[string]string{"Dir": dir, "DocMain": strings.Join(lines, "\n"), "DocInclude": include}); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "exim.conf")
	if err := os.WriteFile(conf, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	u, _ := user.Lookup("Debian-exim")
	for _, d := range []string{"spool", "log"} {
		p := filepath.Join(dir, d)
		if err := os.MkdirAll(p, 0o750); err != nil {
			t.Fatal(err)
		}
		if u != nil {
			var uid, gid int
			fmt.Sscan(u.Uid, &uid)
			fmt.Sscan(u.Gid, &gid)
			_ = os.Chown(p, uid, gid)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := filepath.Glob(filepath.Join(dir, "log", "*"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Logf("--- %s\n%s", filepath.Base(l), b)
			}
		}
	})
	return conf
}

// eximRcpt runs one SMTP session through Exim (-bs, as from 192.0.2.1) with
// swaks and returns the answer to RCPT.
func eximRcpt(t *testing.T, exim, conf, to string) string {
	t.Helper()
	out, _ := exec.Command("swaks", "--pipe", fmt.Sprintf("%s -C %s -bs -oMa 192.0.2.1", exim, conf),
		"--from", "sender@example.net", "--to", to, "--helo", "client.example.net", "--quit-after", "RCPT", "--timeout", "60").CombinedOutput()
	r := rcptReply(string(out))
	if r == "" {
		t.Fatalf("no RCPT answer:\n%s", out)
	}
	return r
}

// A real Exim front-end with the shipped ACL: known mailboxes accepted,
// unknown ones rejected with 5xx, a greylisting destination deferred with
// 4xx, and the documented behaviour when the ingest is down.
func TestEximFlow(t *testing.T) {
	exim := needExim(t)
	s := newSystem(t, options{})
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@dest.example"}})
	grey := destination(t, smtptest.Config{Rcpt: smtptest.Greylist(smtptest.Mailboxes([]string{"alice@grey.example"}, nil))})
	s.setPolicy("dest.example", domains.Policy{Route: []string{dest.Addr()}})
	s.setPolicy("grey.example", domains.Policy{Route: []string{grey.Addr()}})
	conf := eximConf(t, s.policy, "action=451 4.3.0 Recipient verification unavailable, try again later")

	t.Run("known mailbox accepted", func(t *testing.T) {
		if r := eximRcpt(t, exim, conf, "alice@dest.example"); !strings.HasPrefix(r, "250") {
			t.Fatalf("RCPT answer %q", r)
		}
	})
	t.Run("unknown mailbox rejected with 5xx", func(t *testing.T) {
		r := eximRcpt(t, exim, conf, "nobody@dest.example")
		// Exim shows the text as it is: the ACL asks for all of it.
		if !strings.HasPrefix(r, "550") || !strings.Contains(r, "5.1.1 <nobody@dest.example>: Recipient address rejected: User unknown") {
			t.Fatalf("RCPT answer %q", r)
		}
	})
	t.Run("greylisting destination deferred with 4xx", func(t *testing.T) {
		if r := eximRcpt(t, exim, conf, "bob@grey.example"); !strings.HasPrefix(r, "45") {
			t.Fatalf("RCPT answer %q", r)
		}
	})
	t.Run("ingest down: the configured answer", func(t *testing.T) {
		for _, p := range s.procs["ingest"] {
			_ = p.Stop(10 * time.Second)
		}
		if r := eximRcpt(t, exim, conf, "alice@dest.example"); !strings.HasPrefix(r, "451") || !strings.Contains(r, "unavailable") {
			t.Fatalf("defer when down: RCPT answer %q", r)
		}
		accepting := eximConf(t, s.policy, "action=DUNNO")
		if r := eximRcpt(t, exim, accepting, "nobody@dest.example"); !strings.HasPrefix(r, "250") {
			t.Fatalf("accept when down: RCPT answer %q", r)
		}
	})
}
