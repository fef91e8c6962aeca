package backoff

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"
)

func TestRetry(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	n := 0
	err := Retry(context.Background(), log, "step", 10*time.Millisecond, func(context.Context) error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("err %v after %d calls", err, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	boom := errors.New("boom")
	if err := Retry(ctx, log, "step", 10*time.Millisecond, func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err %v, want the last failure", err)
	}
}
