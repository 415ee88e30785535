package main

// The quorum group of one cluster: the MASTER PFSs sharing a pfs_clid run
// one etcd raft group, and QRM_COMMIT / CAC_LOCK become entries in its
// log. quorumNode is one master's member, in the shape etcd raft itself
// has: a deterministic state machine with no goroutines and no I/O of its
// own other than its bbolt file. The owner feeds it ticks and received
// messages, calls Advance, and ships what Advance returns over a
// quorumTransport. That keeps the whole group testable step by step in memory
// (quorum_test.go) with the same code the daemon runs.
//
// Transaction ids are raft log indexes: unique, strictly increasing in
// commit order, identical on every master, and the same number a grant is
// valid at.

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"
	"google.golang.org/protobuf/proto"
)

// quorumConfig is in ticks; the daemon picks the tick length (e.g. 100 ms)
// and converts its configured durations.
type quorumConfig struct {
	ElectionTicks  int // default 10
	HeartbeatTicks int // default 1
	// ProposeTimeoutTicks is how long a request may wait for a majority
	// before it fails (default 5 election timeouts).
	ProposeTimeoutTicks int
	// SnapshotEvery compacts the log once this many entries were applied
	// since the last snapshot (default 10000; tests use tiny values).
	SnapshotEvery uint64
	// SnapshotKeep is how many entries stay behind a snapshot so that a
	// slightly lagging master is caught up by entries, not a snapshot
	// (default SnapshotEvery/2).
	SnapshotKeep uint64
	// Logf receives raft's own log lines; nil discards them.
	Logf func(format string, args ...any)
}

func (c quorumConfig) withDefaults() quorumConfig {
	if c.ElectionTicks <= 0 {
		c.ElectionTicks = 10
	}
	if c.HeartbeatTicks <= 0 {
		c.HeartbeatTicks = 1
	}
	if c.ProposeTimeoutTicks <= 0 {
		c.ProposeTimeoutTicks = 5 * c.ElectionTicks
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = 10000
	}
	if c.SnapshotKeep == 0 {
		c.SnapshotKeep = c.SnapshotEvery / 2
	}
	return c
}

// Errors a request can fail with. Both mean "no majority of masters
// answered in time"; they differ in what the caller may assume.
var (
	// errQuorumNoLeader: the request never entered any log (no leader was
	// known during the whole wait), so it will never be applied.
	errQuorumNoLeader = errors.New("quorum: no leader among reachable masters; request not submitted")
	// errQuorumTimeout: the request reached a log but was not committed
	// in time. It can still be applied later if that log's leader regains
	// a majority, or be discarded; the caller must find out (e.g. by
	// revalidating) rather than retry blindly.
	errQuorumTimeout = errors.New("quorum: no majority of masters acknowledged the request in time; outcome unknown")
)

// quorumResult is one applied entry as every master sees it. Txid is the
// entry's raft index. Origin and ReqID identify the request across leader
// changes: a master only answers the requests it originated.
type quorumResult struct {
	Txid     uint64
	Origin   uint64
	ReqID    uint64
	Op       quorumOp // Kind is quorumOpMembers for a membership change
	Members  []uint64 // voters after a membership change
	Learners []uint64 // learners after a membership change
	quorumOutcome
	// Late marks this master's own request that was applied after it had
	// already been reported Failed with errQuorumTimeout (its log's leader
	// regained a majority). Local to the origin, not part of the outcome.
	Late bool
}

// quorumLateWindow bounds how many timed-out requests are remembered for
// the Late flag; older ones applying late are still in Applied, unflagged.
const quorumLateWindow = 4096

type quorumFailure struct {
	ReqID uint64
	Err   error
}

// quorumReady is what one Advance produced, in the order it must be acted
// on: Messages are safe to send (what they acknowledge is on disk);
// Durable are this master's requests now committed (held by a majority:
// the phase-1 acknowledgement); Applied are entries applied to the state
// machine (phase 2), for all origins; Failed are this master's requests
// that ran out of time. Snapshot is non-zero when the state jumped to that
// txid by a snapshot from the leader: the entries it covers are not
// reported one by one, and any cache derived from earlier results must be
// revalidated.
type quorumReady struct {
	Messages []*pb.Message
	Durable  []uint64
	Applied  []quorumResult
	Failed   []quorumFailure
	Snapshot uint64
	// ReadStates answer ReadIndex requests (quorum_snapshot.go): the
	// group's commit index as the leader confirmed it.
	ReadStates []raft.ReadState
}

type quorumMemberChange uint8

// Every master enters the group as a learner: it receives the log but has
// no vote, so adding it never changes the majority. The leader promotes it
// to voter once it has caught up (quorumLearnerSlack). Remove takes out a
// voter or a learner.
const (
	quorumAddLearner quorumMemberChange = iota + 1
	quorumPromote
	quorumRemove
)

var quorumMemberChangeNames = [...]string{"", "add learner", "promote", "remove"}

func (c quorumMemberChange) String() string {
	if int(c) < len(quorumMemberChangeNames) && c != 0 {
		return quorumMemberChangeNames[c]
	}
	return fmt.Sprintf("change(%d)", uint8(c))
}

// quorumLearnerSlack is how far (in entries) a learner's acknowledged log
// may trail the leader's commit index for the leader to promote it. etcd
// 3.4+ promotes a learner once its match index is within 10% of the
// leader's; a fraction of a long log is far too loose (a learner a
// million entries in would be 100000 behind), so the slack is absolute.
// 128 entries is less than one append message carries (MaxSizePerMsg is
// 256 KiB; entries are small), so a promoted learner is level after one
// round trip and never holds a commit back; and a learner under steady
// load, which always trails by what is in flight, is still promoted.
const quorumLearnerSlack = 128

// quorumMaxSponsors bounds the masters outside its configuration a
// master steps raft traffic from (those that answered its join request
// as members of the group), and the unknown senders it asks.
const quorumMaxSponsors = 64

