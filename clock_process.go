//go:build !h2faultclock

package main

// processClock is the clock a leaf's quorum driver reads: the system's.
// Only a binary built with the h2faultclock tag, which the fault campaign
// builds for its own daemons (clock_fault.go), has another.
func processClock() (clock, error) { return wallClock{}, nil }
