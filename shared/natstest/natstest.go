// Package natstest runs an embedded JetStream nats-server for tests.
package natstest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is an embedded nats-server on a free loopback port.
type Server struct {
	*server.Server
	Dir string
}

// Start runs a JetStream server for the test and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartIn(t, t.TempDir(), -1)
}

// StartIn runs a server with its store in dir, on port (-1: any), so that a
// test can restart it on the same store and port.
func StartIn(t testing.TB, dir string, port int) *Server {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		JetStream: true, StoreDir: dir, Host: "127.0.0.1", Port: port,
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	s := &Server{Server: ns, Dir: dir}
	t.Cleanup(s.Stop)
	return s
}

// Stop shuts the server down and waits for it.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}

// Port is the client port.
func (s *Server) Port() int { return s.Addr().(*net.TCPAddr).Port }

// Connect opens a client connection closed at the end of the test.
func (s *Server) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("nats connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// RunService runs svc until stop is called or the test ends; an error from
// Run fails the test. stop waits for Run to return and may be called twice.
func RunService(t testing.TB, svc interface{ Run(context.Context) error }) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := svc.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// APITimeout bounds a test's own JetStream API calls. The client's 5 s
// default is a service's budget on a healthy server; a test machine running
// many race-instrumented packages at once can stall one call longer than
// that, and a test's setup step should wait rather than fail.
const APITimeout = 30 * time.Second

// JetStream is the JetStream client a test uses for its own calls.
func JetStream(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc, jetstream.WithDefaultTimeout(APITimeout))
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}
