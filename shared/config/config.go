// Package config loads a service's settings from environment variables,
// one prefix per service, every setting with a default.
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// Common are the settings every service takes; each service's Config
// embeds them, so that they are loaded, checked and listed (Usage,
// Markdown) with the rest.
type Common struct {
	LogLevel      slog.Level    `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	StatsInterval time.Duration `envconfig:"STATS_INTERVAL" default:"5s" desc:"how often the stats message is published on PREFIX.stats.SERVICE.INSTANCE (0: off)"`
}

// CommonSettings returns the common settings (promoted to the Config that
// embeds them).
func (c Common) CommonSettings() Common { return c }

// Check checks values envconfig cannot.
func (c Common) Check() error {
	if c.StatsInterval < 0 || (c.StatsInterval > 0 && c.StatsInterval < 100*time.Millisecond) {
		return errors.New("STATS_INTERVAL: a duration of at least 100ms, or 0 (off)")
	}
	return nil
}

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

// Defaults fills spec with the defaults of its struct tags, as a service
// started with none of its variables set would have them: tests start from
// here and set only what they need to differ.
func Defaults(spec any) error { return Load("CALLOUT_DEFAULTS_ONLY", spec) }

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
