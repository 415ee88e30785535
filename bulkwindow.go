package main

// The bulk window of a one-stream link (kernel, Unix and TCP links;
// docs/PROTOCOL.md §3, "Control ahead of bulk").
//
// On one ordered byte stream a control message waits behind every bulk
// byte written before it that the peer has not yet read: the writer's
// batch, both socket buffers and the peer's read-ahead, up to a megabyte
// on a Unix socket and several on TCP. No scheduling inside our writer can
// reach past what it has already written, so the lever is how much it
// writes ahead: while control traffic is waiting, bulk is held to a window
// of bytes in flight, and the window is clocked by PINGs. On one stream a
// PING's REPLY proves that the peer has read everything written before the
// PING, so it is an exact cumulative acknowledgment, with no timer and no
// estimate of a rate: the writer marks where each of its PINGs ends in the
// stream, adds a probe PING as bulk goes out, and lets more bulk go as the
// answers come back. A control message then finds at most a window (plus
// one message, which cannot be split) ahead of it.
//
// Only while control traffic waits: bulk runs unwindowed until a control
// message is queued, and again once the control lane has been quiet for
// pacerIdle (pacer.go). A link carrying only bulk is never slowed. A peer
// that has never answered a PING (DragonFly's kernel answers none) is never
// windowed, and a window left without an answer for bulkWindowStall lets
// one window go anyway, so that bulk cannot starve behind a peer that
// stopped answering (its silence check takes the link down in time).
//
// bulkWindow is the deterministic core: no I/O, no clock of its own, no
// lock. Its owner, the Link, calls it under l.mu.

import "time"

const (
	// bulkWindowBytes is the bulk a control message may find in flight
	// ahead of it once the window is engaged. It is the round trip's
	// worth at the rate a local socket's reader sustains (a few GB/s
	// times a loaded round trip of some tens of µs), so the window costs
	// little rate while a queue of it costs a PING about what an idle
	// round trip does (docs/BENCHMARKS.md, "Control ahead of bulk").
	bulkWindowBytes = 64 << 10
	// bulkWindowProbe is the most bulk written between two probe PINGs,
	// so that answers come back within the window and keep it sliding.
	bulkWindowProbe = bulkWindowBytes / 2
	// bulkWindowMarks bounds the PINGs remembered as unanswered. It is
	// above what the writer ever has out (probes only go while fewer
	// than bulkWindowProbes are), so it only caps a peer that does not
	// answer.
	bulkWindowMarks = 64
	// bulkWindowProbes is the most probe PINGs out at once.
	bulkWindowProbes = 4
	// bulkWindowStall is how long a full window waits for an answer
	// before one more window goes regardless.
	bulkWindowStall = 20 * time.Millisecond
)

// bulkWindow tracks a one-stream link's bytes in flight and the PINGs that
// acknowledge them. Positions count every byte the link wrote to the
// stream, control and bulk alike.
type bulkWindow struct {
	written  uint64    // bytes written (or handed to the write in progress)
	acked    uint64    // the position the latest answered PING vouches for
	marks    []uint64  // end positions of our PINGs written, unanswered, oldest first
	unmarked uint64    // bulk bytes written since the newest mark
	demand   time.Time // when a control message was last queued
	answered bool      // the peer has answered one of our PINGs
	full     time.Time // since when the window has been full, zero if not
	held     uint64    // times Budget held bulk back (a full window)
	stalls   uint64    // times a full window gave up waiting
}

// Demand records that a control message was queued at now.
func (w *bulkWindow) Demand(now time.Time) { w.demand = now }

// Engaged says whether bulk is held to the window at now: control traffic
// was queued within pacerIdle, and the peer is one that answers PINGs.
func (w *bulkWindow) Engaged(now time.Time) bool {
	return w.answered && !w.demand.IsZero() && now.Sub(w.demand) <= pacerIdle
}

// Budget is how many bulk bytes may be written now: -1 for no limit. A
// positive budget may be overshot by the one message that crosses it.
func (w *bulkWindow) Budget(now time.Time) int {
	if !w.Engaged(now) {
		w.full = time.Time{}
		return -1
	}
	inflight := w.written - w.acked
	if inflight < bulkWindowBytes {
		w.full = time.Time{}
		return int(bulkWindowBytes - inflight)
	}
	if w.full.IsZero() {
		w.full = now
	}
	if now.Sub(w.full) >= bulkWindowStall {
		// No answer for a long time: let a window go, and start over.
		w.full = now
		w.stalls++
		return bulkWindowBytes
	}
	w.held++
	return 0
}

// StallIn is how long after now a full window gives up waiting (Budget
// turns positive by itself), or 0 if it is not full.
func (w *bulkWindow) StallIn(now time.Time) time.Duration {
	if w.full.IsZero() {
		return 0
	}
	return max(w.full.Add(bulkWindowStall).Sub(now), time.Microsecond)
}

// ProbeDue says whether the writer should add a probe PING to a batch
// carrying newBulk bytes of bulk (the window not counting them yet), with
// more bulk queued behind it or not: the window is engaged, bulk is in
// flight or coming past the newest mark (half a window of it, or any while
// no PING is out), and few probes are out.
func (w *bulkWindow) ProbeDue(now time.Time, newBulk int, queued bool) bool {
	if !w.Engaged(now) || len(w.marks) >= bulkWindowProbes {
		return false
	}
	unmarked := w.unmarked + uint64(newBulk)
	if len(w.marks) == 0 {
		return unmarked > 0 || queued
	}
	return unmarked >= bulkWindowProbe
}

// Wrote records n bytes handed to the stream, isBulk if they are a bulk
// message; isPing says they are one of our PINGs (an acknowledgment to
// come).
func (w *bulkWindow) Wrote(n int, isPing, isBulk bool) {
	w.written += uint64(n)
	if isBulk {
		w.unmarked += uint64(n)
	}
	if !isPing {
		return
	}
	w.unmarked = 0
	if len(w.marks) == bulkWindowMarks {
		// A peer this far behind answers nothing: forget the oldest.
		w.marks = append(w.marks[:0], w.marks[1:]...)
	}
	w.marks = append(w.marks, w.written)
}

// Answer records the REPLY to our oldest unanswered PING: the peer has read
// all the stream up to it.
func (w *bulkWindow) Answer() {
	w.answered = true
	if len(w.marks) == 0 {
		return
	}
	w.acked = max(w.acked, w.marks[0])
	w.marks = append(w.marks[:0], w.marks[1:]...)
}

// InFlight is the bytes written that no answer has covered yet.
func (w *bulkWindow) InFlight() uint64 { return w.written - w.acked }
