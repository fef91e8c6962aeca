package console

import (
	"context"
	"embed"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/callout-mail/callout/shared/natsconn"
	"github.com/callout-mail/callout/shared/operate"
	"github.com/callout-mail/callout/shared/stats"
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
	viewer  *operate.Client   // the viewer connection's client, or admin
	browse  map[bool]*browser // by read-only
	col     *stats.Collector
	hist    *history
	pages   map[string]*template.Template
	ready   chan struct{}
	addr    net.Addr
	m       *metrics
	proxies []netip.Prefix // TRUSTED_PROXIES
	flushes *perMinute     // per user
	ownConn *nats.Conn     // the viewer connection this console opened
}

// New builds a console on the admin connection nc.
func New(cfg Config, nc *nats.Conn, reg prometheus.Registerer, log *slog.Logger) (*Server, error) {
	users, err := cfg.LoadUsers()
	if err != nil {
		return nil, err
	}
	users.cost = cfg.PasswordCost
	users.prepare()
	names, err := cfg.NATS.Names()
	if err != nil {
		return nil, err
	}
	admin, err := operate.New(nc, names)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, users: users, sess: newSessions(cfg.SessionTTL), limit: newLoginLimiter(cfg.LoginRate), flushes: newPerMinute(cfg.FlushRate),
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
	s.browse = map[bool]*browser{
		false: {js: s.admin.JS, bucket: names.CacheBucket()},
		true:  {js: s.viewer.JS, bucket: names.CacheBucket()},
	}
	s.m = newMetrics(reg)
	if s.proxies, err = parseProxies(cfg.TrustedProxies); err != nil {
		return nil, err
	}
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
	kv, err := s.admin.Accounts(ctx)
	if err != nil {
		return err
	}
	if err := s.users.table.Watch(ctx, kv, s.log); err != nil {
		return err
	}
	for _, name := range s.users.WeakHashes() {
		s.log.Warn("console user's password hash is cheaper than bcrypt cost 12: give it a new password", "user", name)
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

const cookieName = "callout_session"

// maxEditable is the longest list the domain page shows in a text box;
// a longer one is imported from a file, edited an entry at a time and
// exported.
const maxEditable = 2000

// maxBody bounds a request body (a pasted mailbox list fits).
const maxBody = 8 << 20
