package main

// The order a two-stream (QUIC) link keeps across its control and bulk
// streams (iocom.go, "Lanes"), over real QUIC on loopback. Each check is one
// a single stream keeps for free and two streams would break without the
// rule named in its comment: the bulk reader's wait for the control reader,
// a transaction's stickiness to the bulk stream, a child's inheritance of
// it, and an ancestor's DELETE following its descendants there.

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// laneAux is a DBG_SHELL aux tagged with a kind and an index: large ones
// (64 KiB) go on the bulk stream, small ones on the control stream unless
// their transaction is held to the bulk stream.
func laneAux(big bool, idx int) []byte {
	n := 8
	kind := byte('s')
	if big {
		// Just over what is copied into the queue, so that it goes on
		// the bulk stream yet is read about as fast as a small one: the
		// race with the control stream is then close.
		n, kind = auxCopyMax+1+idx%4*(20<<10), 'B'
	}
	b := make([]byte, n)
	b[0], b[1], b[2] = kind, byte(idx), byte(idx>>8)
	return b
}

// laneRecorder keeps, per transaction the peer opened, the kinds and
// indexes of the messages that arrived on it, and fails the test if two
// handlers ever run at once.
type laneRecorder struct {
	t       *testing.T
	running atomic.Int32
	mu      sync.Mutex
	seen    map[uint64][]string // by msgid
	root    []int               // indexes of one-way messages, in order
	orphans int                 // transactions opened under an unknown circuit
	parents map[uint64]uint64   // child msgid -> parent msgid as resolved
	// gate, if set, holds the first handler call until it is closed:
	// the receiver stops reading meanwhile.
	gate     chan struct{}
	gateOnce sync.Once
}

func newLaneRecorder(t *testing.T) *laneRecorder {
	return &laneRecorder{t: t, seen: map[uint64][]string{}, parents: map[uint64]uint64{}}
}

func (r *laneRecorder) handle(tr *Trans, m *Msg) {
	if r.running.Add(1) != 1 {
		r.t.Error("two handlers ran at once")
	}
	defer r.running.Add(-1)
	if r.gate != nil {
		r.gateOnce.Do(func() { <-r.gate })
	}
	// Let a handler take a moment, so that the other reader has the
	// chance to run one concurrently if the dispatch lock were missing.
	time.Sleep(10 * time.Microsecond)
	r.mu.Lock()
	defer r.mu.Unlock()
	label := "D"
	if len(m.Aux) >= 3 {
		label = fmt.Sprintf("%c%d", m.Aux[0], int(m.Aux[1])|int(m.Aux[2])<<8)
	}
	if tr.IsRoot() {
		if m.Cmd&maskBaseCmd == CmdDbgShell && len(m.Aux) >= 3 {
			r.root = append(r.root, int(m.Aux[1])|int(m.Aux[2])<<8)
		}
		return
	}
	if m.Cmd&FlagCreate != 0 {
		if tr.orphan {
			r.orphans++
		}
		if p := tr.Parent(); p != nil {
			r.parents[tr.MsgID()] = p.MsgID()
		}
		// A result keeps the transaction open until the opener closes it.
		_ = tr.Reply(ErrOK)
	}
	if m.Cmd&FlagDelete != 0 && label != "D" {
		label += "D"
	}
	r.seen[tr.MsgID()] = append(r.seen[tr.MsgID()], label)
}

func (r *laneRecorder) snapshot() (seen map[uint64][]string, root []int, orphans int, parents map[uint64]uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen = map[uint64][]string{}
	for k, v := range r.seen {
		seen[k] = append([]string(nil), v...)
	}
	parents = map[uint64]uint64{}
	for k, v := range r.parents {
		parents[k] = v
	}
	return seen, append([]int(nil), r.root...), r.orphans, parents
}

