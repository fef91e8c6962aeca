// Package backoff retries a step until it succeeds or the context ends, so a
// service started before NATS or JetStream is ready waits instead of exiting.
package backoff

import (
	"context"
	"log/slog"
	"time"
)

// Retry calls fn until it returns nil or ctx ends, waiting longer after each
// failure (up to max) and logging each failure.
func Retry(ctx context.Context, log *slog.Logger, what string, max time.Duration, fn func(context.Context) error) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return err
		}
		log.Warn(what+" failed; retrying", "attempt", attempt, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(wait*2, max)
	}
}
