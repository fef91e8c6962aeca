package cachekeeper

// The decision log of this cachekeeper's region: an index of it kept in
// memory (shared/decisions), searches and erasures.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/backoff"
	"github.com/callout-mail/callout/shared/decisions"
	"github.com/callout-mail/callout/shared/microasync"
	"github.com/callout-mail/callout/shared/streams"
)

// EraseRequest asks a region's cachekeepers to erase a domain's records.
type EraseRequest struct {
	Domain string `json:"domain"`
}

// EraseReply says how many records went.
type EraseReply struct {
	Region  string `json:"region,omitempty"`
	Removed int    `json:"removed"`
	Error   string `json:"error,omitempty"`
}

// followDecisions keeps the index of the region's log until ctx ends:
// it makes the log when missing, reads it from the start, then each
// record as it comes, and forgets what the log's limits removed.
func (s *Service) followDecisions(ctx context.Context) {
	var placement *jetstream.Placement
	if s.names.Region != "" {
		placement = &jetstream.Placement{Tags: []string{streams.RegionTag(s.names.Region)}}
	}
	cfg := decisions.StreamConfig(s.names, s.cfg.Replicas, decisions.Limits{MaxAge: s.cfg.DecisionLogMaxAge, MaxBytes: s.cfg.DecisionLogMaxBytes}, placement)
	go s.forgetOld(ctx)
	_ = backoff.Retry(ctx, s.log, "decision log", 5*time.Second, func(ctx context.Context) error {
		if _, err := streams.Ensure(ctx, s.js, cfg); streams.Warn(s.log, err) != nil {
			return err
		}
		start := time.Now()
		err := decisions.Follow(ctx, s.js, cfg.Name, s.index, func() {
			s.indexed.Store(true)
			s.log.Info("decision log indexed", "records", s.index.Len(), "took", time.Since(start).Round(time.Millisecond))
		})
		if err != nil || ctx.Err() != nil {
			return err
		}
		return errors.New("decision log follow ended")
	})
}

// forgetOld drops from the index the records the log no longer has.
func (s *Service) forgetOld(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := s.js.Stream(ctx, s.names.DecisionStream())
		if err != nil {
			continue
		}
		s.index.Forget(st.CachedInfo().State.FirstSeq)
	}
}

// search answers one page of a search of the region's log.
func (s *Service) search(ctx context.Context, r *microasync.Request) {
	var q decisions.Query
	if err := json.Unmarshal(r.Data(), &q); err != nil {
		s.m.searches.WithLabelValues("bad").Inc()
		_ = r.Error("400", "query: "+err.Error(), nil)
		return
	}
	if err := q.Check(); err != nil {
		s.m.searches.WithLabelValues("bad").Inc()
		_ = r.Error("400", err.Error(), nil)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	start := time.Now()
	res, err := decisions.Search(ctx, s.index, decisions.StreamReader{NC: s.nc, Stream: s.names.DecisionStream()}, q, s.cfg.DecisionSearchMaxRead)
	res.Region, res.Indexing = s.names.Region, !s.indexed.Load()
	for i := range res.Records {
		res.Records[i].Region = s.names.Region
	}
	s.log.Debug("decision search", "query", string(r.Data()), "records", len(res.Records), "read", res.Read, "took", time.Since(start), "err", err)
	switch {
	case errors.Is(err, decisions.ErrTooBroad):
		s.m.searches.WithLabelValues("too_broad").Inc()
		_ = r.Error("422", err.Error(), nil)
		return
	case err != nil:
		s.log.Warn("decision search failed", "query", string(r.Data()), "err", err)
		s.m.searches.WithLabelValues("error").Inc()
		_ = r.Error("500", err.Error(), nil)
		return
	}
	s.m.searches.WithLabelValues("ok").Inc()
	_ = r.Respond(fitPage(&res, int(s.nc.MaxPayload())-1024))
}

// fitPage encodes a page within a message's size: a page too large is
// cut, and goes on (Next) from the last record kept.
func fitPage(res *decisions.Result, limit int) []byte {
	b, _ := json.Marshal(res)
	for len(b) > limit && len(res.Records) > 1 {
		keep := max(1, len(res.Records)*limit/len(b)*9/10)
		if keep >= len(res.Records) {
			keep = len(res.Records) - 1
		}
		res.Records = res.Records[:keep]
		res.Next = res.Records[keep-1].ID
		b, _ = json.Marshal(res)
	}
	return b
}

// erase removes every record of a domain from the region's log.
func (s *Service) erase(ctx context.Context, r micro.Request) {
	var req EraseRequest
	err := json.Unmarshal(r.Data(), &req)
	req.Domain = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(req.Domain), "."))
	if err == nil && (req.Domain == "" || strings.ContainsAny(req.Domain, "@\r\n\x00 ")) {
		err = fmt.Errorf("domain %q", req.Domain)
	}
	if err != nil {
		_ = r.Error("400", "erase: "+err.Error(), nil)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	rep := EraseReply{Region: s.names.Region}
	rep.Removed, err = s.eraseDomain(ctx, req.Domain)
	if err != nil {
		rep.Error = err.Error()
	}
	s.log.Info("decision records erased", "domain", req.Domain, "removed", rep.Removed, "err", err)
	b, _ := json.Marshal(rep)
	_ = r.Respond(b)
}

