// Package decisions is the decision log: every answer an ingest gives
// becomes a Record, published on its region's log stream by a Recorder
// that never delays or fails the answer; a region's cachekeepers keep an
// Index of the log and answer a Query with Search; Counts per domain per
// hour are kept for 90 days in a bucket of their own (history.go).
//
// Files: record.go (the record and its encoding), query.go (filters),
// index.go (the in-memory index), search.go (a page of results),
// stream.go (reading records by sequence), recorder.go (publishing),
// history.go (counts per domain per hour), streams.go (the stream and
// bucket settings).
package decisions
