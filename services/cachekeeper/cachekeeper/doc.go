// Package cachekeeper is the cachekeeper service: it stores verdicts from
// the verdict stream in the cache bucket with their TTLs, answers lookups
// and applies flush commands until every running ingest has confirmed
// them.
//
// Subjects: it consumes callout.verdict.> (stream CALLOUT_VERDICTS,
// consumer "cachekeepers"), serves callout.cache.lookup (queue group) and
// callout.control.flush (every instance) as the micro service
// "callout-cache", may publish refresh jobs on callout.probe.<domain>,
// hears ingests on callout.nearcache.hello and asks them to confirm a
// flush on callout.nearcache.sync. It indexes its region's decision log
// (stream CALLOUT_DECISIONS) and answers callout.decisions.search and
// callout.decisions.erase.
//
// Files: service.go (New, Run, storing verdicts), config.go (settings:
// CALLOUT_CACHEKEEPER_*, tabled in docs/services.md), metrics.go
// (callout_cache_*), lookup.go, flush.go, region.go (a fleet over
// regions), decisions.go (the decision log). The bucket itself (keys,
// entries, flush records) is package cache.
package cachekeeper
