package main

import "time"

// clock is where the quorum driver and its lease rules read time. It has
// two readings, because they fail differently:
//
//   - Now measures time on this master: leases, waits, orphans, the lease
//     renewals of cac_lease.go, log limiters. Its readings carry Go's
//     monotonic clock, so a step of the wall clock (settimeofday, an NTP
//     step, a VM resumed) never moves them; only the rate at which the
//     machine's clock runs (its drift) does. Two readings are only ever
//     compared with each other, never with another master's.
//   - Wall is the wall clock, for stamps another node reads: a proposal's
//     At (kept for operators, never compared) and the time in a join
//     request, which its verifier checks within a wide window.
//
// The daemon's is the system's clock (processClock); the in-process CAC
// scripts (cac_test.go) move one per master by hand, and the fault
// campaign's daemons, built with the h2faultclock tag, shift and skew
// theirs (clock_fault.go). Raft itself never sees it: its time is the
// driver's ticks.
type clock interface {
	Now() time.Time
	Wall() time.Time
}

// wallClock is the system's clock.
type wallClock struct{}

func (wallClock) Now() time.Time  { return time.Now() }
func (wallClock) Wall() time.Time { return time.Now() }
