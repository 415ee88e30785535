package main

import "time"

// clock is where the quorum driver and its lease rules read the wall
// clock: a proposal's At, the lease and half-lease rules, revocations,
// orphans, join signatures and the join clock check. The daemon's is the
// wall clock; the in-process CAC scripts (cac_test.go) move theirs by
// hand, and clock-skew tests give each master its own. Raft itself never
// sees it: its time is the driver's ticks.
type clock interface {
	Now() time.Time
}

// wallClock is the system's clock.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }
