package main

// LNK_CONN / LNK_SPAN as a leaf runs them: on every cluster link we send
// one LNK_CONN, and once it is acknowledged one top-level LNK_SPAN for our
// PFS (dist 0, rnss 0). We answer the peer's LNK_CONN and keep a table of
// the spans the cluster advertises to us. A leaf never relays between its
// links and never changes dist or rnss.

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"
)

// spanEntry is one span a peer advertises to us.
type spanEntry struct {
	Link  string
	Span  LnkSpan
	Since time.Time
}

// spanTable is what the cluster advertises, over all links.
type spanTable struct {
	mu      sync.Mutex
	entries map[*Trans]*spanEntry
}

func newSpanTable() *spanTable { return &spanTable{entries: map[*Trans]*spanEntry{}} }

func (s *spanTable) add(t *Trans, link string, sp LnkSpan) {
	s.mu.Lock()
	s.entries[t] = &spanEntry{Link: link, Span: sp, Since: time.Now()}
	s.mu.Unlock()
}

func (s *spanTable) remove(t *Trans) {
	s.mu.Lock()
	delete(s.entries, t)
	s.mu.Unlock()
}

// find returns the transaction of the nearest span (lowest dist, then
// rnss) that match accepts, nil if none.
func (s *spanTable) find(match func(*LnkSpan) bool) *Trans {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *Trans
	var bestSpan *LnkSpan
	for t, e := range s.entries {
		if !match(&e.Span) {
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
	quic *QuicLink // nil for the backbone

	mu       sync.Mutex
	conn     *Trans // our LNK_CONN
	span     *Trans // our LNK_SPAN
	peerConn *LnkConn
}

// runClusterLink starts the dmsg link over rw and opens our LNK_CONN.
func (l *Leaf) runClusterLink(rw io.ReadWriteCloser, name string, q *QuicLink) *clusterLink {
	c := &clusterLink{leaf: l, name: name, quic: q}
	l.mu.Lock()
	cfg := LinkConfig{Name: name, PingInterval: l.cfg.PingInterval.Duration, DeadAfter: l.cfg.DeadAfter.Duration,
		Handler: c.handle, Logger: l.log}
	if q != nil {
		cfg.BulkBatch = quicBulkBatch
	}
	l.mu.Unlock()
	c.link = NewLink(rw, cfg)
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
	l.log.Info("cluster link up", "link", name)
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
				c.leaf.shellCommands().answer(t, line)
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
		c.leaf.spans.add(t, c.name, sp)
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
			reply(c.leaf.shellCommands().run(line))
		}
	case CmdQrmRaft, CmdQrmJoin, CmdQrmCommit, CmdCacLock:
		q := c.leaf.quorum
		switch {
		case q == nil:
			_ = t.Close(ErrNoQuorum)
		case t.Cmd() == CmdQrmRaft:
			q.accept(t, m)
		case t.Cmd() == CmdQrmJoin:
			q.join(t, m) // a master asking to be admitted (quorum_join.go)
		case t.Cmd() == CmdQrmCommit:
			q.commit(t, m) // forwarded by a non-master's leaf
		default:
			q.lock(t, m)
		}
	}
}

// shellCommands is the leaf's debug shell.
func (l *Leaf) shellCommands() shellCommands {
	sc := shellCommands{tree: l.shellTree}
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
		fmt.Fprintf(&b, "Cluster %d %s (%s)\n    Node %02x %s (%s)\n\tSLink dist=%d via %s\n",
			e.Span.PeerType, e.Span.PeerID, e.Span.PeerLabelString(), e.Span.PfsType, e.Span.PfsID,
			e.Span.PfsLabelString(), e.Span.Dist, e.Link)
	}
	return b.String()
}

func (c *clusterLink) String() string { return fmt.Sprintf("cluster link %s", c.name) }

