package main

// Leaves of non-master PFSs have no vote in the quorum group; they serve
// their kernel's QRM_COMMIT and CAC_LOCK by forwarding each transaction to
// the nearest master of the same cluster, as a sub-transaction under that
// master's LNK_SPAN (DragonFly's proxy design: the request travels the
// circuits the spans built). Every answer a master gives is relayed
// unchanged, so the kernel gets the same answers a master's kernel does;
// a circuit refused before it reached any master is opened again under
// the next master's span.

import "sync"

// serveQuorum takes a QRM or CAC transaction t, opened by m: the kernel's
// (fromKernel) or one opened under this leaf's span. A master's driver
// serves it (quorumServed); a non-master leaf forwards its kernel's
// QRM_COMMIT and CAC_LOCK to a master and refuses the rest NO_QUORUM. It
// reports false for any other command, which the link refuses NOSUPP.
func (l *Leaf) serveQuorum(t *Trans, m *Msg, fromKernel bool) bool {
	if l.quorum != nil {
		return l.quorum.serve(t, m, fromKernel)
	}
	s, ok := quorumServed[t.Cmd()]
	switch {
	case !ok || fromKernel && !s.kernel:
		return false
	case !fromKernel:
		_ = t.Close(ErrNoQuorum)
	case t.Cmd() == CmdCacLock:
		l.forwardLock(t, m)
	default:
		l.forwardToMaster(t, m, m.Ext, nil, nil)
	}
	return true
}

// forwardAttempts is how many master spans one forward tries, nearest
// first, before the kernel is answered 0x27. A try ends early only when
// its circuit is refused CANTCIRC, which costs a round trip to the
// nearest service; five covers a five-master group whose spans but one
// are stale.
const forwardAttempts = 5

// forwardToMaster relays kernel transaction t, opened by m, to a master.
// ext replaces m's payload (a CAC_LOCK gets its holder filled in);
// fromMaster and fromKernel, if set, see each message first: fromMaster
// every answer the kernel gets, the 0x27 of a forward no master took
// included.
//
// A span can outlive its circuit here: when a master's leaf dies, its
// service drops the relay at once, and the withdrawal reaches us a moment
// later. A forward opened in between is refused CANTCIRC by a service or
// by the master's leaf before any master saw it, so it goes to the next
// nearest master; the kernel never sees CANTCIRC, which no master sends.
func (l *Leaf) forwardToMaster(t *Trans, m *Msg, ext []byte, fromMaster, fromKernel func(*Msg)) {
	f := &masterForward{l: l, kt: t, cmd: t.Cmd() & maskBaseCmd, ext: ext, aux: m.Aux,
		fromMaster: fromMaster, fromKernel: fromKernel}
	t.SetHandler(f.kernelMsg)
	f.next()
}

// masterForward is one kernel transaction forwarded to a master. Its
// fields after mu are shared by the kernel link's reader (kernelMsg) and
// the reader of the link the current try runs on (masterMsg).
type masterForward struct {
	l        *Leaf
	kt       *Trans // the kernel's transaction
	cmd      uint32 // QRM_COMMIT or CAC_LOCK
	ext, aux []byte // what opens every try

	fromMaster, fromKernel func(*Msg)

	mu       sync.Mutex
	up       *Trans   // the current try; nil once the forward ended
	tried    []*Trans // the master spans tried, nearest first
	answered bool     // the current try's master sent something
	ended    bool     // the kernel has its answer, or closed its side
}

