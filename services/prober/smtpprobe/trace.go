package smtpprobe

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/callout-mail/callout/shared/wire"
)

// Transcript records a traced callout: every host tried, connection and TLS
// facts, every command sent and every reply received, with the time since
// the callout started. It is for operators only, never for an MTA.
type Transcript struct {
	mu    sync.Mutex
	start time.Time
	lines []wire.TraceLine
}

// NewTranscript starts a transcript now.
func NewTranscript() *Transcript { return &Transcript{start: time.Now()} }

// Add records one line; kind is "C" (sent), "S" (received) or "*" (a note).
func (t *Transcript) Add(host, kind, format string, args ...any) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) >= 1000 {
		return // a hostile server cannot grow it without bound
	}
	t.lines = append(t.lines, wire.TraceLine{AtMS: float64(time.Since(t.start).Microseconds()) / 1000, Host: host, Kind: kind,
		Text: strings.ToValidUTF8(fmt.Sprintf(format, args...), "?")})
}

// Lines returns what was recorded.
func (t *Transcript) Lines() []wire.TraceLine {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]wire.TraceLine(nil), t.lines...)
}

// reply records a reply line by line, as the server sent it.
func (t *Transcript) reply(host string, rep Reply) {
	if t == nil {
		return
	}
	for i, l := range rep.Lines {
		sep := "-"
		if i == len(rep.Lines)-1 {
			sep = " "
		}
		text := l
		if i == 0 && rep.Enhanced != "" {
			text = rep.Enhanced + " " + l
		}
		t.Add(host, "S", "%d%s%s", rep.Code, sep, text)
	}
}
