// Package config loads a service's settings from environment variables,
// one prefix per service, every setting with a default.
package config

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/kelseyhightower/envconfig"
)

// Load fills spec from variables named PREFIX_SETTING. A bad value is an
// error naming the variable.
func Load(prefix string, spec any) error {
	if err := envconfig.Process(prefix, spec); err != nil {
		var pe *envconfig.ParseError
		if ok := asParseError(err, &pe); ok {
			return fmt.Errorf("setting %s: bad value %q: %v", pe.KeyName, pe.Value, pe.Err)
		}
		return fmt.Errorf("settings: %w", err)
	}
	if v, ok := spec.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return fmt.Errorf("settings: %w", err)
		}
	}
	return nil
}

func asParseError(err error, target **envconfig.ParseError) bool {
	pe, ok := err.(*envconfig.ParseError)
	if ok {
		*target = pe
	}
	return ok
}

// Usage writes a table of the settings of spec.
func Usage(w io.Writer, prefix string, spec any) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	format := "VARIABLE\tDEFAULT\tDESCRIPTION\n{{range .}}{{usage_key .}}\t{{usage_default .}}\t{{usage_description .}}\n{{end}}"
	if err := envconfig.Usagef(prefix, spec, tw, format); err != nil {
		return err
	}
	return tw.Flush()
}

// Markdown writes the settings of spec as the rows of a Markdown table
// (variable, default, description), the form docs/services.md shows.
func Markdown(w io.Writer, prefix string, spec any) error {
	format := "{{range .}}| `{{usage_key .}}` | {{with usage_default .}}`{{.}}`{{end}} | {{usage_description .}} |\n{{end}}"
	return envconfig.Usagef(prefix, spec, w, format)
}
