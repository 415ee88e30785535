package main

// Transactions: the per-link state machine of dmsg, without I/O.
//
// A transaction is named by who opened it and its msgid. We keep the ones we
// opened in wr and the ones the peer opened in rd; REVTRANS on a received
// message says "the msgid is one you opened", so it picks the table. A state
// ends only when DELETE has gone both ways. Our msgids come from a 64-bit
// counter, so they are never reused at all, let alone while open.

import (
	"cmp"
	"fmt"
	"slices"
)

// Handler receives the messages of a transaction. t is the link's root
// (msgid 0) for one-way messages. m and its slices are valid only during
// the call: copy what you keep.
type Handler func(t *Trans, m *Msg)

// Trans is one transaction on a link, or the link's root for one-way
// messages. Its state (tx, rx, handler, removed, the lanes' counts) is
// guarded by its link's mu; the transTable and the link's own code hold
// it, everyone else goes through the locking methods in iocom.go.
type Trans struct {
	link     *Link
	msgid    uint64
	mine     bool   // we opened it (it lives in wr)
	parent   *Trans // nil for top-level transactions and the root
	children map[*Trans]struct{}
	icmd     uint32 // the opening command without flags
	tx, rx   uint32 // CREATE and DELETE as sent and as received
	handler  Handler
	removed  bool
	orphan   bool // opened under a circuit we do not know

	pendingBulk int // messages in the link's bulk lane not yet written
	// pendingBelow, on a one-stream link: bulk messages of descendants
	// not yet written, which our DELETE must not overtake.
	pendingBelow int
	// On a two-stream link (iocom.go, "Lanes"): bulkLane, our later
	// messages go on the bulk stream since one did; bulkCreate, our
	// CREATE went there, so children we open follow it there; bulkBelow,
	// a descendant's messages went there, so our DELETE follows them.
	bulkLane, bulkCreate, bulkBelow bool

	// Data is for the owner of the transaction (the span or quorum code).
	Data any
}

// Link returns the link the transaction lives on.
func (t *Trans) Link() *Link { return t.link }

// MsgID is the transaction's msgid (0 for the root).
func (t *Trans) MsgID() uint64 { return t.msgid }

// Mine reports whether we opened the transaction.
func (t *Trans) Mine() bool { return t.mine }

// Cmd is the command that opened the transaction, without flags.
func (t *Trans) Cmd() uint32 { return t.icmd }

// Parent is the governing transaction, nil at top level.
func (t *Trans) Parent() *Trans { return t.parent }

// IsRoot reports whether t stands for the link's one-way messages.
func (t *Trans) IsRoot() bool { return t.msgid == 0 }

// rxDone and txDone report whether DELETE was received / sent; the
// caller holds the link's mu (RxDone and TxDone take it).
func (t *Trans) rxDone() bool { return t.rx&FlagDelete != 0 }
func (t *Trans) txDone() bool { return t.tx&FlagDelete != 0 }

// RxOpen reports whether the peer has answered (or opened) the transaction.
func (t *Trans) RxOpen() bool { return t.rx&FlagCreate != 0 }

func (t *Trans) String() string {
	who := "peer"
	if t.mine {
		who = "ours"
	}
	return fmt.Sprintf("%s %s msgid %#x", who, CmdString(t.icmd), t.msgid)
}

// transTable holds a link's open transactions.
type transTable struct {
	root Trans
	wr   map[uint64]*Trans
	rd   map[uint64]*Trans
	next uint64
	// maxRd bounds the transactions the peer holds open (rd); a CREATE
	// past it is a LimitError, which closes the link. Negative: no bound.
	maxRd int
}

func newTransTable(l *Link, maxRd int) *transTable {
	t := &transTable{wr: map[uint64]*Trans{}, rd: map[uint64]*Trans{}, maxRd: maxRd}
	t.root.link = l
	return t
}

// rootTrans is the link's pseudo-transaction for one-way messages and
// top-level opens.
func (tt *transTable) rootTrans() *Trans { return &tt.root }

// rxResult says what to do with a received message.
type rxResult struct {
	t       *Trans // the transaction, or the root for one-way messages
	isNew   bool   // the message opened t
	discard bool   // drop it silently (an ABORT for a state that is gone)
}

// protoError is a state-machine violation; it closes the link.
func protoError(field string, v uint64, format string, args ...any) error {
	return wireErr(field, v, format, args...)
}

