package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// TestSDWatchdogEarned: a ping follows each probe that succeeded and none
// follows one that failed, so a daemon that stops answering its own
// control socket (or whose quorum driver is stuck) stops pinging.
func TestSDWatchdogEarned(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		healthy func(probe int) bool
		pings   int // after 6 probes
	}{
		{"always answers", func(int) bool { return true }, 6},
		{"never answers", func(int) bool { return false }, 0},
		{"stops answering after 2", func(p int) bool { return p < 2 }, 2},
		{"answers again at 4", func(p int) bool { return p >= 4 }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var sent []string
			probes := make(chan struct{}, 16)
			n := &sdNotifier{watchdog: 20 * time.Millisecond, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
				missed: newLogLimiter(1)}
			n.send = func(s string) error {
				mu.Lock()
				sent = append(sent, s)
				mu.Unlock()
				return nil
			}
			ctx, cancel := context.WithCancel(context.Background())
			count := 0
			n.Ready(ctx, "test", func(context.Context) error {
				p := count
				count++
				var err error
				if !tc.healthy(p) {
					err = errors.New("no answer")
				}
				if p == 6 {
					cancel() // the 7th probe ends the run before its ping
				}
				probes <- struct{}{}
				return err
			})
			for range 7 {
				select {
				case <-probes:
				case <-time.After(5 * time.Second):
					t.Fatal("the watchdog stopped probing")
				}
			}
			n.Wait()
			mu.Lock()
			defer mu.Unlock()
			pings := 0
			for _, s := range sent[1:] {
				if s == "WATCHDOG=1" {
					pings++
				}
			}
			if len(sent) == 0 || sent[0][:8] != "READY=1\n" {
				t.Fatalf("first notification %q, want READY=1", sent)
			}
			if pings != tc.pings {
				t.Errorf("%d pings after 6 probes, want %d (sent %q)", pings, tc.pings, sent)
			}
		})
	}
}
