package smtpprobe

import (
	"bufio"
	"bytes"
	"errors"
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
