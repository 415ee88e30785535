package main

// LNK_CONN / LNK_SPAN as a leaf runs them: on every cluster link we send
// one LNK_CONN, and once it is acknowledged one top-level LNK_SPAN for our
// PFS (dist 0, rnss 0). We answer the peer's LNK_CONN and keep a table of
// the spans the cluster advertises to us. A leaf never relays between its
// links and never changes dist or rnss.

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// spanEntry is one span a peer advertises to us.
type spanEntry struct {
	Link  string
	Span  LnkSpan
	Since time.Time
}

// spanTable is what the cluster advertises, over all links, within the
// limits on spans per link and in all.
type spanTable struct {
	perLink, total int

	changes *notifier     // the leaf's: told of every span added or removed
	updates atomic.Uint64 // spans added and removed so far (metrics)

	mu      sync.Mutex
	entries map[*Trans]*spanEntry
	byLink  map[*Link]int
}

func newSpanTable(lim Limits) *spanTable {
	return &spanTable{perLink: lim.SpansPerLink, total: lim.Spans, entries: map[*Trans]*spanEntry{}, byLink: map[*Link]int{}}
}

// add records a span, or refuses it with the limit it would break.
func (s *spanTable) add(t *Trans, link string, sp LnkSpan) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch n := s.byLink[t.Link()]; {
	case n >= s.perLink:
		return &LimitError{Limit: "spans_per_link", Value: uint64(n + 1), Max: uint64(s.perLink),
			Reason: "the link advertised one span more than it may"}
	case len(s.entries) >= s.total:
		return &LimitError{Limit: "spans", Value: uint64(len(s.entries) + 1), Max: uint64(s.total),
			Reason: "the leaf holds as many spans as it may, from all links"}
	}
	s.entries[t] = &spanEntry{Link: link, Span: sp, Since: time.Now()}
	s.byLink[t.Link()]++
	s.updates.Add(1)
	s.changes.Notify()
	return nil
}

func (s *spanTable) remove(t *Trans) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entries[t]; !ok {
		return
	}
	delete(s.entries, t)
	s.updates.Add(1)
	if s.byLink[t.Link()]--; s.byLink[t.Link()] <= 0 {
		delete(s.byLink, t.Link())
	}
	s.changes.Notify()
}

// find returns the transaction of the nearest span (lowest dist, then
// rnss) that match accepts, skipping the spans named in skip; nil if none.
func (s *spanTable) find(match func(*LnkSpan) bool, skip ...*Trans) *Trans {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *Trans
	var bestSpan *LnkSpan
	for t, e := range s.entries {
		if !match(&e.Span) || slices.Contains(skip, t) {
			continue
		}
		if best == nil || e.Span.Dist < bestSpan.Dist || e.Span.Dist == bestSpan.Dist && e.Span.RNSS < bestSpan.RNSS {
			best, bestSpan = t, &e.Span
		}
	}
	return best
}

// list returns the spans ordered by cluster, node, then (dist, rnss).
func (s *spanTable) list() []spanEntry {
	s.mu.Lock()
	out := make([]spanEntry, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, *e)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b spanEntry) int {
		return cmp.Or(
			cmp.Compare(a.Span.PeerID.String(), b.Span.PeerID.String()),
			cmp.Compare(a.Span.PeerLabelString(), b.Span.PeerLabelString()),
			cmp.Compare(a.Span.PfsID.String(), b.Span.PfsID.String()),
			cmp.Compare(a.Span.Dist, b.Span.Dist),
			cmp.Compare(a.Span.RNSS, b.Span.RNSS),
			cmp.Compare(a.Link, b.Link))
	})
	return out
}

// clusterLink is the leaf's side of one link to the cluster (a remote node
// or the backbone).
type clusterLink struct {
	leaf *Leaf
	link *Link
	name string
	quic *QuicLink // nil for the backbone and TCP links
	tcp  *tcpConn  // a DragonFly TCP link's conn, nil otherwise

	mu       sync.Mutex
	conn     *Trans // our LNK_CONN
	span     *Trans // our LNK_SPAN
	peerConn *LnkConn
}

