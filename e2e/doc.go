// Package e2e holds the end-to-end suite: real nats-server and service
// processes, scripted and real (Postfix) destinations on loopback.
// Run all of it with `make e2e`, one scenario with `make e2e RUN=TestFlush`.
package e2e