// recv runs a received header through the state machine. A non-nil error
// is fatal for the link, as in libdmsg.
func (tt *transTable) recv(h *Header) (rxResult, error) {
	cmd := h.Cmd
	abort := cmd&FlagAbort != 0
	reply := cmd&FlagReply != 0
	rev := cmd&FlagRevTrans != 0

	if cmd&(FlagCreate|FlagDelete) == 0 {
		if h.MsgID == 0 {
			return rxResult{t: &tt.root, discard: abort}, nil
		}
		t := tt.lookup(h.MsgID, rev)
		if t != nil && t.mine && t.tx&FlagCreate == 0 {
			return tt.unsent(h, abort)
		}
		if t == nil {
			if reply {
				return rxResult{}, protoError("msgid", h.MsgID, "%s for a transaction that is not open", CmdString(cmd))
			}
			// libdmsg takes this for a one-way message.
			return rxResult{t: &tt.root, discard: abort}, nil
		}
		// A streaming message picks its transaction by REVTRANS alone, as
		// libdmsg does: DragonFly's shell sends `@<span> <cmd>` as
		// DBG_SHELL|REVTRANS without REPLY on the span we relayed to it.
		if t.rx&FlagCreate == 0 {
			if abort {
				return rxResult{discard: true}, nil
			}
			return rxResult{}, protoError("msgid", h.MsgID, "%s before the transaction's CREATE", CmdString(cmd))
		}
		if t.rx&FlagDelete != 0 {
			return rxResult{}, protoError("msgid", h.MsgID, "%s after the transaction's DELETE", CmdString(cmd))
		}
		return rxResult{t: t}, nil
	}

	if cmd&FlagCreate != 0 && !reply {
		// The peer opens a transaction.
		if rev {
			return rxResult{}, protoError("cmd", uint64(cmd), "CREATE without REPLY cannot name a transaction we opened")
		}
		if h.MsgID == 0 {
			return rxResult{}, protoError("msgid", 0, "CREATE needs a non-zero msgid")
		}
		if tt.rd[h.MsgID] != nil {
			return rxResult{}, protoError("msgid", h.MsgID, "CREATE for a transaction that is already open")
		}
		if tt.maxRd >= 0 && len(tt.rd) >= tt.maxRd && cmd&FlagDelete == 0 {
			return rxResult{}, &LimitError{Limit: "transactions_per_link", Value: uint64(len(tt.rd) + 1), Max: uint64(tt.maxRd),
				Reason: fmt.Sprintf("%s opens one more transaction than the peer may hold open", CmdString(cmd))}
		}
		t := &Trans{link: tt.root.link, msgid: h.MsgID, icmd: cmd & maskBaseCmd, rx: cmd & (FlagCreate | FlagDelete)}
		if h.Circuit != 0 {
			p := tt.lookup(h.Circuit, cmd&FlagRevCirc != 0)
			if p == nil || p.rx&FlagDelete != 0 && p.tx&FlagDelete != 0 {
				t.orphan = true
			} else {
				t.parent = p
			}
		}
		tt.insert(t)
		tt.reapIfDone(t)
		return rxResult{t: t, isNew: true}, nil
	}

	// The rest name an existing transaction: REPLY|CREATE, or DELETE.
	if reply != rev {
		return rxResult{}, protoError("cmd", uint64(cmd), "REPLY and REVTRANS disagree")
	}
	t := tt.lookup(h.MsgID, rev)
	if t != nil && t.mine && t.tx&FlagCreate == 0 {
		return tt.unsent(h, abort)
	}
	if cmd&FlagCreate != 0 { // REPLY|CREATE[|DELETE]
		if t == nil {
			if abort && cmd&FlagDelete != 0 {
				return rxResult{discard: true}, nil
			}
			return rxResult{}, protoError("msgid", h.MsgID, "%s for a transaction that is not open", CmdString(cmd))
		}
		if t.rx&FlagCreate != 0 {
			return rxResult{}, protoError("msgid", h.MsgID, "second CREATE in the reply direction")
		}
		t.rx |= cmd & (FlagCreate | FlagDelete)
		tt.reapIfDone(t)
		return rxResult{t: t}, nil
	}
	// DELETE without CREATE.
	if t == nil {
		if abort {
			return rxResult{discard: true}, nil
		}
		return rxResult{}, protoError("msgid", h.MsgID, "%s for a transaction that is not open", CmdString(cmd))
	}
	if t.rx&FlagCreate == 0 || t.rx&FlagDelete != 0 {
		if abort {
			return rxResult{discard: true}, nil
		}
		if t.rx&FlagDelete != 0 {
			return rxResult{}, protoError("msgid", h.MsgID, "second DELETE")
		}
		return rxResult{}, protoError("msgid", h.MsgID, "DELETE before the transaction's CREATE")
	}
	t.rx |= FlagDelete
	tt.reapIfDone(t)
	return rxResult{t: t}, nil
}

// unsent answers a message naming a transaction of ours whose CREATE has
// not gone out: the peer cannot know that msgid.
func (tt *transTable) unsent(h *Header, abort bool) (rxResult, error) {
	if abort {
		return rxResult{discard: true}, nil
	}
	return rxResult{}, protoError("msgid", h.MsgID, "%s before we sent CREATE", CmdString(h.Cmd))
}

func (tt *transTable) lookup(msgid uint64, mine bool) *Trans {
	if mine {
		return tt.wr[msgid]
	}
	return tt.rd[msgid]
}

func (tt *transTable) insert(t *Trans) {
	if t.mine {
		tt.wr[t.msgid] = t
	} else {
		tt.rd[t.msgid] = t
	}
	if t.parent != nil {
		if t.parent.children == nil {
			t.parent.children = map[*Trans]struct{}{}
		}
		t.parent.children[t] = struct{}{}
	}
}