// quorumStatus is for `status` output and for deciding whether to even
// try a request.
type quorumStatus struct {
	ID       uint64
	Members  []uint64
	Learners []uint64
	Leader   uint64
	Term     uint64
	State    string
	Commit   uint64
	LastTxid uint64 // last applied
	Pending  int
	// HasQuorum: a leader is known and in contact with a majority. The
	// leader counts the voters it heard from within the last election
	// timeout (CheckQuorum alone would let it believe so for up to two);
	// a follower trusts a leader it heard from within that time. Advisory
	// only: whether a request commits never depends on it.
	HasQuorum bool
}

// pending request bookkeeping.
type quorumPending struct {
	data     []byte         // entry data for a normal request
	conf     *pb.ConfChange // or a membership change
	deadline uint64         // tick by which it must be committed
	inLog    bool           // raft accepted it (it may still be lost)
	term     uint64         // our term when raft accepted it
	handed   uint64         // tick raft accepted it
	leader   bool           // we were the leader then: it is in our own log
	// once: raft accepted it at least once. Taken back to be handed
	// again, it may still be in some log, so its failure is "unknown".
	once bool
}

type quorumNode struct {
	id    uint64
	cfg   quorumConfig
	rn    *raft.RawNode
	store *quorumStore
	fsm   *quorumFSM
	cs    *pb.ConfState

	ticks uint64
	// heard is the tick each peer last sent us something: the leader's
	// contact with a majority, or a follower's with the leader, is what
	// HasQuorum reports.
	heard     map[uint64]uint64
	contact   uint64 // last tick a majority was known to be with us (see ContactAge)
	confDirty bool   // a membership change was applied since the last snapshot
	boot      uint64
	seq       uint64
	pending   map[uint64]*quorumPending
	queued    []uint64 // dropped by raft for want of a leader; resubmitted when one is known
	failed    []quorumFailure
	timedOut  []uint64 // recent requests failed while in a log, oldest first (for Late)

	// sponsors are masters outside this master's configuration whose raft
	// messages it steps: they answered its join request as members
	// (quorum_join.go). A joiner has no configuration before its first
	// snapshot; a member that is behind does not know masters added since.
	sponsors map[uint64]bool

	// err is sticky: once a write to the store failed, memory and disk
	// may disagree, and the only safe continuation is a restart from the
	// file.
	err error
}

// newQuorumNode opens master id's member on store. peers (which must
// include id) bootstraps a brand-new group when the store is empty; the
// founding masters must all be given the same list. A master joining an
// existing group passes no peers and waits to be added by a membership
// change and caught up by the leader. On a store that already holds a
// group, peers is ignored: membership comes from the log. The caller
// keeps ownership of store and closes it after the node is dropped.
func newQuorumNode(id uint64, peers []uint64, store *quorumStore, cfg quorumConfig) (*quorumNode, error) {
	if id == 0 {
		return nil, errors.New("quorum: node id 0 is reserved")
	}
	cfg = cfg.withDefaults()
	empty, err := store.isEmpty()
	if err != nil {
		return nil, err
	}
	if empty && len(peers) > 0 {
		voters := slices.Clone(peers)
		slices.Sort(voters)
		voters = slices.Compact(voters)
		if !slices.Contains(voters, id) {
			return nil, fmt.Errorf("quorum: bootstrap peers %v do not include this master %d", voters, id)
		}
		if slices.Contains(voters, 0) {
			return nil, errors.New("quorum: bootstrap peers include reserved id 0")
		}
		if err := store.bootstrap(voters); err != nil {
			return nil, err
		}
	}
	fsm, cs, err := store.loadFSM()
	if err != nil {
		return nil, err
	}
	boot, err := store.nextBoot()
	if err != nil {
		return nil, err
	}
	rn, err := raft.NewRawNode(&raft.Config{
		ID:                        id,
		ElectionTick:              cfg.ElectionTicks,
		HeartbeatTick:             cfg.HeartbeatTicks,
		Storage:                   store,
		Applied:                   fsm.applied,
		MaxSizePerMsg:             AuxMax / 4, // a raft message is one dmsg aux (1 MiB at most)
		MaxInflightMsgs:           256,
		MaxUncommittedEntriesSize: 64 << 20,
		MaxCommittedSizePerReady:  16 << 20,
		CheckQuorum:               true,
		PreVote:                   true,
		StepDownOnRemoval:         true,
		Logger:                    quorumLogger{id: id, logf: cfg.Logf},
	})
	if err != nil {
		return nil, fmt.Errorf("quorum: start raft for master %d on %s: %w", id, store.Path(), err)
	}
	return &quorumNode{id: id, cfg: cfg, rn: rn, store: store, fsm: fsm, cs: cs, boot: boot,
		pending: map[uint64]*quorumPending{}, heard: map[uint64]uint64{}, sponsors: map[uint64]bool{}}, nil
}

// Request ids carry the boot counter in the high half so that a restarted
// master never reuses one. The low half wraps after 2^32 requests in one
// boot, by which time the old request has long been answered or failed.
func (n *quorumNode) nextReqID() uint64 {
	n.seq++
	return n.boot<<32 | n.seq&0xffffffff
}

func fmtReqID(id uint64) string { return fmt.Sprintf("%d.%d", id>>32, id&0xffffffff) }

// Entry data: version byte, origin master id, request id (both u64
// big-endian), then the JSON op. Conf changes carry the same 17-byte
// header, without op, in their Context, followed for an automatic join by
// the SHA-256 of the joining master's node key (32 bytes).
const (
	quorumEntryVersion = 1
	quorumEntryHeader  = 17
)

func quorumEntryHead(origin, reqID uint64) []byte {
	b := make([]byte, quorumEntryHeader)
	b[0] = quorumEntryVersion
	binary.BigEndian.PutUint64(b[1:], origin)
	binary.BigEndian.PutUint64(b[9:], reqID)
	return b
}

