package console

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/callout-mail/callout/services/cachekeeper/cachekeeper"
	"github.com/callout-mail/callout/services/ingest/ingest"
	"github.com/callout-mail/callout/services/prober/prober"
	"github.com/callout-mail/callout/shared/config"
	"github.com/callout-mail/callout/shared/natstest"
	"github.com/callout-mail/callout/shared/smtptest"
	"github.com/callout-mail/callout/shared/stats"
	"github.com/callout-mail/callout/shared/subjects"
	"github.com/callout-mail/callout/shared/waitfor"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// defaults fills a service's settings with their defaults.
func defaults(t *testing.T, cfg any) {
	t.Helper()
	if err := config.Defaults(cfg); err != nil {
		t.Fatal(err)
	}
}

// system is the whole pipeline on an embedded server, a scripted
// destination and the console in front.
type system struct {
	t       *testing.T
	ns      *natstest.Server
	console *Server
	http    *httptest.Server
	dest    *smtptest.Server
	router  routers.Router
	mu      sync.Mutex
	covered map[string]bool // "METHOD /path template" seen, for the coverage check
	token   string          // the admin's API token
}

const (
	adminPassword  = "admin-console-password"
	viewerPassword = "viewer-console-password"
)

func hash(t *testing.T, pw string) string {
	b, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func startSystem(t *testing.T, tweak func(*Config)) *system {
	t.Helper()
	ns := natstest.Start(t)
	sys := &system{t: t, ns: ns, covered: map[string]bool{}}
	sys.dest = smtptest.Run(t, smtptest.Config{Mailboxes: []string{"alice@callout.test", "bob@callout.test"}})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	publish := func(service string, reg *prometheus.Registry, extra func() any) {
		nc := ns.Connect(t)
		go stats.Publish(ctx, nc, subjects.New("").Stats(service, service+"-1"), service, service+"-1", reg, 200*time.Millisecond, extra, quiet)
	}
	var kc cachekeeper.Config
	defaults(t, &kc)
	kc.DecisionSearchMaxRead = 40
	kreg := prometheus.NewRegistry()
	k, err := cachekeeper.New(kc, ns.Connect(t), kreg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, k)
	<-k.Ready()
	publish("cachekeeper", kreg, nil)
	var pc prober.Config
	defaults(t, &pc)
	pc.HeloName, pc.RandomSecret, pc.FleetLimits, pc.Workers = "verifier.test", "secret", false, 4
	preg := prometheus.NewRegistry()
	p, err := prober.New(pc, ns.Connect(t), preg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, p)
	publish("prober", preg, p.StatsExtra)
	var ic ingest.Config
	defaults(t, &ic)
	ic.Timeout, ic.MaxTimeout = 10*time.Second, 10*time.Second
	ic.HistoryInterval = 200 * time.Millisecond
	ireg := prometheus.NewRegistry()
	ing, err := ingest.New(ic, ns.Connect(t), ireg, quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, ing)
	<-ing.Ready()
	publish("ingest", ireg, nil)

	tok, digest := NewToken()
	sys.token = tok
	// Users first: the defaults are checked, and a console needs users.
	cc := Config{Users: "admin:admin:" + hash(t, adminPassword) + ":" + digest + " viewer:viewer:" + hash(t, viewerPassword)}
	defaults(t, &cc)
	cc.HistoryEvery, cc.LoginRate, cc.Listen = 200*time.Millisecond, 5, "127.0.0.1:0"
	if tweak != nil {
		tweak(&cc)
	}
	sys.console, err = New(cc, ns.Connect(t), prometheus.NewRegistry(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, sys.console)
	<-sys.console.Ready()
	sys.http = httptest.NewServer(sys.console.Handler())
	t.Cleanup(sys.http.Close)

	doc, err := openapi3.NewLoader().LoadFromData(mustRead(t, "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: sys.http.URL}}
	if sys.router, err = gorillamux.NewRouter(doc); err != nil {
		t.Fatal(err)
	}
	// The cache answers before tests start.
	nc := ns.Connect(t)
	waitfor.Cond(t, 15*time.Second, func() bool {
		_, err := nc.Request(subjects.New("").CacheLookup(), []byte("x"), 200*time.Millisecond)
		return err == nil
	})
	return sys
}

func mustRead(t *testing.T, name string) []byte {
	t.Helper()
	b, err := files.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// client is one API user: a cookie session or a token.
type client struct {
	sys    *system
	hc     *http.Client
	csrf   string
	token  string
	header http.Header // the last response's
}

func (s *system) anonymous() *client {
	jar, _ := cookiejar.New(nil)
	return &client{sys: s, hc: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (s *system) login(user, password string) *client {
	s.t.Helper()
	c := s.anonymous()
	st, b := c.call("POST", "/api/login", map[string]string{"user": user, "password": password})
	if st != http.StatusOK {
		s.t.Fatalf("login %s: %d %s", user, st, b)
	}
	var m meReply
	if err := json.Unmarshal(b, &m); err != nil || m.CSRF == "" {
		s.t.Fatalf("login reply %s: %v", b, err)
	}
	c.csrf = m.CSRF
	return c
}

func (s *system) withToken(tok string) *client {
	c := s.anonymous()
	c.token = tok
	return c
}

// call sends a JSON request (or a string body as text/plain) and checks
// the response against the OpenAPI document.
func (c *client) call(method, path string, body any) (int, []byte) {
	c.sys.t.Helper()
	var rd io.Reader
	ctype := ""
	switch b := body.(type) {
	case nil:
	case string:
		rd, ctype = strings.NewReader(b), "text/plain"
	case []byte:
		rd, ctype = bytes.NewReader(b), "application/json"
	default:
		j, _ := json.Marshal(b)
		rd, ctype = bytes.NewReader(j), "application/json"
	}
	req, _ := http.NewRequest(method, c.sys.http.URL+path, rd)
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if c.csrf != "" {
		req.Header.Set("X-CSRF-Token", c.csrf)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.sys.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	c.header = resp.Header
	data, _ := io.ReadAll(resp.Body)
	if strings.HasPrefix(path, "/api/") {
		c.sys.checkSpec(req, resp, data)
	}
	if resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
		c.sys.t.Errorf("%s %s: %d %s", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, data
}

// checkSpec validates one response against the OpenAPI document: the
// route, the status and the body's schema.
func (s *system) checkSpec(req *http.Request, resp *http.Response, body []byte) {
	s.t.Helper()
	r2, _ := http.NewRequest(req.Method, req.URL.String(), nil)
	route, params, err := s.router.FindRoute(r2)
	if err != nil {
		if resp.StatusCode == http.StatusNotFound {
			return // an endpoint that does not exist
		}
		s.t.Errorf("%s %s: not in openapi.yaml: %v", req.Method, req.URL.Path, err)
		return
	}
	s.mu.Lock()
	s.covered[req.Method+" "+route.Path] = true
	s.mu.Unlock()
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: r2, PathParams: params, Route: route},
		Status:                 resp.StatusCode,
		Header:                 resp.Header,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		s.t.Errorf("%s %s -> %d does not match openapi.yaml: %v\n%s", req.Method, req.URL.String(), resp.StatusCode, err, body)
	}
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

func wantStatus(t *testing.T, what string, got, want int, body []byte) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: status %d, want %d: %s", what, got, want, body)
	}
}

func wantField(t *testing.T, what string, body []byte, field string) {
	t.Helper()
	e := decode[map[string]string](t, body)
	if e["field"] != field || e["error"] == "" {
		t.Fatalf("%s: error %s, want one naming field %q", what, body, field)
	}
}

func q(v url.Values) string { return v.Encode() }