// ---------------------------------------------------------------------------
// The relay router: DragonFly's spanning tree (libdmsg msg_lnk.c) as a
// deterministic state machine. It takes events (a peer's LNK_CONN opened or
// closed, a span received or withdrawn, a relay closed by its receiver, a
// link lost) and returns the relays to open and close. It does no I/O and
// starts no goroutines: the service drives it over real links, the
// simulator over in-memory ones.
//
// Spans are grouped by cluster (peer_type, peer_id, peer_label) and node
// (pfs_label, pfs_id); a node's received links are ordered by (dist, rnss,
// arrival). For every (node, connection) only the single best link is
// relayed, and only if it passes the filters (dist cap, split horizon,
// the connection's peer_mask, the client rules); a failing best link is not
// replaced by a worse one. A relay carries dist+1 and rnss plus a random
// per-process value. A new relay is opened before the one it replaces is
// closed. Work is incremental: an event rescans only the nodes and
// connections it touches, which gives the same result as libdmsg's full
// pass.
//
// A driver may batch: after begin, events only record what they change,
// and take rescans each node they touched once. A better link that arrives
// in the same batch as a worse one then replaces it before either is
// relayed, instead of the worse one being relayed on every connection and
// replaced at every hop after (forming a 1000-node network, that churn was
// half the messages). What is relayed once a batch ends is what libdmsg
// relays for the final state; only the intermediate relays are gone.
//
// One addition keeps withdrawals from counting to 16 around loops (which
// libdmsg's plain distance vector does, at a cost that grows with the
// loops): a diffusing update in the manner of DUAL. We remember, per node,
// the best dist we have relayed (fd). When the best link goes and the next
// best is no closer than that (it may lead back through us), the node goes
// active: its relays are withdrawn everywhere and nothing is relayed until
// every withdrawal has been answered; the DELETE the peer sends back to
// close the transaction is the answer. The answer to the withdrawal that
// made us active is held until then; every other one is given at once, so
// no cycle of waiting can form. A DragonFly peer answers at once, which
// leaves it as loop-prone as before but changes nothing on the wire.
// fd counts only what was relayed: a link that came and went within one
// batch was never advertised, so it cannot make the next one infeasible.

// SpanMaxDist is DMSG_SPAN_MAXDIST: spans further away are not relayed,
// which ends the tail-chasing of withdrawn spans around loops.
const SpanMaxDist = 16

type (
	connID  uint64 // a connection, as the driver numbers them
	spanID  uint64 // a received span, as the driver numbers them
	relayID uint64 // a span we opened, as the router numbers them
)

// spanAction is a relay to open or close, or a received span whose
// withdrawal may now be answered (Ack: the driver sends its DELETE).
type spanAction struct {
	Open  bool
	Ack   bool
	Conn  connID
	Relay relayID
	Span  *LnkSpan // the span's identity to send (Open only; shared, read-only:
	Dist  uint32   // the driver sends it with these dist and rnss)
	RNSS  uint32
	Acked spanID // Ack only
}

const noDist = ^uint32(0)

// clusterKey and nodeKey name a cluster and a node. Their labels point into
// the body of the span that created them (bodies are never modified): a
// router holds a node per PFS in the cluster, so a 1000-node simulation
// holds a million, and two 128-byte labels copied into each (and into the
// map keys) were a large part of its memory.
type clusterKey struct {
	peerType uint8
	peerID   UUID
	label    *[LabelSize]byte
}

type nodeKey struct {
	label *[LabelSize]byte
	pfsID UUID
}

// is reports whether s belongs to the cluster; a relayed body is shared
// between hops, so the pointer usually answers before the bytes.
func (k *clusterKey) is(s *LnkSpan) bool {
	return k.peerType == s.PeerType && k.peerID == s.PeerID && (k.label == &s.PeerLabel || *k.label == s.PeerLabel)
}

func (k *nodeKey) is(s *LnkSpan) bool {
	return k.pfsID == s.PfsID && (k.label == &s.PfsLabel || *k.label == s.PfsLabel)
}

