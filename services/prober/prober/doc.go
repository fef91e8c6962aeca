// Package prober is the prober service: workers pull probe jobs from the
// JetStream work queue, run the callout to the destination behind its
// host's limits and breaker, and publish the verdicts.
//
// Subjects: it pulls callout.probe.> (stream CALLOUT_PROBES, consumer
// "probers"), publishes callout.verdict.<key> (stream CALLOUT_VERDICTS),
// takes fleet-wide connection and rate leases (stream CALLOUT_LEASES,
// callout.lease.>), and serves callout.prober.hosts and
// callout.prober.trace (what it knows of each destination, a traced
// dialogue).
//
// Files: service.go (New, Run), config.go (settings: CALLOUT_PROBER_*,
// tabled in docs/services.md), metrics.go (callout_prober_*), jobs.go
// (one job, start to verdict), prepare.go (routing: MX or the policy's
// route), hosts.go (the hosts and trace endpoints). The dialogue itself is
// package callout; a host's limits are package destination.
package prober