func (s *Service) eraseDomain(ctx context.Context, domain string) (int, error) {
	st, err := s.js.Stream(ctx, s.names.DecisionStream())
	if err != nil {
		return 0, err
	}
	q := decisions.Query{Domain: domain, Limit: decisions.MaxLimit}
	if err := q.Check(); err != nil {
		return 0, err
	}
	removed := 0
	var wrote uint64 // the ID of the last record of the newest message written again
	// A message holds the records of every domain of its second: each
	// message with a record of the domain is written again without
	// them, then erased (its bytes overwritten).
	rd := decisions.StreamReader{NC: s.nc, Stream: s.names.DecisionStream()}
	for {
		res, err := decisions.Search(ctx, s.index, rd, q, s.cfg.DecisionSearchMaxRead)
		if err != nil {
			return removed, err
		}
		var seqs []uint64
		for _, h := range res.Records {
			seqs = append(seqs, decisions.SeqOf(h.ID))
		}
		var rerr error
		err = rd.Messages(ctx, seqs, func(seq uint64, subject string, data []byte) {
			if rerr != nil {
				return
			}
			var keep []byte
			kept, gone := 0, 0
			_ = decisions.DecodeBatch(data, func(_ int, r *decisions.Record) bool {
				if r.Domain() == domain {
					gone++
				} else if b, err := decisions.Encode(r); err == nil {
					keep, kept = append(keep, b...), kept+1
				}
				return true
			})
			if kept > 0 {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				var ack *jetstream.PubAck
				ack, rerr = s.js.PublishMsg(pctx, decisions.BatchMsg(subject, keep, kept))
				cancel()
				if rerr != nil {
					return
				}
				wrote = max(wrote, decisions.ID(ack.Sequence, kept-1))
			}
			if rerr = st.SecureDeleteMsg(ctx, seq); errors.Is(rerr, jetstream.ErrMsgNotFound) {
				rerr = nil
			}
			removed += gone
		})
		if err != nil || rerr != nil {
			return removed, errors.Join(err, rerr)
		}
		if res.Next == 0 {
			break
		}
		q.Before = res.Next
	}
	s.index.Erase(domain)
	// Answer once the index holds the messages written again: the
	// records they keep are found by the next search, and by the next
	// erase (of another domain of the same messages), which would
	// otherwise find nothing and leave them in the log.
	if err := s.waitIndexed(ctx, wrote); err != nil {
		return removed, fmt.Errorf("records kept by the erase not indexed yet: %w", err)
	}
	return removed, nil
}

// waitIndexed waits until the index holds the record id (0: none).
func (s *Service) waitIndexed(ctx context.Context, id uint64) error {
	if id == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for s.index.Last() < id {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
