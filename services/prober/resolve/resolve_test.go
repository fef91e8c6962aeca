package resolve

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/callout-mail/callout/shared/dnstest"
)

func TestMX(t *testing.T) {
	addr := dnstest.Start(t,
		"mx.example. 60 IN MX 20 b.mx.example.", "mx.example. 60 IN MX 10 a.mx.example.",
		"a.mx.example. 60 IN A 127.0.0.10", "b.mx.example. 60 IN A 127.0.0.20", "b.mx.example. 60 IN A 127.0.0.21",
		"plain.example. 60 IN A 127.0.0.1",
		"lame.example. 60 IN MX 10 gone.lame.example.",
		"nullmx.example. 60 IN MX 0 .")
	r := New(addr, 2525)
	r.Timeout = 2 * time.Second
	tests := []struct {
		domain string
		want   []string
		err    error
	}{
		{"mx.example", []string{"127.0.0.10:2525", "127.0.0.20:2525", "127.0.0.21:2525"}, nil},
		{"plain.example", []string{"127.0.0.1:2525"}, nil},
		{"lame.example", nil, ErrTemporary}, // its MX host has no address
		{"nullmx.example", nil, ErrNullMX},
		{"nxdomain.example", nil, ErrNoDomain},
		{"x.fail", nil, ErrTemporary},
		{"x.slow", nil, ErrTemporary},
	}
	for _, tt := range tests {
		got, err := r.MX(context.Background(), tt.domain)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("%s: error %v, want %v", tt.domain, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: %v %v, want %v", tt.domain, got, err, tt.want)
		}
	}
}