// runClusterLink starts the dmsg link over rw and opens our LNK_CONN. peer
// is who is on the other end: an authenticated node (QUIC) or the local
// service (the backbone, checked before).
func (l *Leaf) runClusterLink(rw io.ReadWriteCloser, name string, q *QuicLink, peer PeerIdentity) *clusterLink {
	c := &clusterLink{leaf: l, name: name, quic: q}
	c.tcp, _ = rw.(*tcpConn)
	l.mu.Lock()
	cfg := LinkConfig{Name: name, PingInterval: l.cfg.PingInterval.Duration, DeadAfter: l.cfg.DeadAfter.Duration,
		Handler: c.handle, Logger: l.log, Peer: peer, MaxPeerTrans: l.cfg.Limits.TransPerLink,
		HardQueueBytes: l.cfg.Limits.QueueBytes, LimitHits: l.obs.hits(), OnRTT: l.obs.rttObserver(peer.Class.String())}
	if q != nil {
		cfg.BulkBatch = quicBulkBatch
	}
	l.mu.Unlock()
	c.link = NewLink(rw, cfg)
	defer c.link.Start() // once c is complete: its handler uses it
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1,
		PeerLabel: l.hostname + "/hammer2-leaf"}
	t, err := c.link.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: conn.Marshal()}, c.onOurConn)
	if err != nil {
		l.log.Warn("sending LNK_CONN", "link", name, "err", err)
		return c
	}
	c.mu.Lock()
	c.conn = t
	c.mu.Unlock()
	// Up once the peer has said something valid, not when the socket
	// or QUIC handshake is done.
	l.spawn(func() {
		select {
		case <-c.link.Heard():
			c.link.log.Info("cluster link up", "link", name)
			l.changes.Notify()
		case <-c.link.Done():
		}
	})
	return c
}

// onOurConn sees the answers to our LNK_CONN: the first one lets us
// advertise; the peer closing it withdraws our span.
func (c *clusterLink) onOurConn(t *Trans, m *Msg) {
	if m.Cmd&FlagDelete != 0 {
		c.withdraw()
		return
	}
	if m.Cmd&FlagCreate == 0 || m.Error != ErrOK {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.span != nil {
		return
	}
	sp := c.leaf.ourSpan()
	st, err := c.link.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(*Trans, *Msg) {})
	if err != nil {
		c.leaf.log.Warn("advertising the PFS", "link", c.name, "err", err)
		return
	}
	c.span = st
}

func (c *clusterLink) withdraw() {
	c.mu.Lock()
	st := c.span
	c.span = nil
	c.mu.Unlock()
	if st != nil {
		_ = st.Close(ErrOK)
	}
}

// ourSpan is the LNK_SPAN advertising the PFS, as the kernel would send it.
func (l *Leaf) ourSpan() LnkSpan {
	sp := LnkSpan{PeerID: l.info.Clid, PfsID: l.info.Fsid, PfsType: l.info.Type,
		PeerType: PeerHammer2, ProtoVersion: SpanProto1}
	sp.SetLabels(l.info.Label, "")
	return sp
}

// handle takes the transactions the peer opens and its one-way messages.
func (c *clusterLink) handle(t *Trans, m *Msg) {
	if t.IsRoot() {
		if m.Cmd&(maskBaseCmd|FlagReply) == CmdDbgShell {
			line := ShellText(m.Aux)
			if !c.leaf.quorumShell(line, func(out string) {
				_ = t.Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagReply}, Aux: ShellAux(out + shellPrompt)})
			}) {
				c.leaf.shellCommands(c.link).answer(t, line)
			}
		}
		return
	}
	if m.Cmd&FlagCreate == 0 {
		return
	}
	if p := t.Parent(); p != nil {
		c.circuit(p, t, m)
		return
	}
	switch t.Cmd() {
	case CmdLnkConn:
		pc, err := ParseLnkConn(m.Ext)
		if err != nil {
			c.leaf.log.Warn("bad LNK_CONN", "link", c.name, "err", err)
			_ = t.Close(ErrParam)
			return
		}
		c.mu.Lock()
		c.peerConn = &pc
		c.mu.Unlock()
		t.SetHandler(func(t *Trans, m *Msg) {
			if m.Cmd&FlagDelete != 0 {
				_ = t.Close(ErrOK)
			}
		})
		_ = t.Reply(ErrOK)
	case CmdLnkSpan:
		var sp LnkSpan
		if err := sp.Unmarshal(m.Ext); err != nil {
			c.leaf.log.Warn("bad LNK_SPAN", "link", c.name, "err", err)
			_ = t.Close(ErrParam)
			return
		}
		if err := c.leaf.spans.add(t, c.name, sp); err != nil {
			c.link.Abort(err)
			return
		}
		c.leaf.log.Debug("span received", "link", c.name, "label", sp.PeerLabelString(), "dist", sp.Dist)
		t.SetHandler(func(t *Trans, m *Msg) {
			if m.Cmd&FlagDelete != 0 {
				c.leaf.spans.remove(t)
				c.leaf.log.Debug("span withdrawn", "link", c.name, "label", sp.PeerLabelString())
				_ = t.Close(ErrOK)
			}
		})
		if m.Cmd&FlagDelete != 0 { // CREATE|DELETE: opened and withdrawn at once
			c.leaf.spans.remove(t)
			_ = t.Close(ErrOK)
			return
		}
		_ = t.Reply(ErrOK)
	}
	// Anything else is refused with NOSUPP by the link.
}