type spanCluster struct {
	key   clusterKey
	next  *spanCluster       // another cluster with the same peer_id
	nodes map[UUID]*spanNode // by pfs_id; nodes that share one are chained by next
	count int                // nodes, chained ones included
}

type spanNode struct {
	cluster *spanCluster
	key     nodeKey
	next    *spanNode             // another node of the cluster with the same pfs_id
	links   []*spanLink           // best first
	relays  map[connID]*spanRelay // nil when there are none

	fd      uint32 // the best dist relayed since the node was last passive
	active  bool   // withdrawn, waiting for the answers
	dirty   bool   // in the batch's list, to be rescanned
	waiting map[relayID]bool
	owed    *spanAction // the answer held until the node is passive
}

type spanLink struct {
	id   spanID
	conn connID
	node *spanNode
	body *LnkSpan // as received, less dist and rnss; shared, never modified
	dist uint32
	rnss uint32
	tie  uint64 // arrival order, the last tiebreak
}

func (a *spanLink) less(b *spanLink) bool {
	if a.dist != b.dist {
		return a.dist < b.dist
	}
	if a.rnss != b.rnss {
		return a.rnss < b.rnss
	}
	return a.tie < b.tie
}

type spanRelay struct {
	id   relayID
	conn connID
	node *spanNode
	link *spanLink
}

type spanConn struct {
	id     connID
	filter LnkConn
}

// spanRouter is one node's spanning-tree state.
type spanRouter struct {
	salt      uint32 // added to rnss on every relay: a per-hop path signature
	conns     map[connID]*spanConn
	connList  []*spanConn // by id, for a deterministic order
	links     map[spanID]*spanLink
	relays    map[relayID]*spanRelay
	clusters  map[UUID]*spanCluster // by peer_id; clusters that share one are chained by next
	next      relayID
	arrivals  uint64
	pending   map[relayID]*spanNode // withdrawals of active nodes awaiting answers
	relayConn map[relayID]connID    // where each pending withdrawal went
	out       []spanAction

	batching bool
	dirty    []*spanNode // nodes to rescan when the batch ends, in the order touched
	newConns []*spanConn // connections up in this batch, to relay every node to
}

func newSpanRouter(salt uint32) *spanRouter {
	return &spanRouter{salt: salt, conns: map[connID]*spanConn{}, links: map[spanID]*spanLink{},
		relays: map[relayID]*spanRelay{}, clusters: map[UUID]*spanCluster{}, pending: map[relayID]*spanNode{},
		relayConn: map[relayID]connID{}}
}

// begin starts a batch: until the next take, events record what they
// change and relay nothing new (withdrawals and answers still go out as
// they happen).
func (r *spanRouter) begin() { r.batching = true }

// take ends any batch and returns and clears the pending actions.
func (r *spanRouter) take() []spanAction {
	r.flush()
	out := r.out
	r.out = nil
	return out
}

// takeAppend is take appending to dst; the router keeps its own buffer,
// so a driver that reuses dst allocates nothing per batch.
func (r *spanRouter) takeAppend(dst []spanAction) []spanAction {
	r.flush()
	dst = append(dst, r.out...)
	clear(r.out)
	r.out = r.out[:0]
	return dst
}

// flush ends a batch: every node touched is rescanned on every
// connection, then every node on the connections that came up.
func (r *spanRouter) flush() {
	r.batching = false
	for i, n := range r.dirty {
		if n.dirty {
			r.scanNode(n)
		}
		r.dirty[i] = nil
	}
	r.dirty = r.dirty[:0]
	if len(r.newConns) > 0 {
		nodes := r.sortedNodes()
		for _, c := range r.newConns {
			for _, n := range nodes {
				r.scan(n, c, n.best())
			}
		}
		clear(r.newConns)
		r.newConns = r.newConns[:0]
	}
}

