package microasync

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/natstest"
)

// Concurrent answers and errors, under -race.
func TestHandler(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(t)
	svc, err := micro.AddService(nc, micro.Config{Name: "t", Version: "1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Stop()
	pool := NewPool(4)
	err = svc.AddEndpoint("e", pool.Handler(context.Background(), nc, func(_ context.Context, r *Request) {
		time.Sleep(5 * time.Millisecond)
		if string(r.Data()) == "bad" {
			_ = r.Error("400", "bad request", nil)
			return
		}
		_ = r.Respond(append([]byte("re:"), r.Data()...))
	}, nil), micro.WithEndpointSubject("t.e"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the endpoint's subscription reaches the server first
		t.Fatal(err)
	}
	client := ns.Connect(t)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := "ok"
			if i%2 == 0 {
				data = "bad"
			}
			m, err := client.Request("t.e", []byte(data), 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			if data == "bad" && m.Header.Get(micro.ErrorCodeHeader) != "400" {
				t.Errorf("error headers %v", m.Header)
			}
			if data == "ok" && string(m.Data) != "re:ok" {
				t.Errorf("answer %q", m.Data)
			}
		}()
	}
	wg.Wait()
	pool.Wait()
}