// laneLinks runs a Link on each end of a fresh QUIC link; rx's handler is
// rec's.
func laneLinks(t *testing.T, rec *laneRecorder) (tx, rx *Link) {
	t.Helper()
	ka, kc := newTestKey(t), newTestKey(t)
	a := startNode(t, ka, QuicConfig{}, peer{"c", kc.Public().(ed25519.PublicKey)})
	c := startNode(t, kc, QuicConfig{}, peer{"a", ka.Public().(ed25519.PublicKey)})
	la, lc := linkPair(t, testCtx(t, 20*time.Second), a, c)
	rx = startLink(lc.Stream(), quietConfig("rx", rec.handle))
	tx = startLink(la.Stream(), quietConfig("tx", nil))
	t.Cleanup(func() { tx.Close(); rx.Close() })
	if tx.bulk == nil || rx.bulk == nil {
		t.Fatal("a Link over a QUIC link has no bulk stream")
	}
	return tx, rx
}

// TestQuicLanesTransactionOrder: within a transaction, a bulk message never
// overtakes the CREATE before it (the bulk reader waits for the control
// reader), and small messages and the DELETE after a bulk message never
// overtake it (the transaction stays on the bulk stream). One-way messages
// keep their order too. Meanwhile PINGs keep the control stream busy.
func TestQuicLanesTransactionOrder(t *testing.T) {
	t.Parallel()
	rec := newLaneRecorder(t)
	tx, rx := laneLinks(t, rec)
	laneTransactionOrder(t, rec, tx, rx)
}

// laneTransactionOrder is the body of the transaction-order tests, on any
// link pair whose receiver records into rec.
func laneTransactionOrder(t *testing.T, rec *laneRecorder, tx, rx *Link) {
	ctx := testCtx(t, 20*time.Second)

	stop := make(chan struct{})
	var pings sync.WaitGroup
	pings.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
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

	const txns, oneWay = 12, 20
	want := []string{"s0", "B1", "s2", "B3", "s4", "D"}
	var ids []uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range oneWay {
			if err := tx.Root().SendWait(ctx, &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: laneAux(i%3 == 0, i)}); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for range txns {
		tr, err := tx.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: laneAux(false, 0)}, func(*Trans, *Msg) {})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tr.MsgID())
		for i := 1; i <= 4; i++ {
			if err := tr.SendWait(ctx, &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: laneAux(i%2 == 1, i)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tr.Close(ErrOK); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	eventually(t, func() bool { return tx.OpenCount() == 0 }, "every transaction closed both ways")
	eventually(t, func() bool {
		_, root, _, _ := rec.snapshot()
		return len(root) == oneWay
	}, "every one-way message")
	close(stop)
	pings.Wait()

	seen, root, orphans, _ := rec.snapshot()
	for _, id := range ids {
		if got := fmt.Sprint(seen[id]); got != fmt.Sprint(want) {
			t.Errorf("transaction %d: messages arrived as %v, want %v", id, got, want)
		}
	}
	for i, idx := range root {
		if idx != i {
			t.Fatalf("one-way messages arrived as %v, want 0..%d in order", root, oneWay-1)
		}
	}
	if orphans != 0 {
		t.Errorf("%d orphans", orphans)
	}
	if tx.Err() != nil || rx.Err() != nil {
		t.Errorf("link failed: tx %v, rx %v", tx.Err(), rx.Err())
	}
}

// TestQuicLanesCircuitOrder: a child's CREATE never overtakes its parent's
// CREATE when that went on the bulk stream (the child follows it there),
// and a parent's DELETE never overtakes a child's CREATE on the bulk stream
// (the DELETE follows it there). Either overtaking would make the peer
// find the circuit unknown, take the child for an orphan and refuse it
// with CANTCIRC.
func TestQuicLanesCircuitOrder(t *testing.T) {
	t.Parallel()
	rec := newLaneRecorder(t)
	tx, _ := laneLinks(t, rec)
	laneCircuitOrder(t, rec, tx)
}

// laneCircuitOrder is the body of the circuit-order tests.
func laneCircuitOrder(t *testing.T, rec *laneRecorder, tx *Link) {

	const rounds = 10
	type pair struct{ parent, child uint64 }
	var pairs []pair
	var refused atomic.Int32
	childH := func(_ *Trans, m *Msg) {
		if m.Cmd&FlagDelete != 0 && m.Error == ErrCantCirc {
			refused.Add(1)
		}
	}
	for i := range rounds {
		// Round i%2 == 0: the parent's CREATE is bulk, the child's small.
		// Otherwise the parent's CREATE is small, the child's bulk, and
		// the parent closes right after opening the child.
		bigParent := i%2 == 0
		p, err := tx.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: laneAux(bigParent, 0)}, func(*Trans, *Msg) {})
		if err != nil {
			t.Fatal(err)
		}
		c, err := p.Open(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: laneAux(!bigParent, 1)}, childH)
		if err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, pair{p.MsgID(), c.MsgID()})
		if err := p.Close(ErrOK); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(ErrOK); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, func() bool { return tx.OpenCount() == 0 }, "every transaction closed both ways")
	_, _, orphans, parents := rec.snapshot()
	if orphans != 0 || refused.Load() != 0 {
		t.Errorf("%d children taken for orphans, %d refused with CANTCIRC", orphans, refused.Load())
	}
	for _, pr := range pairs {
		if got := parents[pr.child]; got != pr.parent {
			t.Errorf("child %d arrived under parent %d, want %d", pr.child, got, pr.parent)
		}
	}
}

