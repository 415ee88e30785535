package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// qhNode is one master of the in-memory group: its directory survives a
// crash, everything else is rebuilt from the bbolt file on restart.
type qhNode struct {
	id    uint64
	dir   string
	store *quorumStore
	n     *quorumNode // nil while crashed

	// lastApplied spans restarts: a restarted master must never apply an
	// index it already applied before the crash.
	lastApplied uint64
	history     []uint64 // txids applied (or jumped to by snapshot "s<txid>")
	snapJumps   map[uint64]bool
}

// quorumHarness runs a raft group in memory without goroutines, in the
// manner of etcd's rafttest: messages sit in a queue until delivered, and
// every node is driven by the same calls the daemon makes. It checks
// safety on every step and, for scripts, prints what each master reports.
type quorumHarness struct {
	t      testing.TB
	cfg    quorumConfig
	root   string
	nodes  map[uint64]*qhNode
	queue  []*pb.Message
	groups map[uint64]int // partition; nil when healed
	// blackholed masters receive nothing, but sends to them succeed: a
	// link that is up and loses everything.
	blackholed map[uint64]bool
	out        strings.Builder
	quiet      bool

	byTxid map[uint64]string // fingerprint of what each txid applied
	byReq  map[string]uint64 // origin/reqID -> txid

	// Joining (quorum_join.go): each master's node key (by name, "k4",
	// "k4.1" after a rekey), the keys it trusts, its table of verified
	// joiners; the sweep counter; the (to, from) pairs whose refused
	// messages were printed.
	clid    UUID
	keys    map[string]ed25519.PrivateKey
	keyOf   map[uint64]string
	trusts  map[uint64]*TrustStore
	joins   map[uint64]*quorumJoins
	sweeps  uint64
	refused map[[2]uint64]bool
	now     time.Time
}

func newQuorumHarness(t testing.TB) *quorumHarness {
	return &quorumHarness{t: t, root: t.TempDir(), nodes: map[uint64]*qhNode{},
		byTxid: map[uint64]string{}, byReq: map[string]uint64{},
		clid: qhUUID(0xc1d), keys: map[string]ed25519.PrivateKey{}, keyOf: map[uint64]string{},
		trusts: map[uint64]*TrustStore{}, joins: map[uint64]*quorumJoins{}, refused: map[[2]uint64]bool{},
		now: time.Unix(1700000000, 0)}
}

// qhUUID is a fixed uuid whose first 8 bytes are id: as a pfs_fsid, its
// master id is id.
func qhUUID(id uint64) UUID {
	var u UUID
	binary.LittleEndian.PutUint64(u[:], id)
	copy(u[8:], "harness!")
	return u
}

// key is master id's node key (made from a fixed seed, so fingerprints
// in scripts are stable).
func (h *quorumHarness) key(id uint64) ed25519.PrivateKey {
	name, ok := h.keyOf[id]
	if !ok {
		name = fmt.Sprintf("k%d", id)
		h.keyOf[id] = name
	}
	return h.namedKey(name)
}

func (h *quorumHarness) namedKey(name string) ed25519.PrivateKey {
	k, ok := h.keys[name]
	if !ok {
		seed := sha256.Sum256([]byte("quorum harness key " + name))
		k = ed25519.NewKeyFromSeed(seed[:])
		h.keys[name] = k
	}
	return k
}

// keyName names a fingerprint by the key it came from.
func (h *quorumHarness) keyName(fp quorumKeyFP) string {
	for name, k := range h.keys {
		if keyFP(k.Public().(ed25519.PublicKey)) == fp {
			return name
		}
	}
	return fp.String()
}

func (h *quorumHarness) trust(id uint64) *TrustStore {
	ts := h.trusts[id]
	if ts == nil {
		var err error
		if ts, err = LoadTrustStore(""); err != nil {
			h.t.Fatal(err)
		}
		h.trusts[id] = ts
	}
	return ts
}

func (h *quorumHarness) joinsOf(id uint64) *quorumJoins {
	j := h.joins[id]
	if j == nil {
		j = newQuorumJoins()
		h.joins[id] = j
	}
	return j
}

