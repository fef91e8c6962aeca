package main

import (
	"bytes"
	"strings"
	"testing"
)

// The generated parts of docs/ are current: a change to a setting or a
// reason without `make docs` fails here.
func TestDocsCurrent(t *testing.T) {
	stale, err := run("../../docs", true)
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) > 0 {
		t.Fatalf("stale generated parts in %s: run make docs", strings.Join(stale, ", "))
	}
}

func TestRender(t *testing.T) {
	src := []byte("before\n<!-- docgen: reasons -->\nold rows\n<!-- /docgen -->\nafter\n")
	out, err := render(src)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("old rows")) || !bytes.Contains(out, []byte("| `user_unknown` | prober | invalid | **yes** |")) ||
		!bytes.HasPrefix(out, []byte("before\n")) || !bytes.HasSuffix(out, []byte("<!-- /docgen -->\nafter\n")) {
		t.Fatalf("render:\n%s", out)
	}
	if _, err := render([]byte("<!-- docgen: no such part -->\n<!-- /docgen -->")); err == nil {
		t.Fatal("an unknown part rendered")
	}
}
