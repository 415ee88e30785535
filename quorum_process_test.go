//go:build !dragonfly

package main

// The quorum group end to end: MASTER leaves run as real processes on
// 127.0.0.1, on services (backbone over Unix sockets, services linked over
// QUIC), each driven by a simulated kernel (simkernel_test.go) that sends
// QRM_COMMIT on its kernel.sock the way DragonFly's kernel does: the
// operation as aux data, answered with phase 1 (streaming, the transaction
// stays open), then phase 2 with DELETE carrying the txid, or an LNK_ERROR
// with DELETE: 0x25 (never applied), 0x26 (outcome unknown).
//
// Every commit is recorded (call and return time, payload, outcome). At the
// end of each test the masters are stopped and their bbolt logs read back:
// the recorded history is checked against the committed logs (no
// acknowledged commit lost, each at the txid it was acknowledged with, no
// payload applied twice, no 0x25 request ever applied, the masters'
// committed logs identical where they overlap), no acknowledgement may
// come from a minority (a commit whose whole interval fell inside a
// window where a majority of masters was down or cut off must fail), and
// porcupine checks the history for linearizability against a log model:
// a commit appends and returns its position, so in any linearization the
// acknowledged txids strictly increase (txids also count raft's own
// entries, so the model accepts any txid above the last one).
//
// Partitions: each master of the chaos test has a service of its own, the
// services in a full mesh (QUIC autoconn). Cutting a master off is
// SIGSTOPping its service (every link through it goes silent; the peers'
// QUIC idle bound and the leaf's dead_after drop them) or killing it
// (links drop at once on the leaf's side), bounded in time, then SIGCONT
// or a restart. Finer cuts, on a real network of namespaces, are the
// fault campaign's (faults_test.go), which needs root.
//
// Cache states (CAC_LOCK) go through the same kernels: a grant keeps the
// transaction open until the kernel's DELETE releases it. No two masters'
// kernels may hold incompatible states (EXCLUSIVE against anything) on
// overlapping keys at the same time, judged from what the kernels saw:
// from a grant's arrival to the release being sent; and no grant may come
// while a majority is cut off.
//
// TestLong/QuorumChaos runs ~15 s with 3 masters in CI's long run. A longer run:
//
//	H2_QUORUM_CHAOS_SECONDS=120 H2_QUORUM_MASTERS=5 go test -count=1 -run 'TestLong/QuorumChaos' -v -timeout 20m .
//
// (H2_QUORUM_SEED reproduces a run's fault schedule.) Results of such runs
// are in the comment above longQuorumChaos (a_long_test.go).

import (
	"crypto/sha256"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// ---- the kernel's QRM_COMMIT ----

type qpOutcome int

const (
	qpNotSent  qpOutcome = iota // the kernel link was already gone: nothing sent
	qpAcked                     // phase 2: applied at txid
	qpNoEffect                  // 0x25, or a slave's 0x27: never applied
	qpUnknown                   // 0x26, link lost, or no answer in time
	qpRefused                   // any other answer: not expected from a master
)

func (o qpOutcome) String() string {
	return [...]string{"not-sent", "acked", "no-effect(0x25)", "unknown", "refused"}[o]
}

// qpReply is what the kernel got for one QRM_COMMIT.
type qpReply struct {
	outcome qpOutcome
	txid    uint64
	code    uint32 // LNK_ERROR code for failures
	phase1  bool   // a phase-1 message came first
	msgid   uint64
	why     string
	bad     []string // protocol violations on this transaction
}

// qrmCommit opens QRM_COMMIT with payload as aux data (the 64-byte payload
// zeroed, as the kernel sends it) and waits up to d for its end.
func (k *simKernel) qrmCommit(payload []byte, d time.Duration) qpReply {
	k.mu.Lock()
	if k.readErr != nil {
		err := k.readErr
		k.mu.Unlock()
		return qpReply{outcome: qpNotSent, why: err.Error()}
	}
	id := k.allocID()
	k.ours[id] = "commit"
	pos := len(k.recv)
	k.mu.Unlock()
	k.wmu.Lock()
	werr := k.writeErr
	k.wmu.Unlock()
	if werr != nil {
		return qpReply{outcome: qpNotSent, msgid: id, why: werr.Error()}
	}
	k.send(Msg{Header: Header{Cmd: CmdQrmCommit | kFlagCreate, MsgID: id}, Aux: payload})
	r := qpReply{msgid: id}
	if why := k.awaitOn(id, pos, d, func(m Msg, _ time.Time) bool { return qpStep(&r, m) }); why != "" {
		r.outcome, r.why = qpUnknown, why
	}
	return r
}

// awaitOn hands each message of transaction id the kernel received, from
// its pos'th message on, to take (called with k.mu held) until take says
// it was the last one, waiting up to d for more. It returns "" then, or
// why it stopped waiting.
func (k *simKernel) awaitOn(id uint64, pos int, d time.Duration, take func(m Msg, at time.Time) (done bool)) (why string) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		k.mu.Lock()
		for ; pos < len(k.recv); pos++ {
			if m := k.recv[pos].Msg; m.MsgID == id && take(m, k.recv[pos].At) {
				k.mu.Unlock()
				return ""
			}
		}
		ch, err := k.changed, k.readErr
		k.mu.Unlock()
		if err != nil {
			return "kernel link lost: " + err.Error()
		}
		select {
		case <-ch:
		case <-timer.C:
			return fmt.Sprintf("no answer within %v", d)
		}
	}
}

// qpStep takes one message of the leaf about a QRM_COMMIT and says whether
// it ended the transaction.
func qpStep(r *qpReply, m Msg) bool {
	if m.Cmd&kFlagRevTrans == 0 || m.Cmd&kFlagReply == 0 {
		r.bad = append(r.bad, fmt.Sprintf("%s %#08x without REPLY|REVTRANS", CmdString(m.Cmd), m.Cmd))
	}
	del := m.Cmd&kFlagDelete != 0
	if m.Cmd&kBaseMask == CmdQrmCommit&kBaseMask {
		c, err := parseQrmCommit(m.Ext)
		switch {
		case err != nil:
			r.bad = append(r.bad, fmt.Sprintf("QRM_COMMIT payload: %v", err))
		case !del && c.Phase != 1:
			r.bad = append(r.bad, fmt.Sprintf("streaming QRM_COMMIT with phase %d, want 1", c.Phase))
		case !del:
			if r.phase1 {
				r.bad = append(r.bad, "a second phase-1 message")
			}
			r.phase1 = true
		case c.Phase != 2 || c.Txid == 0:
			r.bad = append(r.bad, fmt.Sprintf("QRM_COMMIT|DELETE with phase %d txid %d, want phase 2 and a txid", c.Phase, c.Txid))
		}
		if !del {
			return false
		}
		if m.Error != 0 {
			r.bad = append(r.bad, fmt.Sprintf("phase 2 carries error %#x", m.Error))
		}
		r.outcome, r.txid = qpAcked, c.Txid
		if r.txid == 0 {
			r.outcome = qpRefused
		}
		return true
	}
	if !del {
		return false // some other streaming element: not expected, harmless
	}
	r.code = m.Error
	switch m.Error {
	case ErrQuorumTimeout, ErrNoQuorum:
		// NO_QUORUM: a slave's leaf reached no master (it has no master's
		// span yet), so the request was proposed nowhere. No master sends it.
		r.outcome = qpNoEffect
	case ErrQuorumUnknown, ErrLostLink: // a forward's circuit was lost: it may have been applied
		r.outcome = qpUnknown
	default:
		r.outcome = qpRefused
	}
	r.why = fmt.Sprintf("%s error %#x", CmdString(m.Cmd), m.Error)
	return true
}

// qrmLate scans everything the kernel received for the end of QRM_COMMIT
// msgid: an answer that came after qrmCommit stopped waiting.
func (k *simKernel) qrmLate(msgid uint64) (qpReply, time.Time, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	r := qpReply{msgid: msgid}
	for _, rm := range k.recv {
		if rm.MsgID == msgid && qpStep(&r, rm.Msg) {
			return r, rm.At, true
		}
	}
	return r, time.Time{}, false
}

// qpGone reports whether the kernel's link is gone (either direction).
func (k *simKernel) qpGone() bool {
	k.mu.Lock()
	err := k.readErr
	k.mu.Unlock()
	k.wmu.Lock()
	defer k.wmu.Unlock()
	return err != nil || k.writeErr != nil
}

