package main

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
// pass (TestSpanRouterIndexChurn compares the two). What a connection
// brought and was sent is indexed by connection, and the nodes are kept
// in order, so a link coming up costs the relays it is sent (plus a step
// per cluster its filter refuses) and one going down the relays and
// spans it had, however many the router holds.
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

import (
	"bytes"
	"cmp"
	"slices"
	"sort"
)

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
	// prev and next chain the links received on the same connection
	// (spanRouter.connLinks), so that losing it costs what it brought.
	prev, next *spanLink
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
	// prev and next chain the relays open on the same connection
	// (spanConn.relays), so that closing it costs what it was sent.
	prev, next *spanRelay
}

type spanConn struct {
	id     connID
	filter LnkConn
	relays *spanRelay // the relays open on it, newest first
}

// spanRouter is one node's spanning-tree state.
type spanRouter struct {
	salt     uint32 // added to rnss on every relay: a per-hop path signature
	conns    map[connID]*spanConn
	connList []*spanConn // by id, for a deterministic order
	// The connections again, by what their filter can take, each by id:
	// a client naming its cluster (DragonFly's filter gives it nothing
	// else) under that cluster's peer_id, every other one in anyConn. A
	// node is scanned only on the two lists its cluster can pass, so a
	// service of many clusters does not scan every link for each change.
	anyConn    []*spanConn
	clientConn map[UUID][]*spanConn
	links      map[spanID]*spanLink
	relays     map[relayID]*spanRelay
	clusters   map[UUID]*spanCluster // by peer_id; clusters that share one are chained by next
	next       relayID
	arrivals   uint64
	pending    map[relayID]*spanNode // withdrawals of active nodes awaiting answers
	relayConn  map[relayID]connID    // where each pending withdrawal went
	out        []spanAction

	// The indexes that keep every event's cost to what it changes: nodes
	// in Walk's order (a connection coming up is relayed every node
	// without sorting them), the links received on each connection, the
	// pending withdrawals sent on it and the active nodes that owe an
	// answer on it (the relays open on it are chained from spanConn).
	nodes     []*spanNode
	connLinks map[connID]*spanLink
	pendingOn map[connID]map[relayID]struct{}
	owedOn    map[connID]map[*spanNode]struct{}

	batching bool
	dirty    []*spanNode // nodes to rescan when the batch ends, in the order touched
	newConns []*spanConn // connections up in this batch, to relay every node to
}

