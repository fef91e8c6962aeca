package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/callout-mail/callout/shared/smtptest"
)

// docBlock is a fenced block of commands in docs/ marked as run by
// TestDocCommands: the line before its fence is "<!-- doc-test -->".
type docBlock struct {
	file  string
	lines []string
}

func docBlocks(t *testing.T) []docBlock {
	t.Helper()
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	var blocks []docBlock
	for _, f := range append(files, "../README.md") {
		blocks = append(blocks, fencedBlocks(t, f, "<!-- doc-test -->")...)
	}
	return blocks
}

// fencedBlocks are the fenced blocks of file whose fence comes right
// after a line that is marker.
func fencedBlocks(t testing.TB, file, marker string) []docBlock {
	t.Helper()
	fh, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var blocks []docBlock
	sc := bufio.NewScanner(fh)
	marked, in := false, false
	var cur *docBlock
	for sc.Scan() {
		line := sc.Text()
		switch {
		case in && strings.HasPrefix(line, "```"):
			blocks, in, cur = append(blocks, *cur), false, nil
		case in:
			cur.lines = append(cur.lines, line)
		case marked && strings.HasPrefix(line, "```"):
			in, cur = true, &docBlock{file: filepath.Base(file)}
		}
		marked = strings.TrimSpace(line) == marker
	}
	return blocks
}

// The command blocks of the docs marked <!-- doc-test --> run as written
// against a running system: ./bin/ is the built binaries, the example
// destination addresses (10.0.0.5:25, 10.0.0.6:25) are a scripted
// destination on loopback (a block showing a session runs its "$ " lines
// only), the console's address (127.0.0.1:8080) is a
// console's with $T its admin's API token, and a trailing "# text ... text" comment is
// what the output must contain, piece by piece.
func TestDocCommands(t *testing.T) {
	blocks := docBlocks(t)
	if len(blocks) < 3 {
		t.Fatalf("only %d marked command blocks in docs/", len(blocks))
	}
	s := newSystem(t, options{})
	dest := destination(t, smtptest.Config{Mailboxes: []string{"alice@example.org", "sales@shop.example"}})
	dir := t.TempDir()
	if err := os.Symlink(binDir, filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	console := s.startConsole("admin-pw", "viewer-pw")
	env := append(os.Environ(), "CALLOUT_NATS_URL="+s.url, "HOME="+t.TempDir(), "PATH="+binDir+":"+os.Getenv("PATH"), "T="+consoleToken)
	for _, b := range blocks {
		// In a block that shows a session ("$ command" then its output),
		// only the prompted lines are commands.
		prompted := false
		for _, line := range b.lines {
			prompted = prompted || strings.HasPrefix(line, "$ ")
		}
		for _, line := range b.lines {
			if prompted && !strings.HasPrefix(line, "$ ") {
				continue
			}
			cmdline, want, _ := strings.Cut(line, "  # ")
			cmdline = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(cmdline), "$ "))
			if cmdline == "" || strings.HasPrefix(cmdline, "#") {
				continue
			}
			cmdline = strings.NewReplacer("10.0.0.5:25", dest.Addr(), "10.0.0.6:25", dest.Addr(), "http://127.0.0.1:8080", console).Replace(cmdline)
			if strings.HasPrefix(cmdline, "nats ") {
				cmdline = "nats --server " + s.url + strings.TrimPrefix(cmdline, "nats")
			}
			cmd := exec.Command("bash", "-c", cmdline)
			cmd.Dir, cmd.Env = dir, env
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %s: %v\n%s", b.file, cmdline, err, out)
			}
			for _, piece := range strings.Split(want, "...") {
				if p := strings.TrimSpace(piece); p != "" && !strings.Contains(string(out), p) {
					t.Fatalf("%s: %s: output lacks %q:\n%s", b.file, cmdline, p, out)
				}
			}
		}
	}
}