func (h *quorumHarness) ids() []uint64 {
	var ids []uint64
	for id := range h.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (h *quorumHarness) live(id uint64) *quorumNode {
	if qn := h.nodes[id]; qn != nil {
		return qn.n
	}
	return nil
}

func (h *quorumHarness) connected(a, b uint64) bool {
	return h.groups == nil || h.groups[a] == h.groups[b]
}

func (h *quorumHarness) printf(format string, args ...any) {
	if !h.quiet {
		fmt.Fprintf(&h.out, format, args...)
	}
}

func (h *quorumHarness) open(id uint64, peers []uint64) {
	qn := h.nodes[id]
	if qn == nil {
		qn = &qhNode{id: id, dir: fmt.Sprintf("%s/n%d", h.root, id), snapJumps: map[uint64]bool{}}
		h.nodes[id] = qn
	}
	st, err := openQuorumStore(qn.dir, quorumStoreOptions{noSync: true})
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := h.cfg
	if os.Getenv("QUORUM_DEBUG") != "" {
		cfg.Logf = h.t.Logf
	}
	n, err := newQuorumNode(id, peers, st, cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	qn.store, qn.n = st, n
}

// qhLink is the in-memory quorumTransport: a cut link or a crashed peer is a
// send error, as a lost DMSG circuit would be.
type qhLink struct {
	h    *quorumHarness
	from uint64
}

func (qhLink) close() {}

func (l qhLink) send(m *pb.Message) error {
	if !l.h.connected(l.from, m.GetTo()) || l.h.live(m.GetTo()) == nil {
		return fmt.Errorf("link %d->%d down", l.from, m.GetTo())
	}
	l.h.queue = append(l.h.queue, m)
	return nil
}

func (h *quorumHarness) pump(id uint64) {
	qn := h.nodes[id]
	if qn.n == nil {
		return
	}
	rd, err := quorumPump(qn.n, qhLink{h, id})
	if err != nil {
		h.t.Fatalf("n%d: %v", id, err)
	}
	h.record(qn, rd)
	if err := qn.n.fsm.checkInvariants(); err != nil {
		h.t.Fatalf("n%d at txid %d: %v", id, qn.n.fsm.applied, err)
	}
}

func (h *quorumHarness) pumpAll() {
	for _, id := range h.ids() {
		h.pump(id)
	}
}

func fmtRange(lo, hi uint64) string { return fmt.Sprintf("%d-%d", lo, hi) }

func fmtHoldings(hs []cacHolding) string {
	var parts []string
	for _, x := range hs {
		parts = append(parts, fmt.Sprintf("%s %s %s %s txid=%d", x.Holder, x.Domain, x.Mode, fmtRange(x.Lo, x.Hi), x.Txid))
	}
	return strings.Join(parts, "; ")
}

// describe is both the script output for a result and its fingerprint:
// two masters applying the same txid must produce the same text.
func describe(r quorumResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "txid=%d %s", r.Txid, r.Op.Kind)
	if r.Origin != 0 {
		fmt.Fprintf(&b, " req=n%d/%s", r.Origin, fmtReqID(r.ReqID))
	}
	switch {
	case r.Err != "" && r.Op.Kind == quorumOpMembers:
		fmt.Fprintf(&b, " refused: %s; members=%s", r.Err, joinIDs(r.Members))
	case r.Err != "":
		fmt.Fprintf(&b, " rejected: %s", r.Err)
	case r.Op.Kind == quorumOpCommit:
		fmt.Fprintf(&b, " payload=%s", r.Op.Payload)
	case r.Op.Kind == quorumOpMembers:
		fmt.Fprintf(&b, " members=%s", joinIDs(r.Members))
		if len(r.Learners) > 0 {
			fmt.Fprintf(&b, " learners=%s", joinIDs(r.Learners))
		}
	case r.Stale:
		fmt.Fprintf(&b, " %s %s %s %s at txid %d: stale", r.Op.Holder, r.Op.Domain, r.Op.Mode,
			fmtRange(r.Op.Lo, r.Op.Hi), r.Op.UpTo)
	case r.Grant != nil:
		fmt.Fprintf(&b, " granted %s %s %s %s (asked %s)", r.Grant.Holder, r.Grant.Domain, r.Grant.Mode,
			fmtRange(r.Grant.Lo, r.Grant.Hi), fmtRange(r.Op.Lo, r.Op.Hi))
	case len(r.Conflict) > 0:
		fmt.Fprintf(&b, " %s %s %s %s conflicts with: %s", r.Op.Holder, r.Op.Domain, r.Op.Mode,
			fmtRange(r.Op.Lo, r.Op.Hi), fmtHoldings(r.Conflict))
	default:
		fmt.Fprintf(&b, " %s released: %s", r.Op.Holder, orNone(fmtHoldings(r.Released)))
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func joinIDs(ids []uint64) string {
	var s []string
	for _, id := range ids {
		s = append(s, strconv.FormatUint(id, 10))
	}
	return strings.Join(s, ",")
}

// record checks what a master reported and prints it. The origin prints
// results in full (it is the one answering the request); the others
// print only the txids they applied.
func (h *quorumHarness) record(qn *qhNode, rd quorumReady) {
	t := h.t
	for _, r := range rd.Durable {
		h.printf("n%d: durable req=%s\n", qn.id, fmtReqID(r))
	}
	if rd.Snapshot != 0 {
		if rd.Snapshot <= qn.lastApplied {
			t.Fatalf("n%d: snapshot at %d does not advance past applied %d", qn.id, rd.Snapshot, qn.lastApplied)
		}
		qn.lastApplied = rd.Snapshot
		qn.history = append(qn.history, rd.Snapshot)
		qn.snapJumps[rd.Snapshot] = true
		h.printf("n%d: restored snapshot txid=%d\n", qn.id, rd.Snapshot)
	}
	var terse []string
	flush := func() {
		if len(terse) > 0 {
			h.printf("n%d: applied txid=%s\n", qn.id, strings.Join(terse, ","))
			terse = nil
		}
	}
	for _, r := range rd.Applied {
		if r.Txid <= qn.lastApplied {
			t.Fatalf("n%d: applied txid %d again (or out of order) after %d", qn.id, r.Txid, qn.lastApplied)
		}
		qn.lastApplied = r.Txid
		qn.history = append(qn.history, r.Txid)
		d := describe(r)
		if prev, ok := h.byTxid[r.Txid]; ok && prev != d {
			t.Fatalf("state machine safety: n%d applied txid %d as %q, another master as %q", qn.id, r.Txid, d, prev)
		}
		h.byTxid[r.Txid] = d
		if r.Origin != 0 {
			key := fmt.Sprintf("%d/%d", r.Origin, r.ReqID)
			if tx, ok := h.byReq[key]; ok && tx != r.Txid {
				t.Fatalf("request %s applied twice: txid %d and %d", key, tx, r.Txid)
			}
			h.byReq[key] = r.Txid
		}
		if r.Origin == qn.id || h.live(r.Origin) == nil {
			flush()
			late := ""
			if r.Late {
				late = " (late: already reported failed)"
			}
			h.printf("n%d: applied %s%s\n", qn.id, d, late)
		} else {
			terse = append(terse, strconv.FormatUint(r.Txid, 10))
		}
	}
	flush()
	for _, r := range rd.Applied {
		if r.Origin == qn.id && r.Op.Kind != quorumOpMembers {
			h.checkDurable(qn, r)
		}
	}
	for _, f := range rd.Failed {
		h.printf("n%d: failed req=%s: %v\n", qn.id, fmtReqID(f.ReqID), f.Err)
	}
}

// checkDurable fails the test unless the entry of r, a request qn
// answers now, is in a committed bbolt transaction (fsync'd, in the
// daemon) on a majority of qn's voters: an answer given before its
// batch's write on a majority would be lost by a crash of the machines
// that acknowledged it. A crashed master's file is read as it was left.
func (h *quorumHarness) checkDurable(qn *qhNode, r quorumResult) {
	voters := qn.n.cs.GetVoters()
	var on []uint64
	for _, id := range voters {
		m := h.nodes[id]
		if m == nil {
			continue
		}
		ok, err := qhDurable(m, r)
		if err != nil {
			h.t.Fatalf("n%d: reading n%d's file for txid %d: %v", qn.id, id, r.Txid, err)
		}
		if ok {
			on = append(on, id)
		}
	}
	if len(on) <= len(voters)/2 {
		h.t.Fatalf("n%d answered req %s (txid %d) while its entry is in the committed file of only %v of the voters %v",
			qn.id, fmtReqID(r.ReqID), r.Txid, on, voters)
	}
}

// qhDurable reports whether m's file holds r's entry at its txid, or a
// compaction point past it (a snapshot covers it), in a committed
// transaction.
func qhDurable(m *qhNode, r quorumResult) (bool, error) {
	st := m.store
	if st == nil {
		var err error
		if st, err = openQuorumStore(m.dir, quorumStoreOptions{noSync: true}); err != nil {
			return false, err
		}
		defer st.Close()
	}
	if st.marks().trunc.index >= r.Txid {
		return true, nil
	}
	ents, err := st.Entries(r.Txid, r.Txid+1, math.MaxUint64)
	if errors.Is(err, raft.ErrUnavailable) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	origin, reqID, err := decodeQuorumHead(ents[0].GetData())
	return err == nil && origin == r.Origin && reqID == r.ReqID, nil
}

// deliver hands every queued message to its destination, then lets all
// masters react. Messages to a crashed master or across a partition are
// lost.
func (h *quorumHarness) deliver(msgs []*pb.Message) {
	for _, m := range msgs {
		n := h.live(m.GetTo())
		if n == nil || !h.connected(m.GetFrom(), m.GetTo()) || h.blackholed[m.GetTo()] {
			continue
		}
		h.step(n, m)
	}
	h.pumpAll()
}

// step hands m to n; a message n refuses as from outside its
// configuration is printed once per (receiver, sender).
func (h *quorumHarness) step(n *quorumNode, m *pb.Message) {
	err := n.Step(m)
	switch {
	case err == nil, errors.Is(err, raft.ErrStepPeerNotFound), errors.Is(err, raft.ErrStepLocalMsg):
	case errors.Is(err, errQuorumNotMember):
		if pair := [2]uint64{n.id, m.GetFrom()}; !h.refused[pair] {
			h.refused[pair] = true
			h.printf("n%d: not stepping %s (and what follows) from %d: not in its configuration\n", n.id, m.GetType(), m.GetFrom())
		}
	default:
		h.t.Fatalf("deliver %s %d->%d: %v", m.GetType(), m.GetFrom(), m.GetTo(), err)
	}
}

func (h *quorumHarness) deliverQueued() {
	msgs := h.queue
	h.queue = nil
	h.deliver(msgs)
}

func (h *quorumHarness) stabilize() {
	h.pumpAll()
	for i := 0; len(h.queue) > 0; i++ {
		if i > 1000 {
			h.t.Fatal("group did not stabilize within 1000 rounds")
		}
		h.deliverQueued()
	}
}

func (h *quorumHarness) partition(groups [][]uint64) {
	h.groups = map[uint64]int{}
	for i, g := range groups {
		for _, id := range g {
			h.groups[id] = i + 1
		}
	}
	// Masters not named form their own group each.
	for _, id := range h.ids() {
		if _, ok := h.groups[id]; !ok {
			h.groups[id] = -int(id)
		}
	}
	// The span layer would see these circuits drop.
	for _, a := range h.ids() {
		for _, b := range h.ids() {
			if a != b && !h.connected(a, b) {
				if n := h.live(a); n != nil {
					n.LinkDown(b)
				}
			}
		}
	}
	h.pumpAll()
}

// crash drops a master's memory. With afterPersist it first receives the
// messages queued for it and does half of an Advance: the Ready is
// written to bbolt but nothing is applied or sent, which is the window a
// kill -9 can hit.
func (h *quorumHarness) crash(id uint64, afterPersist bool) {
	qn := h.nodes[id]
	if qn.n == nil {
		h.t.Fatalf("n%d is already down", id)
	}
	if afterPersist {
		h.queue = slices.DeleteFunc(h.queue, func(m *pb.Message) bool {
			if m.GetTo() != id || !h.connected(m.GetFrom(), id) {
				return false
			}
			h.step(qn.n, m)
			return true
		})
	}
	if afterPersist && qn.n.rn.HasReady() {
		rd := qn.n.rn.Ready()
		if _, err := qn.store.saveReady(rd.HardState, rd.Entries, rd.Snapshot); err != nil {
			h.t.Fatal(err)
		}
		h.printf("n%d: persisted ready (%d entries, %d committed unapplied) then crashed\n", id, len(rd.Entries), len(rd.CommittedEntries))
	}
	if err := qn.store.Close(); err != nil {
		h.t.Fatal(err)
	}
	qn.n, qn.store = nil, nil
}

func (h *quorumHarness) status() string {
	var b strings.Builder
	for _, id := range h.ids() {
		n := h.live(id)
		if n == nil {
			fmt.Fprintf(&b, "n%d: down\n", id)
			continue
		}
		st := n.Status()
		q := "no"
		if st.HasQuorum {
			q = "yes"
		}
		learners := ""
		if len(st.Learners) > 0 {
			learners = " learners=" + joinIDs(st.Learners)
		}
		fmt.Fprintf(&b, "n%d: leader=%d term=%d commit=%d txid=%d members=%s%s quorum=%s pending=%d\n",
			id, st.Leader, st.Term, st.Commit, st.LastTxid, joinIDs(st.Members), learners, q, st.Pending)
	}
	return b.String()
}

func (h *quorumHarness) takeOut() string {
	s := strings.TrimSuffix(h.out.String(), "\n")
	h.out.Reset()
	if s == "" {
		return "ok"
	}
	return s
}

// ---- script commands ----

func qhNodes(t *testing.T, td *datadriven.TestData, h *quorumHarness) []uint64 {
	a, ok := td.Arg("node")
	if !ok {
		return h.ids()
	}
	var ids []uint64
	for _, v := range a.Vals {
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil || h.nodes[id] == nil {
			td.Fatalf(t, "bad node %q", v)
		}
		ids = append(ids, id)
	}
	return ids
}

func qhTarget(t *testing.T, td *datadriven.TestData, h *quorumHarness) *quorumNode {
	ids := qhNodes(t, td, h)
	if len(ids) != 1 || !td.HasArg("node") {
		td.Fatalf(t, "need exactly one node=")
	}
	n := h.live(ids[0])
	if n == nil {
		td.Fatalf(t, "n%d is down", ids[0])
	}
	return n
}

func qhRange(t *testing.T, td *datadriven.TestData) (uint64, uint64) {
	lo, hi, ok := strings.Cut(argOr(td, "range", "0-max"), "-")
	if !ok {
		td.Fatalf(t, "range wants lo-hi")
	}
	l, err1 := strconv.ParseUint(lo, 0, 64)
	u, err2 := strconv.ParseUint(hi, 0, 64)
	if hi == "max" {
		u, err2 = ^uint64(0), nil
	}
	if err1 != nil || err2 != nil {
		td.Fatalf(t, "bad range %s-%s", lo, hi)
	}
	return l, u
}

func (h *quorumHarness) propose(t *testing.T, td *datadriven.TestData, n *quorumNode, op quorumOp) {
	reqID, err := n.Propose(op)
	if err != nil {
		h.printf("n%d: propose error: %v\n", n.id, err)
		return
	}
	h.printf("n%d: proposed req=%s\n", n.id, fmtReqID(reqID))
	h.pump(n.id)
}

func (h *quorumHarness) lockOp(t *testing.T, td *datadriven.TestData, kind quorumOpKind) quorumOp {
	op := quorumOp{Kind: kind, Holder: argOr(td, "holder", "")}
	var err error
	if kind == quorumOpLock || kind == quorumOpRelease || kind == quorumOpRevalidate {
		if op.Domain, err = parseCacDomain(argOr(td, "domain", "INUM")); err != nil {
			td.Fatalf(t, "%v", err)
		}
		op.Lo, op.Hi = qhRange(t, td)
	}
	if kind == quorumOpLock || kind == quorumOpRevalidate {
		if op.Mode, err = parseCacMode(argOr(td, "mode", "SHARED")); err != nil {
			td.Fatalf(t, "%v", err)
		}
	}
	op.UpTo = argU(t, td, "upto", 0)
	op.At = int64(argU(t, td, "at", 0))
	return op
}

func (h *quorumHarness) run(t *testing.T, td *datadriven.TestData) string {
	switch td.Cmd {
	case "cluster":
		h.cfg = quorumConfig{ProposeTimeoutTicks: int(argU(t, td, "timeout", 0)),
			SnapshotEvery: argU(t, td, "snap-every", 0), SnapshotKeep: argU(t, td, "snap-keep", 0)}
		var peers []uint64
		for i := uint64(1); i <= argU(t, td, "n", 3); i++ {
			peers = append(peers, i)
		}
		for _, id := range peers {
			h.open(id, peers)
		}
		h.pumpAll()
	case "add-node":
		id := argU(t, td, "id", 0)
		if h.nodes[id] != nil {
			td.Fatalf(t, "n%d exists", id)
		}
		h.open(id, nil)
		h.pump(id)
	case "campaign":
		n := qhTarget(t, td, h)
		if err := n.Campaign(); err != nil {
			td.Fatalf(t, "%v", err)
		}
		h.pump(n.id)
	case "propose":
		n := qhTarget(t, td, h)
		switch {
		case td.HasArg("commit"):
			h.propose(t, td, n, quorumOp{Kind: quorumOpCommit, Payload: []byte(argOr(td, "payload", ""))})
		case td.HasArg("lock"):
			h.propose(t, td, n, h.lockOp(t, td, quorumOpLock))
		case td.HasArg("release"):
			h.propose(t, td, n, h.lockOp(t, td, quorumOpRelease))
		case td.HasArg("expire"):
			h.propose(t, td, n, h.lockOp(t, td, quorumOpExpire))
		case td.HasArg("revalidate"):
			h.propose(t, td, n, h.lockOp(t, td, quorumOpRevalidate))
		default:
			td.Fatalf(t, "propose what? (commit, lock, release, expire)")
		}
	case "lock":
		h.propose(t, td, qhTarget(t, td, h), h.lockOp(t, td, quorumOpLock))
	case "release":
		h.propose(t, td, qhTarget(t, td, h), h.lockOp(t, td, quorumOpRelease))
	case "expire":
		h.propose(t, td, qhTarget(t, td, h), h.lockOp(t, td, quorumOpExpire))
	case "conf":
		n := qhTarget(t, td, h)
		var change quorumMemberChange
		var node uint64
		for _, c := range []struct {
			arg    string
			change quorumMemberChange
		}{{"add", quorumAddLearner}, {"promote", quorumPromote}, {"remove", quorumRemove}} {
			if td.HasArg(c.arg) {
				change, node = c.change, argU(t, td, c.arg, 0)
			}
		}
		var key *quorumKeyFP
		if name := argOr(td, "key", ""); name != "" {
			key = new(keyFP(h.namedKey(name).Public().(ed25519.PublicKey)))
		}
		reqID, err := n.ProposeConfChange(change, node, key)
		if err != nil {
			h.printf("n%d: conf error: %v\n", n.id, err)
			break
		}
		h.printf("n%d: proposed req=%s\n", n.id, fmtReqID(reqID))
		h.pump(n.id)
	case "trust":
		// trust node=(1,2,3) key=(k4,...): these masters trust those keys.
		a, _ := td.Arg("key")
		for _, id := range qhNodes(t, td, h) {
			for _, name := range a.Vals {
				if err := h.trust(id).AddKey(name, h.namedKey(name).Public().(ed25519.PublicKey)); err != nil {
					td.Fatalf(t, "%v", err)
				}
			}
		}
	case "rekey":
		// rekey id=4 key=k4.1: master 4's node now has another key.
		h.keyOf[argU(t, td, "id", 0)] = argOr(td, "key", "")
	case "join":
		h.join(t, td)
	case "sweep":
		// The leader's membership step, as the driver's sweep takes it.
		h.sweeps++
		for _, id := range qhNodes(t, td, h) {
			n := h.live(id)
			if n == nil {
				continue
			}
			change, node, key := h.joinsOf(id).next(n, h.sweeps)
			if change == 0 {
				continue
			}
			with := ""
			if key != nil {
				with = " bound to " + h.keyName(*key)
			}
			reqID, err := n.ProposeConfChange(change, node, key)
			if err != nil {
				h.printf("n%d: sweep: %s %d%s: %v\n", id, change, node, with, err)
				continue
			}
			h.printf("n%d: sweep: %s %d%s: req=%s\n", id, change, node, with, fmtReqID(reqID))
			h.pump(id)
		}
	case "wait-sweeps":
		// Time passes for the joiner tables without anyone asking.
		h.sweeps += argU(t, td, "n", 1)
	case "recover":
		// recover node=2 survivors=(2): the operator's offline recovery
		// of a stopped master, which then restarts.
		n := qhTarget(t, td, h)
		a, _ := td.Arg("survivors")
		var survivors []uint64
		for _, v := range a.Vals {
			id, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				td.Fatalf(t, "bad survivor %q", v)
			}
			survivors = append(survivors, id)
		}
		id := n.id
		h.crash(id, false)
		st, err := openQuorumStore(h.nodes[id].dir, quorumStoreOptions{noSync: true})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := recoverQuorum(st, id, survivors)
		st.Close()
		if err != nil {
			h.printf("n%d: recover: %v\n", id, err)
		} else {
			h.printf("n%d: recovered: txid=%d term=%d voters=%s removed=%s tail=%d emptied=%d last=%d\n", id, rep.Applied,
				rep.Term, joinIDs(rep.Voters), orNone(joinIDs(rep.Removed)), rep.Tail, rep.Emptied, rep.Last)
		}
		h.open(id, nil)
		h.printf("n%d: restarted at txid=%d\n", id, h.live(id).fsm.applied)
		h.pump(id)
	case "wipe":
		// The master's state is gone: a new, empty quorum.db.
		for _, id := range qhNodes(t, td, h) {
			if h.live(id) != nil {
				h.crash(id, false)
			}
			if err := os.RemoveAll(h.nodes[id].dir); err != nil {
				t.Fatal(err)
			}
			h.open(id, nil)
			h.pump(id)
		}
	case "tick":
		for range argU(t, td, "n", 1) {
			for _, id := range qhNodes(t, td, h) {
				if n := h.live(id); n != nil {
					n.Tick()
					h.pump(id)
				}
			}
		}
	case "deliver":
		h.deliverQueued()
	case "stabilize":
		h.stabilize()
	case "partition":
		var groups [][]uint64
		cur := []uint64{}
		for _, a := range td.CmdArgs {
			if a.Key == "|" {
				groups, cur = append(groups, cur), []uint64{}
				continue
			}
			id, err := strconv.ParseUint(a.Key, 10, 64)
			if err != nil {
				td.Fatalf(t, "partition wants ids and |, got %q", a.Key)
			}
			cur = append(cur, id)
		}
		h.partition(append(groups, cur))
	case "heal":
		h.groups, h.blackholed = nil, nil
		h.pumpAll()
	case "blackhole":
		h.blackholed = map[uint64]bool{}
		for _, id := range qhNodes(t, td, h) {
			h.blackholed[id] = true
		}
	case "commits":
		// commits node=1 n=130: that many commits through one master,
		// applied everywhere, summed up in one line.
		n := qhTarget(t, td, h)
		count := argU(t, td, "n", 1)
		h.quiet = true
		for i := range count {
			if _, err := n.Propose(quorumOp{Kind: quorumOpCommit, Payload: fmt.Appendf(nil, "bulk%d", i)}); err != nil {
				t.Fatal(err)
			}
			h.pump(n.id)
		}
		h.stabilize()
		h.quiet = false
		h.printf("n%d: %d commits, applied up to txid=%d\n", n.id, count, n.fsm.applied)
	case "crash":
		for _, id := range qhNodes(t, td, h) {
			h.crash(id, argOr(td, "at", "") == "apply")
		}
	case "restart":
		for _, id := range qhNodes(t, td, h) {
			h.open(id, nil)
			h.printf("n%d: restarted at txid=%d\n", id, h.live(id).fsm.applied)
			h.pump(id)
		}
	case "status":
		return strings.TrimSuffix(h.status(), "\n")
	case "locks":
		var b strings.Builder
		for _, id := range qhNodes(t, td, h) {
			n := h.live(id)
			if n == nil {
				fmt.Fprintf(&b, "n%d: down\n", id)
				continue
			}
			hs := n.Holdings()
			fmt.Fprintf(&b, "n%d: txid=%d %d holdings\n", id, n.fsm.applied, len(hs))
			for _, x := range hs {
				fmt.Fprintf(&b, "  %s %s %s %s txid=%d\n", x.Holder, x.Domain, x.Mode, fmtRange(x.Lo, x.Hi), x.Txid)
			}
		}
		return strings.TrimSuffix(b.String(), "\n")
	case "history":
		var b strings.Builder
		for _, id := range qhNodes(t, td, h) {
			qn := h.nodes[id]
			var parts []string
			for _, tx := range qn.history {
				if qn.snapJumps[tx] {
					parts = append(parts, fmt.Sprintf("snap@%d", tx))
				} else {
					parts = append(parts, h.byTxid[tx])
				}
			}
			fmt.Fprintf(&b, "n%d:\n", id)
			for _, p := range parts {
				fmt.Fprintf(&b, "  %s\n", p)
			}
		}
		return strings.TrimSuffix(b.String(), "\n")
	case "check":
		if err := h.checkConverged(); err != nil {
			return "error: " + err.Error()
		}
		return "ok"
	default:
		td.Fatalf(t, "unknown command %s", td.Cmd)
	}
	return h.takeOut()
}

// join is master node= asking to be admitted, with the request the
// daemon builds, as each target member's driver would take it: verifyJoin
// and then the member's table. Options forge what an attacker could:
// claim= another id, fsid= another master's fsid, clid=other, sig=bad,
// key= another node key, skew= a clock that far off.
func (h *quorumHarness) join(t *testing.T, td *datadriven.TestData) {
	joiner := qhTarget(t, td, h)
	var targets []uint64
	if a, ok := td.Arg("to"); ok {
		for _, v := range a.Vals {
			id, _ := strconv.ParseUint(v, 10, 64)
			targets = append(targets, id)
		}
	} else {
		for _, id := range h.ids() {
			if id != joiner.id {
				targets = append(targets, id)
			}
		}
	}
	key := h.key(joiner.id)
	if name := argOr(td, "key", ""); name != "" {
		key = h.namedKey(name)
	}
	fsid, clid := qhUUID(joiner.id), h.clid
	if f := argU(t, td, "fsid", 0); f != 0 {
		fsid = qhUUID(f)
	}
	if argOr(td, "clid", "") == "other" {
		clid = qhUUID(0xbad)
	}
	skew, err := time.ParseDuration(argOr(td, "skew", "0s"))
	if err != nil {
		td.Fatalf(t, "%v", err)
	}
	for _, to := range targets {
		req := newQrmJoin(key, clid, fsid, to, h.now.Add(skew))
		if c := argU(t, td, "claim", 0); c != 0 {
			req.From = c
		}
		if argOr(td, "sig", "") == "bad" {
			req.Sig[0] ^= 1
		}
		// Over the wire and back, as the member sees it.
		got, err := parseQrmJoin(req.marshal(), req.aux(), true)
		if err != nil {
			t.Fatal(err)
		}
		res := joinNotMember
		if m := h.live(to); m != nil {
			var fp quorumKeyFP
			res, fp, _ = verifyJoin(got, h.clid, to, h.trust(to).Lookup, h.now)
			if res.keyChecked() {
				res = h.joinsOf(to).admit(m, got.From, fp, res, h.sweeps)
			}
		} else {
			h.printf("n%d -> n%d: no answer (down)\n", joiner.id, to)
			continue
		}
		h.printf("n%d -> n%d: %s\n", joiner.id, to, res)
		if res.admitted() {
			joiner.Sponsor(to)
		}
	}
}

// checkConverged compares the live masters: same applied index, same
// lock table, byte for byte, and every table within the invariants.
func (h *quorumHarness) checkConverged() error {
	var ref []byte
	var refID uint64
	for _, id := range h.ids() {
		n := h.live(id)
		if n == nil {
			continue
		}
		if err := n.fsm.checkInvariants(); err != nil {
			return fmt.Errorf("n%d: %w", id, err)
		}
		img, err := n.fsm.encode()
		if err != nil {
			return err
		}
		if ref == nil {
			ref, refID = img, id
			continue
		}
		if !bytes.Equal(ref, img) {
			return fmt.Errorf("n%d and n%d differ:\n%s\n%s", refID, id, ref, img)
		}
	}
	return nil
}

func TestQuorumScripts(t *testing.T) {
	// Not parallel: its scripts are, in the sequential phase
	// (schedule_test.go).
	datadriven.Walk(t, "testdata/quorum", func(t *testing.T, path string) {
		t.Parallel()
		h := newQuorumHarness(t)
		defer h.closeAll()
		datadriven.RunTest(t, path, h.run)
	})
}

func (h *quorumHarness) closeAll() {
	for _, qn := range h.nodes {
		if qn.store != nil {
			qn.store.Close()
		}
	}
}

// ---- randomized safety test ----

// TestQuorumRandomized drives 3- and 5-master groups through random
// proposals, ticks, message loss and reordering, partitions, crashes (some
// between persisting and applying) and restarts. record() checks on every
// step that a txid means the same thing on every master, that a master
// never applies an index twice or out of order across restarts, and that
// no request is applied twice; pump() checks the lock-table invariants
// (no overlapping EXCLUSIVE/MODIFIED grants). At the end the group is
// healed and must converge to identical state. The schedule is seeded;
// raft's own election jitter is not (it uses crypto/rand), so a failure
// is reproduced by seed in distribution, not step for step.
func TestQuorumRandomized(t *testing.T) {
	// Not parallel: its runs are, in the sequential phase (schedule_test.go).
	steps, seeds := 2000, uint64(6)
	switch {
	case testing.Short():
		steps, seeds = 400, 2
	case raceEnabled: // one goroutine: nothing to race, ten times slower
		seeds = 2
	}
	for _, size := range []int{3, 5} {
		for seed := uint64(1); seed <= seeds; seed++ {
			t.Run(fmt.Sprintf("n=%d/seed=%d", size, seed), func(t *testing.T) {
				t.Parallel()
				quorumRandomRun(t, size, seed, steps)
			})
		}
	}
}

func quorumRandomRun(t *testing.T, size int, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, uint64(size)))
	h := newQuorumHarness(t)
	defer h.closeAll()
	h.quiet = true
	h.cfg = quorumConfig{ProposeTimeoutTicks: 30, SnapshotEvery: 9, SnapshotKeep: 3}
	var peers []uint64
	for i := 1; i <= size; i++ {
		peers = append(peers, uint64(i))
	}
	for _, id := range peers {
		h.open(id, peers)
	}
	if err := h.live(1).Campaign(); err != nil {
		t.Fatal(err)
	}
	h.stabilize()

	holders := []string{"leafA", "leafB", "leafC"}
	proposed := 0
	pick := func() uint64 { return peers[rng.IntN(len(peers))] }
	randOp := func() quorumOp {
		switch r := rng.IntN(10); {
		case r < 3:
			return quorumOp{Kind: quorumOpCommit, Payload: fmt.Appendf(nil, "p%d", rng.IntN(1000))}
		case r < 8:
			lo := uint64(rng.IntN(64))
			return quorumOp{Kind: quorumOpLock, Holder: holders[rng.IntN(len(holders))],
				Domain: cacDomain(1 + rng.IntN(2)), Mode: cacMode(rng.IntN(4)), Lo: lo, Hi: lo + uint64(rng.IntN(12))}
		case r < 9:
			lo := uint64(rng.IntN(64))
			return quorumOp{Kind: quorumOpRelease, Holder: holders[rng.IntN(len(holders))],
				Domain: cacDomain(1 + rng.IntN(2)), Lo: lo, Hi: lo + uint64(rng.IntN(30))}
		default:
			return quorumOp{Kind: quorumOpExpire, Holder: holders[rng.IntN(len(holders))], UpTo: uint64(rng.IntN(40))}
		}
	}
	for range steps {
		switch r := rng.IntN(100); {
		case r < 30:
			if n := h.live(pick()); n != nil {
				if _, err := n.Propose(randOp()); err != nil {
					t.Fatal(err)
				}
				proposed++
				h.pump(n.id)
			}
		case r < 50:
			for _, id := range peers {
				if n := h.live(id); n != nil {
					n.Tick()
					h.pump(id)
				}
			}
		case r < 85:
			msgs := h.queue
			h.queue = nil
			rng.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
			msgs = slices.DeleteFunc(msgs, func(*pb.Message) bool { return rng.IntN(20) == 0 })
			h.deliver(msgs)
		case r < 88:
			var a, b []uint64
			for _, id := range peers {
				if rng.IntN(2) == 0 {
					a = append(a, id)
				} else {
					b = append(b, id)
				}
			}
			h.partition([][]uint64{a, b})
		case r < 93:
			h.groups = nil
		case r < 96:
			if id := pick(); h.live(id) != nil {
				h.crash(id, rng.IntN(2) == 0)
			}
		case r < 99:
			if id := pick(); h.live(id) == nil {
				h.open(id, nil)
				h.pump(id)
			}
		default:
			if n := h.live(pick()); n != nil {
				_ = n.Campaign()
				h.pump(n.id)
			}
		}
	}

	// Heal everything and let the group converge.
	h.groups = nil
	for _, id := range peers {
		if h.live(id) == nil {
			h.open(id, nil)
		}
	}
	converged := false
	for round := 0; round < 300 && !converged; round++ {
		for _, id := range peers {
			h.live(id).Tick()
		}
		h.stabilize()
		converged = h.allCaughtUp(peers)
	}
	if !converged {
		t.Fatalf("group did not converge:\n%s", h.status())
	}
	if err := h.checkConverged(); err != nil {
		t.Fatal(err)
	}
	var grants, conflicts int
	for _, d := range h.byTxid {
		if strings.Contains(d, " granted ") {
			grants++
		} else if strings.Contains(d, " conflicts with: ") {
			conflicts++
		}
	}
	t.Logf("converged at txid %d: %d of %d requests applied (%d grants, %d conflicts), %d holdings left",
		h.live(1).fsm.applied, len(h.byReq), proposed, grants, conflicts, len(h.live(1).Holdings()))
}

