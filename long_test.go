package main

import (
	"os"
	"testing"
)

// Long tests: stress and chaos runs that take more than a few seconds
// each (TestLong* by name). They run when H2_LONG_TESTS is set (CI's full
// run sets it) and are skipped otherwise, always under -short, so that
// the plain `go test -race ./...` stays within its budget of 30 s of
// package time on two cores.
//
//	H2_LONG_TESTS=1 go test -race -count=1 ./...
const longTestsEnv = "H2_LONG_TESTS"

// longTest skips t unless long tests are asked for.
func longTest(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("a long test: skipped under -short")
	}
	if os.Getenv(longTestsEnv) == "" {
		t.Skipf("a long test: set %s=1 to run it", longTestsEnv)
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
