//go:build !dragonfly

package main

// The kernels of the chaos test (quorum_process_test.go) and the fault
// campaign (faults_test.go): each commits in a loop and, on the same
// kernel link, takes and releases cache states on a few hot keys, while
// the test breaks things around them. Commits go into the cluster's
// history (qpHistory); the states each kernel held, by its own account,
// are kept for the lock checks at the end.

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// qpHeld is a cache state a kernel held: from the grant's arrival to the
// kernel's release (or the revoke's time running out, or the leaf's
// close arriving, or the last moment its link was seen alive).
type qpHeld struct {
	kernel, master int
	grant          cacLock
	asked          time.Time // when the request was sent
	from, to       time.Time
	flushed        bool // revoked, and its kernel used the revoke's whole time
}

// qpWorkload runs kernels kernels, kernel k on the leaf leafOf(k) gives,
// which asks master node(k). Its goroutines run from start until halt;
// what they record is read after halt.
type qpWorkload struct {
	t      *testing.T
	c      *qpCluster
	leafOf func(k int) *leafNode
	node   func(k int) int
	n      int
	// flushOdd: odd kernels use all of a revoke's time before releasing
	// (their state ends when that is out, or when the leaf closes it
	// first); the others release as soon as they are revoked.
	flushOdd       bool
	pace, lockPace time.Duration // a kernel's mean time between commits, and between lock requests
	wait           time.Duration // how long a request waits for its answer

	stop    chan struct{}
	stopped sync.Once
	wg      sync.WaitGroup
	dials   atomic.Int64
	slots   []qpSlot
	from    time.Time

	mu    sync.Mutex
	held  []qpHeld
	bad   []string // CAC_LOCK protocol violations the kernels saw
	stats map[string]int
}

// newQPWorkload paces n kernels for about commits commits and locks lock
// requests (each with its release) over a run of dur: both tests stay
// well below the log's compaction point (10000 entries), leaving every
// commit checkable against the logs.
func newQPWorkload(t *testing.T, c *qpCluster, n int, leafOf func(int) *leafNode, node func(int) int, dur time.Duration, commits, locks int) *qpWorkload {
	return &qpWorkload{t: t, c: c, leafOf: leafOf, node: node, n: n,
		pace:     time.Duration(float64(n) * dur.Seconds() / float64(commits) * float64(time.Second)),
		lockPace: time.Duration(float64(n) * dur.Seconds() / float64(locks) * float64(time.Second)),
		wait:     c.timeout + 3*time.Second,
		stop:     make(chan struct{}), slots: make([]qpSlot, n), stats: map[string]int{}}
}

// start starts every kernel's two loops. The hot block moves every 5 s,
// so that states the group keeps for a killed leaf do not block the rest
// of the run.
func (w *qpWorkload) start() {
	w.from = time.Now()
	w.t.Cleanup(w.halt) // on a failure before the test halts it
	for k := range w.n {
		w.wg.Add(2)
		go w.commits(k)
		go w.locks(k)
	}
}

// halt stops the kernels' loops and waits for them.
func (w *qpWorkload) halt() {
	w.stopped.Do(func() { close(w.stop) })
	w.wg.Wait()
}

func (w *qpWorkload) halted() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// kernel is kernel k's link, dialed anew if it is gone; nil if its leaf
// cannot be reached just now.
func (w *qpWorkload) kernel(k int) *simKernel {
	return w.slots[k].get(w.t, fmt.Sprintf("k%d", k+1), w.leafOf(k), &w.dials)
}

func (w *qpWorkload) commits(k int) {
	defer w.wg.Done()
	for !w.halted() {
		sk := w.kernel(k)
		if sk == nil {
			continue
		}
		w.c.hist.commit(sk, k, w.node(k), w.wait)
		time.Sleep(time.Duration(rand.Int64N(int64(2*w.pace) + 1)))
	}
}

func (w *qpWorkload) locks(k int) {
	defer w.wg.Done()
	for !w.halted() {
		sk := w.kernel(k)
		if sk == nil {
			continue
		}
		if w.flushOdd && k%2 == 1 {
			sk.setFlushAll()
		}
		block := uint64(time.Since(w.from)/(5*time.Second)) * cacGrantAlign
		req := cacLock{Domain: cacInum, Mode: cacExclusive, Lo: block + rand.Uint64N(8)}
		req.Hi = req.Lo + rand.Uint64N(3)
		if rand.IntN(10) < 3 {
			req.Mode = cacShared
		}
		asked := time.Now()
		r := sk.cacLockReq(req, w.wait)
		var h *qpHeld
		early := false
		switch {
		case r.outcome == qpAcked:
			h = &qpHeld{kernel: k, master: w.node(k), grant: r.grant, asked: asked, from: r.at}
			w.hold(sk, r.msgid, h)
			early = h.flushed && sk.lockClosedEarly(r.msgid)
			sk.cacRelease(r.msgid)
		case r.outcome == qpUnknown && r.code == 0 && !sk.qpGone():
			sk.cacRelease(r.msgid) // no answer: give up on it
		}
		w.mu.Lock()
		if h != nil {
			w.held = append(w.held, *h)
		}
		switch {
		case r.outcome == qpAcked:
			w.stats["granted"]++
			if h.flushed {
				w.stats["revoked, flushed for the revoke's time"]++
			}
			if early {
				w.stats["... closed by the leaf before that time was out"]++
			}
		case r.conflict:
			w.stats["conflict"]++
		case r.outcome == qpRefused: // given back (CAC_EXPIRED), no master reached, a circuit lost
			w.stats["refused "+ErrString(r.code)]++
		default:
			w.stats[r.outcome.String()]++
		}
		for _, b := range r.bad {
			w.bad = append(w.bad, fmt.Sprintf("k%d on m%d: %s", k+1, w.node(k)+1, b))
		}
		w.mu.Unlock()
		time.Sleep(time.Duration(rand.Int64N(int64(2*w.lockPace) + 1)))
	}
}

// hold keeps the state h granted on CAC_LOCK msgid for up to 100 ms,
// unless it is revoked or taken back by the leaf first (woken by the
// kernel's next message), and sets h.to to when it ended by the
// kernel's account.
func (w *qpWorkload) hold(sk *simKernel, msgid uint64, h *qpHeld) {
	hold := time.NewTimer(time.Duration(rand.Int64N(int64(100 * time.Millisecond))))
	flush := time.NewTimer(time.Hour)
	defer hold.Stop()
	defer flush.Stop()
held:
	for range 10000 {
		changed := sk.Changed()
		now := time.Now()
		if at, ok := sk.lockEnded(msgid); ok {
			if !at.After(now) {
				h.to = at
				break
			}
			flush.Reset(at.Sub(now)) // revoked: flushing until at
			hold.Stop()
			h.flushed = true
		}
		h.to = now
		if sk.qpGone() {
			break
		}
		select {
		case <-changed:
		case <-flush.C:
		case <-hold.C:
			h.to = time.Now()
			break held
		}
	}
	// A revoke may have ended it after the last look.
	if at, ok := sk.lockEnded(msgid); ok && at.Before(h.to) {
		h.to = at
	}
}

// checkLocks fails the test for every CAC_LOCK protocol violation and
// every two kernels that held conflicting states at once, and logs the
// counts.
func (w *qpWorkload) checkLocks(t0 time.Time) {
	w.t.Helper()
	for _, b := range w.bad {
		w.t.Errorf("CAC_LOCK protocol: %s", b)
	}
	conflicts := qpLockConflicts(w.held, t0)
	for i, v := range conflicts {
		if i == 10 {
			w.t.Errorf("... and %d more", len(conflicts)-10)
			break
		}
		w.t.Errorf("two kernels held conflicting cache states at once: %s", v)
	}
	w.t.Logf("CAC_LOCK: %v; %d states held and released, %d pairs held at once in conflict; closest hand-over from a flushed state %s",
		w.stats, len(w.held), len(conflicts), qpLockClosest(w.held))
}

// qpLockConflicts lists pairs of incompatible states of different
// kernels on overlapping keys held at the same time (a hand-over at the
// very same instant counts as an overlap).
func qpLockConflicts(held []qpHeld, t0 time.Time) []string {
	sorted := slices.Clone(held)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].from.Before(sorted[j].from) })
	var out []string
	for i, a := range sorted {
		for _, b := range sorted[i+1:] {
			if b.from.After(a.to) {
				break
			}
			if a.kernel == b.kernel || a.grant.Domain != b.grant.Domain || cacCompatible(a.grant.Mode, b.grant.Mode) ||
				a.grant.Hi < b.grant.Lo || b.grant.Hi < a.grant.Lo {
				continue
			}
			out = append(out, fmt.Sprintf("k%d (m%d) held %s %s %d-%d (txid %d) from +%v to +%v, k%d (m%d) was granted %s %s %d-%d (txid %d) at +%v",
				a.kernel+1, a.master+1, a.grant.Mode, a.grant.Domain, a.grant.Lo, a.grant.Hi, a.grant.Txid,
				a.from.Sub(t0).Round(time.Millisecond), a.to.Sub(t0).Round(time.Millisecond),
				b.kernel+1, b.master+1, b.grant.Mode, b.grant.Domain, b.grant.Lo, b.grant.Hi, b.grant.Txid, b.from.Sub(t0).Round(time.Millisecond)))
		}
	}
	return out
}

// qpLockClosest is the smallest time from the end of a flushed state
// (its kernel used all of its revoke's time, or held it until its leaf
// closed it), by its kernel's account, to the grant of a conflicting one
// that came after it: how near the protocol came to an overlap (the
// delivery margin at work; PROTOCOL §6.6).
func qpLockClosest(held []qpHeld) string {
	best, name := time.Duration(-1), "none"
	for _, a := range held {
		for _, b := range held {
			if !a.flushed || b.from.Before(a.to) || a.grant.Domain != b.grant.Domain || cacCompatible(a.grant.Mode, b.grant.Mode) ||
				a.grant.Hi < b.grant.Lo || b.grant.Hi < a.grant.Lo || a.kernel == b.kernel && a.grant.Txid == b.grant.Txid {
				continue
			}
			if gap := b.from.Sub(a.to); best < 0 || gap < best {
				best, name = gap, fmt.Sprintf("%v (k%d txid %d to k%d txid %d)", gap.Round(time.Millisecond),
					a.kernel+1, a.grant.Txid, b.kernel+1, b.grant.Txid)
			}
		}
	}
	return name
}
