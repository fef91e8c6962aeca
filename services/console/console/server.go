package console

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/natsconn"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/stats"
	"github.com/callout-mail/callout/shared/subjects"
)

//go:embed web openapi.yaml
var files embed.FS

// Server is one console instance.
type Server struct {
	cfg     Config
	log     *slog.Logger
	users   *Users
	sess    *sessions
	limit   *loginLimiter
	admin   *operate.Client
	viewer  *operate.Client // the viewer connection's client, or admin
	browse  map[Role]*browser
	col     *stats.Collector
	hist    *history
	pages   map[string]*template.Template
	ready   chan struct{}
	addr    net.Addr
	m       *metrics
	ownConn *nats.Conn // the viewer connection this console opened
}

type metrics struct {
	requests *prometheus.CounterVec
	logins   *prometheus.CounterVec
}

// New builds a console on the admin connection nc.
func New(cfg Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	users, err := cfg.LoadUsers()
	if err != nil {
		return nil, err
	}
	names := subjects.New(cfg.NATS.Prefix)
	admin, err := operate.New(nc, names)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, users: users, sess: newSessions(cfg.SessionTTL), limit: newLoginLimiter(cfg.LoginRate),
		admin: admin, viewer: admin, col: stats.NewCollector(time.Minute), hist: newHistory(cfg.HistorySize, cfg.HistoryEvery),
		ready: make(chan struct{})}
	if cfg.ViewerUser != "" {
		vc := cfg.NATS
		vc.User, vc.Password, vc.InboxPrefix, vc.Creds, vc.NKeyFile = cfg.ViewerUser, cfg.ViewerPassword, cfg.ViewerInbox, "", ""
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		vnc, err := natsconn.Connect(ctx, vc, "console-viewer", log)
		if err != nil {
			return nil, fmt.Errorf("viewer connection: %w", err)
		}
		if s.viewer, err = operate.New(vnc, names); err != nil {
			vnc.Close()
			return nil, err
		}
		s.ownConn = vnc
	}
	s.browse = map[Role]*browser{
		RoleAdmin:  {js: s.admin.JS, bucket: names.CacheBucket()},
		RoleViewer: {js: s.viewer.JS, bucket: names.CacheBucket()},
	}
	s.m = &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callout_console_requests_total", Help: "HTTP requests by route kind and status class."}, []string{"kind", "status"}),
		logins:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "callout_console_logins_total", Help: "Login attempts by outcome (ok, failed, limited)."}, []string{"outcome"}),
	}
	reg.MustRegister(s.m.requests, s.m.logins)
	if s.pages, err = parsePages(); err != nil {
		return nil, err
	}
	return s, nil
}

// Ready is closed once the console listens.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the listening address, once ready.
func (s *Server) Addr() net.Addr { return s.addr }

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if s.ownConn != nil {
		defer s.ownConn.Close()
	}
	sub, err := s.col.Subscribe(s.admin.NC, s.admin.Names.StatsAll())
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	go s.hist.run(ctx, s.col)
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return err
	}
	s.addr = ln.Addr()
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	errc := make(chan error, 1)
	go func() {
		if s.cfg.TLSCert != "" {
			errc <- srv.ServeTLS(ln, s.cfg.TLSCert, s.cfg.TLSKey)
		} else {
			errc <- srv.Serve(ln)
		}
	}()
	scheme := "http"
	if s.cfg.TLSCert != "" {
		scheme = "https"
	}
	s.log.Info("console running", "url", scheme+"://"+ln.Addr().String())
	close(s.ready)
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// identity is who makes a request.
type identity struct {
	user *User
	sess *session // nil for an API token
}

func (id *identity) who() string { return "console:" + id.user.Name }

func (s *Server) client(id *identity) *operate.Client {
	if id.user.Role == RoleAdmin {
		return s.admin
	}
	return s.viewer
}

const cookieName = "callout_session"

func (s *Server) identify(r *http.Request) *identity {
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return nil
		}
		if u := s.users.ByToken(strings.TrimSpace(tok)); u != nil {
			return &identity{user: u}
		}
		return nil
	}
	c, err := r.Cookie(cookieName)
	if err != nil {
		return nil
	}
	if se := s.sess.get(c.Value, time.Now()); se != nil {
		return &identity{user: se.user, sess: se}
	}
	return nil
}

// csrfOK checks a cookie session's write: the token comes in a header (API)
// or a form field (pages). Token-authenticated requests carry no cookie a
// browser could be tricked into sending.
func csrfOK(r *http.Request, id *identity) bool {
	if id.sess == nil {
		return true
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return true
	}
	if t := r.Header.Get("X-CSRF-Token"); t != "" {
		return sameToken(t, id.sess.csrf)
	}
	return sameToken(r.PostFormValue("csrf"), id.sess.csrf)
}

