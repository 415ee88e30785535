package main

// The router's indexes (span_router.go: nodes in order, links and relays
// per connection, pending withdrawals and held answers per connection)
// under random churn: whatever order the events come in, once every
// withdrawal is answered the relays are those a router built from scratch
// over the final state would open (libdmsg's full pass), the actions the
// driver was given add up to them, and every index agrees with the maps it
// stands for.

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// idxChurn drives one router with random events and keeps what a driver
// would know: the spans it gave and the relays it was told to hold.
type idxChurn struct {
	t      *testing.T
	rng    *rand.Rand
	r      *spanRouter
	bodies []LnkSpan
	conns  map[connID]LnkConn // LNK_CONN up
	links  map[spanID]idxLink // spans received and not withdrawn
	open   map[relayID]spanAction
	nextSp spanID
}

type idxLink struct {
	conn       connID
	body       int // index into bodies
	dist, rnss uint32
	order      int // arrival, for the rebuild
}

func newIdxChurn(t *testing.T, seed uint64) *idxChurn {
	c := &idxChurn{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), r: newSpanRouter(7),
		conns: map[connID]LnkConn{}, links: map[spanID]idxLink{}, open: map[relayID]spanAction{}}
	// Three clusters of four nodes; the third one's spans are a client's,
	// which client connections never get.
	for cl := range 3 {
		clid := UUID{byte(cl + 1)}
		for nd := range 4 {
			sp := LnkSpan{PeerID: clid, PfsID: UUID{byte(cl + 1), byte(nd + 1)}, PeerType: PeerHammer2, PfsType: PFSMaster}
			if cl == 2 {
				sp.PeerType = PeerClient
			}
			sp.SetLabels(fmt.Sprintf("c%d", cl), fmt.Sprintf("n%d", nd))
			c.bodies = append(c.bodies, sp)
		}
	}
	return c
}

func (c *idxChurn) filter() LnkConn {
	switch c.rng.IntN(5) {
	case 0: // a client of cluster 1 or 2
		return LnkConn{PeerType: PeerClient, PeerMask: ^uint64(0), PeerID: UUID{byte(1 + c.rng.IntN(2))}}
	case 4: // a client of no cluster in particular
		return LnkConn{PeerType: PeerClient, PeerMask: ^uint64(0)}
	case 1: // hammer2 spans only
		return LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2}
	default:
		return LnkConn{PeerType: PeerCluster, PeerMask: ^uint64(0)}
	}
}

func (c *idxChurn) take() {
	for _, a := range c.r.take() {
		switch {
		case a.Ack:
		case a.Open:
			if _, dup := c.open[a.Relay]; dup {
				c.t.Fatalf("relay %d opened twice", a.Relay)
			}
			c.open[a.Relay] = a
		default:
			if _, ok := c.open[a.Relay]; !ok {
				c.t.Fatalf("relay %d closed but not open", a.Relay)
			}
			delete(c.open, a.Relay)
		}
	}
}

func pick[K cmp.Ordered, V any](rng *rand.Rand, m map[K]V) (K, bool) {
	var zero K
	if len(m) == 0 {
		return zero, false
	}
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys[rng.IntN(len(keys))], true
}

// step is one random event.
func (c *idxChurn) step() {
	const maxConn = 6
	id := connID(1 + c.rng.IntN(maxConn))
	switch k := c.rng.IntN(20); {
	case k < 3:
		if _, up := c.conns[id]; !up {
			f := c.filter()
			c.conns[id] = f
			c.r.connUp(id, f)
		}
	case k < 5:
		delete(c.conns, id)
		c.r.connDown(id)
	case k < 6: // the link is lost
		delete(c.conns, id)
		for sid, l := range c.links {
			if l.conn == id {
				delete(c.links, sid)
			}
		}
		c.r.linkDown(id)
	case k < 12:
		c.nextSp++
		b := c.rng.IntN(len(c.bodies))
		body := c.bodies[b] // a copy per span, as the service decodes one
		l := idxLink{conn: id, body: b, dist: uint32(c.rng.IntN(SpanMaxDist + 3)), rnss: uint32(c.rng.IntN(4)), order: int(c.nextSp)}
		c.links[c.nextSp] = l
		c.r.spanUp(id, c.nextSp, &body, l.dist, l.rnss)
	case k < 16:
		if sid, ok := pick(c.rng, c.links); ok {
			delete(c.links, sid)
			c.r.spanDown(sid)
		}
	default: // a peer answers one withdrawal
		if rid, ok := pick(c.rng, c.r.pending); ok {
			c.r.relayClosed(rid)
		}
	}
}

