// Package subjects names every NATS subject, stream and bucket of the system
// in one place, under a configurable prefix (default "callout").
package subjects

import (
	"strconv"
	"strings"
)

// DefaultPrefix is the subject prefix when none is configured.
const DefaultPrefix = "callout"

// Names derives all names from one prefix and, in a fleet spread over
// regions, the region of the instance: what a region keeps for itself
// (its cache bucket, the lookups and near-cache confirmations of its
// cachekeepers, its share of the verdicts) carries the region's name;
// everything else is one for the whole fleet. Without a region the
// names are those of a fleet in one place.
type Names struct {
	Prefix string
	Region string
}

// New returns the names under prefix ("" means DefaultPrefix).
func New(prefix string) Names {
	return NewIn(prefix, "")
}

// NewIn returns the names under prefix of an instance in region ("": a
// fleet in one region).
func NewIn(prefix, region string) Names {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Names{Prefix: prefix, Region: region}
}

// in is name with the region appended after sep, when there is one.
func (n Names) in(name, sep string) string {
	if n.Region == "" {
		return name
	}
	return name + sep + n.Region
}

// VerifyRegion is the verify subject of the ingests of the instance's
// region only ("" without a region): an MTA that asks on it is answered
// in its region.
func (n Names) VerifyRegion() string {
	if n.Region == "" {
		return ""
	}
	return n.Prefix + ".verify.in." + n.Region
}

// RegionBeat is where a region's cachekeepers say, every second, that the
// region is there and has applied the flush log (wire.RegionBeat).
func (n Names) RegionBeat(region string) string { return n.Prefix + ".region.beat." + region }

// RegionBeatAll matches every region's beat.
func (n Names) RegionBeatAll() string { return n.Prefix + ".region.beat.*" }

// RegionsBucket lists the regions of the fleet: a flush waits for each.
func (n Names) RegionsBucket() string { return n.Prefix + "_regions" }

// FlushLog is the subject of the flush log: every flush over regions,
// kept so that a region that was away applies what it missed.
func (n Names) FlushLog() string { return n.Prefix + ".flushlog" }

// FlushLogStream keeps the flush log.
func (n Names) FlushLogStream() string { return strings.ToUpper(n.Prefix) + "_FLUSHES" }

// FlushLogConsumer is the durable consumer of the flush log a region's
// cachekeepers share.
func (n Names) FlushLogConsumer() string { return n.in("flushes", "_") }

// Verify is the MTA-facing request subject.
func (n Names) Verify() string { return n.Prefix + ".verify" }

// Probe is the job subject for one target (kvkey.Target).
func (n Names) Probe(target string) string { return n.Prefix + ".probe." + target }

// ProbeAll matches every job subject.
func (n Names) ProbeAll() string { return n.Prefix + ".probe.>" }

// ProbeStream is the work-queue stream holding probe jobs.
func (n Names) ProbeStream() string { return strings.ToUpper(n.Prefix) + "_PROBES" }

// ProbeConsumer is the durable consumer all probers share.
func (n Names) ProbeConsumer() string { return "probers" }

// Verdict is the subject of a verdict; key is its cache key (kvkey), for an
// address without the probe sender: addr.<domain>.<local>.<view>.
func (n Names) Verdict(key string) string { return n.Prefix + ".verdict." + key }

// VerdictAll matches every verdict subject.
func (n Names) VerdictAll() string { return n.Prefix + ".verdict.>" }

// VerdictStream keeps verdicts until the cachekeeper has stored them.
func (n Names) VerdictStream() string { return strings.ToUpper(n.Prefix) + "_VERDICTS" }

// VerdictConsumer is the durable consumer all cachekeepers (of a region)
// share: each region stores every verdict in its own bucket.
func (n Names) VerdictConsumer() string { return n.in("cachekeepers", "_") }

// CacheLookup is the cache's request subject (the region's cache).
func (n Names) CacheLookup() string { return n.in(n.Prefix+".cache.lookup", ".") }

// Flush is the control subject every cachekeeper listens on.
func (n Names) Flush() string { return n.Prefix + ".control.flush" }

// CacheBucket is the KV bucket of verdicts (the region's own).
func (n Names) CacheBucket() string { return n.in(n.Prefix+"_cache", "_") }

// AccountsBucket is the KV bucket of the console's users and API tokens.
func (n Names) AccountsBucket() string { return n.Prefix + "_accounts" }

