package verify

import (
	"sync"
	"time"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
)

// refresher re-probes old valid entries that the near cache answers: the
// hottest addresses never reach a cachekeeper lookup (which refreshes
// what it answers), so without this a deleted mailbox would be accepted
// for the whole valid TTL. At most once per address and view per period.
type refresher struct {
	age  time.Duration
	mu   sync.Mutex
	last map[string]time.Time // target key -> last refresh job
}

// maxRefreshKeys bounds the memory of recent refreshes: past it the map
// starts afresh, which costs a few extra re-probes at most.
const maxRefreshKeys = 100000

// due reports whether v (a near-cache hit for a) should be re-probed now,
// and notes that it is.
func (r *refresher) due(a address.Address, purpose verdict.Purpose, v *verdict.Verdict, now time.Time) (string, bool) {
	if r.age <= 0 || v.Status != verdict.Valid || v.Kind != verdict.KindAddress || now.Sub(v.CheckedAt) < r.age {
		return "", false
	}
	key := kvkey.Target(a.Domain, a.Local, purpose)
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.last[key]; ok && now.Sub(t) < r.age {
		return "", false
	}
	if r.last == nil || len(r.last) >= maxRefreshKeys {
		r.last = map[string]time.Time{}
	}
	r.last[key] = now
	return key, true
}

// refresh queues a re-probe of a's valid entry, if one is due; the answer
// still comes from the near cache. The job is published without waiting:
// a job already pending for the address is just as good.
func (s *Service) refresh(a address.Address, purpose verdict.Purpose, pol domains.Policy, v *verdict.Verdict) {
	key, ok := s.refreshes.due(a, purpose, v, time.Now())
	if !ok {
		return
	}
	job := newJob(a, purpose, pol)
	job.SkipRandom = true
	if _, err := s.queueAsync(key, job); err != nil {
		s.log.Warn("refresh job not queued", "address", a.String(), "err", err)
		return
	}
	s.m.refreshes.Inc()
}
