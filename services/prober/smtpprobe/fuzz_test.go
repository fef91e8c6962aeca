package smtpprobe

import (
	"bufio"
	"bytes"
	"errors"
	"regexp"
	"testing"
)

// FuzzReadReply feeds arbitrary bytes from a destination to the reply
// reader: it never panics, stays within its limits, and what it accepts is
// a well-formed reply.
func FuzzReadReply(f *testing.F) {
	for _, s := range []string{
		"250 2.1.5 Ok\r\n",
		"550-5.1.1 The email account\r\n550 5.1.1 does not exist\r\n",
		"220 mx ESMTP\n",
		"250-a\r\n251 b\r\n",
		"999 x\r\n",
		"25",
		"\r\n",
		"550 \xff\xfe\x00\r\n",
	} {
		f.Add([]byte(s))
	}
	lim := Limits{MaxLine: 128, MaxLines: 8, MaxBytes: 512}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(data), lim.MaxLine)
		for i := 0; i < 4; i++ {
			rep, err := readReply(r, lim)
			if err != nil {
				if errors.Is(err, ErrMalformed) || errors.Is(err, ErrLineLong) || errors.Is(err, ErrTooMany) || errors.Is(err, ErrTooBig) {
					return
				}
				return // EOF and friends
			}
			if rep.Code < 200 || rep.Code > 599 {
				t.Fatalf("accepted code %d from %q", rep.Code, data)
			}
			if len(rep.Lines) == 0 || len(rep.Lines) > lim.MaxLines {
				t.Fatalf("%d lines from %q", len(rep.Lines), data)
			}
			n := 0
			for _, l := range rep.Lines {
				n += len(l)
			}
			if n > lim.MaxBytes {
				t.Fatalf("%d bytes of text beyond the limit", n)
			}
			if rep.Enhanced != "" && rep.Enhanced[0] != byte('0'+rep.Class()) {
				t.Fatalf("enhanced code %q with reply code %d", rep.Enhanced, rep.Code)
			}
		}
	})
}

// enhancedRE is what leadingEnhanced reads, as a regular expression.
var enhancedRE = regexp.MustCompile(`^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)`)

// FuzzLeadingEnhanced holds the hand-written reader of enhanced codes to
// the regular expression.
func FuzzLeadingEnhanced(f *testing.F) {
	for _, s := range []string{"5.1.1 no", "2.0.0", "4.7.1\tx", "5.1.1234 x", "5.1234.1", "3.1.1 x", "5.01.001 y", "5.1.", "5..1", "5.1.1x", "5.1.1\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, l string) {
		class, subject, detail, n, ok := leadingEnhanced(l)
		m := enhancedRE.FindStringSubmatch(l)
		if ok != (m != nil) {
			t.Fatalf("%q: read %v, the expression %v", l, ok, m != nil)
		}
		if ok && (string(class) != m[1] || subject != m[2] || detail != m[3] || n != len(m[0])) {
			t.Fatalf("%q: read %c %q %q %d, the expression %q", l, class, subject, detail, n, m)
		}
	})
}
