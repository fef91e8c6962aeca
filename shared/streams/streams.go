// Package streams defines the JetStream streams the services share. Each
// service ensures the streams it uses; the definitions are identical, so
// whichever starts first creates them.
package streams

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/callout-mail/callout/shared/subjects"
)

// ProbeMaxAge drops a job nobody finished, so its subject takes new jobs again.
const ProbeMaxAge = 15 * time.Minute

// VerdictMaxAge bounds how long verdicts wait for a cachekeeper.
const VerdictMaxAge = 24 * time.Hour

// Probes ensures the work queue of probe jobs: one subject per target, at
// most one job per subject, a second publish refused (error 10077) while
// the first is pending. That is what coalesces callouts across instances.
func Probes(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (jetstream.Stream, error) {
	return Ensure(ctx, js, jetstream.StreamConfig{
		Name:                 n.ProbeStream(),
		Description:          "callout probe jobs, one per target address",
		Subjects:             []string{n.ProbeAll()},
		Retention:            jetstream.WorkQueuePolicy,
		MaxMsgsPerSubject:    1,
		Discard:              jetstream.DiscardNew,
		DiscardNewPerSubject: true,
		MaxAge:               ProbeMaxAge,
		Storage:              jetstream.FileStorage,
		Replicas:             max(replicas, 1),
	})
}

// Verdicts ensures the stream that keeps verdicts until a cachekeeper has
// stored them, so none is lost while no cachekeeper runs.
func Verdicts(ctx context.Context, js jetstream.JetStream, n subjects.Names, replicas int) (jetstream.Stream, error) {
	return Ensure(ctx, js, jetstream.StreamConfig{
		Name:        n.VerdictStream(),
		Description: "callout verdicts waiting to be cached",
		Subjects:    []string{n.VerdictAll()},
		Retention:   jetstream.WorkQueuePolicy,
		MaxAge:      VerdictMaxAge,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
}

// Ensure creates the stream, or updates it when its settings differ. It
// sends no update when nothing changed: services start together, and
// concurrent no-op updates race with consumer creation in the server.
func Ensure(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.CreateStream(ctx, cfg)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	s, err = js.Stream(ctx, cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	cur := s.CachedInfo().Config
	if cur.MaxAge == cfg.MaxAge && cur.Replicas == cfg.Replicas && cur.MaxMsgsPerSubject == cfg.MaxMsgsPerSubject &&
		cur.DiscardNewPerSubject == cfg.DiscardNewPerSubject && cur.Discard == cfg.Discard && cur.Description == cfg.Description {
		return s, nil
	}
	if s, err = js.UpdateStream(ctx, cfg); err != nil {
		return nil, fmt.Errorf("stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// JobPending reports whether a publish failed because a job for the same
// target is already queued or in flight (error 10077, "maximum messages per
// subject exceeded").
func JobPending(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10077 && strings.Contains(apiErr.Description, "per subject")
}

// LastMsg returns the data of the last message on subject in stream, by
// the stream's API (one request; the caller needs permission for
// $JS.API.STREAM.MSG.GET.<stream>). ok is false when there is none.
func LastMsg(ctx context.Context, nc *nats.Conn, stream, subject string) (data []byte, ok bool, err error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": subject})
	m, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, req)
	if err != nil {
		return nil, false, fmt.Errorf("last message on %s: %w", subject, err)
	}
	var resp struct {
		Message *struct {
			Data []byte `json:"data"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return nil, false, fmt.Errorf("last message on %s: %w", subject, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, false, nil
	case resp.Error != nil:
		return nil, false, fmt.Errorf("last message on %s: %w", subject, resp.Error)
	case resp.Message == nil:
		return nil, false, nil
	}
	return resp.Message.Data, true, nil
}

// Workers ensures the durable pull consumer that all instances of a service
// share. The server redelivers without limit: the services decide
// themselves when to give up (the prober with a final verdict).
func Workers(ctx context.Context, js jetstream.JetStream, stream, durable string, ackWait time.Duration, replicas int) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "shared by all instances of a service",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: 10000,
		Replicas:      replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s on %s: %w", durable, stream, err)
	}
	return c, nil
}
