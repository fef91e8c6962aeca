package policyd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzReadRequest feeds arbitrary bytes to the policy request reader: it
// never panics, never keeps more than its limits, and a request it accepts
// holds only values Postfix could have sent.
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"request=smtpd_access_policy\nrecipient=a@b.example\n\n",
		"request=smtpd_access_policy\r\nsender=\r\n\r\n",
		"\n\nx=y\n\n",
		"noequals\n\n",
		"a=b\x00c\n\n",
		strings.Repeat("a", 3000) + "=b\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReaderSize(bytes.NewReader(data), maxLine)
		var req request
		for i := 0; i < 8; i++ {
			err := readRequest(r, &req)
			if err != nil {
				if errors.Is(err, errMalformed) {
					continue // read to its end: the connection stays in step
				}
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					return
				}
				t.Fatalf("unexpected error %v", err)
			}
			if req.attrs > maxAttrs {
				t.Fatalf("%d attributes", req.attrs)
			}
			for _, v := range []string{req.request, req.recipient, req.sender, req.client, req.timeout, req.text} {
				if strings.ContainsAny(v, "\n\x00") || len(v) > maxLine {
					t.Fatalf("attribute value %q", v)
				}
			}
		}
	})
}
