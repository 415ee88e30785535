package main

// The one-stream bulk window (bulkwindow.go): its core on an injected
// clock, and over real socketpairs the order it must keep, that bulk still
// moves while control traffic never stops or the peer stops answering, and
// that the queue bounds hold while it holds bulk back.

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestBulkWindowCore(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	var w bulkWindow
	// Bulk alone, or a peer that never answered: no limit.
	if got := w.Budget(t0); got != -1 {
		t.Fatalf("fresh window: budget %d, want -1", got)
	}
	w.Wrote(64, true, false) // a keepalive PING
	w.Answer()
	if got := w.Budget(t0); got != -1 {
		t.Fatalf("no control waiting: budget %d, want -1", got)
	}
	w.Wrote(1<<20, false, true) // unwindowed bulk, unanswered
	w.Demand(t0)
	steps := []struct {
		name      string
		do        func()
		now       time.Duration
		budget    int
		probeDue  bool
		queued    bool
		engagedAt bool
	}{
		{"control waits behind a megabyte", func() {}, 0, 0, true, true, true},
		{"probe written, still full", func() { w.Wrote(64, true, false) }, time.Millisecond, 0, false, true, true},
		{"answered: window open, bulk to probe for", func() { w.Answer() }, 2 * time.Millisecond, bulkWindowBytes, true, true, true},
		{"a window of bulk out", func() { w.Wrote(bulkWindowBytes, false, true) }, 2 * time.Millisecond, 0, true, true, true},
		{"no answer for the stall time", func() {
			w.Wrote(64, true, false)
			w.Demand(at(bulkWindowStall))
		}, 2*time.Millisecond + bulkWindowStall, bulkWindowBytes, false, true, true},
		{"quiet control lane: unwindowed", func() {}, bulkWindowStall + pacerIdle + time.Millisecond, -1, false, true, false},
	}
	for _, st := range steps {
		st.do()
		now := at(st.now)
		if got := w.Engaged(now); got != st.engagedAt {
			t.Fatalf("%s: engaged %v", st.name, got)
		}
		if got := w.ProbeDue(now, 0, st.queued); got != st.probeDue {
			t.Errorf("%s: probe due %v, want %v", st.name, got, st.probeDue)
		}
		if got := w.Budget(now); got != st.budget {
			t.Fatalf("%s: budget %d, want %d (in flight %d)", st.name, got, st.budget, w.InFlight())
		}
	}
	if w.stalls != 1 || w.held == 0 {
		t.Errorf("stalls %d, held %d", w.stalls, w.held)
	}
}

// oneStreamLinks runs a Link on each end of a socketpair; rx's handler is
// rec's.
func oneStreamLinks(t *testing.T, rec *laneRecorder) (tx, rx *Link) {
	ca, cb := socketPair(t)
	rx = startLink(cb, quietConfig("rx", rec.handle))
	tx = startLink(ca, quietConfig("tx", nil))
	t.Cleanup(func() { tx.Close(); rx.Close() })
	return tx, rx
}

func windowHeld(l *Link) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.win.held
}

// holdUntilWindowHolds makes the test's receiver (whose recorder has a
// gate, set before its link started) stop reading at its first message
// until tx's bulk window has held bulk back (or 10 s have gone),
// so that the window is sure to be engaged with bulk and control queued
// behind it while the test's order is checked. It PINGs first: the window
// only engages for a peer that has answered one.
func holdUntilWindowHolds(t *testing.T, rec *laneRecorder, tx *Link) {
	t.Helper()
	if _, err := tx.Ping(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Bulk (PADs, which the receiver reads without a handler) with
	// control traffic behind it: the window engages, and holds as soon
	// as a probe is slower than the writer's next turn.
	pad := make([]byte, 64<<10)
	var err error
	tx.mu.Lock()
	for i := 0; i < 32 && err == nil; i++ {
		err = tx.enqueueLocked(tx.Root(), &Msg{Header: Header{Cmd: CmdLnkPad}, Aux: pad})
	}
	tx.pingLocked(nil, true)
	tx.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(rec.gate)
		deadline := time.Now().Add(10 * time.Second)
		for windowHeld(tx) == 0 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}()
}

