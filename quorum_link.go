package main

// The quorum group on the wire: how a master's leaf runs its quorumNode
// over dmsg, and how it serves the kernel's QRM_COMMIT.
//
// Masters reach each other the way anything reaches a PFS in the cluster:
// a transaction opened under the PFS's LNK_SPAN, forwarded hop by hop by
// the services (circuits). Each master opens one QRM_RAFT transaction to
// every other master it must send to and streams raft messages on it, one
// per dmsg message; it steps whatever arrives on the ones the others
// opened. Losing the span or a link closes the transaction; the next
// message reopens it over whatever path the spans offer then.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// QRM commands (protocol 0x4). DragonFly reserved QRM_COMMIT (code 0x001)
// without a payload; QRM_RAFT and QRM_JOIN (quorum_join.go) are ours. All
// payloads are 64 bytes, two header units with the base header.
var (
	CmdQrmCommit = mkcmd(ProtoQRM, 0x001, 128)
	CmdQrmRaft   = mkcmd(ProtoQRM, 0x002, 128)
)

// Quorum results in the header's error field (the 0x2X block holds
// DragonFly's own; these follow them).
const (
	ErrQuorumTimeout = 0x25 // no majority in time; the request was never applied
	ErrQuorumUnknown = 0x26 // in a log but not committed in time: outcome unknown
	ErrNoQuorum      = 0x27 // this leaf serves no quorum group
)

// qrmCommit is the QRM_COMMIT payload. The kernel opens the transaction
// with the operation as aux data and the payload zeroed; the leaf answers
// with phase 1 (a majority holds it durably; the transaction stays open),
// then phase 2 with DELETE (applied; txid set).
type qrmCommit struct {
	Phase uint32 // 1 or 2
	Txid  uint64 // phase 2: the cluster-wide transaction id
	ReqID uint64 // the group's request id, for logs
}

func (c *qrmCommit) marshal() []byte {
	b := newExt(CmdQrmCommit)
	le := binary.LittleEndian
	le.PutUint32(b[0x40-HdrSize:], c.Phase)
	le.PutUint64(b[0x48-HdrSize:], c.Txid)
	le.PutUint64(b[0x50-HdrSize:], c.ReqID)
	return b
}

func parseQrmCommit(ext []byte) (qrmCommit, error) {
	if err := needExt(ext, "QRM_COMMIT", 0x58); err != nil {
		return qrmCommit{}, err
	}
	le := binary.LittleEndian
	return qrmCommit{Phase: le.Uint32(ext[0x40-HdrSize:]), Txid: le.Uint64(ext[0x48-HdrSize:]),
		ReqID: le.Uint64(ext[0x50-HdrSize:])}, nil
}

// qrmRaft is the QRM_RAFT payload: who talks to whom in which group. The
// raft message itself is the aux data (protobuf, as etcd raft encodes it).
type qrmRaft struct {
	From, To uint64
	Clid     UUID
}

func (r *qrmRaft) marshal() []byte {
	b := newExt(CmdQrmRaft)
	le := binary.LittleEndian
	le.PutUint64(b[0x40-HdrSize:], r.From)
	le.PutUint64(b[0x48-HdrSize:], r.To)
	copy(b[0x50-HdrSize:], r.Clid[:])
	return b
}

func parseQrmRaft(ext []byte) (qrmRaft, error) {
	if err := needExt(ext, "QRM_RAFT", 0x60); err != nil {
		return qrmRaft{}, err
	}
	le := binary.LittleEndian
	r := qrmRaft{From: le.Uint64(ext[0x40-HdrSize:]), To: le.Uint64(ext[0x48-HdrSize:])}
	copy(r.Clid[:], ext[0x50-HdrSize:])
	return r, nil
}

// masterID is a master's raft id: the first 8 bytes of its pfs_fsid
// (never 0, which raft reserves). Random v4 fsids make collisions in one
// cluster negligible.
func masterID(fsid UUID) uint64 {
	if id := binary.LittleEndian.Uint64(fsid[:8]); id != 0 {
		return id
	}
	return 1
}

// quorumDriver owns one quorumNode: a single goroutine does all its work,
// since the node, like etcd's RawNode, is not safe for concurrent use.
type quorumDriver struct {
	leaf *Leaf
	node *quorumNode
	self uint64
	tick time.Duration
	work chan func()

	// owned by the run goroutine
	out     map[uint64]*Trans        // our QRM_RAFT transaction to each master
	waiters map[uint64]*quorumWaiter // by request id

	reach  map[uint64]bool // masters whose span we saw at the last sweep
	ticks  int
	sweeps uint64

	// joining (quorum_join.go), owned by the run goroutine
	joins   *quorumJoins      // member: the verified joiners
	joinOut map[uint64]*Trans // joiner: our QRM_JOIN to each master
	// strangers sent raft traffic that was refused as from outside the
	// configuration (and not removed): the next sweep asks them to admit
	// this master, which makes them sponsors if they are members.
	strangers map[uint64]bool
	// joinLog and stepLog keep repeated refusals out of the log; they are
	// safe for any goroutine.
	joinLog *keyedLogLimiter
	stepLog *keyedLogLimiter

	// cache states (cac.go), owned by the run goroutine
	grants        map[string]*cacGrant // by holder: the states this master granted
	waits         []*cacWait
	tries         map[string]int // conflicts each waiting request met so far
	lease         time.Duration
	commitTimeout time.Duration

	status atomic.Pointer[quorumStatus]
}

