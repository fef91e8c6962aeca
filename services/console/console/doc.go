// Package console is the operators' web interface and HTTP API. It speaks to
// the rest of the system only through NATS, as the admin role (and, when
// configured, as a read-only viewer role for viewers' requests).
//
// Subjects: those of package operate (flush, lookups, domain policies,
// traces, the audit stream) and callout.stats.> for the dashboard.
//
// Files: service.go (New, Run), config.go (settings: CALLOUT_CONSOLE_*,
// tabled in docs/services.md), metrics.go (callout_console_*), http.go
// (routing, errors, JSON), auth.go (sessions, logins, CSRF), users.go
// (users and API tokens), api*.go (the HTTP API, openapi.yaml), ui.go and
// web/ (the pages), cachebrowse.go, history.go.
package console
