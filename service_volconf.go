package main

// The kernel's link on the service, as DragonFly's service keeps it. On
// DragonFly, mount_hammer2 starts `hammer2 -q service`, connects to TCP
// 127.0.0.1:987 and hands that socket to the kernel, which then sends its
// LNK_CONN (peer_type HAMMER2, label "<host>/hammer2-mount"), one-way
// LNK_HAMMER2_VOLCONF messages inside it for each REMOTE slot of the
// device, and the LNK_SPANs of its PFSs, and answers no PINGs.
//
// The service tells a kernel by its LNK_CONN (svcKernelConn) and then
// keeps the link for as long as the socket lives (Link.SetQuietPeer); its
// spans are relayed like any privileged link's. For every VOLCONF whose
// path names a node (span:<host>[:port], or tcp:/quic:) a worker keeps a
// link to that node, over DragonFly's TCP when remote_dir names the host's
// address and QUIC otherwise (docs/PROTOCOL.md §4.1). One worker per
// (kernel link, media, slot): a changed entry replaces its link, copyid 0
// drops it, and all of a kernel's go when its LNK_CONN closes or its link
// does.

import (
	"context"
	"strings"
)

// svcKernelConn reports whether an LNK_CONN is DragonFly's kernel's: a
// HAMMER2 peer labelled "<host>/hammer2-mount" (what kern_dmsg.c sends),
// on a local link (the Unix socket or loopback TCP), where the peer's
// death closes the socket, so no silence check is needed to notice it.
// Claiming it grants nothing else: any live peer could answer PINGs.
func svcKernelConn(c LnkConn, local bool) bool {
	return local && c.PeerType == PeerHammer2 && strings.HasSuffix(c.PeerLabel, "/hammer2-mount")
}

// volconfKey names one REMOTE slot of one device.
type volconfKey struct {
	media UUID
	index int32
}

// volconfWorker keeps the link one REMOTE slot asks for. Its fields never
// change; the Redialer has the link's state.
type volconfWorker struct {
	key    volconfKey
	entry  Volconf
	target nodeTarget
	dialer *Redialer
	cancel context.CancelFunc
}

// volconfTarget reads a REMOTE entry as DragonFly's service does: a used
// slot whose path is span:<host> (a port may follow, and tcp:/quic: say
// which transport) names a node; anything else is no link.
func volconfTarget(v Volconf) (nodeTarget, bool) {
	if v.CopyID == 0 {
		return nodeTarget{}, false
	}
	spec, ok := strings.CutPrefix(v.Path, "span:")
	if !ok {
		if !strings.HasPrefix(v.Path, transportTCP+":") && !strings.HasPrefix(v.Path, transportQUIC+":") {
			return nodeTarget{}, false
		}
		spec = v.Path
	}
	t, err := parseNodeTarget(spec)
	return t, err == nil
}

// volconf applies one VOLCONF the peer sent inside its LNK_CONN. Only a
// privileged link's count: a VOLCONF makes the service dial.
func (s *Service) volconf(sl *svcLink, m *Msg) {
	v, err := ParseLnkVolconf(m.Ext)
	if err != nil {
		sl.link.Abort(err)
		return
	}
	if !sl.peer.Class.Privileged() {
		s.refused.Warn(sl.link.log, "VOLCONF from an unprivileged link ignored", "link", sl.name, "slot", v.Index,
			"path", v.Copy.Path)
		return
	}
	key := volconfKey{media: v.MediaID, index: v.Index}
	target, ok := volconfTarget(v.Copy)
	s.mu.Lock()
	old := sl.volconf[key]
	switch {
	case old != nil && old.entry == v.Copy:
		s.mu.Unlock()
		return // the same entry again (the dump after a reconnect): keep its link
	case old != nil:
		old.cancel()
		delete(sl.volconf, key)
	}
	if ok && s.ctx.Err() == nil && sl.link.Err() == nil {
		s.startVolconfLocked(sl, key, v.Copy, target)
	}
	s.mu.Unlock()
	sl.link.log.Info("REMOTE slot from the kernel", "link", sl.name, "slot", v.Index, "copyid", v.Copy.CopyID,
		"path", v.Copy.Path, "media", v.MediaID, "linking", ok, "replaced", old != nil)
	s.changes.Notify()
}

// startVolconfLocked starts a worker for one slot; s.mu is held.
func (s *Service) startVolconfLocked(sl *svcLink, key volconfKey, entry Volconf, t nodeTarget) {
	ctx, cancel := context.WithCancel(s.ctx)
	w := &volconfWorker{key: key, entry: entry, target: t, cancel: cancel}
	w.dialer = newRedialerDial(t.String(), s.sec.dialer(t, s.node), RedialConfig{MinBackoff: s.cfg.RedialMin,
		MaxBackoff: s.cfg.RedialMax, Logger: s.log.With("volconf", entry.Path, "slot", key.index), OnChange: s.changes.Notify})
	sl.volconf[key] = w
	name := "volconf " + t.String()
	s.spawn(func() { _ = w.dialer.Run(ctx, func(c redialConn) { s.runDialed(ctx, c, name) }) })
}

// stopVolconfLocked drops every link sl's VOLCONFs asked for; s.mu is
// held.
func (s *Service) stopVolconfLocked(sl *svcLink) {
	for k, w := range sl.volconf {
		w.cancel()
		delete(sl.volconf, k)
	}
}