func newQuorumDriver(l *Leaf, node *quorumNode, tick, lease, commitTimeout time.Duration) *quorumDriver {
	d := &quorumDriver{leaf: l, node: node, self: node.id, tick: tick, work: make(chan func(), 256),
		out: map[uint64]*Trans{}, waiters: map[uint64]*quorumWaiter{}, reach: map[uint64]bool{},
		joins: newQuorumJoins(), joinOut: map[uint64]*Trans{}, strangers: map[uint64]bool{},
		joinLog: &keyedLogLimiter{perMinute: quorumLogPerMinute}, stepLog: &keyedLogLimiter{every: time.Minute, perMinute: quorumLogPerMinute},
		grants: map[string]*cacGrant{}, tries: map[string]int{}, lease: lease, commitTimeout: commitTimeout}
	st := node.Status()
	d.status.Store(&st)
	return d
}

// do runs f on the driver's goroutine.
func (d *quorumDriver) do(ctx context.Context, f func()) {
	select {
	case d.work <- f:
	case <-ctx.Done():
	}
}

func (d *quorumDriver) run(ctx context.Context) {
	t := time.NewTicker(d.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			for _, tr := range d.out {
				_ = tr.Close(ErrOK)
			}
			for _, tr := range d.joinOut {
				_ = tr.Close(ErrOK)
			}
			return
		case now := <-t.C:
			d.node.Tick()
			d.cacTick(now)
			if d.ticks++; d.ticks%quorumSweepTicks == 0 {
				d.sweepMasters()
			}
		case f := <-d.work:
			f()
			// Take everything already waiting before one pump, so that
			// concurrent requests share a raft Ready and its fsync.
			for more := true; more; {
				select {
				case f := <-d.work:
					f()
				default:
					more = false
				}
			}
		}
		d.pump()
	}
}

// pump persists, sends and answers what the node produced.
func (d *quorumDriver) pump() {
	rd, err := d.node.Advance()
	if err != nil {
		d.leaf.log.Error("quorum store failed; the group needs a restart of this leaf", "err", err)
		return
	}
	for _, m := range rd.Messages {
		err := d.send(m)
		if m.GetType() == pb.MsgSnap {
			d.node.ReportSnapshot(m.GetTo(), err == nil)
		}
	}
	for _, id := range rd.Durable {
		if w := d.waiters[id]; w != nil && w.durable != nil {
			w.durable(id)
		}
	}
	for _, r := range rd.Applied {
		if r.Origin != d.self {
			continue
		}
		if w := d.waiters[r.ReqID]; w != nil {
			delete(d.waiters, r.ReqID)
			w.done(r, nil)
		}
	}
	d.cacApplied(rd.Applied)
	for _, f := range rd.Failed {
		if w := d.waiters[f.ReqID]; w != nil {
			delete(d.waiters, f.ReqID)
			d.leaf.log.Warn("quorum request failed", "req", fmtReqID(f.ReqID), "err", f.Err)
			w.done(quorumResult{ReqID: f.ReqID}, f.Err)
		}
	}
	st := d.node.Status()
	d.status.Store(&st)
	d.leaf.changes.Notify() // status watchers: the status may have changed
}

// send carries one raft message to its master, opening the transaction
// under that master's span when there is none.
func (d *quorumDriver) send(m *pb.Message) error {
	t := d.out[m.GetTo()]
	if t == nil || t.TxDone() || t.RxDone() {
		var err error
		if t, err = d.open(m.GetTo()); err != nil {
			d.node.rn.ReportUnreachable(m.GetTo())
			return err
		}
		d.out[m.GetTo()] = t
	}
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("quorum: encode message to %d: %w", m.GetTo(), err)
	}
	if err := t.Send(&Msg{Header: Header{Cmd: CmdQrmRaft}, Aux: data}); err != nil {
		d.leaf.log.Warn("quorum: message not sent", "to", fmt.Sprintf("%x", m.GetTo()), "bytes", len(data), "err", err)
		delete(d.out, m.GetTo())
		_ = t.Close(ErrOK)
		d.node.rn.ReportUnreachable(m.GetTo())
		return err
	}
	return nil
}