// allCaughtUp: a leader exists, and every master applied everything the
// leader has in its log.
func (h *quorumHarness) allCaughtUp(ids []uint64) bool {
	var leader *quorumNode
	for _, id := range ids {
		if n := h.live(id); n.Status().State == raft.StateLeader.String() {
			leader = n
		}
	}
	if leader == nil {
		return false
	}
	last, _ := leader.store.LastIndex()
	for _, id := range ids {
		if h.live(id).fsm.applied != last {
			return false
		}
	}
	return true
}

// ---- store and state machine units ----

func qEntry(index, term uint64, data string) *pb.Entry {
	return &pb.Entry{Index: new(index), Term: new(term), Type: pb.EntryNormal.Enum(), Data: []byte(data)}
}

// TestQuorumStoreContract checks the raft.Storage behaviour raft relies on
// and that all of it survives closing and reopening the file (with the
// daemon's options: fsync on).
func TestQuorumStoreContract(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := openQuorumStore(dir, quorumStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if empty, err := s.isEmpty(); err != nil || !empty {
		t.Fatalf("new store empty=%v err=%v", empty, err)
	}
	if err := s.Append([]*pb.Entry{qEntry(1, 1, "a"), qEntry(2, 1, "b"), qEntry(3, 2, "c")}); err != nil {
		t.Fatal(err)
	}
	// A new leader overwrites a conflicting tail.
	if err := s.Append([]*pb.Entry{qEntry(3, 3, "C"), qEntry(4, 3, "D")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Append([]*pb.Entry{qEntry(9, 3, "gap")}); err == nil || !strings.Contains(err.Error(), s.Path()) {
		t.Fatalf("append with a gap: %v (want an error naming %s)", err, s.Path())
	}
	if err := s.SetHardState(&pb.HardState{Term: new(uint64(3)), Vote: new(uint64(2)), Commit: new(uint64(4))}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateSnapshot(2, &pb.ConfState{Voters: []uint64{1, 2, 3}}, []byte(`{"version":1,"applied":2,"last_commit":0}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.Compact(3); err == nil {
		t.Fatal("compacting past the snapshot must fail")
	}
	if err := s.Compact(1); err != nil {
		t.Fatal(err)
	}
	check := func(s *quorumStore) {
		t.Helper()
		if fi, _ := s.FirstIndex(); fi != 2 {
			t.Errorf("FirstIndex = %d, want 2", fi)
		}
		if li, _ := s.LastIndex(); li != 4 {
			t.Errorf("LastIndex = %d, want 4", li)
		}
		if term, err := s.Term(1); term != 1 || err != nil {
			t.Errorf("Term(1) = %d, %v; want the compaction mark's term 1", term, err)
		}
		if _, err := s.Term(0); !errors.Is(err, raft.ErrCompacted) {
			t.Errorf("Term(0) err = %v, want ErrCompacted", err)
		}
		if _, err := s.Term(5); !errors.Is(err, raft.ErrUnavailable) {
			t.Errorf("Term(5) err = %v, want ErrUnavailable", err)
		}
		if _, err := s.Entries(1, 3, 1<<20); !errors.Is(err, raft.ErrCompacted) {
			t.Errorf("Entries(1,3) err = %v, want ErrCompacted", err)
		}
		ents, err := s.Entries(2, 5, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range ents {
			got = append(got, string(e.GetData()))
		}
		if strings.Join(got, ",") != "b,C,D" {
			t.Errorf("Entries(2,5) = %v, want b,C,D", got)
		}
		if ents, _ := s.Entries(2, 5, 0); len(ents) != 1 {
			t.Errorf("Entries with maxSize 0 returned %d entries, want exactly 1", len(ents))
		}
		hs, _, err := s.InitialState()
		if err != nil || hs.GetCommit() != 4 || hs.GetVote() != 2 {
			t.Errorf("InitialState = %v, %v", hs, err)
		}
		snap, err := s.Snapshot()
		if err != nil || snap.GetMetadata().GetIndex() != 2 || snap.GetMetadata().GetTerm() != 1 {
			t.Errorf("Snapshot = %v, %v", snap.GetMetadata(), err)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = openQuorumStore(dir, quorumStoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check(s)

	// A snapshot from the leader replaces the log and the lock table.
	f := newQuorumFSM()
	f.applied = 10
	f.put(cacHolding{Holder: "leafA", Domain: cacInum, Mode: cacShared, Lo: 1, Hi: 2, Txid: 9})
	data, err := f.encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ApplySnapshot(&pb.Snapshot{Data: data, Metadata: &pb.SnapshotMetadata{Index: new(uint64(10)),
		Term: new(uint64(4)), ConfState: &pb.ConfState{Voters: []uint64{1, 2}}}}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := s.FirstIndex(); fi != 11 {
		t.Errorf("after snapshot FirstIndex = %d, want 11", fi)
	}
	if li, _ := s.LastIndex(); li != 10 {
		t.Errorf("after snapshot LastIndex = %d, want 10", li)
	}
	fsm, cs, err := s.loadFSM()
	if err != nil {
		t.Fatal(err)
	}
	if fsm.applied != 10 || len(fsm.list()) != 1 || len(cs.GetVoters()) != 2 {
		t.Errorf("after snapshot: applied %d, holdings %v, voters %v", fsm.applied, fsm.list(), cs.GetVoters())
	}
	if err := s.ApplySnapshot(&pb.Snapshot{Metadata: &pb.SnapshotMetadata{Index: new(uint64(5)), Term: new(uint64(4))}}); !errors.Is(err, raft.ErrSnapOutOfDate) {
		t.Errorf("older snapshot: %v, want ErrSnapOutOfDate", err)
	}
}

// A second leaf on the same PFS must not share the file: bbolt's flock
// refuses it, and the error says which file and why.
func TestQuorumStoreLocked(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := openQuorumStore(dir, quorumStoreOptions{noSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = openQuorumStore(dir, quorumStoreOptions{lockTimeout: 50 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), s.Path()) || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open: %v", err)
	}
}

// An entry no master can decode is rejected identically everywhere and
// the applied index still moves past it.
func TestQuorumUndecodableEntry(t *testing.T) {
	t.Parallel()
	st, err := openQuorumStore(t.TempDir(), quorumStoreOptions{noSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	n, err := newQuorumNode(1, []uint64{1}, st, quorumConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out quorumReady
	bad := append(quorumEntryHead(7, 1), []byte("{not json")...)
	if err := n.apply([]*pb.Entry{qEntry(2, 1, string(bad)), qEntry(3, 1, "\x09short")}, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Applied) != 2 || out.Applied[0].Err == "" || out.Applied[1].Err == "" || n.fsm.applied != 3 {
		t.Fatalf("applied %+v, fsm at %d", out.Applied, n.fsm.applied)
	}
	if out.Applied[0].Origin != 7 {
		t.Errorf("origin of the bad entry = %d, want 7 (the header was fine)", out.Applied[0].Origin)
	}
}

// Two masters at the same index must produce identical snapshot bytes,
// whatever order their maps happen to iterate in.
func TestQuorumFSMImageDeterministic(t *testing.T) {
	t.Parallel()
	build := func(order []int) []byte {
		f := newQuorumFSM()
		hs := []cacHolding{
			{Holder: "b", Domain: cacInum, Mode: cacShared, Lo: 5, Hi: 9, Txid: 3},
			{Holder: "a", Domain: cacInum, Mode: cacShared, Lo: 5, Hi: 9, Txid: 4},
			{Holder: "c", Domain: cacTree, Mode: cacModified, Lo: 0, Hi: 100, Txid: 5},
		}
		for _, i := range order {
			f.put(hs[i])
		}
		f.applied = 5
		b, err := f.encode()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := build([]int{0, 1, 2}), build([]int{2, 1, 0})
	if !bytes.Equal(a, b) {
		t.Fatalf("images differ:\n%s\n%s", a, b)
	}
	f, err := decodeQuorumFSM(a, 5)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := f.encode(); !bytes.Equal(a, c) {
		t.Fatalf("round trip changed the image:\n%s\n%s", a, c)
	}
	if _, err := decodeQuorumFSM(a, 6); !errors.Is(err, errQuorumImage) {
		t.Fatalf("image at the wrong index: %v", err)
	}
}

// The dedup window is part of the applied state: it survives a restart
// from the store and travels in snapshots, and forgets identically
// everywhere once requests fall out of it.
func TestQuorumDedupWindowPersists(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := openQuorumStore(dir, quorumStoreOptions{noSync: true})
	if err != nil {
		t.Fatal(err)
	}
	f := newQuorumFSM()
	f.applied = 7
	f.remember(5, 1, 100)
	f.remember(7, 2, 200)
	if err := s.saveApplied(f, &pb.ConfState{Voters: []uint64{1, 2}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = openQuorumStore(dir, quorumStoreOptions{noSync: true}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g, _, err := s.loadFSM()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		origin, req uint64
		want        bool
	}{{1, 100, true}, {2, 200, true}, {1, 200, false}, {3, 100, false}} {
		if got := g.duplicate(tc.origin, tc.req); got != tc.want {
			t.Errorf("after restart duplicate(%d, %d) = %v, want %v", tc.origin, tc.req, got, tc.want)
		}
	}

	// One request far beyond the window pushes both out, on disk too.
	far := uint64(quorumDedupWindow + 6)
	g.applied = far
	g.remember(far, 3, 300)
	if err := s.saveApplied(g, &pb.ConfState{Voters: []uint64{1, 2}}); err != nil {
		t.Fatal(err)
	}
	h, _, err := s.loadFSM()
	if err != nil {
		t.Fatal(err)
	}
	if h.duplicate(1, 100) || !h.duplicate(2, 200) || !h.duplicate(3, 300) {
		t.Errorf("after pruning below txid %d: seen %v", far-quorumDedupWindow, h.seenQ)
	}

	// A snapshot image carries the window.
	img, err := h.encode()
	if err != nil {
		t.Fatal(err)
	}
	k, err := decodeQuorumFSM(img, far)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(k.seenQ, h.seenQ) {
		t.Errorf("snapshot window %v, want %v", k.seenQ, h.seenQ)
	}
}

// qConfEntry is a committed membership change as raft hands it over.
func qConfEntry(t *testing.T, index uint64, typ pb.ConfChangeType, node uint64, key *quorumKeyFP) *pb.Entry {
	t.Helper()
	ctx := quorumEntryHead(1, index)
	if key != nil {
		ctx = append(ctx, key[:]...)
	}
	data, err := proto.Marshal(&pb.ConfChange{Type: typ.Enum(), NodeId: new(node), Context: ctx})
	if err != nil {
		t.Fatal(err)
	}
	return &pb.Entry{Index: new(index), Term: new(uint64(1)), Type: pb.EntryConfChange.Enum(), Data: data}
}

// The state machine has the last word on a membership change raft
// committed: changes that raced past the leader's checks (a second key
// for a bound id, a key-bound add of a removed master, a learner add that
// would demote a voter) are refused identically on every master, and the
// key bindings survive a restart and travel in snapshots.
func TestQuorumConfRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	st, err := openQuorumStore(dir, quorumStoreOptions{noSync: true})
	if err != nil {
		t.Fatal(err)
	}
	n, err := newQuorumNode(1, []uint64{1}, st, quorumConfig{})
	if err != nil {
		t.Fatal(err)
	}
	k1 := keyFP(ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey))
	k2 := keyFP(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32)).Public().(ed25519.PublicKey))
	steps := []struct {
		typ      pb.ConfChangeType
		node     uint64
		key      *quorumKeyFP
		refused  string // substring of the refusal, "" if applied
		learners []uint64
		bound    *quorumKeyFP
		removed  bool
	}{
		{pb.ConfChangeAddLearnerNode, 7, &k1, "", []uint64{7}, &k1, false},
		{pb.ConfChangeAddLearnerNode, 7, &k2, "bound to node key " + k1.String(), []uint64{7}, &k1, false},
		{pb.ConfChangeAddNode, 7, &k2, "bound to node key", []uint64{7}, &k1, false},
		{pb.ConfChangeAddLearnerNode, 1, nil, "would demote it", []uint64{7}, &k1, false},
		{pb.ConfChangeRemoveNode, 7, nil, "", nil, &k1, true},
		{pb.ConfChangeAddLearnerNode, 7, &k1, "removed by an operator", nil, &k1, true},
		{pb.ConfChangeAddLearnerNode, 7, nil, "", []uint64{7}, nil, false}, // the operator's add
		{pb.ConfChangeAddNode, 7, nil, "", nil, nil, false},                // promoted
	}
	for i, s := range steps {
		idx := uint64(2 + i)
		var out quorumReady
		if err := n.apply([]*pb.Entry{qConfEntry(t, idx, s.typ, s.node, s.key)}, &out); err != nil {
			t.Fatal(err)
		}
		r := out.Applied[0]
		if s.refused == "" && r.Err != "" || s.refused != "" && !strings.Contains(r.Err, s.refused) {
			t.Errorf("step %d %s %d: result %q, want refusal %q", i, s.typ, s.node, r.Err, s.refused)
		}
		if !slices.Equal(r.Learners, s.learners) || !slices.Contains(r.Members, 1) {
			t.Errorf("step %d %s %d: members %v learners %v, want learners %v", i, s.typ, s.node, r.Members, r.Learners, s.learners)
		}
		b, bound := n.Bound(7)
		if bound != (s.bound != nil) || bound && b != *s.bound {
			t.Errorf("step %d: master 7 bound=%v %s, want %v", i, bound, b, s.bound)
		}
		if n.Removed(7) != s.removed {
			t.Errorf("step %d: removed=%v, want %v", i, n.Removed(7), s.removed)
		}
	}
	if !slices.Equal(n.cs.GetVoters(), []uint64{1, 7}) {
		t.Errorf("voters %v after the promotion", n.cs.GetVoters())
	}

	// The bindings are state: bind 9 and check a restart and a snapshot
	// image carry it.
	var out quorumReady
	if err := n.apply([]*pb.Entry{qConfEntry(t, 10, pb.ConfChangeAddLearnerNode, 9, &k2)}, &out); err != nil {
		t.Fatal(err)
	}
	img, err := n.fsm.encode()
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if st, err = openQuorumStore(dir, quorumStoreOptions{noSync: true}); err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f, _, err := st.loadFSM()
	if err != nil {
		t.Fatal(err)
	}
	g, err := decodeQuorumFSM(img, 10)
	if err != nil {
		t.Fatal(err)
	}
	for what, fsm := range map[string]*quorumFSM{"store": f, "snapshot": g} {
		if fsm.bound[9] != k2 || len(fsm.bound) != 1 {
			t.Errorf("%s: bound %v, want 9 -> %s", what, fsm.boundList(), k2)
		}
	}
}

// The QRM_JOIN codec: what newQrmJoin builds parses back and verifies; a
// request's aux data must be exactly key and signature.
func TestQrmJoinCodec(t *testing.T) {
	t.Parallel()
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	clid, fsid := NewUUID(), NewUUID()
	now := time.Unix(1700000000, 0)
	req := newQrmJoin(key, clid, fsid, 42, now)
	got, err := parseQrmJoin(req.marshal(), req.aux(), true)
	if err != nil {
		t.Fatal(err)
	}
	if got.From != masterID(fsid) || got.To != 42 || got.Clid != clid || got.Fsid != fsid || got.Time != now.Unix() ||
		!bytes.Equal(got.Key, req.Key) || !bytes.Equal(got.Sig, req.Sig) {
		t.Fatalf("round trip: %+v, want %+v", got, req)
	}
	trusted := func(p ed25519.PublicKey) (string, bool) { return "k", p.Equal(key.Public()) }
	if res, fp, _ := verifyJoin(got, clid, 42, trusted, now); res != joinAccepted || fp != keyFP(req.Key) {
		t.Fatalf("verify: %s %s", res, fp)
	}
	ans := got
	ans.Result = joinRebind
	if a, err := parseQrmJoin(ans.marshal(), nil, false); err != nil || a.Result != joinRebind {
		t.Fatalf("answer: %+v %v", a, err)
	}
	for _, tc := range []struct {
		name     string
		ext, aux []byte
	}{
		{"short header", req.marshal()[:0x30], req.aux()},
		{"no aux", req.marshal(), nil},
		{"aux too long", req.marshal(), append(req.aux(), 0)},
		{"result in a request", ans.marshal(), req.aux()},
	} {
		if _, err := parseQrmJoin(tc.ext, tc.aux, true); err == nil {
			t.Errorf("%s: parsed", tc.name)
		}
	}
	// A join statement is never a TLS 1.3 CertificateVerify content (64
	// spaces first), whatever the fields.
	if s := quorumJoinStatement(clid, fsid, req.Key, now.Unix()); bytes.HasPrefix(s, bytes.Repeat([]byte{' '}, 64)) {
		t.Fatal("join statement could be a TLS signature's content")
	}
}

// The join and step-filter logs: once per key (or per interval), and a
// cap a minute in all, so invented ids cannot flood the log.
func TestKeyedLogLimiter(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1700000000, 0)
	once := &keyedLogLimiter{perMinute: 3}
	var got []bool
	for _, k := range []string{"a", "a", "b", "c", "d", "e"} {
		got = append(got, once.allow(k, t0))
	}
	if want := []bool{true, false, true, true, false, false}; !slices.Equal(got, want) {
		t.Errorf("once with a cap of 3: %v, want %v", got, want)
	}
	if !once.allow("d", t0.Add(time.Minute)) || once.allow("a", t0.Add(time.Hour)) {
		t.Error("a key held back by the cap must log in the next minute; a logged one never again")
	}
	every := &keyedLogLimiter{every: time.Minute}
	if !every.allow("x", t0) || every.allow("x", t0.Add(59*time.Second)) || !every.allow("x", t0.Add(time.Minute)) {
		t.Error("every minute: want the first, nothing within the minute, then again")
	}
	many := &keyedLogLimiter{}
	for i := range keyedLogLimiterKeys + 10 {
		many.allow(strconv.Itoa(i), t0)
	}
	if len(many.last) > keyedLogLimiterKeys {
		t.Errorf("the limiter holds %d keys, bound %d", len(many.last), keyedLogLimiterKeys)
	}
}

// TestQuorumInbox: new work is bounded by kind and refused past the
// bound; a request's news is never refused, is queued once however often
// it is posted, and comes after the work taken with it.
func TestQuorumInbox(t *testing.T) {
	t.Parallel()
	q := newQuorumInbox(quorumInboxLimits{Raft: 2, Requests: 1})
	var ran []string
	put := func(kind inboxKind, name string) bool { return q.put(kind, func() { ran = append(ran, name) }) }
	for _, tc := range []struct {
		kind inboxKind
		name string
		want bool
	}{
		{inboxRaft, "raft1", true}, {inboxRequest, "req1", true}, {inboxRaft, "raft2", true},
		{inboxRaft, "raft3", false}, {inboxRequest, "req2", false},
	} {
		if got := put(tc.kind, tc.name); got != tc.want {
			t.Errorf("put %s = %v, want %v", tc.name, got, tc.want)
		}
	}
	r1, r2 := &cacRequest{}, &cacRequest{}
	q.post(r1, func(m *cacMail) { m.mode = cacShared })
	q.post(r2, func(m *cacMail) { m.closed = true })
	q.post(r1, func(m *cacMail) { m.mode = cacExclusive }) // replaces the first, queued once
	q.post(r1, func(m *cacMail) { m.closed, m.lost = true, true })
	select {
	case <-q.wake:
	default:
		t.Fatal("nothing woke the driver")
	}
	work, news := q.take()
	for _, f := range work {
		f()
	}
	if want := []string{"raft1", "req1", "raft2"}; !slices.Equal(ran, want) {
		t.Errorf("work ran %v, want %v (in the order put)", ran, want)
	}
	want := []cacNews{{r1, cacMail{mode: cacExclusive, closed: true, lost: true}}, {r2, cacMail{closed: true}}}
	if !slices.Equal(news, want) {
		t.Errorf("news = %+v, want %+v", news, want)
	}
	if r1.queued || r1.mail != (cacMail{}) {
		t.Errorf("r1 still queued or holding mail after take: %v %+v", r1.queued, r1.mail)
	}
	// Taken, the bounds are free again.
	if !put(inboxRequest, "req3") || !put(inboxRaft, "raft4") {
		t.Error("the inbox refused work after it was emptied")
	}
	if work, news := q.take(); len(work) != 2 || len(news) != 0 {
		t.Errorf("second take: %d work, %d news; want 2, 0", len(work), len(news))
	}
}

// TestQuorumProposeAll: ops handed over together are one raft proposal.
// A follower forwards them to the leader in one message, before its own
// Ready is written; the leader sends each follower one append carrying
// all of them, and answers each op at the txid raft gave it, in order.
// An op that fails validation fails alone, and a batch is cut where its
// entries would pass quorumProposeBytes.
func TestQuorumProposeAll(t *testing.T) {
	t.Parallel()
	commit := func(p string) quorumOp { return quorumOp{Kind: quorumOpCommit, Payload: []byte(p)} }
	big := func(p string) quorumOp {
		return quorumOp{Kind: quorumOpCommit, Payload: append([]byte(p), make([]byte, quorumProposeBytes/4)...)} // base64 in the JSON: two fit, three do not
	}
	tests := []struct {
		name  string
		at    uint64 // master proposing
		ops   []quorumOp
		bad   []int // ops failing validation
		props int   // MsgProp messages the proposer sends (a follower's forwards)
		apps  int   // MsgApp messages carrying the entries, per follower of the leader
	}{
		{name: "follower", at: 2, ops: []quorumOp{commit("a"), commit("b"), commit("c"), {Kind: quorumOpLock}, commit("d")},
			bad: []int{3}, props: 1, apps: 1},
		{name: "leader", at: 1, ops: []quorumOp{commit("a"), commit("b"), commit("c")}, apps: 1},
		{name: "cut", at: 2, ops: []quorumOp{big("a"), big("b"), big("c")}, props: 2, apps: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newQuorumHarness(t)
			h.quiet = true
			defer h.closeAll()
			for id := uint64(1); id <= 3; id++ {
				h.open(id, []uint64{1, 2, 3})
			}
			h.pumpAll()
			if err := h.live(1).Campaign(); err != nil {
				t.Fatal(err)
			}
			h.stabilize()
			n := h.live(tc.at)
			ids, errs := n.ProposeAll(tc.ops)
			for i, err := range errs {
				if want := slices.Contains(tc.bad, i); (err != nil) != want {
					t.Fatalf("op %d: err %v, want failure %v", i, err, want)
				}
			}
			// What the proposer sends at once: its forwards (a follower) or
			// its appends (the leader).
			h.pump(tc.at)
			count := func(typ pb.MessageType, from uint64) (msgs, ents int) {
				for _, m := range h.queue {
					if m.GetType() == typ && m.GetFrom() == from {
						msgs++
						ents += len(m.GetEntries())
					}
				}
				return msgs, ents
			}
			good := len(tc.ops) - len(tc.bad)
			if tc.at != 1 {
				if msgs, ents := count(pb.MsgProp, tc.at); msgs != tc.props || ents != good {
					t.Fatalf("n%d sent %d MsgProp with %d entries, want %d with %d", tc.at, msgs, ents, tc.props, good)
				}
				h.deliverQueued() // the leader appends and replicates
			}
			if msgs, ents := count(pb.MsgApp, 1); msgs != 2*tc.apps || ents != 2*good {
				t.Fatalf("the leader sent %d MsgApp with %d entries to its 2 followers, want %d with %d", msgs, ents, 2*tc.apps, 2*good)
			}
			h.stabilize()
			var last uint64
			for i, id := range ids {
				if errs[i] != nil {
					continue
				}
				key := fmt.Sprintf("%d/%d", tc.at, id)
				tx, ok := h.byReq[key]
				if !ok {
					t.Fatalf("op %d (req %s) was never applied", i, fmtReqID(id))
				}
				if tx <= last {
					t.Fatalf("op %d applied at txid %d, not after the previous op's %d", i, tx, last)
				}
				last = tx
			}
		})
	}
}

// TestQuorumStoreHardStateLag: saveStep writes the hard state only when
// its term or vote changed, never a commit index alone (it would rewrite
// the snapshot sharing its leaf); reopened, the store reports a commit
// index no lower than what it applied, and the term and vote as written.
func TestQuorumStoreHardStateLag(t *testing.T) {
	dir := t.TempDir()
	s, err := openQuorumStore(dir, quorumStoreOptions{noSync: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.bootstrap([]uint64{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	hs := func(term, vote, commit uint64) *pb.HardState {
		return &pb.HardState{Term: new(term), Vote: new(vote), Commit: new(commit)}
	}
	fsm := newQuorumFSM()
	cs := &pb.ConfState{Voters: []uint64{1, 2, 3}}
	steps := []struct {
		name   string
		hs     *pb.HardState
		ents   []*pb.Entry
		apply  uint64 // applied index to write, 0 for none
		writes bool   // a transaction is expected
	}{
		{"vote", hs(2, 1, 1), nil, 0, true},
		{"entries", hs(2, 1, 1), []*pb.Entry{qEntry(2, 2, ""), qEntry(3, 2, "x")}, 0, true},
		{"new term", hs(3, 0, 1), nil, 0, true},
		{"commit alone", hs(3, 0, 3), nil, 0, false},
		{"apply", hs(3, 0, 3), nil, 3, true}, // the hard state on disk still says commit 1
	}
	for _, st := range steps {
		before := s.db.Stats()
		var f *quorumFSM
		if st.apply != 0 {
			fsm.applied = st.apply
			f = fsm
		}
		if err := s.saveStep(st.hs, st.ents, f, cs); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		after := s.db.Stats()
		if wrote := after.TxStats.GetWrite() > before.TxStats.GetWrite(); wrote != st.writes {
			t.Fatalf("%s: wrote %v, want %v", st.name, wrote, st.writes)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = openQuorumStore(dir, quorumStoreOptions{noSync: true}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, _, err := s.InitialState()
	if err != nil {
		t.Fatal(err)
	}
	if got.GetTerm() != 3 || got.GetVote() != 0 || got.GetCommit() != 3 {
		t.Fatalf("reopened: term %d vote %d commit %d, want 3 0 3", got.GetTerm(), got.GetVote(), got.GetCommit())
	}
}
