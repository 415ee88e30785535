package main

// The bulk pacer of a two-stream link (docs/BENCHMARKS.md, "QUIC links").
//
// With the bulk lane on a stream of its own, a PING no longer waits behind
// the writer's current message, but it still waits behind the bulk packets
// already queued in the sockets and quic-go's loops, and behind two CPUs
// kept busy by the bulk. The only lever left is to send less bulk while
// control traffic is waiting for an answer. The pacer does that and nothing
// more: bulk runs unpaced until a control message is queued; from then until
// the control lane has been quiet for pacerIdle, bulk goes through a token
// bucket whose rate follows the control lane's round trip, LEDBAT-like:
// cut while the round trip is above pacerTarget times its minimum, raised
// while it is below. A link carrying only bulk is thus never slowed, and a
// link carrying only control traffic never paced; the first control message
// after a quiet spell still meets the full queue (it is what engages the
// pacer), the later ones of a busy spell do not.

import (
	"math"
	"sync"
	"time"
)

const (
	// pacerTarget is the control round trip, as a multiple of its minimum,
	// above which bulk is cut. On loopback the idle median is about 1.3-1.6
	// times the minimum, so this holds the loaded median to about 1.5
	// times the idle one or less, under the 2x the link is held to.
	pacerTarget = 2.0
	// pacerCut and pacerGrow are the rate's multiplicative decrease (at
	// most once per round trip) and its increase per round trip at or
	// under the target. They are about even, so the rate settles where
	// half the round trips are over the target: the median sits at it.
	pacerCut  = 0.9
	pacerGrow = 1.1
	// pacerIdle is how long the control lane must be quiet for bulk to
	// run unpaced again. It spans many round trips, so that the
	// request-answer gaps of a busy control lane do not release the bulk.
	pacerIdle = 20 * time.Millisecond
	// pacerChunk is the most bulk one token grant lets through: what a
	// control message may find queued just ahead of it. It trades the
	// loaded PING's tail for bulk rate (on loopback, 16 KiB: p99 0.6-0.85
	// ms at 120-130 MB/s; 64 KiB: 1.1-2 ms at 150-200 MB/s); the median
	// does not move (docs/BENCHMARKS.md, "QUIC links").
	pacerChunk = 32 << 10
	// pacerMinRate keeps bulk moving whatever the round trip says.
	pacerMinRate = 2e6 // bytes per second
	// pacerStartRate is the paced rate when nothing better is known.
	pacerStartRate = 100e6
	// pacerProbe is the most often the link PINGs while bulk is paced,
	// so that the rate has round trips to follow even when the control
	// traffic is not PINGs.
	pacerProbe = time.Millisecond
	// pacerMinWindow is the span of the minimum round trip's memory: the
	// minimum is the lowest seen in the current window or the previous
	// one, so that it follows a path that got longer within two windows.
	pacerMinWindow = 10 * time.Second
	// pacerRateWindow is the span over which unpaced bulk is measured.
	pacerRateWindow = 10 * time.Millisecond
)

// pacer decides when the bulk writer may send. Its clock is injected so that
// tests can drive it; all methods are safe for concurrent use.
type pacer struct {
	now func() time.Time

	mu      sync.Mutex
	paced   bool      // bulk goes through the token bucket
	rate    float64   // bytes per second while paced; 0 before the first busy spell
	tokens  float64   // bytes that may go now
	refill  time.Time // when tokens were last topped up
	demand  time.Time // when a control message was last queued
	cut     time.Time // when the rate was last cut
	probe   time.Time // when a probe PING was last allowed
	minCur  time.Duration
	minPrev time.Duration
	minFrom time.Time // start of the current minimum window

	// The unpaced rate, measured over pacerRateWindow.
	freeRate  float64
	freeBytes int
	freeFrom  time.Time
}

func newPacer(now func() time.Time) *pacer {
	if now == nil {
		now = time.Now
	}
	return &pacer{now: now}
}

// Demand records that a control message was queued: bulk is paced from now
// until the control lane has been quiet for pacerIdle.
func (p *pacer) Demand() {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.demand = now
	if p.paced {
		return
	}
	p.paced = true
	// Start from half what bulk reached unpaced, which is known to put
	// the round trip far above target, unless an earlier busy spell left
	// a lower rate.
	switch {
	case p.rate == 0 && p.freeRate == 0:
		p.rate = pacerStartRate
	case p.rate == 0:
		p.rate = p.freeRate / 2
	case p.freeRate > 0:
		p.rate = min(p.rate, p.freeRate/2)
	}
	p.rate = max(p.rate, pacerMinRate)
	p.tokens = 0
	p.refill = now
	p.cut = now
}

// Sample feeds one control-lane round trip (a PING's).
func (p *pacer) Sample(rtt time.Duration) {
	if rtt <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if now.Sub(p.minFrom) >= pacerMinWindow {
		p.minPrev, p.minCur, p.minFrom = p.minCur, 0, now
	}
	if p.minCur == 0 || rtt < p.minCur {
		p.minCur = rtt
	}
	if !p.paced {
		return
	}
	base := p.minCur
	if p.minPrev > 0 {
		base = min(base, p.minPrev)
	}
	if float64(rtt) > pacerTarget*float64(base) {
		// One cut per round trip: the samples that follow a cut still
		// show the queue built before it.
		if now.Sub(p.cut) >= rtt {
			p.rate = max(p.rate*pacerCut, pacerMinRate)
			p.cut = now
		}
		return
	}
	p.rate *= pacerGrow
	if p.freeRate > 0 {
		p.rate = min(p.rate, p.freeRate)
	}
}

// Take asks to send n bytes of bulk. It returns how many may go now (0 <
// k <= n) or, with k == 0, how long to wait before asking again.
func (p *pacer) Take(n int) (k int, wait time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if p.paced && now.Sub(p.demand) > pacerIdle {
		p.paced = false
		p.freeBytes, p.freeFrom = 0, now
	}
	if !p.paced {
		p.measure(now, n)
		return n, 0
	}
	if dt := now.Sub(p.refill); dt > 0 {
		p.tokens = min(p.tokens+p.rate*dt.Seconds(), 2*pacerChunk)
		p.refill = now
	}
	want := min(n, pacerChunk)
	if p.tokens >= float64(want) {
		p.tokens -= float64(want)
		return want, 0
	}
	return 0, time.Duration(math.Ceil((float64(want) - p.tokens) / p.rate * 1e9))
}

// measure tracks the unpaced rate, the ceiling of the paced one.
func (p *pacer) measure(now time.Time, n int) {
	if p.freeFrom.IsZero() {
		p.freeFrom = now
	}
	if d := now.Sub(p.freeFrom); d > 2*pacerRateWindow {
		// The bulk lane went idle in between: not a measure of its rate.
		p.freeBytes, p.freeFrom = 0, now
	} else if d >= pacerRateWindow {
		r := float64(p.freeBytes) / d.Seconds()
		if p.freeRate == 0 {
			p.freeRate = r
		} else {
			p.freeRate = 0.75*p.freeRate + 0.25*r
		}
		p.freeBytes, p.freeFrom = 0, now
	}
	p.freeBytes += n
}

// ProbeDue tells the bulk writer to PING now: bulk is paced and no probe
// was allowed within pacerProbe.
func (p *pacer) ProbeDue() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if !p.paced || now.Sub(p.probe) < pacerProbe {
		return false
	}
	p.probe = now
	return true
}

// Rate reports the paced rate in bytes per second, 0 while unpaced.
func (p *pacer) Rate() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.paced {
		return 0
	}
	return p.rate
}