func encodeQuorumEntry(origin, reqID uint64, op quorumOp) ([]byte, error) {
	body, err := json.Marshal(op)
	if err != nil {
		return nil, fmt.Errorf("quorum: encode %s op: %w", op.Kind, err)
	}
	return append(quorumEntryHead(origin, reqID), body...), nil
}

func decodeQuorumHead(b []byte) (origin, reqID uint64, err error) {
	if len(b) < quorumEntryHeader {
		return 0, 0, fmt.Errorf("entry header is %d bytes, want %d", len(b), quorumEntryHeader)
	}
	if b[0] != quorumEntryVersion {
		return 0, 0, fmt.Errorf("entry version %d, want %d", b[0], quorumEntryVersion)
	}
	return binary.BigEndian.Uint64(b[1:]), binary.BigEndian.Uint64(b[9:]), nil
}

func decodeQuorumEntry(b []byte) (origin, reqID uint64, op quorumOp, err error) {
	if origin, reqID, err = decodeQuorumHead(b); err != nil {
		return
	}
	if err = json.Unmarshal(b[quorumEntryHeader:], &op); err != nil {
		err = fmt.Errorf("entry op: %w", err)
	}
	return
}

func (n *quorumNode) broken() error {
	if n.err != nil {
		return fmt.Errorf("quorum master %d unusable after a storage failure, restart it: %w", n.id, n.err)
	}
	return nil
}

// Propose submits op. It returns the request id under which Durable,
// Applied and Failed will report it. With no leader known the request
// waits (and is submitted once one is) until ProposeTimeoutTicks, then
// fails with errQuorumNoLeader.
func (n *quorumNode) Propose(op quorumOp) (uint64, error) {
	if err := n.broken(); err != nil {
		return 0, err
	}
	if err := op.validate(); err != nil {
		return 0, fmt.Errorf("quorum: %w", err)
	}
	reqID := n.nextReqID()
	data, err := encodeQuorumEntry(n.id, reqID, op)
	if err != nil {
		return 0, err
	}
	return reqID, n.submit(reqID, &quorumPending{data: data})
}

// quorumProposeBytes bounds the entry data of one proposal ProposeAll
// hands raft: a follower forwards it to the leader as one raft message,
// which must fit a dmsg aux with room to spare (MaxSizePerMsg is the same
// bound for the leader's appends). An op larger than this goes alone.
const quorumProposeBytes = AuxMax / 4

// ProposeAll is Propose for several ops at once. Raft takes them as one
// proposal (up to quorumProposeBytes each): the leader appends them
// together and replicates them in one message to each follower, and a
// follower forwards them to the leader in one, where a Propose per op
// costs a replication message per op and follower, an answer to each,
// and a forward per op from a follower. ids[i] and errs[i] are what
// Propose would have returned for ops[i].
func (n *quorumNode) ProposeAll(ops []quorumOp) (ids []uint64, errs []error) {
	ids, errs = make([]uint64, len(ops)), make([]error, len(ops))
	if err := n.broken(); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return ids, errs
	}
	var batch []int // indexes into ops of the proposal being built
	var ents []*pb.Entry
	size := 0
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := n.handAll(ids, batch, ents); err != nil {
			for _, i := range batch {
				errs[i] = fmt.Errorf("quorum: propose %s: %w", fmtReqID(ids[i]), err)
				ids[i] = 0
			}
		}
		batch, ents, size = nil, nil, 0
	}
	for i, op := range ops {
		if err := op.validate(); err != nil {
			errs[i] = fmt.Errorf("quorum: %w", err)
			continue
		}
		reqID := n.nextReqID()
		data, err := encodeQuorumEntry(n.id, reqID, op)
		if err != nil {
			errs[i] = err
			continue
		}
		if len(batch) > 0 && size+len(data) > quorumProposeBytes {
			flush()
		}
		ids[i] = reqID
		n.pending[reqID] = &quorumPending{data: data, deadline: n.ticks + uint64(n.cfg.ProposeTimeoutTicks)}
		batch = append(batch, i)
		ents = append(ents, &pb.Entry{Data: data})
		size += len(data)
	}
	flush()
	return ids, errs
}

// handAll hands raft one proposal of the pending requests ids[batch],
// whose entries are ents. A proposal raft drops for want of a leader
// waits in queued, as submit's; any other refusal fails them all.
func (n *quorumNode) handAll(ids []uint64, batch []int, ents []*pb.Entry) error {
	err := n.rn.Step(&pb.Message{Type: pb.MsgProp.Enum(), From: new(n.id), Entries: ents})
	switch {
	case err == nil:
		bs := n.rn.BasicStatus()
		for _, i := range batch {
			n.handedAs(n.pending[ids[i]], bs)
		}
	case errors.Is(err, raft.ErrProposalDropped):
		for _, i := range batch {
			n.queued = append(n.queued, ids[i])
		}
		err = nil
	default:
		for _, i := range batch {
			delete(n.pending, ids[i])
		}
	}
	return err
}

// ProposeConfChange changes the membership: a new master enters as a
// learner, a caught-up learner is promoted, a voter or learner is
// removed. Membership never changes by itself: a master that is down
// keeps its vote (and counts against the majority) until an operator
// removes it. key is the fingerprint of the node key a joining master
// proved it holds (quorum_join.go), nil for an operator's change; the
// state machine binds the master's id to it.
func (n *quorumNode) ProposeConfChange(change quorumMemberChange, node uint64, key *quorumKeyFP) (uint64, error) {
	if err := n.broken(); err != nil {
		return 0, err
	}
	if node == 0 {
		return 0, errors.New("quorum: membership change for reserved id 0")
	}
	voter, learner := slices.Contains(n.cs.GetVoters(), node), slices.Contains(n.cs.GetLearners(), node)
	cc := &pb.ConfChange{NodeId: new(node)}
	switch change {
	case quorumAddLearner:
		// raft would demote a voter named here; a learner is already in.
		if voter || learner {
			return 0, fmt.Errorf("quorum: master %x is already a %s", node, map[bool]string{true: "voter", false: "learner"}[voter])
		}
		cc.Type = pb.ConfChangeAddLearnerNode.Enum()
	case quorumPromote:
		if !learner {
			return 0, fmt.Errorf("quorum: master %x is not a learner", node)
		}
		cc.Type = pb.ConfChangeAddNode.Enum()
	case quorumRemove:
		cc.Type = pb.ConfChangeRemoveNode.Enum()
	default:
		return 0, fmt.Errorf("quorum: unknown membership change %d", change)
	}
	reqID := n.nextReqID()
	cc.Context = quorumEntryHead(n.id, reqID)
	if key != nil {
		cc.Context = append(cc.Context, key[:]...)
	}
	return reqID, n.submit(reqID, &quorumPending{conf: cc})
}