// touch rescans n now, or when the batch ends.
func (r *spanRouter) touch(n *spanNode) {
	if !r.batching {
		r.scanNode(n)
		return
	}
	if !n.dirty {
		n.dirty = true
		r.dirty = append(r.dirty, n)
	}
}

// connUp records a peer's LNK_CONN (its filter) and relays to it.
func (r *spanRouter) connUp(id connID, filter LnkConn) {
	if r.conns[id] != nil {
		return
	}
	c := &spanConn{id: id, filter: filter}
	r.conns[id] = c
	i, _ := slices.BinarySearchFunc(r.connList, id, func(c *spanConn, id connID) int { return cmp.Compare(c.id, id) })
	r.connList = slices.Insert(r.connList, i, c)
	if r.batching {
		r.newConns = append(r.newConns, c)
		return
	}
	for _, n := range r.sortedNodes() {
		r.scan(n, c, n.best())
	}
}

// connDown closes every relay we sent on a connection whose LNK_CONN is
// gone. The spans received on it stay until withdrawn (see linkDown).
func (r *spanRouter) connDown(id connID) {
	c := r.conns[id]
	if c == nil {
		return
	}
	delete(r.conns, id)
	r.connList = slices.DeleteFunc(r.connList, func(x *spanConn) bool { return x == c })
	r.newConns = slices.DeleteFunc(r.newConns, func(x *spanConn) bool { return x == c })
	var gone []*spanRelay
	for _, rl := range r.relays {
		if rl.conn == id {
			gone = append(gone, rl)
		}
	}
	slices.SortFunc(gone, func(a, b *spanRelay) int { return cmp.Compare(a.id, b.id) })
	for _, rl := range gone {
		r.closeRelay(rl)
	}
	// Nothing more will be answered on this connection's relays.
	for _, rid := range sortedRelayIDs(r.pending) {
		if r.relayConn[rid] == id {
			r.answered(rid)
		}
	}
}

// linkDown is a lost link: its LNK_CONN and every span it brought go, and
// nothing is answered on it any more.
func (r *spanRouter) linkDown(id connID) {
	r.connDown(id)
	var gone []spanID
	for sid, l := range r.links {
		if l.conn == id {
			gone = append(gone, sid)
		}
	}
	slices.Sort(gone)
	for _, sid := range gone {
		r.spanDown(sid)
	}
	r.out = slices.DeleteFunc(r.out, func(a spanAction) bool { return a.Ack && a.Conn == id })
	for _, n := range r.pending {
		if n.owed != nil && n.owed.Conn == id {
			n.owed = nil
		}
	}
}

// node finds or makes the node body belongs to.
func (r *spanRouter) node(body *LnkSpan) *spanNode {
	cl := r.clusters[body.PeerID]
	for cl != nil && !cl.key.is(body) {
		cl = cl.next
	}
	if cl == nil {
		cl = &spanCluster{key: clusterKey{peerType: body.PeerType, peerID: body.PeerID, label: &body.PeerLabel},
			next: r.clusters[body.PeerID], nodes: map[UUID]*spanNode{}}
		r.clusters[body.PeerID] = cl
	}
	n := cl.nodes[body.PfsID]
	for n != nil && !n.key.is(body) {
		n = n.next
	}
	if n == nil {
		n = &spanNode{cluster: cl, key: nodeKey{label: &body.PfsLabel, pfsID: body.PfsID}, next: cl.nodes[body.PfsID],
			fd: noDist}
		cl.nodes[body.PfsID] = n
		cl.count++
	}
	return n
}

// spanUp records a span received on conn and relays it where it is best.
// body's own Dist and RNSS are ignored for dist and rnss: a relayed body is
// shared between hops, so they travel beside it.
func (r *spanRouter) spanUp(conn connID, id spanID, body *LnkSpan, dist, rnss uint32) {
	if r.links[id] != nil {
		return
	}
	n := r.node(body)
	r.arrivals++
	l := &spanLink{id: id, conn: conn, node: n, body: body, dist: dist, rnss: rnss, tie: r.arrivals}
	i := len(n.links) // usually last or first: search from the end
	for i > 0 && l.less(n.links[i-1]) {
		i--
	}
	n.links = slices.Insert(n.links, i, l)
	r.links[id] = l
	if i == 0 && !n.active {
		r.touch(n) // only a new best link changes what is relayed
	}
}