type apiHandler func(w http.ResponseWriter, r *http.Request, id *identity) error

// api wraps a JSON endpoint: authentication, role, CSRF, error mapping.
func (s *Server) api(role Role, h apiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		id := s.identify(r)
		var err error
		switch {
		case id == nil:
			err = &httpError{http.StatusUnauthorized, "", "log in, or send an API token (Authorization: Bearer ...)"}
		case role == RoleAdmin && id.user.Role != RoleAdmin:
			err = &httpError{http.StatusForbidden, "", "this needs the admin role"}
		case !csrfOK(r, id):
			err = &httpError{http.StatusForbidden, "csrf", "missing or wrong CSRF token (X-CSRF-Token)"}
		default:
			err = h(w, r, id)
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
	})
}

// maxBody bounds a request body (a pasted mailbox list fits).
const maxBody = 8 << 20

// httpError is an error with its status and the field it is about.
type httpError struct {
	status int
	field  string
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(field, format string, args ...any) error {
	return &httpError{http.StatusBadRequest, field, fmt.Sprintf(format, args...)}
}

// classify maps an error to its status and field.
func classify(err error) (int, string, string) {
	var he *httpError
	var fe *domains.FieldError
	var qe *errQuery
	var mbe *http.MaxBytesError
	var fle *operate.FlushError
	switch {
	case errors.As(err, &he):
		return he.status, he.field, he.msg
	case errors.As(err, &fe):
		return http.StatusBadRequest, fe.Field, fe.Error()
	case errors.As(err, &qe):
		return http.StatusBadRequest, qe.field, qe.Error()
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, "", "request body too large"
	case errors.As(err, &fle):
		return http.StatusBadRequest, fle.Field, fle.Error()
	case errors.Is(err, domains.ErrPolicy):
		return http.StatusBadRequest, "", err.Error()
	case errors.Is(err, domains.ErrRevision):
		return http.StatusConflict, "revision", err.Error() + "; reload and apply your change again"
	case errors.Is(err, operate.ErrNoPolicy), errors.Is(err, jetstream.ErrKeyNotFound):
		return http.StatusNotFound, "", err.Error()
	case errors.Is(err, operate.ErrUnavailable):
		return http.StatusServiceUnavailable, "", err.Error()
	case errors.Is(err, operate.ErrNotRecorded):
		return http.StatusInternalServerError, "", err.Error()
	}
	return http.StatusBadGateway, "", err.Error()
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, field, msg := classify(err)
	if status >= 500 {
		s.log.Error("console request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	body := map[string]string{"error": msg}
	if field != "" {
		body["field"] = field
	}
	writeJSON(w, status, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// decodeJSON reads a request body strictly.
func decodeJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) && ute.Field != "" {
			return badRequest(ute.Field, "%s: want %s", ute.Field, ute.Type)
		}
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return badRequest(strings.Trim(f, `"`), "unknown field %s", f)
		}
		return badRequest("", "body: %v", err)
	}
	return nil
}

// statusRecorder notes the status for the request counter.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

// Handler is the console's whole HTTP interface.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.routesAPI(mux)
	s.routesUI(mux)
	static, _ := fs.Sub(files, "web/static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("X-Frame-Options", "DENY")
		if s.cfg.TLSCert != "" {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		rec := &statusRecorder{ResponseWriter: w}
		mux.ServeHTTP(rec, r)
		kind := "ui"
		if strings.HasPrefix(r.URL.Path, "/api/") {
			kind = "api"
		} else if strings.HasPrefix(r.URL.Path, "/static/") {
			kind = "static"
		}
		st := rec.status
		if st == 0 {
			st = http.StatusOK
		}
		s.m.requests.WithLabelValues(kind, fmt.Sprintf("%dxx", st/100)).Inc()
	})
}

func (s *Server) setSessionCookie(w http.ResponseWriter, id string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: id, Path: "/", HttpOnly: true, Secure: s.cfg.TLSCert != "",
		SameSite: http.SameSiteStrictMode, MaxAge: maxAge})
}

// login checks a user's password under the per-client limit.
func (s *Server) login(r *http.Request, name, password string) (string, *session, error) {
	client, now := clientKey(r.RemoteAddr), time.Now()
	if !s.limit.allowed(client, now) {
		s.m.logins.WithLabelValues("limited").Inc()
		return "", nil, &httpError{http.StatusTooManyRequests, "", errTooMany.Error()}
	}
	u := s.users.Check(name, password)
	if u == nil {
		s.limit.failed(client, now)
		s.m.logins.WithLabelValues("failed").Inc()
		s.log.Warn("console login failed", "user", name, "client", client)
		return "", nil, &httpError{http.StatusUnauthorized, "password", "wrong user name or password"}
	}
	s.m.logins.WithLabelValues("ok").Inc()
	id, se := s.sess.create(u, now)
	return id, se, nil
}