func (n *quorumNode) submit(reqID uint64, p *quorumPending) error {
	p.deadline = n.ticks + uint64(n.cfg.ProposeTimeoutTicks)
	n.pending[reqID] = p
	err := n.hand(p)
	if errors.Is(err, raft.ErrProposalDropped) {
		n.queued = append(n.queued, reqID)
		return nil
	}
	if err != nil {
		delete(n.pending, reqID)
		return fmt.Errorf("quorum: propose %s: %w", fmtReqID(reqID), err)
	}
	return nil
}

func (n *quorumNode) hand(p *quorumPending) error {
	var err error
	if p.conf != nil {
		err = n.rn.ProposeConfChange(p.conf)
	} else {
		err = n.rn.Propose(p.data)
	}
	if err == nil {
		n.handed(p)
	}
	return err
}

// handed records that raft accepted p.
func (n *quorumNode) handed(p *quorumPending) { n.handedAs(p, n.rn.BasicStatus()) }

// handedAs is handed with raft's status as of the acceptance.
func (n *quorumNode) handedAs(p *quorumPending, bs raft.BasicStatus) {
	p.inLog, p.once, p.term, p.handed, p.leader = true, true, bs.GetTerm(), n.ticks, bs.RaftState == raft.StateLeader
}

// requeue takes the pending requests match selects back out of raft's
// hands: they are submitted again, in order, once a leader is known.
func (n *quorumNode) requeue(match func(*quorumPending) bool) {
	var again []uint64
	for reqID, p := range n.pending {
		if p.inLog && match(p) {
			p.inLog = false
			again = append(again, reqID)
		}
	}
	if len(again) == 0 {
		return
	}
	n.queued = append(n.queued, again...)
	slices.Sort(n.queued) // request ids grow in submission order
}

// forwardedLost selects the plain requests this master forwarded to a
// leader without seeing them applied: the forward may have been lost,
// and raft never retransmits a proposal. Handing one again is safe because
// the state machine skips a request it already applied (quorumFSM.seen).
// Membership changes are left alone: they have no such guard.
func forwardedLost(p *quorumPending) bool { return p.conf == nil && !p.leader }

// requeueLost resubmits the requests a deposed leader took with it. It is
// called when the first entry of a new leader's term (its empty entry) is
// applied. Terms never decrease along a log, so an entry of an earlier
// term can no longer be committed after that one: a request handed to
// raft in an earlier term and not applied by now is in no log that can
// win, and submitting it again cannot apply it twice. Without this a
// request forwarded to a leader that died waits out its whole deadline
// and fails as "outcome unknown".
func (n *quorumNode) requeueLost(term uint64) {
	n.requeue(func(p *quorumPending) bool { return p.term < term })
}

// resubmit retries requests raft dropped, in their original order, once a
// leader is known. Only dropped ones: a request raft accepted may already
// be in some log, and submitting it twice could apply it twice.
func (n *quorumNode) resubmit() {
	if len(n.queued) == 0 || n.rn.BasicStatus().Lead == raft.None {
		return
	}
	keep := n.queued[:0]
	for i, reqID := range n.queued {
		p, ok := n.pending[reqID]
		if !ok {
			continue
		}
		if err := n.hand(p); err != nil {
			if !errors.Is(err, raft.ErrProposalDropped) {
				delete(n.pending, reqID)
				n.failed = append(n.failed, quorumFailure{reqID, fmt.Errorf("quorum: propose %s: %w", fmtReqID(reqID), err)})
				continue
			}
			// Still no taker: keep this and everything after it, in order.
			keep = append(keep, n.queued[i:]...)
			break
		}
	}
	n.queued = keep
}

// FastForwardElection moves raft's election clock to one tick short of
// its election timeout, as etcd does when a member starts with its peers
// in reach (--initial-election-tick-advance): the first election then
// comes 1 to 11 ticks later instead of 10 to 20. The driver calls it once,
// on a follower that knows no leader; PreVote and CheckQuorum keep an
// early campaign from disturbing a group that has one. The node's own
// clock (request deadlines, contact) does not move.
func (n *quorumNode) FastForwardElection() {
	if n.err != nil {
		return
	}
	for range n.cfg.ElectionTicks - 1 {
		n.rn.Tick()
	}
}

// Tick advances the logical clock by one tick.
func (n *quorumNode) Tick() {
	if n.err != nil {
		return
	}
	n.ticks++
	n.rn.Tick()
	n.noteContact()
	var expired []uint64
	for reqID, p := range n.pending {
		if p.deadline <= n.ticks {
			expired = append(expired, reqID)
		}
	}
	slices.Sort(expired)
	for _, reqID := range expired {
		p := n.pending[reqID]
		delete(n.pending, reqID)
		err := errQuorumTimeout
		if !p.once {
			err = errQuorumNoLeader
		} else {
			n.timedOut = append(n.timedOut, reqID)
			if len(n.timedOut) > quorumLateWindow {
				n.timedOut = slices.Delete(n.timedOut, 0, len(n.timedOut)-quorumLateWindow)
			}
		}
		n.failed = append(n.failed, quorumFailure{reqID, fmt.Errorf("request %s after %d ticks: %w",
			fmtReqID(reqID), n.cfg.ProposeTimeoutTicks, err)})
	}
	if len(expired) > 0 {
		n.queued = slices.DeleteFunc(n.queued, func(id uint64) bool { _, ok := n.pending[id]; return !ok })
	}
	retry := uint64(n.cfg.ElectionTicks)
	n.requeue(func(p *quorumPending) bool { return forwardedLost(p) && n.ticks-p.handed >= retry })
}

