//go:build !dragonfly

package main

import (
	"testing"
	"time"
)

// waitQP waits until cond holds, woken by each change of srcs, for at
// most d.
func waitQP(t *testing.T, d time.Duration, what string, srcs []changeSource, cond func() (bool, string)) {
	t.Helper()
	waitEvent(t, d, what, cond, srcs...)
}
