package main

import (
	"testing"
)

// Long tests: stress and chaos runs that take more than a few seconds
// each (TestLong* by name). They run in every full run, in parallel with
// the rest (the plain `go test -race ./...` stays within about 30 s of
// package time on two cores), and are skipped under -short.
// TestLongQuorumChaos reads H2_QUORUM_CHAOS_SECONDS and H2_QUORUM_MASTERS
// for longer campaigns.

// longTest skips t under -short.
func longTest(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("a long test: skipped under -short")
	}
}

// notShort skips t under -short: a test of several daemons that takes a
// few seconds and runs in every full run, but not in the quick one.
func notShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("several daemons for seconds: skipped under -short")
	}
}