// qpDialKernel is dialSimKernel without failing the test (it runs on
// client goroutines): it dials the leaf's kernel.sock for up to wait and
// starts a kernel that advertises the leaf's PFS. The dial is tried again
// (every 30 ms) while the leaf is down: a chaos client waits for it to
// come back.
func qpDialKernel(t *testing.T, name string, n *leafNode, wait time.Duration) (*simKernel, error) {
	sock := KernelSocketPath(n.pfs)
	deadline := time.Now().Add(wait)
	for {
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			pfs := []simPFS{{Label: n.info.Label, Clid: n.info.Clid, Fsid: n.info.Fsid, Type: n.info.Type}}
			return newSimKernel(t, name, c, nil, pfs), nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// ---- status ----

// qpStatusOf is the leaf's quorum section of its status, asked now: nil
// with an error when the leaf does not run or is not in a group.
func qpStatusOf(n *leafNode) (*QuorumJSON, error) {
	return qpQuorumOf(n, n.query())
}

// qpWatchedOf is qpStatusOf as the leaf's watch last showed it, for
// conditions that waits evaluate.
func qpWatchedOf(n *leafNode) (*QuorumJSON, error) {
	return qpQuorumOf(n, n.latest())
}

func qpQuorumOf(n *leafNode, r *controlResponse) (*QuorumJSON, error) {
	if r == nil || r.Status == nil {
		return nil, fmt.Errorf("%s: not running", n.name)
	}
	if r.Status.Quorum == nil {
		return nil, fmt.Errorf("%s: no quorum group in its status", n.name)
	}
	return r.Status.Quorum, nil
}

// ---- the cluster ----

// qpIso is a span of time during which a master was cut off from every
// other (killed, or its only service stopped or killed). It is taken
// narrow: it starts a little after the fault was injected and ends before
// the repair began.
type qpIso struct {
	master   int
	from, to time.Time
	why      string
}

// qpSignalMargin is added to the start of a cut: a SIGSTOPped process may
// still run for a moment after kill(2) returns.
const qpSignalMargin = 20 * time.Millisecond

type qpCluster struct {
	t       *testing.T
	n       int
	clid    UUID
	masters []*leafNode
	svcs    []*svcNode
	home    []int    // each master's service
	ids     []string // raft ids as status prints them
	timeout time.Duration
	hist    *qpHistory

	kernels []*simKernel // the test goroutine's kernel per master

	// fault state, on the test goroutine
	leafDown []bool
	svcState []string // "up", "stopped", "killed"
	isoOpen  []bool
	isoFrom  []time.Time
	isoWhy   []string
	iso      []qpIso
}

// newQPCluster starts n masters of a new cluster (commit_timeout as
// given). meshed: a service per master, the services in a full mesh;
// otherwise all masters on one service.
func newQPCluster(t *testing.T, n int, meshed bool, commitTimeout time.Duration) *qpCluster {
	t.Helper()
	c := &qpCluster{t: t, n: n, clid: NewUUID(), timeout: commitTimeout, kernels: make([]*simKernel, n),
		leafDown: make([]bool, n), isoOpen: make([]bool, n), isoFrom: make([]time.Time, n), isoWhy: make([]string, n)}
	c.hist = &qpHistory{start: time.Now(), tag: fmt.Sprintf("%s-%x", t.Name(), c.clid[:4])}
	fsids := make([]UUID, n)
	quoted := make([]string, n)
	for i := range n {
		fsids[i] = NewUUID()
		quoted[i] = strconv.Quote(fsids[i].String())
		c.ids = append(c.ids, fmt.Sprintf("%x", masterID(fsids[i])))
	}
	qtoml := fmt.Sprintf("\n[quorum]\nmasters = [%s]\ntick = \"100ms\"\ncommit_timeout = %q\nlease = \"2s\"\n",
		strings.Join(quoted, ", "), commitTimeout.String())
	nsvc := 1
	if meshed {
		nsvc = n
	}
	for j := range nsvc {
		// A 2s QUIC idle bound: ten processes on two cores must not drop
		// links for want of a keepalive.
		c.svcs = append(c.svcs, newSvcNode(t, fmt.Sprintf("qs%d", j+1), daemonOpts{RemoteDeadAfter: "2s"}))
		c.svcState = append(c.svcState, "up")
	}
	for a := range nsvc {
		for b := a + 1; b < nsvc; b++ {
			svcLinkBoth(c.svcs[a], c.svcs[b])
		}
	}
	for i := range n {
		// Masters of one cluster share the PFS name, as they would on
		// DragonFly.
		l := newSvcLeaf(t, fmt.Sprintf("m%d", i+1), PFSInfo{Label: "qrm", Clid: c.clid, Fsid: fsids[i], Type: PFSMaster})
		l.writeConfig(qtoml)
		c.masters = append(c.masters, l)
		c.home = append(c.home, min(i, nsvc-1))
	}
	for _, s := range c.svcs {
		s.start()
	}
	for i, l := range c.masters {
		startLeafOn(l, c.svcs[c.home[i]])
	}
	return c
}

func (c *qpCluster) indexOf(id string) int {
	return slices.Index(c.ids, id)
}

// statuses is every running master's quorum status as its watch last
// showed it (nil for a master that is down or has none).
func (c *qpCluster) statuses() []*QuorumJSON {
	out := make([]*QuorumJSON, c.n)
	for i, l := range c.masters {
		if c.leafDown[i] {
			continue
		}
		out[i], _ = qpWatchedOf(l)
	}
	return out
}

// statusesNow is statuses asked of each master now, for one-shot checks.
func (c *qpCluster) statusesNow() []*QuorumJSON {
	out := make([]*QuorumJSON, c.n)
	for i, l := range c.masters {
		if c.leafDown[i] {
			continue
		}
		out[i], _ = qpStatusOf(l)
	}
	return out
}

func qpFmtStatuses(sts []*QuorumJSON) string {
	var b strings.Builder
	for i, s := range sts {
		if s == nil {
			fmt.Fprintf(&b, "\n  m%d: no status", i+1)
			continue
		}
		fmt.Fprintf(&b, "\n  m%d: %+v", i+1, *s)
	}
	return b.String()
}

// watches are the masters' status watches, for waitEvent.
func (c *qpCluster) watches() []changeSource {
	var out []changeSource
	for _, l := range c.masters {
		out = append(out, &l.watch)
	}
	return out
}

// svcWatches are the services' status watches: each start and exit
// changes them.
func (c *qpCluster) svcWatches() []changeSource {
	var out []changeSource
	for _, s := range c.svcs {
		out = append(out, &s.watch)
	}
	return out
}

// waitStatuses waits until cond holds for the masters' statuses (nil for
// a master that is down), woken by each status update, for at most d.
func (c *qpCluster) waitStatuses(d time.Duration, what string, cond func(sts []*QuorumJSON) bool) {
	c.t.Helper()
	waitEvent(c.t, d, what, func() (bool, string) {
		sts := c.statuses()
		return cond(sts), qpFmtStatuses(sts)
	}, c.watches()...)
}

// waitLeader waits until every live master agrees on a leader (among
// them) and reports has_quorum, and returns the leader's index.
func (c *qpCluster) waitLeader(d time.Duration) int {
	c.t.Helper()
	found := -1
	c.waitStatuses(d, "an agreed leader with a quorum", func(sts []*QuorumJSON) bool {
		leader, ok := "", true
		for i, s := range sts {
			if c.leafDown[i] {
				continue
			}
			if s == nil || !s.HasQuorum || s.Leader == "0" || leader != "" && s.Leader != leader {
				ok = false
				break
			}
			leader = s.Leader
		}
		if ok && leader != "" {
			if li := c.indexOf(leader); li >= 0 && !c.leafDown[li] {
				found = li
				return true
			}
		}
		return false
	})
	return found
}

// kernel is the test goroutine's kernel on master i, dialed anew when the
// last one's link is gone.
func (c *qpCluster) kernel(i int) *simKernel {
	c.t.Helper()
	if k := c.kernels[i]; k != nil && !k.qpGone() {
		return k
	}
	k, err := qpDialKernel(c.t, fmt.Sprintf("k%d", i+1), c.masters[i], 10*time.Second)
	if err != nil {
		c.t.Fatalf("kernel of m%d: %v", i+1, err)
	}
	c.kernels[i] = k
	return k
}

// commit sends one QRM_COMMIT through master i's kernel, from the test
// goroutine, and records it.
func (c *qpCluster) commit(i int) *qpOp {
	c.t.Helper()
	return c.hist.commit(c.kernel(i), i, i, c.timeout+3*time.Second)
}

// qpRetriesMax bounds the attempts of commitUntil and lockUntil, besides
// their time bound: a failure that comes back at once must not spin.
const qpRetriesMax = 100

// readyAgain waits, after an attempt through master i failed at failed,
// until master i's status shows a group with a quorum and a leader (at
// once if it does), or until deadline.
func (c *qpCluster) readyAgain(i int, failed, deadline time.Time) {
	c.masters[i].watch.waitSince(failed, max(time.Until(deadline), 0), func(r *controlResponse) bool {
		q := r.Status.Quorum
		return q != nil && q.HasQuorum && q.Leader != "0"
	})
}

// commitsRound commits n times before any fault, through each master in
// turn from first; every commit must be acknowledged.
func (c *qpCluster) commitsRound(first, n int) []*qpOp {
	c.t.Helper()
	var acked []*qpOp
	for i := range n {
		op := c.commit((first + i) % c.n)
		if op.r.outcome != qpAcked {
			c.t.Fatalf("commit before any fault: %v", op)
		}
		acked = append(acked, op)
	}
	return acked
}

// commitUntil retries commits through master i until one is acknowledged,
// for at most d; nil if none was. After a failure it waits for the master
// to show a quorum again before the next try.
func (c *qpCluster) commitUntil(i int, d time.Duration) *qpOp {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for range qpRetriesMax {
		if !time.Now().Before(deadline) {
			break
		}
		op := c.commit(i)
		if op.r.outcome == qpAcked {
			return op
		}
		c.readyAgain(i, op.ret, deadline)
	}
	return nil
}

// commitAfter is commitUntil through master i after a restore or a
// recovery (what names it in messages): the commit must come within d,
// and its txid must be above every one acknowledged before.
func (c *qpCluster) commitAfter(i int, d time.Duration, what string, acked []*qpOp) *qpOp {
	c.t.Helper()
	op := c.commitUntil(i, d)
	if op == nil {
		c.t.Fatalf("no commit through the %s m%d within %v:%s", what, i+1, d, qpFmtStatuses(c.statuses()))
	}
	for _, a := range acked {
		if op.r.txid <= a.r.txid {
			c.t.Errorf("after the %s of m%d txid %d, not above %d acknowledged before", what, i+1, op.r.txid, a.r.txid)
		}
	}
	return op
}

// ---- faults, with the cut-off windows they make ----

func (c *qpCluster) isolated(i int) (bool, string) {
	if c.leafDown[i] {
		return true, "leaf killed"
	}
	if st := c.svcState[c.home[i]]; st != "up" {
		return true, "service " + st
	}
	return false, ""
}

// track opens and closes cut-off windows after a state change at time at.
func (c *qpCluster) track(at time.Time) {
	for i := range c.n {
		iso, why := c.isolated(i)
		switch {
		case iso && !c.isoOpen[i]:
			c.isoOpen[i], c.isoFrom[i], c.isoWhy[i] = true, at, why
		case !iso && c.isoOpen[i]:
			c.isoOpen[i] = false
			if at.After(c.isoFrom[i]) {
				c.iso = append(c.iso, qpIso{master: i, from: c.isoFrom[i], to: at, why: c.isoWhy[i]})
			}
		}
	}
}

// closeWindows ends every open window now (the end of a test: nothing is
// acknowledged afterwards that the windows could concern).
func (c *qpCluster) closeWindows() {
	now := time.Now()
	for i := range c.n {
		if c.isoOpen[i] {
			c.isoOpen[i] = false
			c.iso = append(c.iso, qpIso{master: i, from: c.isoFrom[i], to: now, why: c.isoWhy[i]})
		}
	}
}

func (c *qpCluster) killMaster(i int) {
	c.t.Helper()
	c.masters[i].kill9() // returns once it has exited: no margin
	c.leafDown[i] = true
	c.track(time.Now())
}

func (c *qpCluster) restartMaster(i int) {
	c.t.Helper()
	c.leafDown[i] = false
	c.track(time.Now())
	startLeafOn(c.masters[i], c.svcs[c.home[i]])
}

func (c *qpCluster) svcSignal(j int, sig syscall.Signal) {
	c.t.Helper()
	c.svcs[j].signal(sig)
}

func (c *qpCluster) stopSvc(j int) {
	c.t.Helper()
	c.svcs[j].freeze()
	c.svcState[j] = "stopped"
	c.track(time.Now().Add(qpSignalMargin))
}

func (c *qpCluster) contSvc(j int) {
	c.t.Helper()
	c.svcState[j] = "up"
	c.track(time.Now())
	c.svcs[j].thaw()
}

func (c *qpCluster) killSvc(j int) {
	c.t.Helper()
	c.svcs[j].kill9()
	c.svcState[j] = "killed"
	c.track(time.Now())
}

func (c *qpCluster) restartSvc(j int) {
	c.t.Helper()
	c.svcState[j] = "up"
	c.track(time.Now())
	c.svcs[j].start()
}

// ---- the history ----

type qpOp struct {
	client  int
	master  int
	payload string
	t0      time.Time // the history's start
	call    time.Time
	ret     time.Time
	r       qpReply
	k       *simKernel
}

func (op *qpOp) String() string {
	s := fmt.Sprintf("commit %q via m%d at +%v..+%v: %s", op.payload, op.master+1,
		op.call.Sub(op.t0).Round(time.Millisecond), op.ret.Sub(op.t0).Round(time.Millisecond), op.r.outcome)
	if op.r.outcome == qpAcked {
		s += fmt.Sprintf(" txid %d", op.r.txid)
	}
	if op.r.why != "" {
		s += " (" + op.r.why + ")"
	}
	if len(op.payload) > 100 {
		s = strings.Replace(s, op.payload, fmt.Sprintf("%s... (%d bytes)", op.payload[:60], len(op.payload)), 1)
	}
	return s
}

type qpHistory struct {
	start time.Time
	tag   string
	seq   atomic.Int64
	mu    sync.Mutex
	ops   []*qpOp
}

// commit sends one uniquely named commit through k and records it (unless
// the link was gone before anything was sent).
func (h *qpHistory) commit(k *simKernel, client, master int, wait time.Duration) *qpOp {
	return h.commitSized(k, client, master, wait, 0)
}

// commitSized is commit with the payload padded to size bytes.
func (h *qpHistory) commitSized(k *simKernel, client, master int, wait time.Duration, size int) *qpOp {
	op := &qpOp{client: client, master: master, k: k, t0: h.start,
		payload: fmt.Sprintf("%s/c%d/%d/", h.tag, client, h.seq.Add(1))}
	if pad := size - len(op.payload); pad > 0 {
		op.payload += strings.Repeat("x", pad)
	}
	op.call = time.Now()
	op.r = k.qrmCommit([]byte(op.payload), wait)
	op.ret = time.Now()
	if op.r.outcome != qpNotSent {
		h.mu.Lock()
		h.ops = append(h.ops, op)
		h.mu.Unlock()
	}
	return op
}

func (h *qpHistory) snapshot() []*qpOp {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ops)
}

func (h *qpHistory) maxAcked() uint64 {
	var m uint64
	for _, op := range h.snapshot() {
		if op.r.outcome == qpAcked {
			m = max(m, op.r.txid)
		}
	}
	return m
}

// ---- the masters' logs ----

type qpLog struct {
	first, commit, last uint64
	byTxid              map[uint64]string   // commit entries in [first, commit]
	txids               map[string][]uint64 // payload -> where it takes effect
	entries             map[uint64]string   // every entry in [first, commit]: type, term, data's length and hash
	// copies counts entries that repeat a request id already in the log:
	// a master handed a forward again, and the state machine skips it.
	copies int
	reqs   map[string]string // payload -> the request id that carried it
}

// qpReadLog reads a stopped master's committed log from its bbolt file.
func qpReadLog(dir string) (*qpLog, error) {
	s, err := openQuorumStore(dir, quorumStoreOptions{lockTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	hs, _, err := s.InitialState()
	if err != nil {
		return nil, err
	}
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	lg := &qpLog{first: first, commit: hs.GetCommit(), last: last, byTxid: map[uint64]string{}, txids: map[string][]uint64{},
		entries: map[uint64]string{}, reqs: map[string]string{}}
	hi := min(lg.commit, last)
	if hi < first {
		return lg, nil
	}
	ents, err := s.Entries(first, hi+1, math.MaxUint64)
	if err != nil {
		return nil, fmt.Errorf("entries %d..%d: %w", first, hi, err)
	}
	for _, e := range ents {
		// The data's hash, not the data in hex: the logs of a large-entry
		// test hold megabytes, which formatting under -race made seconds.
		lg.entries[e.GetIndex()] = fmt.Sprintf("%s term %d, %d bytes, sha256 %x", e.GetType(), e.GetTerm(), len(e.GetData()), sha256.Sum256(e.GetData()))
		if e.GetType() != pb.EntryNormal || len(e.GetData()) == 0 {
			continue
		}
		origin, reqID, op, err := decodeQuorumEntry(e.GetData())
		if err != nil {
			return nil, fmt.Errorf("entry %d: %w", e.GetIndex(), err)
		}
		if op.Kind != quorumOpCommit {
			continue
		}
		p, req := string(op.Payload), fmt.Sprintf("%x/%s", origin, fmtReqID(reqID))
		if prev, ok := lg.reqs[p]; ok && prev == req {
			lg.copies++
			continue
		}
		lg.reqs[p] = req
		lg.byTxid[e.GetIndex()] = p
		lg.txids[p] = append(lg.txids[p], e.GetIndex())
	}
	return lg, nil
}

// ---- verification ----

type qpReport struct {
	ops, acked, noEffect, unknown, refused int
	unknownApplied, unknownLost            int // unknown outcomes resolved from the logs
	lateAcks                               int
	copies                                 int // forwards handed again, skipped when applied
	checkable                              int // acked commits found in a log
	linearizable                           string
	inMajorityLoss                         int // commits whose whole call lay in a majority-loss window
	majorityWindows                        int
	maxGap, maxGapMajorityUp               time.Duration
	logLen                                 uint64
}

func (r qpReport) String() string {
	return fmt.Sprintf("ops %d: acked %d, failed 0x25 %d, unknown %d (later found applied %d, never applied %d), refused %d; "+
		"late acks %d; acked checked against the logs %d; committed log %d entries (%d repeated forwards skipped); linearizable: %s; "+
		"majority-loss windows %d with %d commits inside (none may be acked); longest stretch without an ack %v "+
		"(%v while a majority was up)",
		r.ops, r.acked, r.noEffect, r.unknown, r.unknownApplied, r.unknownLost, r.refused, r.lateAcks, r.checkable,
		r.logLen, r.copies, r.linearizable, r.majorityWindows, r.inMajorityLoss, r.maxGap.Round(time.Millisecond),
		r.maxGapMajorityUp.Round(time.Millisecond))
}

// stopAll stops every master cleanly (SIGTERM, SIGKILL after 10 s) and
// continues any stopped service.
func (c *qpCluster) stopAll() {
	c.t.Helper()
	for j, st := range c.svcState {
		if st == "stopped" {
			c.svcSignal(j, syscall.SIGCONT)
			c.svcState[j] = "up"
		}
	}
	for i, l := range c.masters {
		// waitExit(0) may miss an exit (its timer can win the select):
		// a master the test killed is known to be down.
		if _, exited := l.waitExit(0); exited || c.leafDown[i] {
			c.leafDown[i] = true
			continue
		}
		l.signal(syscall.SIGTERM)
	}
	for i, l := range c.masters {
		if _, ok := l.waitExit(10 * time.Second); !ok {
			c.t.Errorf("m%d still running 10s after SIGTERM; killing it", i+1)
			l.kill9()
		}
		c.leafDown[i] = true
	}
}

// verify stops the masters and checks the history against their logs,
// then for linearizability. from and to bound the stretch whose
// availability gaps are reported.
func (c *qpCluster) verify(from, to time.Time) qpReport {
	t := c.t
	t.Helper()
	ops := c.hist.snapshot()
	c.closeWindows()
	c.stopAll()
	end := time.Now()

	logs := make([]*qpLog, c.n)
	for i, l := range c.masters {
		lg, err := qpReadLog(l.pfs)
		if err != nil {
			t.Fatalf("reading m%d's quorum log: %v", i+1, err)
		}
		logs[i] = lg
	}
	var rep qpReport
	for _, lg := range logs {
		rep.logLen = max(rep.logLen, lg.commit)
		rep.copies = max(rep.copies, lg.copies)
	}

	// The masters' committed logs agree where they overlap.
	for i := range c.n {
		for j := i + 1; j < c.n; j++ {
			lo, hi := max(logs[i].first, logs[j].first), min(logs[i].commit, logs[j].commit)
			bad := 0
			for x := lo; x <= hi && x != 0; x++ {
				if ei, ej := logs[i].entries[x], logs[j].entries[x]; ei != ej {
					if bad++; bad <= 5 {
						t.Errorf("committed logs diverge at txid %d: m%d has %.100s, m%d has %.100s", x, i+1, ei, j+1, ej)
					}
				}
			}
		}
	}
	// Nothing is applied twice.
	for i, lg := range logs {
		for p, xs := range lg.txids {
			if len(xs) > 1 {
				t.Errorf("m%d's committed log holds %.60q %d times, at txids %v: a request applied twice", i+1, p, len(xs), xs)
			}
		}
	}
	// where finds a payload in the logs (0: not there).
	where := func(p string) uint64 {
		for _, lg := range logs {
			if xs := lg.txids[p]; len(xs) > 0 {
				return xs[0]
			}
		}
		return 0
	}
	covered := func(x uint64) (int, string) { // masters whose committed log holds x, and what it holds there
		n, what := 0, ""
		for _, lg := range logs {
			if x >= lg.first && x <= lg.commit {
				n++
				what = lg.byTxid[x]
			}
		}
		return n, what
	}

	byTxid := map[uint64]*qpOp{}
	behind := make([]bool, c.n)
	resolved := map[*qpOp]uint64{} // unknown outcomes found in the logs
	for _, op := range ops {
		rep.ops++
		for _, b := range op.r.bad {
			t.Errorf("protocol: %v: %s", op, b)
		}
		if op.r.outcome == qpUnknown && op.r.code == 0 {
			// We stopped waiting: an answer that came later counts, at
			// the time it came.
			if late, at, ok := op.k.qrmLate(op.r.msgid); ok {
				rep.lateAcks++
				late.why = "late: " + late.why
				op.r, op.ret = late, at
			}
		}
		switch op.r.outcome {
		case qpAcked:
			rep.acked++
			if !op.r.phase1 {
				t.Errorf("%v: phase 2 without a phase-1 message before it", op)
			}
			if prev := byTxid[op.r.txid]; prev != nil {
				t.Errorf("two acknowledged commits share txid %d:\n  %v\n  %v", op.r.txid, prev, op)
			}
			byTxid[op.r.txid] = op
			n, what := covered(op.r.txid)
			if n == 0 {
				if op.r.txid > rep.logLen {
					t.Errorf("acknowledged commit lost: %v, but no master's committed log reaches txid %d (longest: %d)",
						op, op.r.txid, rep.logLen)
				}
				continue // compacted everywhere
			}
			rep.checkable++
			if what != op.payload {
				t.Errorf("acknowledged commit lost or misreported: %v, but txid %d holds %.60q; it is at txid %d (0: nowhere)",
					op, op.r.txid, what, where(op.payload))
			}
			for i, lg := range logs {
				if lg.commit < op.r.txid && !behind[i] {
					behind[i] = true
					t.Errorf("m%d's committed log ends at %d, before acknowledged txid %d (%v) and any later", i+1, lg.commit, op.r.txid, op)
				}
			}
		case qpNoEffect:
			rep.noEffect++
			if x := where(op.payload); x != 0 {
				t.Errorf("%v: answered 0x25 (never applied), but it is in the committed log at txid %d", op, x)
			}
		case qpUnknown:
			rep.unknown++
			if x := where(op.payload); x != 0 {
				rep.unknownApplied++
				resolved[op] = x
			} else {
				rep.unknownLost++
			}
		case qpRefused:
			rep.refused++
			t.Errorf("%v: a master refused a well-formed commit", op)
		}
	}

	// The minority never grants: a commit is only acknowledged after a
	// majority has it, so one whose whole call lay inside a stretch with a
	// majority cut off must fail.
	for _, op := range ops {
		if c.cutThroughout(op.call, op.ret) > c.n/2 {
			rep.inMajorityLoss++
			if op.r.outcome == qpAcked {
				t.Errorf("a minority granted a commit: %v while a majority of masters was cut off throughout (windows: %v)",
					op, c.fmtWindows())
			}
		}
	}
	windows := c.majorityWindows()
	rep.majorityWindows = len(windows)

	// Availability: the longest stretch with no acknowledgement.
	var rets []time.Time
	for _, op := range ops {
		if op.r.outcome == qpAcked && !op.ret.Before(from) && !op.ret.After(to) {
			rets = append(rets, op.ret)
		}
	}
	sort.Slice(rets, func(i, j int) bool { return rets[i].Before(rets[j]) })
	prev := from
	for _, r := range append(rets, to) {
		gap := r.Sub(prev)
		rep.maxGap = max(rep.maxGap, gap)
		overlaps := false
		for _, w := range windows {
			if w[0].Before(r) && w[1].After(prev) {
				overlaps = true
			}
		}
		if !overlaps {
			rep.maxGapMajorityUp = max(rep.maxGapMajorityUp, gap)
		}
		prev = r
	}

	rep.linearizable = c.checkLinearizable(ops, resolved, end)
	t.Logf("%s", rep)
	return rep
}

// cutThroughout counts the masters cut off during all of [from, to].
func (c *qpCluster) cutThroughout(from, to time.Time) int {
	cut := map[int]bool{}
	for _, w := range c.iso {
		if !w.from.After(from) && !w.to.Before(to) {
			cut[w.master] = true
		}
	}
	return len(cut)
}

// fmtWindows lists the cut-off windows relative to the history's start.
func (c *qpCluster) fmtWindows() string {
	var parts []string
	for _, w := range c.iso {
		parts = append(parts, fmt.Sprintf("m%d %v..%v (%s)", w.master+1, w.from.Sub(c.hist.start).Round(time.Millisecond),
			w.to.Sub(c.hist.start).Round(time.Millisecond), w.why))
	}
	return strings.Join(parts, ", ")
}

// majorityWindows are the stretches during which more than half the
// masters were cut off.
func (c *qpCluster) majorityWindows() [][2]time.Time {
	type ev struct {
		at time.Time
		d  int
	}
	var evs []ev
	for _, w := range c.iso {
		evs = append(evs, ev{w.from, 1}, ev{w.to, -1})
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].at.Equal(evs[j].at) {
			return evs[i].d < evs[j].d
		}
		return evs[i].at.Before(evs[j].at)
	})
	var out [][2]time.Time
	n := 0
	var start time.Time
	for _, e := range evs {
		was := n > c.n/2
		n += e.d
		if is := n > c.n/2; is && !was {
			start = e.at
		} else if was && !is {
			out = append(out, [2]time.Time{start, e.at})
		}
	}
	return out
}

// qpIn and qpOut are a commit's input and output in the porcupine model.
type qpIn struct{ payload string }
type qpOut struct {
	applied bool
	txid    uint64
}

// qpModel is the commit log as porcupine sees it: a commit appends its
// operation and returns its position. Positions also count raft's own
// entries, so a commit may return any txid above the last; one that did
// not take effect leaves the log as it was.
var qpModel = porcupine.Model{
	Init: func() any { return uint64(0) },
	Step: func(state, input, output any) (bool, any) {
		last, out := state.(uint64), output.(qpOut)
		if !out.applied {
			return true, last
		}
		return out.txid > last, out.txid
	},
	DescribeOperation: func(input, output any) string {
		out := output.(qpOut)
		if !out.applied {
			return fmt.Sprintf("commit(%.60s) -> no effect", input.(qpIn).payload)
		}
		return fmt.Sprintf("commit(%.60s) -> txid %d", input.(qpIn).payload, out.txid)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("last txid %d", state.(uint64)) },
}

// checkLinearizable runs porcupine over the history. Acknowledged commits
// return their txid when they returned. An unknown outcome the logs show
// applied is pending until the end, at that txid. Commits that took no
// effect (0x25, or unknown and in no log) are left out: a no-op
// linearizes anywhere, so they constrain nothing, while as operations
// pending to the end they make the search exponential (a 5-master run
// with ~100 of them did not finish in 2 minutes).
//
// With every txid known, the model's condition is also checked directly:
// a commit that returned before another was called has the lower txid.
func (c *qpCluster) checkLinearizable(ops []*qpOp, resolved map[*qpOp]uint64, end time.Time) string {
	t := c.t
	ns := func(at time.Time) int64 { return at.Sub(c.hist.start).Nanoseconds() }
	var hist []porcupine.Operation
	for _, op := range ops {
		po := porcupine.Operation{ClientId: op.client, Input: qpIn{op.payload}, Call: ns(op.call), Return: ns(op.ret)}
		if op.r.outcome == qpAcked {
			po.Output = qpOut{applied: true, txid: op.r.txid}
		} else if x, ok := resolved[op]; ok {
			po.Output, po.Return = qpOut{applied: true, txid: x}, ns(end)+1
		} else {
			continue
		}
		hist = append(hist, po)
	}

	// The direct check: going down the txids, the earliest return among
	// the higher ones must not precede a call.
	byTxid := slices.Clone(hist)
	sort.Slice(byTxid, func(i, j int) bool {
		return byTxid[i].Output.(qpOut).txid > byTxid[j].Output.(qpOut).txid
	})
	direct := true
	var first *porcupine.Operation
	for i := range byTxid {
		op := &byTxid[i]
		if first != nil && first.Return < op.Call {
			direct = false
			t.Errorf("real-time order broken: %s returned at +%v, before %s was called at +%v, but has the higher txid",
				qpModel.DescribeOperation(first.Input, first.Output), time.Duration(first.Return),
				qpModel.DescribeOperation(op.Input, op.Output), time.Duration(op.Call))
		}
		if first == nil || op.Return < first.Return {
			first = op
		}
	}

	res, info := porcupine.CheckOperationsVerbose(qpModel, hist, time.Minute)
	switch {
	case res == porcupine.Ok && direct:
		return "yes"
	case res == porcupine.Ok:
		t.Errorf("porcupine found the history linearizable, the direct check did not")
		return "NO (direct check)"
	case res == porcupine.Unknown:
		t.Logf("porcupine: no answer within a minute for %d operations; the direct check says %v", len(hist), direct)
		if direct {
			return "yes (direct check; porcupine timed out)"
		}
		return "NO (direct check; porcupine timed out)"
	}
	dir, err := os.MkdirTemp("", "h2-quorum-porcupine")
	if err == nil {
		path := filepath.Join(dir, "history.html")
		if err := porcupine.VisualizePath(qpModel, info, path); err == nil {
			t.Logf("porcupine visualization: %s", path)
		}
	}
	t.Errorf("the commit history is not linearizable (%d operations)", len(hist))
	return "NO"
}

// ---- the tests ----

// TestQuorumCommitBasic: three masters on one service. A kernel's
// QRM_COMMIT gets phase 1, then phase 2 with a txid; sequential commits
// get strictly increasing txids, through the leader and through a
// follower (raft forwards the proposal), and status shows the group.
func TestQuorumCommitBasic(t *testing.T) {
	t.Parallel()
	c := newQPCluster(t, 3, false, 2*time.Second)
	began := time.Now()
	leader := c.waitLeader(20 * time.Second)
	t.Logf("leader m%d after %v", leader+1, time.Since(began).Round(time.Millisecond))

	var last uint64
	acked := 0
	expect := func(i int, via string) {
		t.Helper()
		op := c.commit(i)
		// A steady group acknowledges every commit; an election forced by
		// a starved process (a loaded CI machine) may fail one, with
		// 0x25 or 0x26, which is no error: try again.
		for tries := 1; op.r.outcome == qpNoEffect || op.r.outcome == qpUnknown && op.r.code == ErrQuorumUnknown; tries++ {
			t.Logf("commit via %s: %v; retrying (%s)", via, op, qpFmtStatuses(c.statuses()))
			if tries == 3 {
				break
			}
			op = c.commit(i)
		}
		if op.r.outcome != qpAcked {
			t.Fatalf("commit via %s: %v\nkernel link:\n%s", via, op, op.k.dump())
		}
		acked++
		if !op.r.phase1 {
			t.Errorf("commit via %s: phase 2 came without a phase-1 message first", via)
		}
		if op.r.txid <= last {
			t.Errorf("commit via %s got txid %d, not above the previous %d", via, op.r.txid, last)
		}
		last = op.r.txid
	}
	for range 5 {
		expect(0, "m1")
	}
	follower := (leader + 1) % c.n
	for range 3 {
		expect(follower, fmt.Sprintf("follower m%d", follower+1))
	}
	expect(leader, fmt.Sprintf("leader m%d", leader+1))
	// The kernel closes its side after phase 2: nothing stays open.
	for _, k := range c.kernels {
		if k != nil {
			k.checkClean()
		}
	}

	c.waitStatuses(10*time.Second, fmt.Sprintf("status: want 3 members, leader %s, has_quorum, last_txid >= %d on all",
		c.ids[leader], last), func(sts []*QuorumJSON) bool {
		for _, s := range sts {
			if s == nil || len(s.Members) != 3 || s.Leader != c.ids[leader] || !s.HasQuorum || s.LastTxid < last {
				return false
			}
		}
		return true
	})
	for i, s := range c.statusesNow() {
		if s != nil && !slices.Contains(s.Members, c.ids[i]) {
			t.Errorf("m%d's status does not list itself (%s) among the members %v", i+1, c.ids[i], s.Members)
		}
	}
	rep := c.verify(began, time.Now())
	if rep.acked != acked {
		t.Errorf("the history holds %d acknowledged commits, the test saw %d", rep.acked, acked)
	}
}

// TestQuorumAckedSurvivesKill: three masters, twelve kernel clients
// committing at once, so that proposals share raft Readies and bbolt
// transactions. The moment the qpAckedKillAt-th acknowledgement arrives,
// the client that got it kills every master with SIGKILL. Each commit
// acknowledged before must then be in the bbolt file of a majority, at
// its txid: a batch answered before its transaction committed on a
// majority shows as an acknowledged entry missing there. (A kill keeps
// what was written; the in-memory group's checkDurable holds the same
// for what was committed, which is what bbolt fsyncs.)
func TestQuorumAckedSurvivesKill(t *testing.T) {
	t.Parallel()
	c := newQPCluster(t, 3, false, 2*time.Second)
	c.waitLeader(20 * time.Second)
	procs := make([]*os.Process, c.n)
	kernels := make([]*simKernel, c.n)
	for i, m := range c.masters {
		m.mu.Lock()
		procs[i] = m.cmd.Process
		m.mu.Unlock()
		kernels[i] = c.kernel(i)
	}
	const clients = 12
	var acked atomic.Int64
	var killed atomic.Bool
	var wg sync.WaitGroup
	for cl := range clients {
		wg.Go(func() {
			at := cl % c.n
			for range 1000 { // bounded: the kill ends it long before
				if killed.Load() {
					return
				}
				op := c.hist.commit(kernels[at], cl, at, c.timeout+3*time.Second)
				if op.r.outcome == qpAcked && acked.Add(1) == qpAckedKillAt && killed.CompareAndSwap(false, true) {
					for _, p := range procs {
						_ = p.Signal(syscall.SIGKILL)
					}
				}
				if op.r.outcome != qpAcked && killed.Load() {
					return
				}
			}
		})
	}
	wg.Wait()
	if !killed.Load() {
		t.Fatalf("only %d commits acknowledged; the masters were not killed", acked.Load())
	}
	for i, m := range c.masters {
		if _, ok := m.waitExit(10 * time.Second); !ok {
			t.Fatalf("m%d still running 10s after SIGKILL", i+1)
		}
		c.leafDown[i] = true
	}
	files := make([]map[uint64]string, c.n)
	for i, m := range c.masters {
		f, err := qpReadFile(m.pfs)
		if err != nil {
			t.Fatalf("reading m%d's quorum file: %v", i+1, err)
		}
		files[i] = f
	}
	n := 0
	for _, op := range c.hist.snapshot() {
		if op.r.outcome != qpAcked {
			continue
		}
		n++
		var on []int
		for i, f := range files {
			if f[op.r.txid] == op.payload {
				on = append(on, i+1)
			}
		}
		if len(on) <= c.n/2 {
			t.Errorf("%v: acknowledged, but after the kill its entry is in the files of only masters %v", op, on)
		}
	}
	t.Logf("%d commits acknowledged before the kill, each in the files of a majority", n)
}

// qpAckedKillAt is the acknowledgement at which TestQuorumAckedSurvivesKill
// kills the masters.
const qpAckedKillAt = 150

// qpReadFile reads the commit payloads of every entry a stopped master's
// bbolt file holds, committed or not, by txid.
func qpReadFile(dir string) (map[uint64]string, error) {
	s, err := openQuorumStore(dir, quorumStoreOptions{lockTimeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	out := map[uint64]string{}
	if last < first {
		return out, nil
	}
	ents, err := s.Entries(first, last+1, math.MaxUint64)
	if err != nil {
		return nil, fmt.Errorf("entries %d..%d: %w", first, last, err)
	}
	for _, e := range ents {
		if e.GetType() != pb.EntryNormal || len(e.GetData()) == 0 {
			continue
		}
		if _, _, op, err := decodeQuorumEntry(e.GetData()); err == nil && op.Kind == quorumOpCommit {
			out[e.GetIndex()] = string(op.Payload)
		}
	}
	return out, nil
}

// waitCaughtUp waits until every live master has applied every
// acknowledged txid.
func (c *qpCluster) waitCaughtUp(d time.Duration) {
	c.t.Helper()
	want := c.hist.maxAcked()
	caughtUp := func() (bool, string) {
		sts := c.statuses()
		for i, s := range sts {
			if !c.leafDown[i] && (s == nil || s.LastTxid < want) {
				return false, qpFmtStatuses(sts)
			}
		}
		return true, ""
	}
	if !waitEventOK(d, caughtUp, c.watches()...) {
		_, why := caughtUp()
		c.t.Errorf("not every master applied txid %d within %v:%s", want, d, why)
	}
}

func qpEnvInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// qpEnvSeed is the seed the variable name gives, or a new one from the
// clock; the test logs it, so that a run can be repeated.
func qpEnvSeed(t *testing.T, name string) uint64 {
	s := os.Getenv(name)
	if s == "" {
		return uint64(time.Now().UnixNano())
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, s, err)
	}
	return v
}

// qpBatchPayload is a commit payload size at which raft's append batches
// to a master catching up hold entries of at most MaxSizePerMsg (1 MiB)
// in total, while the batch encoded as one raft message, which is what a
// QRM_RAFT message carries as aux data, exceeds dmsg's 1 MiB aux limit
// (each entry adds its field tag and length in the message). It returns
// the smallest such size from 30000 bytes up and how many entries such a
// batch holds. Entry sizes are taken with and without the entry type
// encoded, and for one-byte terms and indexes (the test keeps its log
// below 128 entries).
//
// The sizes are worked out from one encoding rather than by encoding
// every candidate, which took 0.7 s of CPU under -race and, beside the
// rest of the suite, over ten seconds: the longest part of the test. The
// payload is a JSON []byte (base64: 4 bytes per 3, rounded up), and the
// entry's data a length-delimited field (its bytes after its length's
// varint). The answer is checked against a real encoding; should the
// arithmetic no longer hold, every candidate is encoded.
func qpBatchPayload(t *testing.T) (size, perBatch int) {
	t.Helper()
	const from, to = 30000, 60000
	varint := func(n int) int {
		v := 1
		for ; n >= 0x80; n >>= 7 {
			v++
		}
		return v
	}
	// encoded: the entry's data length and the entry's sizes, with and
	// without its type, for a payload of p bytes.
	encoded := func(p int) (int, [2]int) {
		data, err := encodeQuorumEntry(math.MaxUint64, math.MaxUint64, quorumOp{Kind: quorumOpCommit, Payload: make([]byte, p)})
		if err != nil {
			t.Fatal(err)
		}
		e := qEntry(100, 5, string(data))
		sizes := [2]int{proto.Size(e)}
		e.Type = nil
		sizes[1] = proto.Size(e)
		return len(data), sizes
	}
	// over: how many entries of these sizes a batch holds, and whether it
	// is then over the aux limit.
	over := func(sizes [2]int) (int, bool) {
		ok := true
		k := 0
		for _, es := range sizes {
			k = (1 << 20) / es
			if k*(es+1+varint(es)) <= AuxMax {
				ok = false
			}
		}
		return k, ok && (1<<20)/sizes[0] == (1<<20)/sizes[1]
	}
	n0, sizes0 := encoded(from)
	b64 := func(p int) int { return 4 * ((p + 2) / 3) }
	worked := func(p int) [2]int {
		n := n0 + b64(p) - b64(from)
		grow := n - n0 + varint(n) - varint(n0)
		return [2]int{sizes0[0] + grow, sizes0[1] + grow}
	}
	for p := from; p < to; p++ {
		if _, ok := over(worked(p)); !ok {
			continue
		}
		if _, real := encoded(p); real == worked(p) {
			k, _ := over(real)
			return p, k
		}
		t.Logf("qpBatchPayload: the entry sizes no longer follow from one encoding; encoding each candidate")
		break
	}
	for p := from; p < to; p++ {
		_, sizes := encoded(p)
		if k, ok := over(sizes); ok {
			return p, k
		}
	}
	t.Fatal("no payload size puts a 1 MiB batch of entries over the aux limit")
	return 0, 0
}

func qpTxid(st *QuorumJSON) any {
	if st == nil {
		return "(no status)"
	}
	return st.LastTxid
}

// ---- the kernel's CAC_LOCK ----

// qpSlot is a master's current kernel link, shared by the clients on it
// (a leaf keeps one kernel link; a new one replaces it).
type qpSlot struct {
	mu sync.Mutex
	k  *simKernel
}

// get returns the link, dialing a new one if it is gone; nil if the leaf
// does not answer within 200ms.
func (s *qpSlot) get(t *testing.T, name string, n *leafNode, dials *atomic.Int64) *simKernel {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.k != nil && !s.k.qpGone() {
		return s.k
	}
	k, err := qpDialKernel(t, name, n, 200*time.Millisecond)
	if err != nil {
		return nil
	}
	dials.Add(1)
	s.k = k
	return k
}

// qpLockReply is what the kernel got for one CAC_LOCK.
type qpLockReply struct {
	outcome  qpOutcome // qpAcked: granted; qpNoEffect: 0x25; qpUnknown; qpRefused
	conflict bool      // refused with CAC_CONFLICT (0x28)
	grant    cacLock
	at       time.Time // when the answer came
	code     uint32
	msgid    uint64
	why      string
	bad      []string
}

// cacLockReq opens CAC_LOCK for req and waits up to d for the grant (the
// transaction stays open: the state is held until cacRelease) or the
// refusal.
func (k *simKernel) cacLockReq(req cacLock, d time.Duration) qpLockReply {
	k.mu.Lock()
	if k.readErr != nil {
		err := k.readErr
		k.mu.Unlock()
		return qpLockReply{outcome: qpNotSent, why: err.Error()}
	}
	id := k.allocID()
	k.ours[id] = "lock"
	pos := len(k.recv)
	k.mu.Unlock()
	k.send(Msg{Header: Header{Cmd: CmdCacLock | kFlagCreate, MsgID: id}, Ext: req.marshal()})
	r := qpLockReply{msgid: id}
	why := k.awaitOn(id, pos, d, func(m Msg, at time.Time) bool {
		if m.Cmd&kFlagRevTrans == 0 || m.Cmd&kFlagReply == 0 {
			r.bad = append(r.bad, fmt.Sprintf("%s %#08x without REPLY|REVTRANS", CmdString(m.Cmd), m.Cmd))
		}
		if m.Cmd&kBaseMask == CmdCacLock&kBaseMask {
			g, err := parseCacLock(m.Ext)
			if err != nil {
				r.bad = append(r.bad, fmt.Sprintf("grant payload: %v", err))
			}
			r.outcome, r.grant, r.at = qpAcked, g, at
			if g.Txid == 0 || g.Lo > req.Lo || g.Hi < req.Hi || g.Domain != req.Domain || g.Mode != req.Mode {
				r.bad = append(r.bad, fmt.Sprintf("grant %+v does not cover the request %+v", g, req))
			}
			return true
		}
		if m.Cmd&kFlagDelete == 0 {
			return false
		}
		r.code = m.Error
		switch m.Error {
		case ErrCacConflict:
			r.outcome, r.conflict = qpRefused, true
		case ErrQuorumTimeout:
			r.outcome = qpNoEffect
		case ErrQuorumUnknown:
			r.outcome = qpUnknown
		default:
			r.outcome = qpRefused
		}
		r.why = fmt.Sprintf("%s error %#x", CmdString(m.Cmd), m.Error)
		return true
	})
	if why != "" {
		r.outcome, r.why = qpUnknown, why
	}
	return r
}

// cacRelease ends CAC_LOCK msgid from the kernel's side (releasing the
// state, or giving up on the request), unless the leaf has closed it.
func (k *simKernel) cacRelease(msgid uint64) {
	k.mu.Lock()
	_, open := k.ours[msgid]
	delete(k.ours, msgid) // so that the leaf's DELETE in answer is not answered again
	k.mu.Unlock()
	if open {
		k.send(Msg{Header: Header{Cmd: kOwnDelete, MsgID: msgid}})
	}
}

// lockUntil asks master i's kernel for req until it is granted (a
// conflict or failure is retried), for at most d.
func (c *qpCluster) lockUntil(i int, req cacLock, d time.Duration) qpLockReply {
	c.t.Helper()
	deadline := time.Now().Add(d)
	var r qpLockReply
	for range qpRetriesMax {
		r = c.kernel(i).cacLockReq(req, c.timeout+3*time.Second)
		for _, b := range r.bad {
			c.t.Errorf("CAC_LOCK through m%d: %s", i+1, b)
		}
		if r.outcome == qpAcked || time.Now().After(deadline) {
			return r
		}
		c.readyAgain(i, time.Now(), deadline)
	}
	return r
}

// locksOf is master i's lock table entries held through it, as status
// shows them.
func (c *qpCluster) locksOf(i int) string {
	st, err := qpStatusOf(c.masters[i])
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, l := range st.Locks {
		parts = append(parts, fmt.Sprintf("%s %s %d-%d txid %d", l.Mode, l.Domain, l.Lo, l.Hi, l.Txid))
	}
	return "[" + strings.Join(parts, "; ") + "]"
}

// qpLocks is a cluster of three masters for the CAC_LOCK tests, with
// their checks.
type qpLocks struct {
	t     *testing.T
	c     *qpCluster
	began time.Time
	wait  time.Duration // for one request: the commit timeout and some
	lease time.Duration // newQPCluster's
}

func newQPLocks(t *testing.T) *qpLocks {
	t.Helper()
	c := newQPCluster(t, 3, false, 2*time.Second)
	l := &qpLocks{t: t, c: c, began: time.Now(), wait: c.timeout + 3*time.Second, lease: 2 * time.Second}
	c.waitLeader(20 * time.Second)
	return l
}

func qpEx(lo, hi uint64) cacLock { return cacLock{Domain: cacInum, Mode: cacExclusive, Lo: lo, Hi: hi} }
func qpSh(lo, hi uint64) cacLock { return cacLock{Domain: cacInum, Mode: cacShared, Lo: lo, Hi: hi} }

// granted fails the test unless r is a grant with nothing wrong in it.
func (l *qpLocks) granted(who string, r qpLockReply) {
	l.t.Helper()
	for _, b := range r.bad {
		l.t.Errorf("%s: %s", who, b)
	}
	if r.outcome != qpAcked {
		l.t.Fatalf("%s: %+v", who, r)
	}
	l.t.Logf("%s: granted %s %s %d-%d at txid %d", who, r.grant.Mode, r.grant.Domain, r.grant.Lo, r.grant.Hi, r.grant.Txid)
}

// revokedBefore fails the test unless k gave up its state msgid before
// then, the moment a conflicting grant came.
func (l *qpLocks) revokedBefore(who string, k *simKernel, msgid uint64, then time.Time) {
	l.t.Helper()
	at, ok := k.lockEnded(msgid)
	if !ok || at.After(then) {
		l.t.Errorf("%s: state not given up before the conflicting grant at %v (ended %v, %v)", who, then, at, ok)
	}
}

// finish checks every kernel holds nothing and the history against every
// master's log.
func (l *qpLocks) finish() {
	for _, k := range l.c.kernels {
		if k != nil {
			k.checkClean()
		}
	}
	l.c.verify(l.began, time.Now())
}

// TestQuorumLocks: CAC_LOCK through the kernels of three masters. A
// conflicting request makes the holder's leaf revoke the state (its kernel
// releases it) and is then granted; compatible states coexist; a kernel
// that ignores the revoke has its transaction closed by its leaf when the
// revoke's time is out, before anyone else is granted the keys.
func TestQuorumLocks(t *testing.T) {
	notShort(t)
	t.Parallel()
	l := newQPLocks(t)
	c := l.c

	// m1 holds INUM 5 (granted as its aligned block 0-15).
	g1 := c.lockUntil(0, qpEx(5, 5), 10*time.Second)
	l.granted("m1 EXCLUSIVE INUM 5", g1)
	if g1.grant.Lo != 0 || g1.grant.Hi != 15 {
		t.Errorf("m1's grant %d-%d, want the aligned block 0-15", g1.grant.Lo, g1.grant.Hi)
	}
	// m2 asks for 15: m1's kernel is asked to release, does, and m2 gets it.
	g2 := c.kernel(1).cacLockReq(qpEx(15, 15), l.wait)
	l.granted("m2 EXCLUSIVE INUM 15 over m1's", g2)
	l.revokedBefore("m1", c.kernel(0), g1.msgid, g2.at)
	if g2.grant.Txid <= g1.grant.Txid {
		t.Errorf("m2's grant at txid %d, not after m1's %d", g2.grant.Txid, g1.grant.Txid)
	}
	// Another domain is independent: no revoke.
	rv := c.kernel(1).revokes
	ga := c.kernel(0).cacLockReq(cacLock{Domain: cacAttr, Mode: cacExclusive, Lo: 15, Hi: 15}, l.wait)
	l.granted("m1 EXCLUSIVE ATTR 15 (m2 holds INUM only)", ga)
	if c.kernel(1).revokes != rv {
		t.Errorf("m2 was asked to revoke for a request in another domain")
	}
	c.kernel(0).cacRelease(ga.msgid)
	// SHARED over m2's EXCLUSIVE: revoked; then SHARED beside SHARED.
	s3 := c.kernel(2).cacLockReq(qpSh(14, 14), l.wait)
	l.granted("m3 SHARED INUM 14 over m2's EXCLUSIVE", s3)
	l.revokedBefore("m2", c.kernel(1), g2.msgid, s3.at)
	rv3 := c.kernel(2).revokes
	s1 := c.kernel(0).cacLockReq(qpSh(14, 14), l.wait)
	l.granted("m1 SHARED INUM 14 beside m3's", s1)
	if c.kernel(2).revokes != rv3 {
		t.Errorf("m3 was asked to revoke a SHARED state for another SHARED request")
	}

	// A kernel that ignores the revoke loses the state when the revoke's
	// time is out (at most half a lease, PROTOCOL §6.6): its own leaf
	// closes its transaction with CAC_EXPIRED and gives the state back,
	// and only then is the request granted.
	k3 := c.kernel(2)
	k3.mu.Lock()
	k3.ignoreRevoke = true
	k3.mu.Unlock()
	c.kernel(0).cacRelease(s1.msgid)
	asked := time.Now()
	g4 := c.kernel(1).cacLockReq(qpEx(14, 14), l.lease+l.wait)
	l.granted("m2 EXCLUSIVE INUM 14 over m3's stubborn SHARED", g4)
	waitEventOK(5*time.Second, func() (bool, string) { _, ok := k3.lockEnded(s3.msgid); return ok, "" }, k3)
	if at, ok := k3.lockEnded(s3.msgid); !ok {
		t.Errorf("m3's state was never closed by its leaf (5s after m2's grant)")
	} else {
		t.Logf("m3's state closed by its leaf %v after m2 asked; m2 granted %v after", at.Sub(asked).Round(time.Millisecond),
			g4.at.Sub(asked).Round(time.Millisecond))
		if at.After(g4.at) {
			t.Errorf("m2 was granted %v after asking, before m3's leaf closed m3's state (%v): two holders at once",
				g4.at.Sub(asked), at.Sub(asked))
		}
	}
	k3.mu.Lock()
	k3.ignoreRevoke = false
	k3.mu.Unlock()
	c.kernel(1).cacRelease(g4.msgid)
	l.finish()
}

// TestQuorumLocksKernelMistakes: ways a kernel could end up believing it
// holds a state the group no longer records: giving up on a request
// whose grant comes later, and holding two overlapping grants; and a
// kernel that downgrades instead of releasing.
func TestQuorumLocksKernelMistakes(t *testing.T) {
	notShort(t)
	t.Parallel()
	l := newQPLocks(t)
	c := l.c

	// A kernel gives up on a request at once (DELETE right behind the
	// CREATE): whatever the group decides, nobody holds it afterwards, so
	// another master's request is granted without a lease's wait.
	k1 := c.kernel(0)
	k1.mu.Lock()
	id := k1.allocID()
	k1.ours[id] = "lock"
	k1.mu.Unlock()
	abandoned := qpEx(100, 100)
	k1.send(Msg{Header: Header{Cmd: CmdCacLock | kFlagCreate, MsgID: id}, Ext: abandoned.marshal()},
		Msg{Header: Header{Cmd: kOwnDelete, MsgID: id}})
	k1.mu.Lock()
	delete(k1.ours, id)
	k1.mu.Unlock()
	// The scenario is m2 asking after the group has decided the abandoned
	// request (granted and released, or not granted), which nothing on
	// the kernel's side shows: the decision takes a raft round (tick
	// 100 ms, one commit on loopback), and five ticks are left for it.
	time.Sleep(500 * time.Millisecond)
	asked := time.Now()
	r := c.lockUntil(1, qpEx(100, 100), 6*time.Second)
	l.granted("m2 EXCLUSIVE INUM 100 after m1's kernel abandoned it", r)
	if took := r.at.Sub(asked); took >= l.lease {
		t.Errorf("m2 waited %v for INUM 100 that nobody holds; m1's table: %s", took, c.locksOf(0))
	}
	c.kernel(1).cacRelease(r.msgid)

	// One kernel, two overlapping requests: each transaction is its own
	// holder, so the second revokes the first, and releasing either never
	// frees the other's keys.
	a := c.lockUntil(0, qpEx(200, 200), 10*time.Second)
	l.granted("m1 EXCLUSIVE INUM 200", a)
	b := c.kernel(0).cacLockReq(qpEx(200, 200), l.wait)
	l.granted("m1's second EXCLUSIVE INUM 200", b)
	l.revokedBefore("m1's first", c.kernel(0), a.msgid, b.at)
	m2 := c.kernel(1).cacLockReq(qpEx(200, 200), l.wait)
	l.granted("m2 EXCLUSIVE INUM 200", m2)
	l.revokedBefore("m1's second", c.kernel(0), b.msgid, m2.at)
	c.kernel(1).cacRelease(m2.msgid)

	// A writer in the way of a reader may stay a reader: the revoke says
	// SHARED, and a kernel that downgrades keeps its transaction, granted
	// SHARED anew, while the reader is granted beside it.
	kd := c.kernel(0)
	kd.mu.Lock()
	kd.downgrade = true
	kd.mu.Unlock()
	w := c.lockUntil(0, qpEx(300, 300), 10*time.Second)
	l.granted("m1 EXCLUSIVE INUM 300", w)
	rd := c.kernel(1).cacLockReq(qpSh(300, 300), l.wait)
	l.granted("m2 SHARED INUM 300 over m1's EXCLUSIVE", rd)
	// m1's SHARED grant comes on m1's kernel link, m2's on m2's: either
	// may arrive first.
	waitEventOK(5*time.Second, func() (bool, string) {
		kd.mu.Lock()
		defer kd.mu.Unlock()
		return kd.lockMode[w.msgid] == cacShared, ""
	}, kd)
	kd.mu.Lock()
	mode := kd.lockMode[w.msgid]
	_, ended := kd.lockEnd[w.msgid]
	kd.downgrade = false
	kd.mu.Unlock()
	if ended || mode != cacShared {
		t.Errorf("m1's downgraded state: ended %v, last granted %s; want still held, SHARED", ended, mode)
	}
	if locks := c.locksOf(0); !strings.Contains(locks, "SHARED INUM 288-303") {
		t.Errorf("m1's table after the downgrade: %s, want SHARED INUM 288-303", locks)
	}
	kd.cacRelease(w.msgid)
	c.kernel(1).cacRelease(rd.msgid)
	l.finish()
}
