package microasync_test

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/microasync"
)

// A micro endpoint whose requests run on a pool of 8 goroutines: a slow
// request does not hold up the ones behind it, and past the pool's limit
// requests are shed with an error at once instead of waiting in line.
func Example() {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		panic(err)
	}
	go ns.Start()
	defer ns.Shutdown()
	if !ns.ReadyForConnections(5 * time.Second) {
		panic("nats-server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()

	svc, err := micro.AddService(nc, micro.Config{Name: "greeter", Version: "1.0.0"})
	if err != nil {
		panic(err)
	}
	defer svc.Stop()
	pool := microasync.NewPool(8)
	defer pool.Wait()
	greet := func(ctx context.Context, r *microasync.Request) {
		if len(r.Data()) == 0 {
			_ = r.Error("400", "whom to greet?", nil)
			return
		}
		_ = r.Respond([]byte("hello, " + string(r.Data())))
	}
	shed := func(r *microasync.Request) { _ = r.Error("503", "busy", nil) }
	if err := svc.AddEndpoint("greet", pool.Handler(context.Background(), nc, greet, shed), micro.WithEndpointSubject("greet")); err != nil {
		panic(err)
	}

	for _, who := range []string{"alice", ""} {
		msg, err := nc.Request("greet", []byte(who), 5*time.Second)
		if err != nil {
			panic(err)
		}
		if code := msg.Header.Get(micro.ErrorCodeHeader); code != "" {
			fmt.Println("error", code, msg.Header.Get(micro.ErrorHeader))
			continue
		}
		fmt.Println(string(msg.Data))
	}
	// Output:
	// hello, alice
	// error 400 whom to greet?
}