// spanDown withdraws a received span: its relays close and the next best
// link, if it is feasible, is relayed instead; otherwise the node goes
// active. The withdrawal is answered (an Ack action) at once, or when the
// node is passive again if it was the one that made it active.
func (r *spanRouter) spanDown(id spanID) {
	l := r.links[id]
	if l == nil {
		return
	}
	delete(r.links, id)
	n := l.node
	i := slices.Index(n.links, l)
	n.links = slices.Delete(n.links, i, i+1)
	if len(n.links) == 0 {
		n.links = nil
	}
	ack := spanAction{Ack: true, Conn: l.conn, Acked: id}
	switch {
	case i != 0 || n.active:
		r.out = append(r.out, ack)
	case len(n.links) > 0 && n.links[0].dist <= n.fd:
		r.touch(n) // a feasible successor: make-before-break
		r.out = append(r.out, ack)
	default:
		r.goActive(n, &ack)
	}
	r.dropIfEmpty(n)
}

// goActive withdraws every relay of n and holds ack until all are answered.
func (r *spanRouter) goActive(n *spanNode, ack *spanAction) {
	n.active, n.owed = true, ack
	if n.waiting == nil {
		n.waiting = map[relayID]bool{}
	}
	for _, rl := range sortedRelays(n.relays) {
		n.waiting[rl.id] = true
		r.pending[rl.id] = n
		r.relayConn[rl.id] = rl.conn
		r.closeRelay(rl)
	}
	if len(n.waiting) == 0 {
		r.goPassive(n)
	}
}

// goPassive relays n's best link again and gives the held answer.
func (r *spanRouter) goPassive(n *spanNode) {
	n.active = false
	n.fd = noDist
	n.waiting = nil
	if n.owed != nil {
		r.out = append(r.out, *n.owed)
		n.owed = nil
	}
	r.touch(n)
}

// answered notes the answer to one of an active node's withdrawals.
func (r *spanRouter) answered(rid relayID) {
	n := r.pending[rid]
	delete(r.pending, rid)
	delete(r.relayConn, rid)
	if n == nil {
		return
	}
	delete(n.waiting, rid)
	if n.active && len(n.waiting) == 0 {
		r.goPassive(n)
		r.dropIfEmpty(n)
	}
}

// dropIfEmpty forgets a node nothing refers to any more.
func (r *spanRouter) dropIfEmpty(n *spanNode) {
	if len(n.links) > 0 || len(n.relays) > 0 || n.active {
		return
	}
	cl := n.cluster
	if p := cl.nodes[n.key.pfsID]; p == n {
		if n.next != nil {
			cl.nodes[n.key.pfsID] = n.next
		} else {
			delete(cl.nodes, n.key.pfsID)
		}
	} else {
		for p != nil && p.next != n {
			p = p.next
		}
		if p == nil {
			return // already dropped
		}
		p.next = n.next
	}
	n.next = nil
	if cl.count--; cl.count > 0 {
		return
	}
	if p := r.clusters[cl.key.peerID]; p == cl {
		if cl.next != nil {
			r.clusters[cl.key.peerID] = cl.next
		} else {
			delete(r.clusters, cl.key.peerID)
		}
	} else {
		for p != nil && p.next != cl {
			p = p.next
		}
		if p != nil {
			p.next = cl.next
		}
	}
	cl.next = nil
}

// relayClosed is the peer's DELETE on one of our relays: the answer to our
// withdrawal, or the peer closing a relay it does not want. The latter is
// forgotten, not reopened until something about its node changes, as in
// libdmsg.
func (r *spanRouter) relayClosed(id relayID) {
	if r.pending[id] != nil {
		r.answered(id)
		return
	}
	if rl := r.relays[id]; rl != nil {
		r.forget(rl)
	}
}

