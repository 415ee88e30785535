package main

import (
	"flag"
	"fmt"
	"runtime"
	"strconv"
	"testing"
)

// The suite's schedule. go test runs every test that does not call
// t.Parallel first, one at a time (the sequential phase), then lets the
// parallel ones go, as many at once as -parallel says (the parallel
// phase).
//
// The sequential phase holds two kinds of test. Those that time a link
// against its own bounds (quic_test.go, iocom_test.go), which a machine
// busy with the parallel tests would blur. And the CPU-bound ones
// (simulations, randomized state-machine runs, the CAC and quorum
// scripts, the seams' type checks), spread over the cores by spread:
// beside the process tests they got a sixth of a core each and took ten
// times their own time, and the daemons' timers they starved made the
// process tests slower and flakier.
//
// In the parallel phase the long tests go first: a_long_test.go says
// how. A parallel test's own subtests run one after the other in its
// slot, not as parallel subtests: go test hands out slots in the order
// tests ask for them, every top-level test asks at the start of the
// phase, and a parallel subtest asks only once its parent's body has
// returned, so it waits behind the whole suite (the CLI scripts, run
// that way, were the last second and a half of every -short run).
// Subtests that must run together belong to a test of the sequential
// phase (spread).

// TestTimers runs, in the sequential phase, the link tests that spend
// their run waiting on the link's own timers with the CPU idle: a dead
// peer's silence, a QUIC idle timeout, a stateless reset drawn by a
// keep-alive, a redial's backoff, a send queue that never drains. They
// run together, and with nothing else: one after the other they were
// 1.6 s of a 10 s -short run, together they take the longest one's time.
// The timing tests that keep the CPU busy (a pacer, a window growing
// under bulk) stay top-level tests of their own.
func TestTimers(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    func(t *testing.T)
	}{
		{"LinkDeadPeer", timerLinkDeadPeer},         // iocom_test.go
		{"LinkBackPressure", timerLinkBackPressure}, // iocom_test.go
		{"QuicDeadPeer", timerQuicDeadPeer},         // quic_test.go
		{"QuicStatelessReset", timerQuicStatelessReset},
		{"RedialerBackoffThenConnect", timerRedialerBackoffThenConnect},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.f(t)
		})
	}
}

// testParallelPerCPU is how many parallel tests run at once per core:
// most of them wait on daemons' timers (dead-peer bounds, commit
// timeouts, redials), not on the CPU, so as many as cores (go test's
// default) leaves the cores idle most of the run.
const testParallelPerCPU = 6

// setupSchedule sets go test's -parallel, unless the command line did;
// called by TestMain once the flags are parsed, before the tests run. In
// a full run TestLong (a_long_test.go) holds one slot and runs
// longAtOnce tests in it, so the others get that many fewer slots and
// the machine runs as many tests at once either way.
func setupSchedule() {
	if flagSet("test.parallel") {
		return
	}
	n := testParallelPerCPU * runtime.GOMAXPROCS(0)
	if !testing.Short() {
		n = max(n-(longAtOnce-1), 1)
	}
	_ = flag.Set("test.parallel", strconv.Itoa(n))
}

// spread runs f(t, i) for i in [0, n) as one parallel subtest per core,
// each taking every GOMAXPROCS-th i: a CPU-bound test of the sequential
// phase, which must not be parallel itself, so that its subtests run
// together with nothing else.
func spread(t *testing.T, n int, f func(t *testing.T, i int)) {
	t.Helper()
	parts := min(runtime.GOMAXPROCS(0), n)
	for p := range parts {
		t.Run(fmt.Sprintf("part=%dof%d", p+1, parts), func(t *testing.T) {
			t.Parallel()
			for i := p; i < n; i += parts {
				f(t, i)
			}
		})
	}
}

// longAtOnce is how many long tests (a_long_test.go) run at once: the chaos run's 15 s
// and the rest's 50-odd seconds on three more lanes end together, and
// with the -parallel slots the other tests get (setupSchedule) the suite
// keeps as many tests going as it did when each long test took a slot.
const longAtOnce = 4