func newSpanRouter(salt uint32) *spanRouter {
	return &spanRouter{salt: salt, conns: map[connID]*spanConn{}, links: map[spanID]*spanLink{},
		relays: map[relayID]*spanRelay{}, clusters: map[UUID]*spanCluster{}, pending: map[relayID]*spanNode{},
		relayConn: map[relayID]connID{}, connLinks: map[connID]*spanLink{}, pendingOn: map[connID]map[relayID]struct{}{},
		owedOn: map[connID]map[*spanNode]struct{}{}, clientConn: map[UUID][]*spanConn{}}
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
		for _, c := range r.newConns {
			r.scanConn(c)
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
	r.connList = insertConn(r.connList, c)
	if p, ok := clientOf(&filter); ok {
		r.clientConn[p] = insertConn(r.clientConn[p], c)
	} else {
		r.anyConn = insertConn(r.anyConn, c)
	}
	if r.batching {
		r.newConns = append(r.newConns, c)
		return
	}
	r.scanConn(c)
}

// scanConn relays every node to a connection that came up, in Walk's
// order. A cluster the connection's filter refuses as a whole (its
// peer_type, or another cluster's client) is skipped in one step: its
// nodes are one run of the list.
func (r *spanRouter) scanConn(c *spanConn) {
	for i := 0; i < len(r.nodes); {
		cl := r.nodes[i].cluster
		if !clusterPasses(&cl.key, &c.filter) {
			rest := r.nodes[i:]
			i += sort.Search(len(rest), func(j int) bool { return compareClusters(&rest[j].cluster.key, &cl.key) > 0 })
			continue
		}
		for ; i < len(r.nodes) && r.nodes[i].cluster == cl; i++ {
			n := r.nodes[i]
			r.scan(n, c, n.best())
		}
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
	r.connList = deleteConn(r.connList, id)
	if p, ok := clientOf(&c.filter); ok {
		if r.clientConn[p] = deleteConn(r.clientConn[p], id); len(r.clientConn[p]) == 0 {
			delete(r.clientConn, p)
		}
	} else {
		r.anyConn = deleteConn(r.anyConn, id)
	}
	r.newConns = slices.DeleteFunc(r.newConns, func(x *spanConn) bool { return x == c })
	var gone []*spanRelay
	for rl := c.relays; rl != nil; rl = rl.next {
		gone = append(gone, rl)
	}
	c.relays = nil
	slices.SortFunc(gone, func(a, b *spanRelay) int { return cmp.Compare(a.id, b.id) })
	for _, rl := range gone {
		r.closeRelay(rl)
	}
	// Nothing more will be answered on this connection's relays.
	if p := r.pendingOn[id]; len(p) > 0 {
		rids := make([]relayID, 0, len(p))
		for rid := range p {
			rids = append(rids, rid)
		}
		slices.Sort(rids)
		for _, rid := range rids {
			r.answered(rid)
		}
	}
}

// linkDown is a lost link: its LNK_CONN and every span it brought go, and
// nothing is answered on it any more.
func (r *spanRouter) linkDown(id connID) {
	r.connDown(id)
	var gone []spanID
	for l := r.connLinks[id]; l != nil; l = l.next {
		gone = append(gone, l.id)
	}
	slices.Sort(gone)
	for _, sid := range gone {
		r.spanDown(sid)
	}
	r.out = slices.DeleteFunc(r.out, func(a spanAction) bool { return a.Ack && a.Conn == id })
	for n := range r.owedOn[id] {
		n.owed = nil
	}
	delete(r.owedOn, id)
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
		i, _ := slices.BinarySearchFunc(r.nodes, n, compareNodes)
		r.nodes = slices.Insert(r.nodes, i, n)
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
	if h := r.connLinks[conn]; h != nil {
		h.prev, l.next = l, h
	}
	r.connLinks[conn] = l
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
	switch {
	case l.prev != nil:
		l.prev.next = l.next
	case l.next != nil:
		r.connLinks[l.conn] = l.next
	default:
		delete(r.connLinks, l.conn)
	}
	if l.next != nil {
		l.next.prev = l.prev
	}
	l.prev, l.next = nil, nil
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
	r.owe(n)
	if n.waiting == nil {
		n.waiting = map[relayID]bool{}
	}
	for _, rl := range sortedRelays(n.relays) {
		n.waiting[rl.id] = true
		r.pending[rl.id] = n
		r.relayConn[rl.id] = rl.conn
		p := r.pendingOn[rl.conn]
		if p == nil {
			p = map[relayID]struct{}{}
			r.pendingOn[rl.conn] = p
		}
		p[rl.id] = struct{}{}
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
		r.unowe(n)
		n.owed = nil
	}
	r.touch(n)
}

// owe and unowe keep owedOn: the active nodes holding an answer on a
// connection, which are told to forget it if the connection is lost.
func (r *spanRouter) owe(n *spanNode) {
	if n.owed == nil {
		return
	}
	m := r.owedOn[n.owed.Conn]
	if m == nil {
		m = map[*spanNode]struct{}{}
		r.owedOn[n.owed.Conn] = m
	}
	m[n] = struct{}{}
}

func (r *spanRouter) unowe(n *spanNode) {
	if m := r.owedOn[n.owed.Conn]; m != nil {
		delete(m, n)
		if len(m) == 0 {
			delete(r.owedOn, n.owed.Conn)
		}
	}
}

// answered notes the answer to one of an active node's withdrawals.
func (r *spanRouter) answered(rid relayID) {
	n := r.pending[rid]
	delete(r.pending, rid)
	if p := r.pendingOn[r.relayConn[rid]]; p != nil {
		delete(p, rid)
		if len(p) == 0 {
			delete(r.pendingOn, r.relayConn[rid])
		}
	}
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
	if i, ok := slices.BinarySearchFunc(r.nodes, n, compareNodes); ok && r.nodes[i] == n {
		r.nodes = slices.Delete(r.nodes, i, i+1)
	}
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
	// The two lists merged by id: the order connList would give.
	a, b := r.anyConn, r.clientConn[n.cluster.key.peerID]
	for len(a) > 0 || len(b) > 0 {
		var c *spanConn
		if len(b) == 0 || len(a) > 0 && a[0].id < b[0].id {
			c, a = a[0], a[1:]
		} else {
			c, b = b[0], b[1:]
		}
		r.scan(n, c, best)
	}
}

// clientOf is the cluster a client's filter confines it to, if any.
func clientOf(f *LnkConn) (UUID, bool) {
	return f.PeerID, f.PeerType == PeerClient && !f.PeerID.IsNil()
}

func insertConn(list []*spanConn, c *spanConn) []*spanConn {
	i, _ := slices.BinarySearchFunc(list, c.id, func(c *spanConn, id connID) int { return cmp.Compare(c.id, id) })
	return slices.Insert(list, i, c)
}

func deleteConn(list []*spanConn, id connID) []*spanConn {
	if i, ok := slices.BinarySearchFunc(list, id, func(c *spanConn, id connID) int { return cmp.Compare(c.id, id) }); ok {
		return slices.Delete(list, i, i+1)
	}
	return list
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
		if h := c.relays; h != nil {
			h.prev, rl.next = rl, h
		}
		c.relays = rl
		r.out = append(r.out, spanAction{Open: true, Conn: c.id, Relay: rl.id, Span: want.body,
			Dist: want.dist + 1, RNSS: want.rnss + r.salt})
	}
	if old != nil {
		r.closeRelay(old)
	}
}

// passes applies libdmsg's relay filters to the best link of a node.
func (r *spanRouter) passes(l *spanLink, c *spanConn) bool {
	switch {
	case l.dist > SpanMaxDist:
		return false
	case l.conn == c.id: // split horizon
		return false
	}
	return clusterPasses(&l.node.cluster.key, &c.filter)
}

// clusterPasses is the part of the filters that only looks at the span's
// cluster (its peer_type and peer_id, which name the cluster).
func clusterPasses(k *clusterKey, f *LnkConn) bool {
	switch {
	case k.peerType >= 64 || f.PeerMask&(1<<k.peerType) == 0:
		return false
	case f.PeerType == PeerClient && k.peerType == PeerClient:
		return false
	case f.PeerType == PeerClient && !f.PeerID.IsNil() && f.PeerID != k.peerID:
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
	if rl.prev != nil {
		rl.prev.next = rl.next
	} else if c := r.conns[rl.conn]; c != nil && c.relays == rl {
		c.relays = rl.next
	}
	if rl.next != nil {
		rl.next.prev = rl.prev
	}
	rl.prev, rl.next = nil, nil
	n := rl.node
	if n.relays[rl.conn] == rl {
		delete(n.relays, rl.conn)
		if len(n.relays) == 0 {
			n.relays = nil // a map keeps its buckets: let them go
		}
	}
}

// sortedNodes is every node in Walk's order; the router's own slice, not
// to be changed.
func (r *spanRouter) sortedNodes() []*spanNode { return r.nodes }

func compareNodes(a, b *spanNode) int {
	return cmp.Or(
		compareClusters(&a.cluster.key, &b.cluster.key),
		bytes.Compare(a.key.label[:], b.key.label[:]),
		bytes.Compare(a.key.pfsID[:], b.key.pfsID[:]))
}

func compareClusters(a, b *clusterKey) int {
	if a == b {
		return 0
	}
	return cmp.Or(
		cmp.Compare(a.peerType, b.peerType),
		bytes.Compare(a.peerID[:], b.peerID[:]),
		bytes.Compare(a.label[:], b.label[:]))
}

func sortedRelays(m map[connID]*spanRelay) []*spanRelay {
	out := make([]*spanRelay, 0, len(m))
	for _, rl := range m {
		out = append(out, rl)
	}
	slices.SortFunc(out, func(a, b *spanRelay) int { return cmp.Compare(a.id, b.id) })
	return out
}

// The router's queries: what its drivers (the service, the simulator, the
// scripts) may read. Nothing outside this file touches its fields or its
// nodes' (seams_test.go holds that).

// SourceOf is the received span a relay of ours carries.
func (r *spanRouter) SourceOf(id relayID) (spanID, bool) {
	rl := r.relays[id]
	if rl == nil {
		return 0, false
	}
	return rl.link.id, true
}

// NodeView is one node (a PFS of a cluster) as the router holds it.
type NodeView struct {
	PeerType  uint8 // its cluster: peer_type, peer_id, peer_label
	PeerID    UUID
	PeerLabel string
	PfsType   uint8 // of its best link
	PfsID     UUID
	PfsLabel  string
	// Active: withdrawn everywhere, awaiting Waiting answers (DUAL).
	Active  bool
	Waiting int
	Links   []LinkView  // best first
	Relays  []RelayView // by connection
}

// LinkView is a received span of a node; RelayView a span we opened for
// it on a connection.
type LinkView struct {
	Span       spanID
	Conn       connID
	Dist, RNSS uint32
}

type RelayView struct {
	Relay relayID
	Conn  connID
	Span  spanID // the link it carries
}

// Walk calls fn for every node, in a stable order: by cluster (peer_type,
// peer_id, peer_label), then node (pfs_label, pfs_id). The views are fn's
// to keep.
func (r *spanRouter) Walk(fn func(NodeView)) {
	for _, n := range r.sortedNodes() {
		v := NodeView{PeerType: n.cluster.key.peerType, PeerID: n.cluster.key.peerID, PeerLabel: label(n.cluster.key.label[:]),
			PfsID: n.key.pfsID, PfsLabel: label(n.key.label[:]), Active: n.active, Waiting: len(n.waiting)}
		if len(n.links) > 0 {
			v.PfsType = n.links[0].body.PfsType
		}
		for _, l := range n.links {
			v.Links = append(v.Links, LinkView{Span: l.id, Conn: l.conn, Dist: l.dist, RNSS: l.rnss})
		}
		for _, rl := range n.relays {
			v.Relays = append(v.Relays, RelayView{Relay: rl.id, Conn: rl.conn, Span: rl.link.id})
		}
		slices.SortFunc(v.Relays, func(a, b RelayView) int { return cmp.Compare(a.Conn, b.Conn) })
		fn(v)
	}
}