// next opens a try on the nearest master span not yet tried, or answers
// the kernel 0x27 when none is left.
func (f *masterForward) next() {
	f.mu.Lock()
	for !f.ended && len(f.tried) < forwardAttempts {
		span := f.l.spans.find(func(s *LnkSpan) bool {
			return s.PeerID == f.l.info.Clid && s.PfsType&0x0F == PFSMaster
		}, f.tried...)
		if span == nil {
			break
		}
		f.tried = append(f.tried, span)
		// Opened under f.mu: the master's first answer waits for f.up.
		up, err := span.Open(&Msg{Header: Header{Cmd: f.cmd}, Ext: f.ext, Aux: f.aux}, f.masterMsg)
		if err != nil {
			f.l.log.Warn("forwarding to a master failed", "cmd", CmdString(f.cmd), "try", len(f.tried), "err", err)
			continue
		}
		f.up, f.answered = up, false
		f.mu.Unlock()
		return
	}
	ended, tries := f.ended, len(f.tried)
	f.ended, f.up = true, nil
	f.mu.Unlock()
	if ended {
		return
	}
	if tries == 0 {
		f.l.log.Warn("no master of this cluster reachable to forward to", "cmd", CmdString(f.cmd))
	} else {
		f.l.log.Warn("no master of this cluster took the forward", "cmd", CmdString(f.cmd), "tries", tries)
	}
	if f.fromMaster != nil {
		f.fromMaster(&Msg{Header: Header{Cmd: CmdLnkError | FlagDelete, Error: ErrNoQuorum}})
	}
	_ = f.kt.Close(ErrNoQuorum)
}

// masterMsg takes a message of a try: the master's answers go to the
// kernel unchanged; a refusal of the circuit itself moves to the next try.
func (f *masterForward) masterMsg(up *Trans, um *Msg) {
	del := um.Cmd&FlagDelete != 0
	f.mu.Lock()
	if up != f.up {
		f.mu.Unlock()
		return // a try the forward left, or ended with the kernel's close
	}
	if del && um.Error == ErrCantCirc && !f.answered {
		f.up = nil
		f.mu.Unlock()
		f.l.log.Info("a master's circuit is gone; forwarding to the next", "cmd", CmdString(f.cmd), "try", len(f.tried))
		f.next()
		return
	}
	f.answered = true
	if del {
		f.ended, f.up = true, nil
	}
	f.mu.Unlock()
	if f.fromMaster != nil {
		f.fromMaster(um)
	}
	if del {
		_ = up.Close(ErrOK)
	}
	switch {
	case del && um.Cmd&maskBaseCmd == f.cmd:
		_ = f.kt.Send(&Msg{Header: Header{Cmd: f.cmd | FlagDelete, Error: um.Error}, Ext: um.Ext, Aux: um.Aux})
	case del:
		_ = f.kt.Close(um.Error)
	case um.Cmd&maskBaseCmd == f.cmd:
		_ = f.kt.Send(&Msg{Header: Header{Cmd: f.cmd}, Ext: um.Ext, Aux: um.Aux})
	}
}

// kernelMsg takes what the kernel sends on its transaction after opening
// it: its close ends the forward and the current try.
func (f *masterForward) kernelMsg(t *Trans, km *Msg) {
	if f.fromKernel != nil {
		f.fromKernel(km)
	}
	if km.Cmd&FlagDelete == 0 {
		return
	}
	f.mu.Lock()
	up := f.up
	f.ended, f.up = true, nil
	f.mu.Unlock()
	if up != nil {
		_ = up.Close(ErrOK)
	}
	_ = t.Close(ErrOK)
}

// forwardLock is forwardToMaster for CAC_LOCK: the leaf names the holder
// and keeps the record of what its kernel holds.
func (l *Leaf) forwardLock(t *Trans, m *Msg) {
	req, err := parseCacLock(m.Ext)
	if err != nil {
		l.log.Warn("bad CAC_LOCK from the kernel", "err", err)
		_ = t.Close(ErrParam)
		return
	}
	if !l.cac.claim(&req) {
		_ = t.Close(ErrOK) // a revalidation of nothing we know: drop it
		return
	}
	holder := req.holder()
	l.forwardToMaster(t, m, req.marshal(), func(um *Msg) {
		if um.Cmd&maskBaseCmd != CmdCacLock && um.Cmd&FlagDelete == 0 {
			return
		}
		g, err := parseCacLock(um.Ext)
		switch {
		case um.Cmd&FlagDelete != 0:
			l.cac.forget(holder)
		case err == nil && g.Flags&cacFlagRevoke == 0 && g.Mode != cacInval:
			h := g.holding()
			h.Holder = holder
			l.cac.granted(h)
		}
	}, func(km *Msg) {
		if km.Cmd&FlagDelete != 0 { // released: the record goes with it
			l.cac.forget(holder)
		}
	})
}
