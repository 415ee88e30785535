package main

import (
	"math"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// near reports whether a is within 1 % of b.
func near(a, b float64) bool { return math.Abs(a-b) <= 0.01*math.Abs(b) }

// TestPacerAdapts drives the pacer through a quiet bulk spell, a busy
// control spell and back, on an injected clock.
func TestPacerAdapts(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1000, 0)}
	p := newPacer(clk.now)

	// Bulk alone: never held back, and its rate is measured (64 KiB
	// every 256 µs is 256 MB/s).
	const msg = 64 << 10
	for range 200 {
		if k, wait := p.Take(msg); k != msg || wait != 0 {
			t.Fatalf("unpaced Take(%d) = %d, %v; want all at once", msg, k, wait)
		}
		clk.advance(256 * time.Microsecond)
	}
	if p.ProbeDue() || p.Rate() != 0 {
		t.Fatalf("unpaced pacer: probe %v, rate %v", p.ProbeDue(), p.Rate())
	}
	free := float64(msg) / 256e-6
	if !near(p.freeRate, free) {
		t.Fatalf("measured unpaced rate %.0f, want %.0f", p.freeRate, free)
	}
	// An idle control lane's round trips give the base.
	p.Sample(30 * time.Microsecond)
	p.Sample(40 * time.Microsecond)

	// A control message engages the pacer at half the unpaced rate.
	p.Demand()
	r := p.Rate()
	if !near(r, free/2) {
		t.Fatalf("paced at %.0f, want %.0f", r, free/2)
	}
	// The bucket starts empty: wait for one chunk's worth, then get it.
	k, wait := p.Take(msg)
	if want := time.Duration(math.Ceil(pacerChunk / r * 1e9)); k != 0 || wait != want {
		t.Fatalf("first paced Take = %d, %v; want 0, %v", k, wait, want)
	}
	clk.advance(wait)
	if k, wait = p.Take(msg); k != pacerChunk || wait != 0 {
		t.Fatalf("Take after the wait = %d, %v; want %d now", k, wait, pacerChunk)
	}
	// The bucket holds at most two chunks, however long bulk waited.
	clk.advance(pacerIdle / 2)
	p.Demand()
	for i := range 3 {
		k, _ = p.Take(msg)
		if (k == pacerChunk) != (i < 2) {
			t.Fatalf("Take %d after a long pause = %d", i, k)
		}
	}
	if !p.ProbeDue() || p.ProbeDue() {
		t.Error("want one probe now, then none until pacerProbe has passed")
	}
	clk.advance(pacerProbe)
	if !p.ProbeDue() {
		t.Error("no probe after pacerProbe")
	}

	// Round trips above target cut the rate, once per round trip.
	over := time.Duration(pacerTarget*30e3) + 10*time.Microsecond
	clk.advance(over)
	p.Sample(over)
	if got := p.Rate(); !near(got, r*pacerCut) {
		t.Fatalf("rate %.0f after a slow round trip, want %.0f", got, r*pacerCut)
	}
	p.Sample(over) // the same queue seen again: no second cut
	if got := p.Rate(); !near(got, r*pacerCut) {
		t.Fatalf("rate %.0f after a second slow sample within one round trip, want %.0f", got, r*pacerCut)
	}
	clk.advance(over)
	p.Sample(over)
	if got := p.Rate(); !near(got, r*pacerCut*pacerCut) {
		t.Fatalf("rate %.0f after the next round trip, want %.0f", got, r*pacerCut*pacerCut)
	}
	// Round trips at or under target raise it, up to the unpaced rate.
	r = p.Rate()
	p.Sample(45 * time.Microsecond)
	if got := p.Rate(); !near(got, r*pacerGrow) {
		t.Fatalf("rate %.0f after a fast round trip, want %.0f", got, r*pacerGrow)
	}
	for range 100 {
		p.Sample(30 * time.Microsecond)
	}
	if got := p.Rate(); !near(got, free) {
		t.Fatalf("rate %.0f after many fast round trips, want the unpaced %.0f", got, free)
	}
	// However slow the round trips, bulk keeps moving.
	for range 200 {
		clk.advance(time.Millisecond)
		p.Demand()
		p.Sample(time.Millisecond)
	}
	if got := p.Rate(); got != pacerMinRate {
		t.Fatalf("rate %.0f after many slow round trips, want the floor %.0f", got, float64(pacerMinRate))
	}

	// A quiet control lane releases the bulk; the next busy spell starts
	// from the rate the last one ended at, not from scratch.
	clk.advance(pacerIdle + time.Microsecond)
	if k, wait := p.Take(msg); k != msg || wait != 0 {
		t.Fatalf("Take after the control lane went quiet = %d, %v; want all at once", k, wait)
	}
	if p.Rate() != 0 || p.ProbeDue() {
		t.Fatal("pacer still engaged after the control lane went quiet")
	}
	p.Demand()
	if got := p.Rate(); got != pacerMinRate {
		t.Fatalf("next busy spell starts at %.0f, want %.0f", got, float64(pacerMinRate))
	}
}

// TestPacerMinimumFollowsPath: the base round trip is the lowest of the
// current and the previous pacerMinWindow, so a path that got slower is
// followed within two windows instead of being cut for ever.
func TestPacerMinimumFollowsPath(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1000, 0)}
	p := newPacer(clk.now)
	p.Sample(20 * time.Microsecond)
	clk.advance(pacerMinWindow)
	p.Sample(200 * time.Microsecond) // the path is now 10x longer
	p.Demand()
	r := p.Rate()
	clk.advance(time.Millisecond)
	p.Sample(250 * time.Microsecond) // over the target for 20 µs: cut
	if got := p.Rate(); got >= r {
		t.Fatalf("rate %.0f, want it cut below %.0f while the old minimum holds", got, r)
	}
	clk.advance(pacerMinWindow)
	p.Sample(250 * time.Microsecond) // the 20 µs window has rolled off
	r = p.Rate()
	clk.advance(time.Millisecond)
	p.Sample(250 * time.Microsecond)
	if got := p.Rate(); got <= r {
		t.Fatalf("rate %.0f, want it raised from %.0f against the new minimum", got, r)
	}
}