// settle answers every withdrawal, as peers eventually do.
func (c *idxChurn) settle() {
	for range 1000 {
		c.take()
		rid, ok := pick(c.rng, c.r.pending)
		if !ok {
			return
		}
		c.r.begin()
		c.r.relayClosed(rid)
	}
	c.t.Fatal("withdrawals still unanswered after 1000 answers")
}

type idxRelay struct {
	conn connID
	node string
	span spanID
}

func relaySet(r *spanRouter) []idxRelay {
	var out []idxRelay
	for _, rl := range r.relays {
		out = append(out, idxRelay{conn: rl.conn, node: label(rl.node.key.label[:]) + "/" + rl.node.key.pfsID.String(), span: rl.link.id})
	}
	slices.SortFunc(out, func(a, b idxRelay) int {
		return cmp.Or(cmp.Compare(a.conn, b.conn), cmp.Compare(a.node, b.node), cmp.Compare(a.span, b.span))
	})
	return out
}

// check compares the settled router with a router built from scratch
// over the same state, and each index with what it indexes.
func (c *idxChurn) check(when string) {
	c.t.Helper()
	r := c.r
	fresh := newSpanRouter(7)
	for _, id := range slices.Sorted(mapKeys(c.conns)) {
		fresh.connUp(id, c.conns[id])
	}
	sids := slices.Sorted(mapKeys(c.links))
	for _, sid := range sids { // ids follow arrival, so ties break the same way
		l := c.links[sid]
		body := c.bodies[l.body]
		fresh.spanUp(l.conn, sid, &body, l.dist, l.rnss)
	}
	fresh.take()
	if got, want := relaySet(r), relaySet(fresh); !slices.Equal(got, want) {
		c.t.Fatalf("%s: relays\n%v\nfrom scratch\n%v", when, got, want)
	}
	if len(c.open) != len(r.relays) {
		c.t.Fatalf("%s: the actions leave %d relays open, the router holds %d", when, len(c.open), len(r.relays))
	}
	for rid, a := range c.open {
		if rl := r.relays[rid]; rl == nil || rl.conn != a.Conn {
			c.t.Fatalf("%s: relay %d on conn %d opened, the router holds %v", when, rid, a.Conn, rl)
		}
	}
	// The connections by filter: together, connList.
	all := slices.Clone(r.anyConn)
	for p, l := range r.clientConn {
		if len(l) == 0 || !slices.IsSortedFunc(l, func(a, b *spanConn) int { return cmp.Compare(a.id, b.id) }) {
			c.t.Fatalf("%s: cluster %v's client connections empty or out of order", when, p)
		}
		for _, sc := range l {
			if id, ok := clientOf(&sc.filter); !ok || id != p {
				c.t.Fatalf("%s: conn %d listed as a client of %v", when, sc.id, p)
			}
		}
		all = append(all, l...)
	}
	slices.SortFunc(all, func(a, b *spanConn) int { return cmp.Compare(a.id, b.id) })
	if !slices.Equal(all, r.connList) {
		c.t.Fatalf("%s: %d connections by filter, %d in connList", when, len(all), len(r.connList))
	}
	// Relays per connection.
	chained := 0
	for _, sc := range r.connList {
		var prev *spanRelay
		for rl := sc.relays; rl != nil; prev, rl = rl, rl.next {
			if rl.prev != prev || rl.conn != sc.id || r.relays[rl.id] != rl {
				c.t.Fatalf("%s: conn %d's relay chain is broken at relay %d", when, sc.id, rl.id)
			}
			chained++
		}
	}
	if chained != len(r.relays) {
		c.t.Fatalf("%s: %d relays chained from their connections, %d held", when, chained, len(r.relays))
	}
	// Links per connection.
	chained = 0
	for conn, h := range r.connLinks {
		var prev *spanLink
		for l := h; l != nil; prev, l = l, l.next {
			if l.prev != prev || l.conn != conn || r.links[l.id] != l {
				c.t.Fatalf("%s: conn %d's link chain is broken at span %d", when, conn, l.id)
			}
			chained++
		}
	}
	if chained != len(r.links) || len(r.links) != len(c.links) {
		c.t.Fatalf("%s: %d links chained, %d held, %d given", when, chained, len(r.links), len(c.links))
	}
	// Nodes in order, each once, and only live ones.
	if !slices.IsSortedFunc(r.nodes, compareNodes) {
		c.t.Fatalf("%s: nodes out of order", when)
	}
	var live []*spanNode
	for _, cl := range r.clusters {
		for ; cl != nil; cl = cl.next {
			for _, n := range cl.nodes {
				for ; n != nil; n = n.next {
					live = append(live, n)
				}
			}
		}
	}
	slices.SortFunc(live, compareNodes)
	if !slices.Equal(live, r.nodes) {
		c.t.Fatalf("%s: %d nodes listed, %d in the clusters", when, len(r.nodes), len(live))
	}
	if len(r.pending) != 0 || len(r.relayConn) != 0 || len(r.pendingOn) != 0 || len(r.owedOn) != 0 {
		c.t.Fatalf("%s: settled with pending %d, relayConn %d, pendingOn %d, owedOn %d", when,
			len(r.pending), len(r.relayConn), len(r.pendingOn), len(r.owedOn))
	}
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// checkPending holds between events: the per-connection indexes of
// pending withdrawals and held answers match the maps.
func (c *idxChurn) checkPending(when string) {
	c.t.Helper()
	r := c.r
	n := 0
	for conn, p := range r.pendingOn {
		for rid := range p {
			if r.relayConn[rid] != conn || r.pending[rid] == nil {
				c.t.Fatalf("%s: pendingOn[%d] holds relay %d, which is not pending there", when, conn, rid)
			}
			n++
		}
	}
	if n != len(r.pending) {
		c.t.Fatalf("%s: %d withdrawals indexed, %d pending", when, n, len(r.pending))
	}
	for conn, m := range r.owedOn {
		for nd := range m {
			if nd.owed == nil || nd.owed.Conn != conn || !nd.active {
				c.t.Fatalf("%s: owedOn[%d] holds a node that owes nothing there", when, conn)
			}
		}
	}
	for _, nd := range r.nodes {
		if nd.owed != nil {
			if _, ok := r.owedOn[nd.owed.Conn][nd]; !ok {
				c.t.Fatalf("%s: a node owes an answer on conn %d, not indexed", when, nd.owed.Conn)
			}
		}
	}
}

func TestSpanRouterIndexChurn(t *testing.T) {
	const seeds, rounds, steps = 60, 30, 40
	spread(t, seeds, func(t *testing.T, i int) { // schedule_test.go
		seed := uint64(i)
		c := newIdxChurn(t, seed)
		for round := range rounds {
			batched := c.rng.IntN(2) == 0
			for range steps {
				if batched {
					c.r.begin()
				}
				c.step()
				if !batched || c.rng.IntN(8) == 0 {
					c.take()
				}
				c.checkPending(fmt.Sprintf("seed %d round %d", seed, round))
			}
			c.settle()
			c.check(fmt.Sprintf("seed %d round %d", seed, round))
		}
	})
}
