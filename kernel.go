package main

// The kernel's link: the leaf's end of the socketpair handed over with
// HAMMER2IOC_RECLUSTER (or, off DragonFly, whatever dialed the PFS's
// kernel.sock). The kernel opens an LNK_CONN first, streams one VOLCONF per
// used REMOTE slot inside it once we answer, then opens a LNK_SPAN per PFS
// of the device. It checks no CRC or sequence, answers no PING and PINGs
// never, so on this link only the socket closing means loss.

import (
	"net"
	"sync"
)

// kernelState is what the kernel has told us over its current link.
type kernelState struct {
	mu    sync.Mutex
	spans map[*Trans]LnkSpan
	conn  *LnkConn
}

// newKernelLink starts the kernel's link. peer is the far end as the OS
// reports it: on DragonFly our own socketpair, in the stand-in a
// privileged process (kernel.sock refuses others).
func newKernelLink(l *Leaf, conn net.Conn, peer PeerIdentity) *Link {
	ks := &kernelState{spans: map[*Trans]LnkSpan{}}
	k := NewLink(conn, LinkConfig{
		Name: "kernel", PingInterval: -1, DeadAfter: -1, NoSeqCheck: true,
		Logger: l.log, Peer: peer, MaxPeerTrans: l.cfg.Limits.TransPerLink, HardQueueBytes: l.cfg.Limits.QueueBytes,
		LimitHits: l.obs.hits(),
		Handler:   func(t *Trans, m *Msg) { l.kernelMessage(ks, t, m) },
	})
	defer k.Start()
	// Our own LNK_CONN, as DragonFly's service sends one to every link.
	c := LnkConn{PeerType: PeerCluster, PeerMask: ^uint64(0), PeerLabel: l.hostname + "/hammer2-leaf"}
	if _, err := k.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: c.Marshal()}, func(*Trans, *Msg) {}); err != nil {
		l.log.Warn("sending LNK_CONN to the kernel", "err", err)
	}
	return k
}

func (l *Leaf) kernelMessage(ks *kernelState, t *Trans, m *Msg) {
	if t.IsRoot() || m.Cmd&FlagCreate == 0 {
		return // one-way messages and LNK_ERRORs are never answered
	}
	switch t.Cmd() {
	case CmdLnkConn:
		kc, err := ParseLnkConn(m.Ext)
		if err != nil {
			l.log.Warn("bad LNK_CONN from the kernel", "err", err)
			_ = t.Close(ErrParam)
			return
		}
		ks.mu.Lock()
		ks.conn = &kc
		ks.mu.Unlock()
		l.log.Info("kernel connected", "label", kc.PeerLabel)
		t.SetHandler(func(t *Trans, m *Msg) { l.kernelConnMessage(ks, t, m) })
		// Our result is what makes the kernel send its VOLCONFs and spans.
		_ = t.Reply(ErrOK)
	case CmdLnkSpan:
		var sp LnkSpan
		if err := sp.Unmarshal(m.Ext); err != nil {
			l.log.Warn("bad LNK_SPAN from the kernel", "err", err)
			_ = t.Close(ErrParam)
			return
		}
		ks.mu.Lock()
		ks.spans[t] = sp
		ks.mu.Unlock()
		l.log.Info("kernel advertises a PFS", "label", sp.PeerLabelString(), "pfs_clid", sp.PeerID,
			"pfs_fsid", sp.PfsID, "type", pfsTypeName(sp.PfsType))
		t.SetHandler(func(t *Trans, m *Msg) {
			if m.Cmd&FlagDelete != 0 {
				ks.mu.Lock()
				delete(ks.spans, t)
				ks.mu.Unlock()
				_ = t.Close(ErrOK)
			}
		})
		_ = t.Reply(ErrOK)
	default:
		l.serveQuorum(t, m, true) // QRM_COMMIT and CAC_LOCK; the link refuses anything else
	}
}

// kernelConnMessage takes what the kernel streams inside its LNK_CONN.
func (l *Leaf) kernelConnMessage(ks *kernelState, t *Trans, m *Msg) {
	if m.Cmd&FlagDelete != 0 {
		ks.mu.Lock()
		ks.conn = nil
		ks.mu.Unlock()
		_ = t.Close(ErrOK)
		return
	}
	if m.Cmd&maskBaseCmd != CmdLnkVolconf {
		return
	}
	v, err := ParseLnkVolconf(m.Ext)
	if err != nil {
		l.log.Warn("bad VOLCONF from the kernel", "err", err)
		return
	}
	l.log.Info("REMOTE slot update from the kernel", "slot", v.Index, "copyid", v.Copy.CopyID, "path", v.Copy.Path)
	l.setSlot(v)
}
