// Package ingest is the ingest service: it answers MTAs' verify requests
// with a decision (accept, reject, defer), from its near cache, the domain
// policy, the cache or a callout, and never rejects on a doubt.
//
// Subjects: it serves callout.verify (and callout.verify.trace) as the
// micro service "callout-ingest" in a queue group; it asks
// callout.cache.lookup, publishes jobs on callout.probe.<domain> (stream
// CALLOUT_PROBES), hears verdicts on callout.verdict.> and watches the
// cache bucket (callout_cache) for its near cache; it says hello on
// callout.nearcache.hello and confirms flushes on callout.nearcache.sync.
// With a policy listener it also speaks the Postfix policy protocol
// (NewWithPolicy, policy.go).
//
// Files: service.go (New, Run), config.go (settings: CALLOUT_INGEST_*,
// tabled in docs/services.md), metrics.go (callout_ingest_*), then the
// path of one request: request.go (decoding), decide.go (the answer),
// cache.go (a miss: lookup and job), flights.go (one callout that many
// requests wait for), watch.go (the bucket watch: flushes and the index),
// refresh.go (refresh-ahead of near-cache hits), record.go (the
// decision log and the counts per domain per hour: every answer is
// published on callout.decision.<action>.<domain>).
package ingest
