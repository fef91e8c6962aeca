package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type spec struct {
	Workers int           `default:"4" desc:"workers"`
	Timeout time.Duration `default:"10s" desc:"timeout"`
}

func (s spec) Validate() error {
	if s.Workers < 1 {
		return errors.New("WORKERS must be at least 1")
	}
	return nil
}

func TestLoad(t *testing.T) {
	var s spec
	if err := Load("CALLOUT_TEST", &s); err != nil || s.Workers != 4 || s.Timeout != 10*time.Second {
		t.Fatalf("defaults: %+v %v", s, err)
	}
	t.Setenv("CALLOUT_TEST_TIMEOUT", "ten")
	err := Load("CALLOUT_TEST", &s)
	if err == nil || !strings.Contains(err.Error(), "CALLOUT_TEST_TIMEOUT") {
		t.Fatalf("bad value error does not name the variable: %v", err)
	}
	t.Setenv("CALLOUT_TEST_TIMEOUT", "1s")
	t.Setenv("CALLOUT_TEST_WORKERS", "0")
	if err := Load("CALLOUT_TEST", &s); err == nil || !strings.Contains(err.Error(), "WORKERS") {
		t.Fatalf("validation error: %v", err)
	}
	var b strings.Builder
	if err := Usage(&b, "CALLOUT_TEST", &s); err != nil || !strings.Contains(b.String(), "CALLOUT_TEST_WORKERS") {
		t.Fatalf("usage: %q %v", b.String(), err)
	}
}
