//go:build h2faultclock

package main

// A clock the fault campaign (faults_test.go) moves, in the binary it
// builds for its own daemons with the h2faultclock tag; no other build has
// this file. H2_FAULT_CLOCK names a file holding "wall=<duration>
// rate=<number>": the wall clock's offset from the system's, and the rate
// at which the clock runs against it. The leaf reads it as its quorum
// starts and again on each SIGUSR2, so that the test steps the wall clock
// forward and back and changes the drift of a running master. A step moves
// Wall only; the rate moves both. Only the test sets the variable and
// signals the process (its own child): a peer has no way to either.

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// faultClock runs at rate from (base, virt): Now is virt plus the real time
// since base, times rate; virt carries the monotonic reading it was taken
// with, so Now's readings compare as monotonic ones do.
type faultClock struct {
	mu   sync.Mutex
	base time.Time // the system's clock when rate last changed
	virt time.Time // this clock's Now then
	rate float64
	wall time.Duration
}

func (c *faultClock) nowLocked() time.Time {
	return c.virt.Add(time.Duration(float64(time.Since(c.base)) * c.rate))
}

func (c *faultClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nowLocked()
}

func (c *faultClock) Wall() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nowLocked().Round(0).Add(c.wall)
}

func (c *faultClock) set(wall time.Duration, rate float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.virt, c.base = c.nowLocked(), time.Now()
	c.rate, c.wall = rate, wall
}

// load reads the file's wall offset and rate.
func (c *faultClock) load(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	wall, rate := time.Duration(0), 1.0
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "wall":
			if wall, err = time.ParseDuration(v); err != nil {
				return fmt.Errorf("%s: wall=%q: %w", path, v, err)
			}
		case "rate":
			if rate, err = strconv.ParseFloat(v, 64); err != nil || rate <= 0 {
				return fmt.Errorf("%s: rate=%q: a positive number", path, v)
			}
		default:
			return fmt.Errorf("%s: unknown %q", path, f)
		}
	}
	c.set(wall, rate)
	return nil
}

var (
	faultClockOnce sync.Once
	faultClockOne  *faultClock
	faultClockErr  error
)

// processClock is the process's one fault clock (with H2_FAULT_CLOCK), or
// the system's. The signal's goroutine lives as long as the process: this
// is a test binary's.
func processClock() (clock, error) {
	path := os.Getenv("H2_FAULT_CLOCK")
	if path == "" {
		return wallClock{}, nil
	}
	faultClockOnce.Do(func() {
		now := time.Now()
		c := &faultClock{base: now, virt: now, rate: 1}
		if faultClockErr = c.load(path); faultClockErr != nil {
			return
		}
		faultClockOne = c
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGUSR2)
		go func() {
			for range ch {
				if err := c.load(path); err != nil {
					fmt.Fprintf(os.Stderr, "fault clock: %v\n", err)
					continue
				}
				fmt.Fprintf(os.Stderr, "fault clock: %s\n", c.describe())
			}
		}()
	})
	if faultClockErr != nil {
		return nil, faultClockErr
	}
	return faultClockOne, nil
}

func (c *faultClock) describe() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprintf("wall %+v, rate %g", c.wall, c.rate)
}