// open finds the nearest span of master id and opens QRM_RAFT under it.
func (d *quorumDriver) open(id uint64) (*Trans, error) {
	hdr := qrmRaft{From: d.self, To: id, Clid: d.leaf.info.Clid}
	return d.openUnder(id, &Msg{Header: Header{Cmd: CmdQrmRaft}, Ext: hdr.marshal()}, func(t *Trans, m *Msg) {
		if m.Cmd&FlagDelete != 0 {
			d.do(d.leaf.ctx, func() {
				if d.out[id] == t {
					delete(d.out, id)
				}
			})
		}
	})
}

// accept takes a QRM_RAFT transaction another master opened under our
// span, stepping every raft message that arrives on it. The node steps
// only messages from masters of its configuration (quorumNode.admits);
// the sender a message names must be the one the transaction names.
func (d *quorumDriver) accept(t *Trans, m *Msg) {
	hdr, err := parseQrmRaft(m.Ext)
	if err != nil || hdr.Clid != d.leaf.info.Clid || hdr.To != d.self {
		_ = t.Close(ErrParam)
		return
	}
	step := func(t *Trans, m *Msg) {
		if len(m.Aux) > 0 {
			msg := new(pb.Message)
			if err := proto.Unmarshal(m.Aux, msg); err != nil {
				d.leaf.log.Warn("bad raft message", "from", fmt.Sprintf("%x", hdr.From), "err", err)
				_ = t.Close(ErrParam)
				return
			}
			if msg.GetFrom() != hdr.From || msg.GetTo() != hdr.To {
				d.leaf.log.Warn("bad raft message: sender or receiver differs from its QRM_RAFT's",
					"link", t.Link(), "from", fmt.Sprintf("%x", hdr.From), "msg_from", fmt.Sprintf("%x", msg.GetFrom()),
					"to", fmt.Sprintf("%x", hdr.To), "msg_to", fmt.Sprintf("%x", msg.GetTo()))
				_ = t.Close(ErrParam)
				return
			}
			d.do(d.leaf.ctx, func() {
				if err := d.node.Step(msg); err != nil {
					d.stepRefused(hdr.From, err)
				}
			})
		}
		if m.Cmd&FlagDelete != 0 {
			_ = t.Close(ErrOK)
		}
	}
	t.SetHandler(step)
	step(t, m)
}

// quorumWaiter follows one request of this master. Both callbacks run on
// the driver's goroutine.
type quorumWaiter struct {
	durable func(reqID uint64)              // phase 1, optional
	done    func(r quorumResult, err error) // phase 2, or the failure
}

// submit proposes op from any goroutine but the driver's. done gets the
// applied result, or the error that refused or failed the request.
func (d *quorumDriver) submit(op quorumOp, durable func(uint64), done func(quorumResult, error)) {
	d.do(d.leaf.ctx, func() { d.propose(op, durable, done) })
}

// propose is submit on the driver's own goroutine (a callback may not go
// through the work queue: only the driver drains it).
func (d *quorumDriver) propose(op quorumOp, durable func(uint64), done func(quorumResult, error)) {
	op.At = time.Now().UnixNano() // this proposal's age decides whether a grant is still safe to hand out
	id, err := d.node.Propose(op)
	if err != nil {
		done(quorumResult{}, err)
		return
	}
	d.waiters[id] = &quorumWaiter{durable: durable, done: done}
}

// quorumErrCode is the dmsg error a failed request is answered with.
func quorumErrCode(err error) uint32 {
	switch {
	case errors.Is(err, errQuorumNoLeader):
		return ErrQuorumTimeout
	case errors.Is(err, errQuorumTimeout):
		return ErrQuorumUnknown
	case errors.Is(err, errCacConflict):
		return ErrCacConflict
	}
	return ErrParam
}

// commit serves the kernel's QRM_COMMIT: the operation is its aux data.
func (d *quorumDriver) commit(t *Trans, m *Msg) {
	op := quorumOp{Kind: quorumOpCommit, Payload: slices.Clone(m.Aux)}
	t.SetHandler(func(t *Trans, m *Msg) {
		// The kernel may give up (ABORT/DELETE); the result still applies.
		if m.Cmd&FlagDelete != 0 && !t.TxDone() {
			_ = t.Close(ErrOK)
		}
	})
	d.submit(op, func(id uint64) {
		_ = t.Send(&Msg{Header: Header{Cmd: CmdQrmCommit}, Ext: (&qrmCommit{Phase: 1, ReqID: id}).marshal()})
	}, func(r quorumResult, err error) {
		if err == nil && r.Err != "" {
			err = errors.New(r.Err)
		}
		if err != nil {
			_ = t.Close(quorumErrCode(err))
			return
		}
		_ = t.Send(&Msg{Header: Header{Cmd: CmdQrmCommit | FlagDelete},
			Ext: (&qrmCommit{Phase: 2, Txid: r.Txid, ReqID: r.ReqID}).marshal()})
	})
}