// best is the link n would relay if it passes a connection's filters.
func (n *spanNode) best() *spanLink {
	if len(n.links) == 0 || n.active {
		return nil
	}
	return n.links[0]
}

// scanNode brings a node's relays up to date on every connection.
func (r *spanRouter) scanNode(n *spanNode) {
	n.dirty = false
	best := n.best()
	for _, c := range r.connList {
		r.scan(n, c, best)
	}
}

// scan is libdmsg's per-(node, connection) step; best is n.best().
func (r *spanRouter) scan(n *spanNode, c *spanConn, best *spanLink) {
	var want *spanLink
	if best != nil && r.passes(best, c) {
		want = best
		n.fd = min(n.fd, want.dist)
	}
	old := n.relays[c.id]
	if old != nil && old.link == want {
		return
	}
	if want != nil {
		r.next++
		rl := &spanRelay{id: r.next, conn: c.id, node: n, link: want}
		if n.relays == nil {
			n.relays = map[connID]*spanRelay{}
		}
		n.relays[c.id] = rl
		r.relays[rl.id] = rl
		r.out = append(r.out, spanAction{Open: true, Conn: c.id, Relay: rl.id, Span: want.body,
			Dist: want.dist + 1, RNSS: want.rnss + r.salt})
	}
	if old != nil {
		r.closeRelay(old)
	}
}

// passes applies libdmsg's relay filters to the best link of a node.
func (r *spanRouter) passes(l *spanLink, c *spanConn) bool {
	s, f := l.body, &c.filter
	switch {
	case l.dist > SpanMaxDist:
		return false
	case l.conn == c.id: // split horizon
		return false
	case s.PeerType >= 64 || f.PeerMask&(1<<s.PeerType) == 0:
		return false
	case f.PeerType == PeerClient && s.PeerType == PeerClient:
		return false
	case f.PeerType == PeerClient && !f.PeerID.IsNil() && f.PeerID != s.PeerID:
		return false
	}
	return true
}

func (r *spanRouter) closeRelay(rl *spanRelay) {
	r.out = append(r.out, spanAction{Conn: rl.conn, Relay: rl.id})
	r.forget(rl)
}

func (r *spanRouter) forget(rl *spanRelay) {
	delete(r.relays, rl.id)
	n := rl.node
	if n.relays[rl.conn] == rl {
		delete(n.relays, rl.conn)
		if len(n.relays) == 0 {
			n.relays = nil // a map keeps its buckets: let them go
		}
	}
}

func (r *spanRouter) sortedNodes() []*spanNode {
	var out []*spanNode
	for _, cl := range r.clusters {
		for ; cl != nil; cl = cl.next {
			for _, n := range cl.nodes {
				for ; n != nil; n = n.next {
					out = append(out, n)
				}
			}
		}
	}
	slices.SortFunc(out, compareNodes)
	return out
}

func compareNodes(a, b *spanNode) int {
	return cmp.Or(
		cmp.Compare(a.cluster.key.peerType, b.cluster.key.peerType),
		bytes.Compare(a.cluster.key.peerID[:], b.cluster.key.peerID[:]),
		bytes.Compare(a.cluster.key.label[:], b.cluster.key.label[:]),
		bytes.Compare(a.key.label[:], b.key.label[:]),
		bytes.Compare(a.key.pfsID[:], b.key.pfsID[:]))
}

func sortedRelayIDs(m map[relayID]*spanNode) []relayID {
	out := make([]relayID, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func sortedRelays(m map[connID]*spanRelay) []*spanRelay {
	out := make([]*spanRelay, 0, len(m))
	for _, rl := range m {
		out = append(out, rl)
	}
	slices.SortFunc(out, func(a, b *spanRelay) int { return cmp.Compare(a.id, b.id) })
	return out
}