// noteContact records the last tick this master knew it was with a
// majority: a follower, the tick it last heard its leader; the leader,
// the tick by which it had heard from a majority of the voters.
func (n *quorumNode) noteContact() {
	bs := n.rn.BasicStatus()
	var at uint64
	switch {
	case bs.Lead == raft.None:
		return
	case bs.RaftState == raft.StateLeader:
		voters := n.cs.GetVoters()
		last := make([]uint64, 0, len(voters))
		for _, id := range voters {
			if id == n.id {
				last = append(last, n.ticks)
			} else if t, ok := n.heard[id]; ok {
				last = append(last, t)
			}
		}
		need := len(voters)/2 + 1
		if len(last) < need {
			return
		}
		slices.Sort(last)
		at = last[len(last)-need] // the need-th most recent
	default:
		t, ok := n.heard[bs.Lead]
		if !ok {
			return
		}
		at = t
	}
	n.contact = max(n.contact, at)
}

// ContactAge is how many ticks ago this master last knew a majority of
// the group was with it. Unlike HasQuorum it does not lag. (The cache
// states' leases no longer use it: a tick-count says nothing of how long
// a master that was stopped or behind has been out of date, and the
// renewals of cac_lease.go do; the CAC scripts print it.)
func (n *quorumNode) ContactAge() uint64 { return n.ticks - n.contact }

// errQuorumNotMember: Step refused a message because its sender is not
// in this master's configuration (see admits). Dropping a raft message
// is always safe; raft retransmits what matters.
var errQuorumNotMember = errors.New("quorum: sender is neither a voter nor a learner of this master's configuration")

// Step feeds a message received from another master.
func (n *quorumNode) Step(m *pb.Message) error {
	if err := n.broken(); err != nil {
		return err
	}
	if m.GetTo() != n.id {
		return fmt.Errorf("quorum: master %d got a message for %d", n.id, m.GetTo())
	}
	if !n.admits(m.GetFrom()) {
		return fmt.Errorf("quorum: master %d: %s from %x: %w", n.id, m.GetType(), m.GetFrom(), errQuorumNotMember)
	}
	if err := n.rn.Step(m); err != nil {
		// A proposal forwarded to a master that has just stopped being
		// leader is dropped; its origin times out, so it is no error of
		// the link's.
		if errors.Is(err, raft.ErrProposalDropped) {
			return nil
		}
		return fmt.Errorf("quorum: master %d: step %s from %d: %w", n.id, m.GetType(), m.GetFrom(), err)
	}
	n.heard[m.GetFrom()] = n.ticks
	return nil
}

// admits reports whether raft messages from master id are stepped: id
// must not be removed, and must be a voter or a learner of this master's
// configuration, or a sponsor. A master that is in no configuration at
// all (a joiner that has not received its first snapshot yet) has
// nothing else to check against; a member that is behind may not know a
// master added since (a voter it must vote for, the leader it must catch
// up from). Both ask such a master to admit them (QRM_JOIN), and a
// master that answers as a member of the group becomes a sponsor
// (Sponsor): the leader can catch them up, and masters that are not in
// the group cannot feed them one of their making.
func (n *quorumNode) admits(id uint64) bool {
	if n.fsm.removed[id] {
		return false
	}
	if n.sponsors[id] {
		return true
	}
	cs := n.cs
	for _, set := range [][]uint64{cs.GetVoters(), cs.GetLearners(), cs.GetVotersOutgoing(), cs.GetLearnersNext()} {
		if slices.Contains(set, id) {
			return true
		}
	}
	return false
}

// Sponsor lets this master step raft messages from id, a master that is
// not in its configuration but answered its join request as a member of
// the group. At most quorumMaxSponsors are kept.
func (n *quorumNode) Sponsor(id uint64) {
	if id != n.id && (n.sponsors[id] || len(n.sponsors) < quorumMaxSponsors) {
		n.sponsors[id] = true
	}
}

// ID is this master's raft id.
func (n *quorumNode) ID() uint64 { return n.id }

// InGroup reports whether this master is a voter or a learner of its own
// configuration: a joiner stops asking to be admitted once it is.
func (n *quorumNode) InGroup() bool { return n.InConfig(n.id) }

// InConfig reports whether master id is a voter or a learner of this
// master's configuration.
func (n *quorumNode) InConfig(id uint64) bool {
	return slices.Contains(n.cs.GetVoters(), id) || slices.Contains(n.cs.GetLearners(), id)
}

// ReadyLearners lists, on the leader, the learners caught up enough to be
// promoted, lowest id first: in contact within the last election timeout,
// replicating normally (not being probed or sent a snapshot), and with an
// acknowledged log within quorumLearnerSlack of the commit index.
func (n *quorumNode) ReadyLearners() []uint64 {
	st := n.rn.Status()
	if st.RaftState != raft.StateLeader {
		return nil
	}
	commit := st.HardState.GetCommit()
	var ready []uint64
	for id, pr := range st.Progress {
		if pr.IsLearner && pr.RecentActive && pr.State == tracker.StateReplicate && pr.Match+quorumLearnerSlack >= commit {
			ready = append(ready, id)
		}
	}
	slices.Sort(ready)
	return ready
}

// LinkDown tells raft that the link to peer is gone, as the span layer
// sees it. Losing the leader makes this master forget it at once, so that
// it may vote for a successor without waiting out the leader's lease.
func (n *quorumNode) LinkDown(peer uint64) {
	if n.err != nil {
		return
	}
	n.rn.ReportUnreachable(peer)
	if bs := n.rn.BasicStatus(); bs.Lead == peer && peer != n.id {
		_ = n.rn.ForgetLeader()
		n.requeue(forwardedLost)
	}
}

