package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The settings tables of docs/services.md are what the binaries say they
// take.
func TestREADMESettings(t *testing.T) {
	readme, err := os.ReadFile("../docs/services.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"ingest", "prober", "cachekeeper", "console"} {
		out, err := exec.Command(filepath.Join(binDir, svc), "--help-markdown").Output()
		if err != nil {
			t.Fatalf("%s --help-markdown: %v", svc, err)
		}
		rows := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(rows) < 5 {
			t.Fatalf("%s: %d settings", svc, len(rows))
		}
		for _, row := range rows {
			if !strings.Contains(string(readme), row+"\n") {
				t.Errorf("docs/services.md lacks the %s setting row %s", svc, row)
			}
		}
	}
}

// docSnippet is the fenced block of docs/services.md after the line
// "<!-- e2e: NAME -->": configuration the e2e suite runs as written.
func docSnippet(t testing.TB, name string) string {
	t.Helper()
	blocks := fencedBlocks(t, "../docs/services.md", "<!-- e2e: "+name+" -->")
	if len(blocks) != 1 {
		t.Fatalf("docs/services.md has %d blocks marked %q", len(blocks), name)
	}
	return strings.Join(blocks[0].lines, "\n") + "\n"
}
