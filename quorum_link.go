package main

// The quorum group on the wire: the QRM payloads, the dispatch of the
// transactions a master serves, raft messages over dmsg, and the kernel's
// QRM_COMMIT.
//
// Masters reach each other the way anything reaches a PFS in the cluster:
// a transaction opened under the PFS's LNK_SPAN, forwarded hop by hop by
// the services (circuits). Each master opens one QRM_RAFT transaction to
// every other master it must send to and streams raft messages on it, one
// per dmsg message; it steps whatever arrives on the ones the others
// opened. Losing the span or a link closes the transaction; the next
// message reopens it over whatever path the spans offer then.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
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

// quorumServed are the transactions a master's driver serves, by the
// command that opens them: the kernel opens QRM_COMMIT and CAC_LOCK on
// its link (kernel), and other masters and non-master leaves open all
// four under this leaf's LNK_SPAN. This is the one dispatch of the quorum
// commands; a non-master leaf's is Leaf.serveQuorum.
var quorumServed = map[uint32]struct {
	kernel bool
	serve  func(*quorumDriver, *Trans, *Msg)
}{
	CmdQrmRaft:   {false, (*quorumDriver).accept},
	CmdQrmJoin:   {false, (*quorumDriver).join},  // a master asking to be admitted (quorum_join.go)
	CmdQrmCommit: {true, (*quorumDriver).commit}, // the kernel's, or forwarded by a non-master's leaf
	CmdCacLock:   {true, (*quorumDriver).lock},   // likewise (cac.go)
}

// serve takes a transaction t, opened by m, that the quorum code serves,
// from the kernel (fromKernel) or under this leaf's span. It reports
// false for any other command, which the link then refuses NOSUPP.
func (d *quorumDriver) serve(t *Trans, m *Msg, fromKernel bool) bool {
	s, ok := quorumServed[t.Cmd()]
	if !ok || fromKernel && !s.kernel {
		return false
	}
	s.serve(d, t, m)
	return true
}

// quorumWire is the daemon's quorumTransport: one QRM_RAFT transaction to
// each master it sends to, opened under that master's span. Owned by the
// driver's goroutine.
type quorumWire struct {
	host quorumHost
	self uint64
	clid UUID
	log  *slog.Logger
	out  map[uint64]*Trans // by master
}

func newQuorumWire(host quorumHost, self uint64, clid UUID, log *slog.Logger) *quorumWire {
	return &quorumWire{host: host, self: self, clid: clid, log: log, out: map[uint64]*Trans{}}
}

// send carries one raft message to its master, opening the transaction
// under that master's span when there is none (or it was closed).
func (w *quorumWire) send(m *pb.Message) error {
	to := m.GetTo()
	t := w.out[to]
	if t == nil || t.TxDone() || t.RxDone() {
		delete(w.out, to)
		span := w.host.masterSpan(to)
		if span == nil {
			return fmt.Errorf("quorum: no span reaches master %x", to)
		}
		hdr := qrmRaft{From: w.self, To: to, Clid: w.clid}
		// The receiver never answers; its DELETE ends the transaction, and
		// the link closes our side with it.
		var err error
		if t, err = span.Open(&Msg{Header: Header{Cmd: CmdQrmRaft}, Ext: hdr.marshal()}, func(*Trans, *Msg) {}); err != nil {
			return err
		}
		w.out[to] = t
	}
	data, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("quorum: encode message to %d: %w", to, err)
	}
	if err := t.Send(&Msg{Header: Header{Cmd: CmdQrmRaft}, Aux: data}); err != nil {
		w.log.Warn("quorum: message not sent", "to", fmt.Sprintf("%x", to), "bytes", len(data), "err", err)
		delete(w.out, to)
		_ = t.Close(ErrOK)
		return err
	}
	return nil
}

// close ends every QRM_RAFT transaction of ours.
func (w *quorumWire) close() {
	for _, t := range w.out {
		_ = t.Close(ErrOK)
	}
	clear(w.out)
}

// accept takes a QRM_RAFT transaction another master opened under our
// span, stepping every raft message that arrives on it. The node steps
// only messages from masters of its configuration (quorumNode.admits);
// the sender a message names must be the one the transaction names. A
// driver too far behind to take a message drops it: raft sends again
// what matters.
func (d *quorumDriver) accept(t *Trans, m *Msg) {
	hdr, err := parseQrmRaft(m.Ext)
	if err != nil || hdr.Clid != d.clid || hdr.To != d.self {
		_ = t.Close(ErrParam)
		return
	}
	step := func(t *Trans, m *Msg) {
		if len(m.Aux) > 0 {
			msg := new(pb.Message)
			if err := proto.Unmarshal(m.Aux, msg); err != nil {
				d.log.Warn("bad raft message", "from", fmt.Sprintf("%x", hdr.From), "err", err)
				_ = t.Close(ErrParam)
				return
			}
			if msg.GetFrom() != hdr.From || msg.GetTo() != hdr.To {
				d.log.Warn("bad raft message: sender or receiver differs from its QRM_RAFT's",
					"link", t.Link().Name(), "from", fmt.Sprintf("%x", hdr.From), "msg_from", fmt.Sprintf("%x", msg.GetFrom()),
					"to", fmt.Sprintf("%x", hdr.To), "msg_to", fmt.Sprintf("%x", msg.GetTo()))
				_ = t.Close(ErrParam)
				return
			}
			if !d.inbox.put(inboxRaft, func() { d.stepRaft(msg) }) {
				d.busy("a raft message (raft sends it again)", "from", fmt.Sprintf("%x", hdr.From), "type", msg.GetType().String())
			}
		}
		if m.Cmd&FlagDelete != 0 {
			_ = t.Close(ErrOK)
		}
	}
	t.SetHandler(step)
	step(t, m)
}

// stepRaft feeds one received raft message to the node.
func (d *quorumDriver) stepRaft(m *pb.Message) {
	if err := d.node.Step(m); err != nil {
		d.stepRefused(m.GetFrom(), err)
	}
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
	case errors.Is(err, errQuorumBusy):
		return ErrQuorumBusy
	}
	return ErrParam
}

// commit serves the kernel's QRM_COMMIT: the operation is its aux data.
func (d *quorumDriver) commit(t *Trans, m *Msg) {
	op := quorumOp{Kind: quorumOpCommit, Payload: slices.Clone(m.Aux)}
	durable := func(id uint64) {
		_ = t.Send(&Msg{Header: Header{Cmd: CmdQrmCommit}, Ext: (&qrmCommit{Phase: 1, ReqID: id}).marshal()})
	}
	done := func(r quorumResult, err error) {
		if err == nil && r.Err != "" {
			err = errors.New(r.Err)
		}
		if err != nil {
			_ = t.Close(quorumErrCode(err))
			return
		}
		_ = t.Send(&Msg{Header: Header{Cmd: CmdQrmCommit | FlagDelete},
			Ext: (&qrmCommit{Phase: 2, Txid: r.Txid, ReqID: r.ReqID}).marshal()})
	}
	if !d.hand(t, func() { d.propose(op, durable, done) }) {
		return
	}
	t.SetHandler(func(t *Trans, m *Msg) {
		// The kernel may give up (ABORT/DELETE); the result still applies.
		if m.Cmd&FlagDelete != 0 && !t.TxDone() {
			_ = t.Close(ErrOK)
		}
	})
}