// DomainsBucket is the KV bucket of per-domain policy.
func (n Names) DomainsBucket() string { return n.Prefix + "_domains" }

// ListsBucket holds the long mailbox and bypass lists of the policies,
// in chunks a policy names.
func (n Names) ListsBucket() string { return n.Prefix + "_lists" }

// LeaseStream holds destination limits across probers.
func (n Names) LeaseStream() string { return strings.ToUpper(n.Prefix) + "_LEASES" }

// LeaseAll matches every lease subject.
func (n Names) LeaseAll() string { return n.Prefix + ".lease.>" }

// Lease is one slot's subject: kind conn or rate, host a key token.
func (n Names) Lease(kind, host string, slot int) string {
	return n.Prefix + ".lease." + kind + "." + host + "." + strconv.Itoa(slot)
}

// LeaseWant is where a prober waiting for a host's slot asks the others
// to close an idle connection to it (host a key token, or *). Not under
// lease.>: the lease stream would keep the asks.
func (n Names) LeaseWant(host string) string { return n.Prefix + ".prober.want." + host }

// ProberHosts asks every prober for its destination hosts.
func (n Names) ProberHosts() string { return n.Prefix + ".prober.hosts" }

// NearCacheSync asks every ingest to confirm it applied the cache bucket up
// to a revision (a flush record) before a flush is answered.
func (n Names) NearCacheSync() string { return n.in(n.Prefix+".nearcache.sync", ".") }

// NearCacheHello is where an ingest says it keeps a near cache.
func (n Names) NearCacheHello() string { return n.in(n.Prefix+".nearcache.hello", ".") }

// VerifyTrace is the operators' traced verify (admin only).
func (n Names) VerifyTrace() string { return n.Prefix + ".verify.trace" }

// VerifyConsole is where operators' tools (the console, calloutctl) ask as
// an MTA would: the answer is the same, but it is not mail, so it never
// counts for the dictionary-attack brake. MTAs may not publish on it.
func (n Names) VerifyConsole() string { return n.Prefix + ".verify.console" }

// ProberTrace is where an ingest hands a traced job to one prober.
func (n Names) ProberTrace() string { return n.Prefix + ".prober.trace" }

// Audit is the subject of an operator change (what: policy.set, flush, ...).
func (n Names) Audit(what string) string { return n.Prefix + ".audit." + what }

// AuditAll matches every audit subject.
func (n Names) AuditAll() string { return n.Prefix + ".audit.>" }

// AuditStream keeps operator changes.
func (n Names) AuditStream() string { return strings.ToUpper(n.Prefix) + "_AUDIT" }

// Stats is where a service instance publishes its figures.
func (n Names) Stats(service, instance string) string {
	return n.Prefix + ".stats." + service + "." + strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_").Replace(instance)
}

// StatsAll matches every stats subject.
func (n Names) StatsAll() string { return n.Prefix + ".stats.>" }

// Decision is where an ingest records its answers (batches of
// decisions.Record) by action, under the region in a fleet over regions.
// The domain is not in the subject: a batch holds the records of every
// domain that came within its second, so that a block of the log holds
// few messages (see docs/decisions.md).
func (n Names) Decision(action string) string {
	all := n.DecisionAll()
	return all[:len(all)-1] + action
}

// DecisionAll matches every record of the instance's region.
func (n Names) DecisionAll() string {
	if n.Region == "" {
		return n.Prefix + ".decision.>"
	}
	return n.Prefix + ".decision.in." + n.Region + ".>"
}

// DecisionStream keeps a region's decision log.
func (n Names) DecisionStream() string {
	if n.Region == "" {
		return strings.ToUpper(n.Prefix) + "_DECISIONS"
	}
	return strings.ToUpper(n.Prefix) + "_DECISIONS_" + strings.ToUpper(n.Region)
}

// DecisionSearch is where a region's cachekeepers answer searches of its
// decision log (decisions.Query, JSON).
func (n Names) DecisionSearch() string { return n.in(n.Prefix+".decisions.search", ".") }

// DecisionErase is where a region's cachekeepers erase a domain's
// records.
func (n Names) DecisionErase() string { return n.in(n.Prefix+".decisions.erase", ".") }

// HistoryBucket keeps the counts per domain per hour (decisions.Counts).
func (n Names) HistoryBucket() string { return n.Prefix + "_history" }
