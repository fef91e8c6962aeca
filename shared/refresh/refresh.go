// Package refresh decides when a cached valid verdict is re-probed in the
// background (refresh-ahead), so that a mailbox deleted at its destination
// is not accepted for the whole valid TTL. The cachekeeper asks it for the
// entries its lookups answer, an ingest for those its near cache answers.
package refresh

import (
	"sync"
	"time"

	"github.com/callout-mail/callout/shared/verdict"
)

// maxKeys bounds the memory of recent re-probes: past it the record starts
// afresh, which costs a few extra re-probes at most.
const maxKeys = 100000

// Ahead re-probes a valid address verdict older than Age, at most once
// per key per Age. Its zero value with Age set is ready to use; Age 0 is
// off.
type Ahead struct {
	Age  time.Duration
	mu   sync.Mutex
	last map[string]time.Time // key -> last re-probe
}

// Due reports whether v should be re-probed now, and notes that it is
// under the key that key returns. This runs on every hit: the key is made
// only for an old valid verdict.
func (r *Ahead) Due(v *verdict.Verdict, now time.Time, key func() string) bool {
	if r.Age <= 0 || v.Status != verdict.Valid || v.Kind != verdict.KindAddress || now.Sub(v.CheckedAt) < r.Age {
		return false
	}
	k := key()
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.last[k]; ok && now.Sub(t) < r.Age {
		return false
	}
	if r.last == nil || len(r.last) >= maxKeys {
		r.last = map[string]time.Time{}
	}
	r.last[k] = now
	return true
}