// ReportUnreachable tells raft that a message to peer could not be sent,
// so that it probes the peer instead of streaming to it.
func (n *quorumNode) ReportUnreachable(peer uint64) {
	if n.err == nil {
		n.rn.ReportUnreachable(peer)
	}
}

// ReportSnapshot tells the leader whether a snapshot it sent to peer
// arrived, so raft resumes (or retries) replication to it.
func (n *quorumNode) ReportSnapshot(peer uint64, ok bool) {
	if n.err != nil {
		return
	}
	st := raft.SnapshotFinish
	if !ok {
		st = raft.SnapshotFailure
	}
	n.rn.ReportSnapshot(peer, st)
}

// Campaign starts an election now instead of after the election timeout.
func (n *quorumNode) Campaign() error {
	if err := n.broken(); err != nil {
		return err
	}
	return n.rn.Campaign()
}

// Advance drains raft's Ready: persist, collect messages, apply. It must be
// called after every Tick, Step, Propose or Report call that may have
// produced work.
//
// Each Ready costs at most one bbolt transaction, and so one commit and
// its fsyncs: the new entries, the hard state and what applying the
// committed entries did are written together (saveStep), and a Ready with
// nothing to write (messages only: heartbeats, a forwarded proposal, a
// heartbeat's answer) writes nothing. Applying in memory before the write
// is safe: nothing of this Ready leaves (messages, Durable, Applied)
// before Advance returns, which is after the commit; a failed commit
// leaves the node broken (n.err), so memory ahead of the file is never
// used. A Ready with a snapshot keeps two transactions: the snapshot
// replaces the state machine the committed entries apply to.
func (n *quorumNode) Advance() (quorumReady, error) { return n.advance(nil) }

// advance is Advance that, when early is set, hands early the messages
// of each Ready that need not wait for its write (sendEarly). On the
// leader these are its appends and heartbeats: it writes its log while
// the followers write theirs (Raft thesis §10.2.1; etcd's server does
// the same). That is safe because raft counts the leader's own copy only
// once it is written (its self-acknowledgement is stepped in
// RawNode.Advance), so a commit still means a majority wrote the entry.
// A follower's forwarded proposals promise nothing. Everything else
// (votes, a follower's answers) still waits for the write.
func (n *quorumNode) advance(early func(*pb.Message)) (quorumReady, error) {
	var out quorumReady
	if err := n.broken(); err != nil {
		return out, err
	}
	n.resubmit()
	for n.rn.HasReady() {
		rd := n.rn.Ready()
		msgs := rd.Messages
		if early != nil {
			msgs = sendEarly(msgs, early, n.rn.BasicStatus().RaftState == raft.StateLeader)
		}
		if err := n.persistApply(rd, &out); err != nil {
			n.err = err
			return out, n.broken()
		}
		out.Messages = append(out.Messages, msgs...)
		out.ReadStates = append(out.ReadStates, rd.ReadStates...)
		n.rn.Advance(rd)
		if err := n.maybeSnapshot(); err != nil {
			n.err = err
			return out, n.broken()
		}
		n.resubmit()
	}
	out.Failed, n.failed = n.failed, nil
	return out, nil
}

// sendEarly hands early the messages of a Ready that may leave before
// it is written, and returns the others: a proposal forwarded to the
// leader (it claims nothing about this master's log) and, on the leader,
// its appends and heartbeats.
func sendEarly(msgs []*pb.Message, early func(*pb.Message), leader bool) []*pb.Message {
	var rest []*pb.Message
	for _, m := range msgs {
		switch t := m.GetType(); {
		case t == pb.MsgProp, leader && (t == pb.MsgApp || t == pb.MsgHeartbeat):
			early(m)
		default:
			rest = append(rest, m)
		}
	}
	return rest
}

// persistApply writes one Ready and applies its committed entries.
func (n *quorumNode) persistApply(rd raft.Ready, out *quorumReady) error {
	if !raft.IsEmptySnap(rd.Snapshot) {
		fsm, err := n.store.saveReady(rd.HardState, rd.Entries, rd.Snapshot)
		if err != nil {
			return err
		}
		if fsm != nil {
			n.fsm, n.cs = fsm, proto.Clone(rd.Snapshot.GetMetadata().GetConfState()).(*pb.ConfState)
			out.Snapshot = fsm.applied
		}
		return n.apply(rd.CommittedEntries, out)
	}
	var fsm *quorumFSM
	if len(rd.CommittedEntries) > 0 {
		n.applyEntries(rd.CommittedEntries, out)
		fsm = n.fsm
	}
	return n.store.saveStep(rd.HardState, rd.Entries, fsm, n.cs)
}

// apply applies committed entries and writes the result in a transaction
// of its own.
func (n *quorumNode) apply(ents []*pb.Entry, out *quorumReady) error {
	if len(ents) == 0 {
		return nil
	}
	n.applyEntries(ents, out)
	return n.store.saveApplied(n.fsm, n.cs)
}

// applyEntries applies committed entries to the state machine in memory;
// the caller writes the result (takeDirty, takeSeen) before anything of
// it is reported.
func (n *quorumNode) applyEntries(ents []*pb.Entry, out *quorumReady) {
	for _, e := range ents {
		idx := e.GetIndex()
		if idx <= n.fsm.applied {
			continue
		}
		var res quorumResult
		var ok bool
		switch e.GetType() {
		case pb.EntryNormal:
			if len(e.GetData()) == 0 {
				n.fsm.skip(idx) // a new leader's empty entry
				n.requeueLost(e.GetTerm())
				continue
			}
			res, ok = n.applyNormal(idx, e.GetData())
		case pb.EntryConfChange, pb.EntryConfChangeV2:
			res, ok = n.applyConf(idx, e.GetType(), e.GetData()), true
			n.confDirty = true
		default:
			// An entry type this version does not know: applying nothing
			// keeps every master of this version identical.
			n.fsm.skip(idx)
			res, ok = quorumResult{Txid: idx, quorumOutcome: quorumOutcome{Err: fmt.Sprintf("unsupported entry type %s", e.GetType())}}, true
		}
		if !ok {
			continue
		}
		if res.Origin == n.id {
			if _, mine := n.pending[res.ReqID]; mine {
				delete(n.pending, res.ReqID)
				out.Durable = append(out.Durable, res.ReqID)
			} else if i := slices.Index(n.timedOut, res.ReqID); i >= 0 {
				n.timedOut = slices.Delete(n.timedOut, i, i+1)
				res.Late = true
			}
		}
		out.Applied = append(out.Applied, res)
	}
}