// reapIfDone removes t once DELETE has gone both ways.
func (tt *transTable) reapIfDone(t *Trans) {
	if t.rx&FlagDelete == 0 || t.tx&FlagDelete == 0 || t.removed {
		return
	}
	t.removed = true
	if t.mine {
		delete(tt.wr, t.msgid)
	} else {
		delete(tt.rd, t.msgid)
	}
	if t.parent != nil {
		delete(t.parent.children, t)
	}
}

// open allocates a transaction we initiate under parent (nil or the root
// for top level).
func (tt *transTable) open(parent *Trans, icmd uint32) *Trans {
	if parent != nil && parent.msgid == 0 {
		parent = nil
	}
	tt.next++
	t := &Trans{link: tt.root.link, msgid: tt.next, mine: true, parent: parent, icmd: icmd & maskBaseCmd}
	tt.insert(t)
	return t
}

// prepSend fills in m's msgid, circuit and direction flags for sending on
// t, and records what was sent. The caller's m.Cmd carries the command and
// any DELETE or ABORT it wants; CREATE is added on the first message.
func (tt *transTable) prepSend(t *Trans, m *Msg) error {
	if t.msgid == 0 {
		if m.Cmd&(FlagCreate|FlagDelete) != 0 {
			return fmt.Errorf("dmsg: %s: a one-way message cannot CREATE or DELETE", CmdString(m.Cmd))
		}
		m.MsgID, m.Circuit = 0, 0
		return nil
	}
	abort := m.Cmd&FlagAbort != 0
	if t.tx&FlagDelete != 0 && !abort {
		return fmt.Errorf("dmsg: %s: %v already sent DELETE", CmdString(m.Cmd), t)
	}
	if t.removed && !abort {
		return fmt.Errorf("dmsg: %v is closed", t)
	}
	m.Cmd &^= FlagCreate | FlagReply | FlagRevTrans | FlagRevCirc
	if t.tx&FlagCreate == 0 {
		m.Cmd |= FlagCreate
	}
	if !t.mine {
		m.Cmd |= FlagReply | FlagRevTrans
	}
	m.MsgID, m.Circuit = t.msgid, 0
	if t.parent != nil {
		m.Circuit = t.parent.msgid
		if !t.parent.mine {
			m.Cmd |= FlagRevCirc
		}
	}
	t.tx |= m.Cmd & (FlagCreate | FlagDelete)
	tt.reapIfDone(t)
	return nil
}

// lostLinkOrder lists every open transaction, children before parents
// (and in msgid order otherwise, so that failure is deterministic).
func (tt *transTable) lostLinkOrder() []*Trans {
	var out []*Trans
	seen := map[*Trans]bool{}
	var visit func(t *Trans)
	visit = func(t *Trans) {
		if seen[t] {
			return
		}
		seen[t] = true
		for _, c := range sortedTrans(t.children) {
			visit(c)
		}
		out = append(out, t)
	}
	for _, m := range []map[*Trans]struct{}{tt.setOf(tt.wr), tt.setOf(tt.rd)} {
		for _, t := range sortedTrans(m) {
			visit(t)
		}
	}
	return out
}

func (tt *transTable) setOf(m map[uint64]*Trans) map[*Trans]struct{} {
	s := make(map[*Trans]struct{}, len(m))
	for _, t := range m {
		s[t] = struct{}{}
	}
	return s
}

// lostLink returns the messages that close every transaction still open in
// the receive direction when the link is lost, children first:
// LNK_ERROR|DELETE|ABORT with LOSTLINK, flagged as the peer would have sent
// them so that they run through recv like real ones.
func (tt *transTable) lostLink() []Msg {
	var out []Msg
	for _, t := range tt.lostLinkOrder() {
		if t.rx&FlagDelete != 0 || t.mine && t.tx&FlagCreate == 0 {
			continue // closed, or never announced to the peer
		}
		cmd := CmdLnkError | FlagDelete | FlagAbort
		if t.rx&FlagCreate == 0 {
			cmd |= FlagCreate
		}
		if t.mine {
			cmd |= FlagReply | FlagRevTrans
		}
		var circuit uint64
		if t.parent != nil {
			circuit = t.parent.msgid
			if t.parent.mine {
				cmd |= FlagRevCirc
			}
		}
		out = append(out, Msg{Header: Header{Cmd: cmd, MsgID: t.msgid, Circuit: circuit, Error: ErrLostLink}})
	}
	return out
}

// sortedTrans lists a table in msgid order so that failure simulation is
// deterministic.
func sortedTrans(m map[*Trans]struct{}) []*Trans {
	out := make([]*Trans, 0, len(m))
	for t := range m {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *Trans) int { return cmp.Compare(a.msgid, b.msgid) })
	return out
}

// count reports the number of open transactions (both tables).
func (tt *transTable) count() int { return len(tt.wr) + len(tt.rd) }
