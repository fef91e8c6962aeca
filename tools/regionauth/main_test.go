package main

import (
	"bytes"
	"os"
	"testing"
)

// The shipped region users are what the one-region users make.
func TestRegionAuthCurrent(t *testing.T) {
	src, err := os.ReadFile("../../deploy/nats/auth.conf")
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := write(&b, string(src), []string{"a", "b", "c"}); err != nil {
		t.Fatal(err)
	}
	shipped, err := os.ReadFile("../../deploy/nats/regions/auth.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Bytes(), shipped) {
		t.Fatal("deploy/nats/regions/auth.conf is stale: run make regions-auth")
	}
}
