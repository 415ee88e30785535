package main

// Accept loops that survive their errors. A listener that returns on its
// first error (EMFILE when a flood of connections has used up the file
// descriptors, ENFILE, ECONNABORTED) leaves a daemon running that accepts
// nothing, for good. These loops back off and retry instead, as net/http's
// Server does, and log once per burst of failures rather than once per
// failure.

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"time"
)

// Backoff bounds for a failing Accept: short enough that a listener is
// back within a second of the flood ending, long enough not to spin.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// acceptLoop accepts on ln until it is closed or ctx ends, handing each
// connection to handle on the loop's goroutine (handle must not block).
// It returns nil once ln is closed.
func acceptLoop(ctx context.Context, ln net.Listener, log *slog.Logger, what string, handle func(net.Conn)) error {
	var (
		delay    time.Duration
		failures int
		since    time.Time
	)
	for {
		c, err := ln.Accept()
		if err == nil {
			if failures > 0 {
				log.Info("accepting again", "listen", what, "failures", failures,
					"for", time.Since(since).Round(time.Millisecond))
				failures, delay = 0, 0
			}
			handle(c)
			continue
		}
		if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
			return nil
		}
		if failures == 0 {
			since = time.Now()
			log.Warn("accept failing; retrying with backoff", "listen", what, "err", err)
		}
		failures++
		delay = min(max(2*delay, acceptBackoffMin), acceptBackoffMax)
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil
		}
	}
}