// TestOneStreamTransactionOrder: with the bulk window holding bulk back
// behind a busy control lane, nothing of a transaction overtakes its bulk
// message, and one-way messages keep their order: on one stream a
// transaction stays in the bulk lane while its bulk is queued.
func TestOneStreamTransactionOrder(t *testing.T) {
	// Not parallel: holdUntilWindowHolds needs the writer to reach the
	// window before the socket fills, which a loaded machine can delay
	// past the gate's fallback (timing-bound tests run alone).
	rec := newLaneRecorder(t)
	rec.gate = make(chan struct{})
	tx, rx := oneStreamLinks(t, rec)
	holdUntilWindowHolds(t, rec, tx)
	laneTransactionOrder(t, rec, tx, rx)
	if windowHeld(tx) == 0 {
		t.Error("the bulk window never held bulk back: the test proved nothing")
	}
}

// TestOneStreamCircuitOrder: a child's CREATE does not overtake its
// parent's bulk CREATE, nor a parent's DELETE its child's bulk, on one
// stream with the window engaged by a PING loop.
func TestOneStreamCircuitOrder(t *testing.T) {
	// Not parallel: holdUntilWindowHolds needs the writer to reach the
	// window before the socket fills, which a loaded machine can delay
	// past the gate's fallback (timing-bound tests run alone).
	rec := newLaneRecorder(t)
	rec.gate = make(chan struct{})
	tx, _ := oneStreamLinks(t, rec)
	holdUntilWindowHolds(t, rec, tx)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		// Bulk behind which the circuits queue, and PINGs that make it
		// control traffic waiting.
		aux := make([]byte, 64<<10)
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := tx.Root().Send(&Msg{Header: Header{Cmd: CmdLnkPad}, Aux: aux}); err != nil {
				return
			}
			done := make(chan time.Duration, 1)
			if tx.ping(done, true) {
				select {
				case <-done:
				case <-stop:
					return
				}
			}
		}
	})
	laneCircuitOrder(t, rec, tx)
	close(stop)
	wg.Wait()
	if windowHeld(tx) == 0 {
		t.Error("the bulk window never held bulk back: the test proved nothing")
	}
}

// answeringPeer reads a dmsg stream from c and answers the first `answers` PINGs
// it sees, then none; it counts the bytes of DBG_SHELL aux it read. If
// stopAfter, it stops reading altogether after its last answer.
type answeringPeer struct {
	shell atomic.Int64
	done  chan struct{}
}

func startAnsweringPeer(t *testing.T, c io.ReadWriter, answers int, stopAfter bool) *answeringPeer {
	p := &answeringPeer{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		hdr := make([]byte, HdrMax)
		aux := make([]byte, AuxMax)
		var seq uint32
		for {
			if _, err := io.ReadFull(c, hdr[:HdrSize]); err != nil {
				return
			}
			hs, ap, err := PeekSizes(hdr[:HdrSize])
			if err != nil {
				t.Errorf("raw peer: %v", err)
				return
			}
			if _, err := io.ReadFull(c, hdr[HdrSize:hs]); err != nil {
				return
			}
			if _, err := io.ReadFull(c, aux[:ap]); err != nil {
				return
			}
			cmd := binary.LittleEndian.Uint32(hdr[offCmd:])
			switch {
			case cmd&(maskBaseCmd|FlagReply) == CmdLnkPing && answers > 0:
				answers--
				reply := (&Msg{Header: Header{Cmd: CmdLnkPing | FlagReply}}).AppendWire(nil, seq)
				seq++
				if _, err := c.Write(reply); err != nil {
					return
				}
				if answers == 0 && stopAfter {
					return
				}
			case cmd&maskBaseCmd == CmdDbgShell:
				p.shell.Add(int64(ap))
			}
		}
	}()
	return p
}