// TestQuicLanesShutdown: Shutdown waits for both writers, one of them held
// by a bulk-stream DELETE, and returns.
func TestQuicLanesShutdown(t *testing.T) {
	t.Parallel()
	rec := newLaneRecorder(t)
	tx, rx := laneLinks(t, rec)
	p, err := tx.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: laneAux(false, 0)}, func(*Trans, *Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Open(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: laneAux(true, 1)}, func(*Trans, *Msg) {}); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return rx.OpenCount() == 2 }, "both transactions open at the peer")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tx.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	_, _, orphans, _ := rec.snapshot()
	if orphans != 0 {
		t.Errorf("%d orphans", orphans)
	}
}

// TestQuicLanesPacerEngages: bulk alone is never paced, whatever its
// volume; a control message engages the pacer at once; PINGs, several
// outstanding, are each answered and matched.
func TestQuicLanesPacerEngages(t *testing.T) {
	// Not parallel: it times the link against its own bounds, which a
	// machine busy with the parallel tests would blur.
	rec := newLaneRecorder(t)
	tx, _ := laneLinks(t, rec)
	ctx := testCtx(t, 20*time.Second)
	const n = 64
	for i := range n {
		// Each its own buffer: the link sends large aux in place.
		if err := tx.Root().SendWait(ctx, &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: laneAux(true, i)}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, func() bool {
		_, root, _, _ := rec.snapshot()
		return len(root) == n
	}, "every bulk message")
	if r := tx.pacer.Rate(); r != 0 {
		t.Fatalf("bulk alone paced at %.0f B/s", r)
	}

	var dones []chan time.Duration
	for range 3 {
		done := make(chan time.Duration, 1)
		if !tx.ping(done, false) {
			t.Fatal("PING not sent")
		}
		dones = append(dones, done)
	}
	if r := tx.pacer.Rate(); r != 0 {
		t.Fatalf("PINGs that are not control traffic engaged the pacer (%.0f B/s)", r)
	}
	for i, done := range dones {
		select {
		case rtt := <-done:
			if rtt <= 0 {
				t.Errorf("PING %d: round trip %v", i, rtt)
			}
		case <-ctx.Done():
			t.Fatalf("PING %d unanswered", i)
		}
	}

	if _, err := tx.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}}, nil); err != nil {
		t.Fatal(err)
	}
	if r := tx.pacer.Rate(); r <= 0 {
		t.Fatal("a control message did not engage the pacer")
	}
}
