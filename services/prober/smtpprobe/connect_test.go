package smtpprobe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

// fullBacklog returns a loopback address whose listen queue is full and
// never accepted from: the kernel drops new SYNs, so a connect hangs.
func fullBacklog(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Skipf("socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Skipf("bind: %v", err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Skipf("listen: %v", err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the queue.
	for i := 0; i < 8; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("could not fill the listen queue on this kernel")
	return ""
}

func TestConnectTimeout(t *testing.T) {
	addr := fullBacklog(t)
	start := time.Now()
	_, _, err := Dial(context.Background(), addr, Config{ConnectTimeout: 300 * time.Millisecond, BannerTimeout: time.Minute})
	var se *Error
	if !errors.As(err, &se) || se.Stage != StageConnect || !se.Timeout() {
		t.Fatalf("error %v, want a connect timeout", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("connect took %v", el)
	}
}
