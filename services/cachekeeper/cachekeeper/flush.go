package cachekeeper

// Flushes: every cachekeeper applies them; the ingests confirm them.

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/callout-mail/callout/shared/wire"
)

func (s *Service) flush(ctx context.Context, r micro.Request) {
	var cmd wire.FlushCommand
	isJSON := r.Headers().Get(wire.ContentType) == wire.JSONMediaType
	var err error
	if isJSON {
		err = wire.DecodeJSON(r.Data(), &cmd)
	} else {
		err = wire.Decode(r.Data(), &cmd)
	}
	if err != nil {
		s.log.Error("flush refused", "err", err)
		_ = r.Error("400", err.Error(), nil)
		return
	}
	fctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	// The ingests confirm the record while the purge runs: their near
	// caches go by the record, not by the purge. (The hook runs on this
	// goroutine, once the record is written.)
	var synced chan struct{}
	var unconfirmed []string
	n, _, err := s.store.FlushOnRecord(fctx, cmd, func(rev uint64) {
		synced = make(chan struct{})
		go func() {
			defer close(synced)
			unconfirmed = s.syncIngests(fctx, rev)
		}()
	})
	rep := wire.FlushReply{Removed: n, Region: s.names.Region}
	if seq, perr := strconv.ParseUint(r.Headers().Get(wire.FlushSeqHeader), 10, 64); perr == nil && err == nil {
		s.appliedLive(seq)
	}
	if err != nil {
		rep.Error = err.Error()
		s.log.Error("flush failed", "scope", cmd.Scope, "err", err)
	}
	if synced != nil {
		<-synced
		rep.Unconfirmed = unconfirmed
	}
	s.m.flushes.WithLabelValues(cmd.Scope).Inc()
	s.m.removed.Add(float64(n))
	s.log.Info("flush", "scope", cmd.Scope, "domain", cmd.Domain, "address", cmd.Address, "only", cmd.Only, "removed", n, "took", time.Since(start).Round(time.Microsecond))
	var b []byte
	if isJSON {
		b, err = jsonReply(&rep)
	} else {
		b, err = wire.Encode(&rep)
	}
	if err != nil {
		return
	}
	_ = r.Respond(b)
}

// trackIngests keeps the set of running ingests, so that a flush knows how
// many confirmations to wait for without asking each time: an ingest says
// hello when it starts keeping a near cache, and a micro ping every few
// seconds finds who is still there.
func (s *Service) trackIngests(ctx context.Context) {
	for {
		start := time.Now()
		s.pingIngests(200 * time.Millisecond)
		s.mu.Lock()
		for id, seen := range s.ingests {
			if seen.Before(start) {
				delete(s.ingests, id) // did not answer this ping: gone
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// pingIngests notes every ingest that answers a micro ping within window
// of the previous answer.
func (s *Service) pingIngests(window time.Duration) {
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.nc.PublishRequest("$SRV.PING.callout-ingest", inbox, nil); err != nil {
		return
	}
	for {
		m, err := sub.NextMsg(window)
		if err != nil {
			return
		}
		var ping struct {
			ID       string            `json:"id"`
			Metadata map[string]string `json:"metadata"`
		}
		// Only the region's ingests: they read this region's bucket.
		if json.Unmarshal(m.Data, &ping) == nil && ping.ID != "" && ping.Metadata["region"] == s.names.Region {
			s.sawIngest(ping.ID, time.Now())
		}
	}
}

func (s *Service) sawIngest(id string, at time.Time) {
	s.mu.Lock()
	s.ingests[id] = at
	s.mu.Unlock()
}

// syncIngests waits until the running ingests have applied the flush record
// (bucket revision rev) to their near caches, so that once the flush is
// answered no ingest serves what it removed, and returns the ids of those
// that did not confirm within a few seconds. Those are fenced: an ingest
// asked to confirm serves nothing from its near cache until it has
// applied the record, and one that did not get the ask is cut off from
// NATS, when it serves no cached reject.
func (s *Service) syncIngests(ctx context.Context, rev uint64) []string {
	waiting := s.knownIngests()
	if len(waiting) == 0 {
		// None known yet (this cachekeeper just started): ask now.
		s.pingIngests(100 * time.Millisecond)
		waiting = s.knownIngests()
	}
	if len(waiting) == 0 {
		return nil
	}
	count := len(waiting)
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return sorted(waiting)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.nc.PublishRequest(s.names.NearCacheSync(), inbox, []byte(strconv.FormatUint(rev, 10))); err != nil {
		return sorted(waiting)
	}
	deadline := time.Now().Add(3 * time.Second)
	for got := 0; got < count && len(waiting) > 0; got++ {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		// "true <id>" or "false <id>" (an ingest of an older version
		// answers without its id).
		ok, id, _ := strings.Cut(string(m.Data), " ")
		if ok != "true" {
			continue
		}
		if id == "" {
			// Unnamed: counts against any one still waited for.
			for w := range waiting {
				delete(waiting, w)
				break
			}
			continue
		}
		delete(waiting, id)
	}
	if len(waiting) > 0 {
		s.log.Warn("flush: not every ingest confirmed it; those are fenced until they apply it", "ingests", count, "unconfirmed", sorted(waiting))
	}
	return sorted(waiting)
}

// knownIngests is the set of running ingests known now.
func (s *Service) knownIngests() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	set := make(map[string]bool, len(s.ingests))
	for id := range s.ingests {
		set[id] = true
	}
	return set
}

func sorted(set map[string]bool) []string {
	if len(set) == 0 {
		return nil
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
