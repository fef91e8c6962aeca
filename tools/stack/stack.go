// Package stack starts and stops the real processes of a callout system on
// loopback: nats-server, the three services and a demo destination. It
// serves `make run` and the end-to-end suite.
package stack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// Proc is one child process.
type Proc struct {
	Name string
	Log  string // file holding its stdout and stderr
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	once sync.Once
}

// Start runs bin with args and env (added to the current environment),
// logging to dir/name.log.
func Start(dir, name, bin string, args, env []string) (*Proc, error) {
	return StartIn("", dir, name, bin, args, env)
}

// StartIn is Start with the working directory workDir ("" for the current one).
func StartIn(workDir, dir, name, bin string, args, env []string) (*Proc, error) {
	log := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = workDir
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Log: log, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM and waits up to grace, then kills.
func (p *Proc) Stop(grace time.Duration) error {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	})
	var ee *exec.ExitError
	if errors.As(p.err, &ee) && !ee.Exited() {
		return nil // ended by our signal
	}
	return p.err
}

// Kill ends the process at once, like kill -9.
func (p *Proc) Kill() {
	p.once.Do(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	})
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		// The kernel may hand a port it just gave out, and closed, to the
		// next caller too: two "free" ports picked in a row (say a
		// destination and a dead one) would then be the same.
		if _, dup := handedOut.LoadOrStore(p, true); !dup {
			return p, nil
		}
	}
}

// handedOut holds every port FreePort returned in this process.
var handedOut sync.Map

// WaitNATS waits until a client can connect to url (with opts).
func WaitNATS(ctx context.Context, url string, opts ...nats.Option) error {
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			nc.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nats-server at %s not ready: %w (%v)", url, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitService waits until a micro service answers a ping on its name.
func WaitService(ctx context.Context, nc *nats.Conn, name string) error {
	for {
		if _, err := nc.Request("$SRV.PING."+name, nil, 200*time.Millisecond); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("service %s not ready: %w", name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitHTTP waits until a GET of url answers 200.
func WaitHTTP(ctx context.Context, url string) error {
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w", url, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