// Holdings lists the cache states held through this leaf. It asks the
// driver's goroutine, waiting at most a second.
func (d *quorumDriver) Holdings() []cacHolding {
	ch := make(chan []cacHolding, 1)
	ctx, cancel := context.WithTimeout(d.leaf.ctx, time.Second)
	defer cancel()
	d.do(ctx, func() {
		var mine []cacHolding
		for _, h := range d.node.Holdings() {
			if d.grants[h.Holder] != nil {
				mine = append(mine, h)
			}
		}
		ch <- mine
	})
	select {
	case h := <-ch:
		return h
	case <-ctx.Done():
		return nil
	}
}

// Status is the group as this master sees it.
func (d *quorumDriver) Status() quorumStatus { return *d.status.Load() }

// quorumSweepTicks is how often the driver compares the group with the
// MASTER spans the cluster advertises.
const quorumSweepTicks = 5

// sweepMasters follows the masters the spans show. A member whose span
// went away is reported down to raft at once (a leader that vanished is
// forgotten, so its successor is elected without waiting out its lease,
// and requests forwarded to it are handed again). A span never adds a
// member by itself: a master outside the group asks to join
// (requestJoins), and on the leader the next membership change is taken
// from the verified joiners and the caught-up learners, one at a time
// (quorumJoins.next). Only an operator removes a member (quorum remove),
// and the leader never adds back one that was removed.
func (d *quorumDriver) sweepMasters() {
	d.sweeps++
	seen := map[uint64]bool{}
	for _, e := range d.leaf.spans.list() {
		if e.Span.PeerID == d.leaf.info.Clid && e.Span.PfsType&0x0F == PFSMaster {
			seen[masterID(e.Span.PfsID)] = true
		}
	}
	st := d.node.Status()
	for _, id := range append(slices.Clone(st.Members), st.Learners...) {
		if id == d.self {
			continue
		}
		if d.reach[id] && !seen[id] {
			d.leaf.log.Info("quorum: master's span withdrawn", "master", fmt.Sprintf("%x", id))
			d.node.LinkDown(id)
		}
		d.reach[id] = seen[id]
	}
	// A master outside the group asks every master it sees to admit it;
	// a member asks those whose traffic it refused (it may be behind).
	ask := seen
	if d.node.InGroup() {
		ask = map[uint64]bool{}
		for id := range d.strangers {
			if seen[id] && !d.node.Removed(id) {
				ask[id] = true
			}
		}
		clear(d.strangers)
	}
	if len(ask) > 0 {
		d.requestJoins(ask)
	}
	change, id, key := d.joins.next(d.node, d.sweeps)
	if change == 0 {
		return
	}
	args := []any{"master", fmt.Sprintf("%x", id), "change", change.String()}
	if key != nil {
		args = append(args, "key", key.String())
	}
	d.leaf.log.Info("quorum: changing the group's membership", args...)
	d.member(change, id, key, func(r quorumResult, err error) {
		if err == nil && r.Err != "" {
			err = errors.New(r.Err)
		}
		if err != nil {
			d.leaf.log.Warn("quorum: membership change failed", append(args, "err", err)...)
		}
	})
}

// member proposes a membership change on the driver's goroutine.
func (d *quorumDriver) member(change quorumMemberChange, id uint64, key *quorumKeyFP, done func(quorumResult, error)) {
	reqID, err := d.node.ProposeConfChange(change, id, key)
	if err != nil {
		done(quorumResult{}, err)
		return
	}
	d.waiters[reqID] = &quorumWaiter{done: done}
}

// Member is the operator's add or remove from any goroutine: it waits for
// the change to be applied (or to fail) and returns the voters and the
// learners after it. An added master is a learner until the leader has
// caught it up and promoted it.
func (d *quorumDriver) Member(ctx context.Context, change quorumMemberChange, id uint64) (voters, learners []uint64, err error) {
	ch := make(chan quorumResult, 1)
	errc := make(chan error, 1)
	d.do(ctx, func() {
		if change == quorumAddLearner && id == d.self {
			errc <- errors.New("this master is already a member")
			return
		}
		d.member(change, id, nil, func(r quorumResult, err error) {
			if err == nil && r.Err != "" {
				err = errors.New(r.Err)
			}
			if err != nil {
				errc <- err
				return
			}
			ch <- r
		})
	})
	select {
	case r := <-ch:
		return r.Members, r.Learners, nil
	case err := <-errc:
		return nil, nil, err
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("quorum: membership change of %x: %w", id, ctx.Err())
	}
}
