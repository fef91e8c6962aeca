// Package postfix runs Debian's Postfix as an instance of its own (its
// configuration, queue, logs and listening port in one directory) for the
// e2e suite and the bench: main.cf is rendered from one of the templates
// beside this file, master.cf from master.cf.
package postfix

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/callout-mail/callout/tools/stack"
)

//go:embed *.cf
var templates embed.FS

// Instance is one running Postfix.
type Instance struct {
	Dir  string // configuration, queue, data and maillog
	Addr string // where its smtpd listens
}

// Start renders mainCf (a template name: front-main.cf, dest-main.cf,
// bench-main.cf) with data, plus {{.Dir}} and {{.Listen}}, writes files
// into the instance directory, starts Postfix and waits until it listens.
func Start(ctx context.Context, mainCf, listen string, data, files map[string]string) (*Instance, error) {
	dir, err := os.MkdirTemp("", "callout-postfix-")
	if err != nil {
		return nil, err
	}
	// Postfix wants its directories reachable by its own user.
	_ = os.Chmod(dir, 0o755)
	p := &Instance{Dir: dir, Addr: listen}
	vars := map[string]string{"Dir": dir, "Listen": listen}
	for k, v := range data {
		vars[k] = v
	}
	for src, dst := range map[string]string{mainCf: "main.cf", "master.cf": "master.cf"} {
		tmpl, err := template.ParseFS(templates, src)
		if err != nil {
			return nil, err
		}
		var b bytes.Buffer
		if err := tmpl.Execute(&b, vars); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b.Bytes(), 0o644); err != nil {
			return nil, err
		}
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"queue", "data", "vmail"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	_ = os.Chown(filepath.Join(dir, "vmail"), 65534, 65534)
	_ = p.run("set-permissions", "create-missing") // warns about ownership of a scratch directory; harmless
	if err := p.run("start"); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	for {
		c, err := net.DialTimeout("tcp", listen, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return p, nil
		}
		select {
		case <-ctx.Done():
			_ = p.Stop()
			return nil, fmt.Errorf("postfix in %s does not listen on %s: %w", dir, listen, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *Instance) run(args ...string) error {
	out, err := exec.Command("postfix", append([]string{"-c", p.Dir}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("postfix %v: %v %s (see %s/maillog)", args, err, out, p.Dir)
	}
	return nil
}

// Maillog is what the instance logged.
func (p *Instance) Maillog() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

// Stop stops the instance and removes its directory.
func (p *Instance) Stop() error {
	err := p.run("stop")
	os.RemoveAll(p.Dir)
	return err
}

// CPUTicks is the CPU time, in ticks of 1/100 s, that the instance's
// processes used so far: its master's own and that of the children it
// reaped, plus its running children's.
func (p *Instance) CPUTicks() (float64, error) {
	pidData, err := os.ReadFile(filepath.Join(p.Dir, "queue", "pid", "master.pid"))
	if err != nil {
		return 0, err
	}
	master, err := strconv.Atoi(strings.TrimSpace(string(pidData)))
	if err != nil {
		return 0, fmt.Errorf("postfix master pid: %w", err)
	}
	m, err := stack.ReadProcCPU(master)
	if err != nil {
		return 0, fmt.Errorf("postfix master %d is not running: %w", master, err)
	}
	total := m.Self + m.Reaped
	for _, pid := range stack.Pids() {
		if c, err := stack.ReadProcCPU(pid); err == nil && c.PPID == master {
			total += c.Self
		}
	}
	return total, nil
}
