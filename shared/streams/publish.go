package streams

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Publish stores m in the stream that takes its subject and returns the
// message's sequence. It is the jetstream client's PublishMsg, with the
// same errors (a *jetstream.APIError for a refusal, ErrNoStreamResponse
// when no stream answers after two retries), except that the server's
// usual acknowledgement is read by hand: decoding it as JSON cost more
// than the rest of a publish.
func Publish(ctx context.Context, nc *nats.Conn, m *nats.Msg) (uint64, error) {
	resp, err := nc.RequestMsgWithContext(ctx, m)
	// A leader election answers nobody for a moment.
	for r := 0; errors.Is(err, nats.ErrNoResponders) && r < 2; r++ {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
		resp, err = nc.RequestMsgWithContext(ctx, m)
	}
	if errors.Is(err, nats.ErrNoResponders) {
		return 0, jetstream.ErrNoStreamResponse
	}
	if err != nil {
		return 0, err
	}
	if seq, ok := quickAck(resp.Data); ok {
		return seq, nil
	}
	var ack struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
		Seq    uint64              `json:"seq"`
	}
	if json.Unmarshal(resp.Data, &ack) != nil {
		return 0, jetstream.ErrInvalidJSAck
	}
	if ack.Error != nil {
		return 0, fmt.Errorf("nats: %w", ack.Error)
	}
	if ack.Stream == "" {
		return 0, jetstream.ErrInvalidJSAck
	}
	return ack.Seq, nil
}

// ExpectLast is a message for Publish that the stream stores only if the
// subject's last message is at sequence last (0: the subject has none),
// and keeps for ttl (0: by the stream's own limits).
func ExpectLast(subject string, data []byte, last uint64, ttl time.Duration) *nats.Msg {
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(last, 10))
	if ttl > 0 {
		m.Header.Set(jetstream.MsgTTLHeader, ttl.String())
	}
	return m
}

// quickAck reads the acknowledgement of a stored message as the server
// writes it, {"stream":"NAME","seq":N}, or with "duplicate":true after;
// anything else (an error above all) is left to the JSON decoder.
func quickAck(b []byte) (uint64, bool) {
	rest, ok := bytes.CutPrefix(b, []byte(`{"stream":"`))
	if !ok || bytes.Contains(rest, []byte(`"error"`)) {
		return 0, false
	}
	i := bytes.IndexByte(rest, '"')
	if i <= 0 || bytes.ContainsFunc(rest[:i], func(r rune) bool { return r == '\\' || r < 0x20 }) {
		return 0, false
	}
	rest, ok = bytes.CutPrefix(rest[i+1:], []byte(`,"seq":`))
	if !ok {
		return 0, false
	}
	j := 0
	for j < len(rest) && j < 20 && rest[j] >= '0' && rest[j] <= '9' {
		j++
	}
	if j == 0 || (rest[0] == '0' && j > 1) {
		return 0, false
	}
	if tail := string(rest[j:]); tail != "}" && tail != `,"duplicate":true}` {
		return 0, false
	}
	seq, err := strconv.ParseUint(string(rest[:j]), 10, 64)
	if err != nil {
		return 0, false
	}
	return seq, true
}