func (n *quorumNode) applyNormal(idx uint64, data []byte) (quorumResult, bool) {
	origin, reqID, op, err := decodeQuorumEntry(data)
	res := quorumResult{Txid: idx, Origin: origin, ReqID: reqID, Op: op}
	if err != nil {
		n.fsm.skip(idx)
		res.Err = err.Error()
		return res, true
	}
	if idx > n.fsm.applied && n.fsm.duplicate(origin, reqID) {
		n.fsm.skip(idx) // a copy handed again; the first one counted
		return res, false
	}
	var ok bool
	res.quorumOutcome, ok = n.fsm.apply(idx, op)
	if ok {
		n.fsm.remember(idx, origin, reqID)
	}
	return res, ok
}

// applyConf applies a membership change. We only propose V1 changes, but
// raft itself appends an empty V2 one to leave a joint configuration, so
// both are handled. A change the state machine refuses is applied with
// node id 0, which raft skips (etcd's way of refusing a change after
// raft committed it); every master refuses identically.
func (n *quorumNode) applyConf(idx uint64, typ pb.EntryType, data []byte) quorumResult {
	n.fsm.skip(idx)
	res := quorumResult{Txid: idx, Op: quorumOp{Kind: quorumOpMembers}}
	var cc interface {
		pb.ConfChangeI
		proto.Message
		GetContext() []byte
	}
	if typ == pb.EntryConfChange {
		cc = &pb.ConfChange{}
	} else {
		cc = &pb.ConfChangeV2{}
	}
	if err := proto.Unmarshal(data, cc); err != nil {
		// raft validated it when it was proposed; an undecodable one comes
		// from a corrupt log, and skipping it everywhere is all we can do.
		res.Err = fmt.Sprintf("undecodable membership change: %v", err)
		return res
	}
	var key *quorumKeyFP
	if ctx := cc.GetContext(); len(ctx) > 0 {
		var err error
		if res.Origin, res.ReqID, err = decodeQuorumHead(ctx); err != nil {
			res.Err = err.Error()
		} else if len(ctx) == quorumEntryHeader+len(quorumKeyFP{}) {
			key = new(quorumKeyFP(ctx[quorumEntryHeader:]))
		}
	}
	v2 := cc.AsV2()
	for _, c := range v2.Changes {
		id := c.GetNodeId()
		if why := n.refuseConf(c.GetType(), id, key); why != "" {
			res.Err = why
			c.NodeId = new(uint64(0))
			continue
		}
		switch c.GetType() {
		case pb.ConfChangeRemoveNode:
			n.fsm.removed[id] = true
		case pb.ConfChangeAddNode, pb.ConfChangeAddLearnerNode:
			delete(n.fsm.removed, id)
			if key != nil {
				n.fsm.bound[id] = *key
			} else if c.GetType() == pb.ConfChangeAddLearnerNode {
				// An operator's add vouches for the master: whatever key
				// it joined with before is forgotten.
				delete(n.fsm.bound, id)
			}
		}
	}
	n.cs = n.rn.ApplyConfChange(v2)
	res.Members = slices.Clone(n.cs.GetVoters())
	res.Learners = slices.Clone(n.cs.GetLearners())
	slices.Sort(res.Members)
	slices.Sort(res.Learners)
	return res
}

// refuseConf says why the state machine refuses one committed change, or
// "". The leader checks the same before proposing; these catch a change
// that raced another (two leaders' tables, a term change) and must decide
// identically everywhere, so they look at replicated state only.
func (n *quorumNode) refuseConf(typ pb.ConfChangeType, id uint64, key *quorumKeyFP) string {
	if typ == pb.ConfChangeAddLearnerNode && slices.Contains(n.cs.GetVoters(), id) {
		return fmt.Sprintf("master %x is a voter; adding it as a learner would demote it", id)
	}
	if key == nil || (typ != pb.ConfChangeAddLearnerNode && typ != pb.ConfChangeAddNode) {
		return ""
	}
	if n.fsm.removed[id] {
		return fmt.Sprintf("master %x was removed by an operator; only an operator adds it back", id)
	}
	if b, ok := n.fsm.bound[id]; ok && b != *key {
		return fmt.Sprintf("master %x is bound to node key %s, not %s", id, b, key)
	}
	return ""
}

// maybeSnapshot compacts the log once enough has been applied. The image
// is taken right after applying, so it is exactly the state at its index.
// A membership change forces one: raft sends a new master the latest
// snapshot, and the master ignores a snapshot whose membership does not
// include it yet.
func (n *quorumNode) maybeSnapshot() error {
	m := n.store.marks()
	due := n.fsm.applied >= m.snap.index+n.cfg.SnapshotEvery || n.confDirty && n.fsm.applied > m.snap.index
	if !due {
		return nil
	}
	n.confDirty = false
	data, err := n.fsm.encode()
	if err != nil {
		return err
	}
	if _, err := n.store.CreateSnapshot(n.fsm.applied, n.cs, data); err != nil {
		return err
	}
	if n.fsm.applied > n.cfg.SnapshotKeep {
		if to := n.fsm.applied - n.cfg.SnapshotKeep; to > m.trunc.index {
			return n.store.Compact(to)
		}
	}
	return nil
}

