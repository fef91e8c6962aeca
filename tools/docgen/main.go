// Command docgen renders the parts of docs/ that come from code: each
// service's settings table (from its Config's struct tags) and the reason
// table (from shared/verdict). A generated part sits between
//
//	<!-- docgen: NAME -->
//	<!-- /docgen -->
//
// and is replaced whole; the prose around it is kept. `docgen` rewrites
// the files under -docs; `docgen -check` only reports the stale ones (the
// test beside this file runs it).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/callout-mail/callout/services/cachekeeper/cachekeeper"
	"github.com/callout-mail/callout/services/console/console"
	"github.com/callout-mail/callout/services/ingest/ingest"
	"github.com/callout-mail/callout/services/prober/prober"
	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/verdict"
)

// parts are the generated parts by name.
var parts = map[string]func(*bytes.Buffer) error{
	"settings ingest":      settings(ingest.EnvPrefix, &ingest.Config{}),
	"settings prober":      settings(prober.EnvPrefix, &prober.Config{}),
	"settings cachekeeper": settings(cachekeeper.EnvPrefix, &cachekeeper.Config{}),
	"settings console":     settings(console.EnvPrefix, &console.Config{}),
	"reasons": func(b *bytes.Buffer) error {
		b.WriteString("| reason | given by | statuses | may reject | what happened | what to do |\n| --- | --- | --- | --- | --- | --- |\n")
		return verdict.ReasonsMarkdown(b)
	},
}

func settings(prefix string, spec any) func(*bytes.Buffer) error {
	return func(b *bytes.Buffer) error {
		b.WriteString("| variable | default | description |\n| --- | --- | --- |\n")
		return config.Markdown(b, prefix, spec)
	}
}

var part = regexp.MustCompile(`(?s)(<!-- docgen: ([a-z ]+) -->\n)(.*?)(<!-- /docgen -->)`)

// render returns src with every generated part rendered anew.
func render(src []byte) ([]byte, error) {
	var err error
	out := part.ReplaceAllFunc(src, func(m []byte) []byte {
		sub := part.FindSubmatch(m)
		gen, ok := parts[string(sub[2])]
		if !ok {
			err = fmt.Errorf("unknown generated part %q", sub[2])
			return m
		}
		var b bytes.Buffer
		if e := gen(&b); e != nil {
			err = e
			return m
		}
		return append(append(append([]byte(nil), sub[1]...), b.Bytes()...), sub[4]...)
	})
	return out, err
}

// run renders every Markdown file under dir; with check it writes
// nothing and returns the stale ones.
func run(dir string, check bool) (stale []string, err error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.md"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out, err := render(src)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if bytes.Equal(src, out) {
			continue
		}
		stale = append(stale, f)
		if !check {
			if err := os.WriteFile(f, out, 0o644); err != nil {
				return nil, err
			}
		}
	}
	return stale, nil
}

func main() {
	dir := flag.String("docs", "docs", "the docs directory")
	check := flag.Bool("check", false, "write nothing; fail if a generated part is stale")
	flag.Parse()
	stale, err := run(*dir, *check)
	if err != nil {
		fmt.Fprintln(os.Stderr, "docgen:", err)
		os.Exit(1)
	}
	if *check && len(stale) > 0 {
		fmt.Fprintf(os.Stderr, "docgen: stale: %s (run make docs)\n", strings.Join(stale, ", "))
		os.Exit(1)
	}
	for _, f := range stale {
		fmt.Println("docgen: wrote", f)
	}
}
