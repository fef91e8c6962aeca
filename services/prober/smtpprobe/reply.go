// Package smtpprobe is the SMTP client side of a callout: connect, EHLO,
// STARTTLS, MAIL FROM, RCPT TO, RSET, QUIT. It never sends DATA. Every read
// is bounded in time and size, so a hostile server cannot hang or bloat it.
package smtpprobe

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Limits bound what a server may send in one reply.
type Limits struct {
	MaxLine  int // bytes in one line, CRLF included
	MaxLines int // lines in one reply
	MaxBytes int // bytes in one reply
}

// DefaultLimits are generous for real servers (RFC 5321 allows 512-byte reply lines).
var DefaultLimits = Limits{MaxLine: 2048, MaxLines: 64, MaxBytes: 16 << 10}

// Reply is one parsed SMTP reply.
type Reply struct {
	Code     int
	Enhanced string   // RFC 3463 status, e.g. "5.1.1", when present
	Lines    []string // text of each line, without code and separator
}

// Text is the reply's text on one line.
func (r Reply) Text() string { return strings.Join(r.Lines, " ") }

func (r Reply) String() string {
	if r.Enhanced != "" {
		return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text())
	}
	return fmt.Sprintf("%d %s", r.Code, r.Text())
}

// Class is the first digit of the code.
func (r Reply) Class() int { return r.Code / 100 }

// Errors for replies that break the protocol or the limits.
var (
	ErrMalformed = errors.New("malformed SMTP reply")
	ErrLineLong  = errors.New("SMTP reply line too long")
	ErrTooMany   = errors.New("SMTP reply has too many lines")
	ErrTooBig    = errors.New("SMTP reply too large")
)

// readReply reads one reply within the limits.
func readReply(r *bufio.Reader, lim Limits) (Reply, error) {
	var rep Reply
	total := 0
	for {
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return rep, fmt.Errorf("%w: more than %d bytes", ErrLineLong, r.Size())
		}
		if err != nil {
			return rep, err
		}
		total += len(line)
		if len(line) > lim.MaxLine {
			return rep, fmt.Errorf("%w: %d bytes", ErrLineLong, len(line))
		}
		if total > lim.MaxBytes {
			return rep, fmt.Errorf("%w: more than %d bytes", ErrTooBig, lim.MaxBytes)
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return rep, fmt.Errorf("%w: %q", ErrMalformed, clip(line))
		}
		code, err := strconv.Atoi(string(line[:3]))
		if err != nil || code < 200 || code > 599 || line[0] < '2' {
			return rep, fmt.Errorf("%w: bad code %q", ErrMalformed, clip(line))
		}
		if rep.Code != 0 && code != rep.Code {
			return rep, fmt.Errorf("%w: code changed from %d to %d", ErrMalformed, rep.Code, code)
		}
		rep.Code = code
		more := false
		text := ""
		if len(line) > 3 {
			switch line[3] {
			case '-':
				more = true
			case ' ':
			default:
				return rep, fmt.Errorf("%w: %q", ErrMalformed, clip(line))
			}
			text = string(line[4:])
		}
		if len(rep.Lines) >= lim.MaxLines {
			return rep, fmt.Errorf("%w: more than %d", ErrTooMany, lim.MaxLines)
		}
		rep.Lines = append(rep.Lines, text)
		if !more {
			break
		}
	}
	rep.Enhanced = parseEnhanced(rep)
	return rep, nil
}

// parseEnhanced finds an RFC 3463 code at the start of the first line whose
// class matches the reply code, and strips it from every line.
func parseEnhanced(rep Reply) string {
	found := ""
	for i, l := range rep.Lines {
		class, subject, detail, n, ok := leadingEnhanced(l)
		if !ok || class-'0' != byte(rep.Class()) {
			continue
		}
		if found == "" {
			found = string(class) + "." + trimZeros(subject) + "." + trimZeros(detail)
		}
		rep.Lines[i] = strings.TrimSpace(l[n:])
	}
	return found
}

// leadingEnhanced reads "class.subject.detail" at the start of l (class 2,
// 4 or 5, one to three digits each, then white space or the end); n is the
// length read, the white space included. (A regular expression did this
// on every line of every reply; EHLO replies have a dozen.)
func leadingEnhanced(l string) (class byte, subject, detail string, n int, ok bool) {
	if len(l) < 5 || (l[0] != '2' && l[0] != '4' && l[0] != '5') || l[1] != '.' {
		return 0, "", "", 0, false
	}
	digits := func(i int) int {
		j := i
		for j < len(l) && j-i < 4 && l[j] >= '0' && l[j] <= '9' {
			j++
		}
		return j - i
	}
	ns := digits(2)
	if ns == 0 || ns > 3 || 2+ns >= len(l) || l[2+ns] != '.' {
		return 0, "", "", 0, false
	}
	at := 3 + ns
	nd := digits(at)
	if nd == 0 || nd > 3 {
		return 0, "", "", 0, false
	}
	end := at + nd
	if end < len(l) {
		switch l[end] {
		case ' ', '\t', '\n', '\f', '\r':
			end++
		default:
			return 0, "", "", 0, false
		}
	}
	return l[0], l[2 : 2+ns], l[at : at+nd], end, true
}

func trimZeros(s string) string {
	n, _ := strconv.Atoi(s)
	return strconv.Itoa(n)
}

func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// ParseReply reads one reply from r with the default limits.
func ParseReply(r *bufio.Reader) (Reply, error) { return readReply(r, DefaultLimits) }
