package ingest

import (
	"time"

	"github.com/callout-mail/callout/shared/address"
	"github.com/callout-mail/callout/shared/domains"
	"github.com/callout-mail/callout/shared/kvkey"
	"github.com/callout-mail/callout/shared/verdict"
)

// refresh queues a re-probe of a's valid entry that the near cache
// answered, if one is due: the hottest addresses never reach a
// cachekeeper lookup (which refreshes what it answers). The answer still
// comes from the near cache. The job is published without waiting: a job
// already pending for the address is just as good.
func (s *Service) refresh(a address.Address, purpose verdict.Purpose, pol domains.Policy, v *verdict.Verdict) {
	var key string
	if !s.refreshes.Due(v, time.Now(), func() string { key = kvkey.Target(a.Domain, a.Local, purpose); return key }) {
		return
	}
	job := newJob(a, purpose, pol)
	job.SkipRandom, job.Refresh = true, true
	if _, err := s.queueAsync(key, job); err != nil {
		s.log.Warn("refresh job not queued", "address", a.String(), "err", err)
		return
	}
	s.m.refreshes.Inc()
}
