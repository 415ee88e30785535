package main

// Leaves of non-master PFSs have no vote in the quorum group; they serve
// their kernel's QRM_COMMIT and CAC_LOCK by forwarding each transaction to
// the nearest master of the same cluster, as a sub-transaction under that
// master's LNK_SPAN (DragonFly's proxy design: the request travels the
// circuits the spans built). Every message is relayed unchanged both
// ways, so the kernel gets the same answers a master's kernel does.

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

// forwardToMaster relays kernel transaction t, opened by m, to a master.
// ext replaces m's payload (a CAC_LOCK gets its holder filled in);
// fromMaster and fromKernel, if set, see each message first.
func (l *Leaf) forwardToMaster(t *Trans, m *Msg, ext []byte, fromMaster, fromKernel func(*Msg)) {
	span := l.spans.find(func(s *LnkSpan) bool {
		return s.PeerID == l.info.Clid && s.PfsType&0x0F == PFSMaster
	})
	if span == nil {
		l.log.Warn("no master of this cluster reachable to forward to", "cmd", CmdString(m.Cmd))
		_ = t.Close(ErrNoQuorum)
		return
	}
	cmd := t.Cmd() & maskBaseCmd
	up, err := span.Open(&Msg{Header: Header{Cmd: cmd}, Ext: ext, Aux: m.Aux}, func(up *Trans, um *Msg) {
		if fromMaster != nil {
			fromMaster(um)
		}
		if um.Cmd&FlagDelete != 0 {
			if um.Cmd&maskBaseCmd == cmd {
				_ = t.Send(&Msg{Header: Header{Cmd: cmd | FlagDelete, Error: um.Error}, Ext: um.Ext, Aux: um.Aux})
			} else {
				_ = t.Close(um.Error)
			}
			_ = up.Close(ErrOK)
			return
		}
		if um.Cmd&maskBaseCmd == cmd {
			_ = t.Send(&Msg{Header: Header{Cmd: cmd}, Ext: um.Ext, Aux: um.Aux})
		}
	})
	if err != nil {
		l.log.Warn("forwarding to a master failed", "cmd", CmdString(m.Cmd), "err", err)
		_ = t.Close(ErrNoQuorum)
		return
	}
	t.SetHandler(func(t *Trans, km *Msg) {
		if fromKernel != nil {
			fromKernel(km)
		}
		if km.Cmd&FlagDelete != 0 {
			_ = up.Close(ErrOK)
			_ = t.Close(ErrOK)
		}
	})
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