// Status reports membership, leadership and progress.
func (n *quorumNode) Status() quorumStatus {
	bs := n.rn.BasicStatus()
	st := quorumStatus{ID: n.id, Leader: bs.Lead, Term: bs.GetTerm(), State: bs.RaftState.String(),
		Commit: bs.GetCommit(), LastTxid: n.fsm.applied, Pending: len(n.pending)}
	st.Members = slices.Clone(n.cs.GetVoters())
	st.Learners = slices.Clone(n.cs.GetLearners())
	slices.Sort(st.Members)
	slices.Sort(st.Learners)
	recent := func(id uint64) bool {
		t, ok := n.heard[id]
		return id == n.id || ok && n.ticks-t < uint64(n.cfg.ElectionTicks)
	}
	switch {
	case n.err != nil || bs.Lead == raft.None || !slices.Contains(st.Members, n.id):
	case bs.RaftState == raft.StateLeader:
		var c int
		for _, id := range st.Members {
			if recent(id) {
				c++
			}
		}
		st.HasQuorum = c > len(st.Members)/2
	default:
		st.HasQuorum = recent(bs.Lead)
	}
	return st
}

// Holdings lists the lock table as of LastTxid, sorted.
func (n *quorumNode) Holdings() []cacHolding { return n.fsm.list() }

// Conflicts lists the other holders' states that stand in the way of op
// in the lock table as of LastTxid.
func (n *quorumNode) Conflicts(op quorumOp) []cacHolding { return n.fsm.conflicts(op) }

// Removed reports whether an operator took master id out of the group.
func (n *quorumNode) Removed(id uint64) bool { return n.fsm.removed[id] }

// Bound is the fingerprint of the node key master id joined with, if its
// id is bound to one.
func (n *quorumNode) Bound(id uint64) (quorumKeyFP, bool) {
	k, ok := n.fsm.bound[id]
	return k, ok
}

// takeState hands over the state machine and the members (voters and
// learners, sorted) for the offline recovery (quorum_recover.go), which
// rewrites them into a new snapshot. The node must not be used after.
func (n *quorumNode) takeState() (*quorumFSM, []uint64) {
	members := append(slices.Clone(n.cs.GetVoters()), n.cs.GetLearners()...)
	slices.Sort(members)
	return n.fsm, members
}

// ReadIndex asks raft to confirm the group's commit index (a read
// barrier, quorum_snapshot.go); the answer comes as a ReadState carrying
// rctx in a later Advance.
func (n *quorumNode) ReadIndex(rctx []byte) error {
	if err := n.broken(); err != nil {
		return err
	}
	n.rn.ReadIndex(rctx)
	return nil
}

// Applied is the last txid applied to the state machine.
func (n *quorumNode) Applied() uint64 { return n.fsm.applied }

// PendingConfChange reports a membership change of ours not yet applied:
// raft takes one at a time.
func (n *quorumNode) PendingConfChange() bool {
	for _, p := range n.pending {
		if p.conf != nil {
			return true
		}
	}
	return false
}

// quorumTransport carries raft messages to the other masters of the
// group. The daemon's rides the cluster links (quorumWire, over DMSG);
// tests use an in-memory network. send returning an error means the
// master is unreachable now.
type quorumTransport interface {
	send(m *pb.Message) error
	// close ends what the transport holds open, once the driver stops.
	close()
}

// quorumPump runs one Advance and sends what it produced: what the driver
// does after each tick or received message, and what the in-memory
// harnesses do in its place.
//
// The leader's appends and heartbeats leave before its own write (see
// advance); a send that fails then is reported once Advance is done.
func quorumPump(n *quorumNode, link quorumTransport) (quorumReady, error) {
	var unreachable []uint64
	rd, err := n.advance(func(m *pb.Message) {
		if link.send(m) != nil {
			unreachable = append(unreachable, m.GetTo())
		}
	})
	if err != nil {
		return rd, err
	}
	for _, m := range rd.Messages {
		err := link.send(m)
		if m.GetType() == pb.MsgSnap {
			n.ReportSnapshot(m.GetTo(), err == nil)
		}
		if err != nil {
			n.ReportUnreachable(m.GetTo())
		}
	}
	for _, to := range unreachable {
		n.ReportUnreachable(to)
	}
	return rd, nil
}

// quorumLogger adapts raft's logging to an optional printf sink. Fatal and
// Panic panic rather than exit: raft only uses them for broken invariants,
// and the daemon's recovery (restart from the file) is the caller's call.
type quorumLogger struct {
	id   uint64
	logf func(string, ...any)
}

func (l quorumLogger) out(level, s string) {
	if l.logf != nil {
		l.logf("quorum %d %s: %s", l.id, level, s)
	}
}

func (l quorumLogger) Debug(v ...any)              {}
func (l quorumLogger) Debugf(string, ...any)       {}
func (l quorumLogger) Info(v ...any)               { l.out("info", fmt.Sprint(v...)) }
func (l quorumLogger) Infof(f string, v ...any)    { l.out("info", fmt.Sprintf(f, v...)) }
func (l quorumLogger) Warning(v ...any)            { l.out("warning", fmt.Sprint(v...)) }
func (l quorumLogger) Warningf(f string, v ...any) { l.out("warning", fmt.Sprintf(f, v...)) }
func (l quorumLogger) Error(v ...any)              { l.out("error", fmt.Sprint(v...)) }
func (l quorumLogger) Errorf(f string, v ...any)   { l.out("error", fmt.Sprintf(f, v...)) }
func (l quorumLogger) Fatal(v ...any)              { l.Panic(v...) }
func (l quorumLogger) Fatalf(f string, v ...any)   { l.Panicf(f, v...) }
func (l quorumLogger) Panic(v ...any)              { s := fmt.Sprint(v...); l.out("panic", s); panic(s) }
func (l quorumLogger) Panicf(f string, v ...any)   { l.Panic(fmt.Sprintf(f, v...)) }