// circuit takes a transaction opened under one of the leaf's own spans:
// someone elsewhere in the cluster addressing this PFS: the debug shell,
// another master's raft traffic and join requests, and the QRM_COMMIT and
// CAC_LOCK that non-master leaves forward. Anything else is refused NOSUPP
// by the link.
func (c *clusterLink) circuit(parent, t *Trans, m *Msg) {
	c.mu.Lock()
	ours := parent == c.span
	c.mu.Unlock()
	if !ours {
		_ = t.Close(ErrCantCirc)
		return
	}
	switch t.Cmd() {
	case CmdDbgShell:
		line := strings.TrimSpace(ShellText(m.Aux))
		// Claimed now, answered perhaps later (after the quorum decides):
		// a transaction left without a handler would be refused NOSUPP.
		t.SetHandler(func(*Trans, *Msg) {})
		reply := func(out string) { _ = t.Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}, Aux: ShellAux(out)}) }
		if !c.leaf.quorumShell(line, reply) {
			c.leaf.shellCommands(t.Link()).do(line, reply)
		}
	default:
		c.leaf.serveQuorum(t, m, false) // another master's raft traffic and joins, a non-master's commits and locks
	}
}

// shellCommands is the leaf's debug shell, for a line that came over link.
func (l *Leaf) shellCommands(link *Link) shellCommands {
	sc := shellCommands{tree: l.shellTree, ping: shellPing(l.ctx, l.spawn, link)}
	if l.quorum == nil {
		why := "this leaf serves no quorum group: its PFS is not a MASTER"
		if l.info.Type&0x0F == PFSMaster {
			why = "this leaf serves no quorum group: [quorum] masters names none"
		}
		sc.notHere = quorumNotHere(why)
	}
	if l.quorum != nil {
		sc.extra = "commit <text>   Commit through the quorum group\n" +
			"lock <mode> <domain> <key>[-<key>]  Ask the group for a cache state\n" +
			"locks           Cache states held through this leaf\n" +
			"quorum          The group as this master sees it\n" +
			"quorum add|remove <id>  Change the group's membership\n"
	}
	return sc
}

// quorumShell runs the quorum commands; false if line is not one.
func (l *Leaf) quorumShell(line string, reply func(string)) bool {
	return l.quorum != nil && l.quorum.shell(line, reply)
}

// shellTree lists what the cluster advertises to the leaf.
func (l *Leaf) shellTree() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Leaf %s %s (%s)\n", pfsTypeName(l.info.Type), l.info.Fsid, l.info.Label)
	for _, e := range l.spans.list() {
		fmt.Fprintf(&b, "Cluster %s %s (%s)\n    Node %02x %s (%s)\n\tSLink dist=%d via %s\n",
			peerTypeName(e.Span.PeerType), e.Span.PeerID, e.Span.PeerLabelString(), e.Span.PfsType, e.Span.PfsID,
			e.Span.PfsLabelString(), e.Span.Dist, e.Link)
	}
	return b.String()
}

func (c *clusterLink) String() string { return fmt.Sprintf("cluster link %s", c.name) }