// TestOneStreamWindowStall: a peer that answered a PING once and then
// answers none still gets all the bulk, while control traffic keeps the
// window engaged: a full window gives up waiting after bulkWindowStall.
//
// The window stays engaged only while control traffic is queued at most
// pacerIdle apart, and a machine loaded enough to hold the test's own
// goroutine back longer than that disengages it, so that the bulk goes
// unwindowed and nothing stalls. An attempt in which that happened (the
// test measures its own gaps) proves nothing either way and is run again,
// three times at most; one in which it did not must have stalled.
func TestOneStreamWindowStall(t *testing.T) {
	t.Parallel()
	for attempt := 1; ; attempt++ {
		stalls, gap := windowStallAttempt(t)
		switch {
		case stalls > 0:
			return
		case gap <= pacerIdle:
			t.Fatalf("the window never stalled (control traffic at most %v apart): it did not hold bulk for the answers at all", gap)
		case attempt == 3:
			t.Fatalf("three attempts, each with the control traffic held back by the machine (last gap %v, pacerIdle %v): cannot tell", gap, pacerIdle)
		}
		t.Logf("attempt %d: the machine held the control traffic back %v (pacerIdle %v); again", attempt, gap, pacerIdle)
	}
}

// windowStallAttempt is one run of TestOneStreamWindowStall: the times
// the window stalled, and the longest gap between two control messages.
func windowStallAttempt(t *testing.T) (stalls uint64, maxGap time.Duration) {
	ca, cb := socketPair(t)
	tx := startLink(ca, quietConfig("tx", nil))
	defer tx.Close()
	peer := startAnsweringPeer(t, cb, 1, false)
	if _, err := tx.Ping(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	const n = 16
	aux := make([]byte, 64<<10)
	// All queued at once, with control traffic among it: the window
	// engages before the writer has taken any of it.
	tx.mu.Lock()
	for i := range n {
		if err := tx.enqueueLocked(tx.Root(), &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux}); err != nil {
			t.Fatal(err)
		}
		if i%8 == 0 && !tx.pingLocked(nil, true) {
			t.Fatal("PING not queued")
		}
	}
	tx.mu.Unlock()
	queued := time.Now() // the PINGs among the bulk were the first demand
	// Control traffic keeps waiting all along (the peer answers none of
	// it), so the window stays engaged.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		last := queued
		for range 10000 {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := tx.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell}}, nil); err != nil {
				return
			}
			now := time.Now()
			maxGap = max(maxGap, now.Sub(last))
			last = now
		}
	})
	eventually(t, func() bool { return peer.shell.Load() == n*64<<10 }, "all the bulk at a peer that stopped answering")
	close(stop)
	wg.Wait()
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.win.stalls, maxGap
}

// TestOneStreamWindowQueueBounds: while the window holds bulk back (the
// peer stopped reading after one answer), SendWait still blocks at
// SendQueueBytes and Send still fails past HardQueueBytes.
func TestOneStreamWindowQueueBounds(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	cfg := quietConfig("tx", nil)
	cfg.SendQueueBytes = 256 << 10
	cfg.HardQueueBytes = 8 << 20
	tx := startLink(ca, cfg)
	t.Cleanup(func() { tx.Close() })
	startAnsweringPeer(t, cb, 1, true)
	if _, err := tx.Ping(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	aux := make([]byte, 64<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		err = tx.Root().SendWait(ctx, &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux})
		if err == nil {
			// Control traffic waiting: the window engages.
			_, err = tx.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}}, nil)
		}
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SendWait never blocked: %v", err)
	}
	for i := 0; i < 1000 && (err == nil || errors.Is(err, context.DeadlineExceeded)); i++ {
		err = tx.Root().Send(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux})
	}
	if !errors.Is(err, ErrQueueFull) {
		t.Fatalf("Send over the hard limit = %v, want ErrQueueFull", err)
	}
	waitDone(t, tx)
}
