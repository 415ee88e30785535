package main

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"
)

// spanSim runs many span routers over in-memory links: the same router code
// the service runs, with message delivery replaced by queues. Every node
// has one local PFS (a leaf's span at dist 0 on a connection that sent no
// LNK_CONN, so it is advertised but receives nothing).
//
// Without batch, delivery is one FIFO over all messages, one message to a
// router at a time. With batch it goes in rounds, as over links of equal
// latency: what is sent in one round arrives in the next, and each node
// takes everything that arrived for it in one batch before relaying (as a
// service draining what its links have read).
type spanSim struct {
	nodes []*simNode
	ready []int32 // without batch: a message's receiver per message, in order; with: next round's receivers
	head  int
	batch bool
	msgs  int // span CREATEs and DELETEs sent between nodes
	pairs int // connections between live nodes, counted per direction
	acts  []spanAction
	round []int32 // this round's receivers (batch)
}

type simNode struct {
	r      *spanRouter
	dead   bool
	peers  []simEnd // by conn; conn 0 is the local leaf's
	inbox  []simMsg
	ihead  int
	mark   int  // the end of what arrived before this round (batch)
	queued bool // in ready (batch)
}

type simEnd struct {
	node int32
	up   bool
	conn connID
}

type simKind uint8

const (
	simConnUp simKind = iota
	simSpanUp
	simSpanDown
	simLinkDown
	simAnswer // the DELETE that answers a withdrawal
)

// simMsg is one message. A relay becomes, at the receiver, the span
// numbered simSpan(sender, relay): a withdrawal or an answer finds its way
// back without tables.
type simMsg struct {
	body *LnkSpan
	id   uint64 // the span (span kinds) or our relay (simAnswer)
	conn connID
	dist uint32
	rnss uint32
	kind simKind
}

const (
	simLocal     connID = 0 // the local leaf's connection on every node
	simLocalSpan spanID = 1 // and its span
	simRelayBits        = 40
)

func simSpan(from int32, rl relayID) spanID { return spanID(from+1)<<simRelayBits | spanID(rl) }

func simRelayOf(id spanID) (int32, relayID) {
	return int32(id>>simRelayBits) - 1, relayID(id & (1<<simRelayBits - 1))
}

func newSpanSim(n int, rng *rand.Rand, batch bool) *spanSim {
	s := &spanSim{batch: batch}
	for range n {
		s.addNode(rng)
	}
	return s
}

func (s *spanSim) addNode(rng *rand.Rand) int {
	i := len(s.nodes)
	nd := &simNode{r: newSpanRouter(rng.Uint32() | 1), peers: make([]simEnd, 1, 4)}
	s.nodes = append(s.nodes, nd)
	body := &LnkSpan{PeerType: PeerHammer2, ProtoVersion: 1, PfsType: PFSMaster, PfsID: UUID{0: byte(i), 1: byte(i >> 8), 2: 1}}
	body.SetLabels("cluster", fmt.Sprintf("pfs%d", i))
	s.push(int32(i), simMsg{kind: simSpanUp, conn: simLocal, id: uint64(simLocalSpan), body: body})
	return i
}

// connect links nodes a and b; each sends its LNK_CONN.
func (s *spanSim) connect(a, b int) {
	na, nb := s.nodes[a], s.nodes[b]
	ca, cb := connID(len(na.peers)), connID(len(nb.peers))
	na.peers = append(na.peers, simEnd{node: int32(b), up: true, conn: cb})
	nb.peers = append(nb.peers, simEnd{node: int32(a), up: true, conn: ca})
	s.pairs += 2
	s.push(int32(a), simMsg{kind: simConnUp, conn: ca})
	s.push(int32(b), simMsg{kind: simConnUp, conn: cb})
}

// kill makes node k vanish: its neighbours see their links drop.
func (s *spanSim) kill(k int) {
	nk := s.nodes[k]
	nk.dead = true
	for _, e := range nk.peers {
		if e.up {
			s.push(e.node, simMsg{kind: simLinkDown, conn: e.conn})
			s.pairs -= 2
		}
	}
}

func (s *spanSim) push(to int32, m simMsg) {
	nd := s.nodes[to]
	nd.inbox = append(nd.inbox, m)
	if !s.batch || !nd.queued {
		nd.queued = true
		s.ready = append(s.ready, to)
	}
}

// run delivers messages until the network is quiet, up to limit; then it
// lets the queues' buffers go (they are not state).
func (s *spanSim) run(limit int) error {
	var err error
	if s.batch {
		err = s.runRounds(limit)
	} else {
		err = s.runFIFO(limit)
	}
	s.ready, s.head, s.round = nil, 0, nil
	for _, nd := range s.nodes {
		nd.inbox, nd.ihead, nd.queued = nil, 0, false
	}
	return err
}

func (s *spanSim) runFIFO(limit int) error {
	for n := 0; s.head < len(s.ready); n++ {
		if n >= limit {
			return fmt.Errorf("not converged after %d deliveries", limit)
		}
		i := s.ready[s.head]
		s.head++
		if s.head > 1<<16 && s.head*2 > len(s.ready) {
			s.ready = append(s.ready[:0], s.ready[s.head:]...)
			s.head = 0
		}
		nd := s.nodes[i]
		m := nd.inbox[nd.ihead]
		nd.inbox[nd.ihead] = simMsg{}
		if nd.ihead++; nd.ihead == len(nd.inbox) {
			nd.inbox, nd.ihead = nd.inbox[:0], 0
		}
		if !nd.dead {
			s.deliver(nd, &m)
			s.acts = nd.r.takeAppend(s.acts[:0])
			s.send(i, nd)
		}
	}
	return nil
}

func (s *spanSim) runRounds(limit int) error {
	delivered := 0
	for len(s.ready) > 0 {
		s.round, s.ready = s.ready, s.round[:0]
		for _, i := range s.round {
			nd := s.nodes[i]
			nd.queued, nd.mark = false, len(nd.inbox)
		}
		for _, i := range s.round {
			nd := s.nodes[i]
			in := nd.inbox[nd.ihead:nd.mark]
			if delivered += len(in); delivered > limit {
				return fmt.Errorf("not converged after %d deliveries", limit)
			}
			if !nd.dead {
				nd.r.begin()
				for j := range in {
					s.deliver(nd, &in[j])
				}
				s.acts = nd.r.takeAppend(s.acts[:0])
				s.send(i, nd)
			}
			// Keep what arrived this round, at the front.
			k := copy(nd.inbox, nd.inbox[nd.mark:])
			clear(nd.inbox[k:])
			nd.inbox, nd.ihead = nd.inbox[:k], 0
		}
	}
	return nil
}

func (s *spanSim) deliver(nd *simNode, m *simMsg) {
	switch m.kind {
	case simConnUp:
		nd.r.connUp(m.conn, LnkConn{PeerType: PeerCluster, PeerMask: ^uint64(0)})
	case simSpanUp:
		nd.r.spanUp(m.conn, spanID(m.id), m.body, m.dist, m.rnss)
	case simSpanDown:
		nd.r.spanDown(spanID(m.id))
	case simLinkDown:
		nd.r.linkDown(m.conn)
		nd.peers[m.conn].up = false
	case simAnswer:
		nd.r.relayClosed(relayID(m.id))
	}
}

// send carries node i's actions to its peers.
func (s *spanSim) send(i int32, nd *simNode) {
	for k := range s.acts {
		a := &s.acts[k]
		if int(a.Conn) >= len(nd.peers) || !nd.peers[a.Conn].up {
			continue // the local leaf, or the link is gone: nothing can be sent on it
		}
		peer := nd.peers[a.Conn]
		s.msgs++
		switch {
		case a.Ack:
			from, rl := simRelayOf(a.Acked)
			s.push(from, simMsg{kind: simAnswer, id: uint64(rl)})
		case a.Open:
			s.push(peer.node, simMsg{kind: simSpanUp, conn: peer.conn, id: uint64(simSpan(i, a.Relay)), body: a.Span,
				dist: a.Dist, rnss: a.RNSS})
		default:
			s.push(peer.node, simMsg{kind: simSpanDown, id: uint64(simSpan(i, a.Relay))})
		}
	}
	clear(s.acts)
}

// randomGraph connects n nodes: a random tree, then n/2 more random edges
// (average degree about 3).
func (s *spanSim) randomGraph(rng *rand.Rand, from int) {
	for i := max(from, 1); i < len(s.nodes); i++ {
		s.connect(i, rng.IntN(i))
	}
	for range (len(s.nodes) - from) / 2 {
		a, b := rng.IntN(len(s.nodes)), rng.IntN(len(s.nodes))
		if a != b && !s.linked(a, b) {
			s.connect(a, b)
		}
	}
}

func (s *spanSim) linked(a, b int) bool {
	for _, e := range s.nodes[a].peers {
		if e.up && int(e.node) == b {
			return true
		}
	}
	return false
}

// check verifies convergence: every live node knows every other live node's
// PFS within DragonFly's reach (a span at dist 16 is relayed once more, at
// 17, and no further), at the shortest dist, and nothing about dead ones.
func (s *spanSim) check(t testing.TB) {
	t.Helper()
	for i, nd := range s.nodes {
		if nd.dead {
			continue
		}
		dist := s.bfs(i)
		seen := 0
		nd.r.Walk(func(n NodeView) {
			if len(n.Links) == 0 {
				return
			}
			j := int(n.PfsID[0]) | int(n.PfsID[1])<<8
			d, ok := dist[j]
			if !ok {
				t.Fatalf("node %d still holds a span of unreachable node %d (dist %d)", i, j, n.Links[0].Dist)
			}
			if got := int(n.Links[0].Dist); got != d {
				t.Fatalf("node %d reaches node %d at dist %d, shortest is %d", i, j, got, d)
			}
			seen++
		})
		if seen != len(dist) {
			t.Fatalf("node %d knows %d PFSs, %d are reachable", i, seen, len(dist))
		}
	}
	s.checkRelays(t)
}

// checkRelays verifies a quiet network's relays: no node is still active,
// every node relays exactly its best link where it passes the filters
// (what libdmsg's full pass would relay), and every relay is a span its
// receiver holds.
func (s *spanSim) checkRelays(t testing.TB) {
	t.Helper()
	relays, remote := 0, 0
	for i, nd := range s.nodes {
		if nd.dead {
			continue
		}
		r := nd.r
		if len(r.pending) > 0 || r.batching || len(r.dirty) > 0 {
			t.Fatalf("node %d: %d withdrawals unanswered, batching %v", i, len(r.pending), r.batching)
		}
		relays += len(r.relays)
		for _, l := range r.links {
			if l.conn != simLocal {
				remote++
			}
		}
		for _, n := range r.sortedNodes() {
			if n.active {
				t.Fatalf("node %d: node %s still active", i, label(n.key.label[:]))
			}
			best := n.best()
			for _, c := range r.connList {
				want := best != nil && r.passes(best, c)
				rl := n.relays[c.id]
				if want != (rl != nil) || rl != nil && rl.link != best {
					t.Fatalf("node %d: node %s on conn %d: relay %v, want one: %v", i, label(n.key.label[:]), c.id, rl, want)
				}
			}
		}
	}
	if relays != remote {
		t.Fatalf("%d relays open, %d spans received", relays, remote)
	}
}

// bfs is the hop count from node i to every live node whose span reaches
// it (the local PFS is at dist 0, a neighbour's at 1).
func (s *spanSim) bfs(i int) map[int]int {
	dist := map[int]int{i: 0}
	q := []int{i}
	for len(q) > 0 {
		x := q[0]
		q = q[1:]
		if dist[x] == SpanMaxDist+1 {
			continue
		}
		for _, e := range s.nodes[x].peers {
			if _, ok := dist[int(e.node)]; e.up && !ok && !s.nodes[e.node].dead {
				dist[int(e.node)] = dist[x] + 1
				q = append(q, int(e.node))
			}
		}
	}
	return dist
}

// simModes are the two ways the simulator delivers: a node drains its
// inbox into one batch, or takes one message at a time.
var simModes = []struct {
	name  string
	batch bool
}{{"batch", true}, {"each", false}}

func TestSpanSimConverges(t *testing.T) {
	t.Parallel() // CPU only: it overlaps the process tests' waiting
	sizes := []struct{ n, seed int }{{2, 1}, {10, 2}, {50, 3}, {120, 4}}
	if testing.Short() || raceEnabled { // raceEnabled: one goroutine, nothing to race
		sizes = sizes[:3]
	}
	for _, mode := range simModes {
		for _, tc := range sizes {
			t.Run(fmt.Sprintf("%s/%d", mode.name, tc.n), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(tc.seed), 0))
				s := newSpanSim(tc.n, rng, mode.batch)
				s.randomGraph(rng, 0)
				if err := s.run(50_000_000); err != nil {
					t.Fatal(err)
				}
				s.check(t)
				// A join, then a death (never the only link of a leaf node,
				// which would partition the graph: check handles either).
				j := s.addNode(rng)
				s.connect(j, rng.IntN(j))
				s.connect(j, rng.IntN(j))
				if err := s.run(50_000_000); err != nil {
					t.Fatal(err)
				}
				s.check(t)
				s.kill(rng.IntN(len(s.nodes)))
				if err := s.run(50_000_000); err != nil {
					t.Fatal(err)
				}
				s.check(t)
			})
		}
	}
}

// Random graphs under random joins, deaths and new links, in both modes.
func TestSpanSimRandom(t *testing.T) {
	seeds := 30
	switch {
	case testing.Short():
		seeds = 6
	case raceEnabled: // one goroutine: nothing to race, ten times slower
		seeds = 8
	}
	spread(t, len(simModes)*seeds, func(t *testing.T, i int) { // schedule_test.go
		mode, seed := simModes[i%len(simModes)], i/len(simModes)
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		s := newSpanSim(3+rng.IntN(40), rng, mode.batch)
		s.randomGraph(rng, 0)
		var before [][]simRelayRow
		for step := range 6 {
			if err := s.run(50_000_000); err != nil {
				t.Fatalf("%s seed %d step %d: %v", mode.name, seed, step, err)
			}
			s.check(t)
			// No event settles in fewer messages than its floor: if one
			// did, the floor (and msgs/affected) would be mismeasured.
			after := s.relayTable()
			if a := s.affected(before, after); step > 0 && s.msgs < a.floor() {
				t.Fatalf("%s seed %d step %d: %d messages, floor %d (%+v)", mode.name, seed, step, s.msgs, a.floor(), a)
			}
			before, s.msgs = after, 0
			switch rng.IntN(3) {
			case 0:
				if k := rng.IntN(len(s.nodes)); !s.nodes[k].dead {
					s.connect(s.addNode(rng), k)
				}
			case 1:
				if k := rng.IntN(len(s.nodes)); !s.nodes[k].dead {
					s.kill(k)
				}
			default:
				a, b := rng.IntN(len(s.nodes)), rng.IntN(len(s.nodes))
				if a != b && !s.nodes[a].dead && !s.nodes[b].dead && !s.linked(a, b) {
					s.connect(a, b)
				}
			}
		}
	})
}

// A ring of services: no span above the dist cap, and it goes quiet.
func TestSpanSimRing(t *testing.T) {
	t.Parallel()
	for _, mode := range simModes {
		t.Run(mode.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(9, 9))
			const n = 40
			s := newSpanSim(n, rng, mode.batch)
			for i := range n {
				s.connect(i, (i+1)%n)
			}
			if err := s.run(10_000_000); err != nil {
				t.Fatal(err)
			}
			s.check(t)
			for i, nd := range s.nodes {
				for _, l := range nd.r.links {
					if l.dist > SpanMaxDist+1 {
						t.Fatalf("node %d holds a span at dist %d", i, l.dist)
					}
				}
			}
			s.kill(0)
			if err := s.run(10_000_000); err != nil {
				t.Fatal(err)
			}
			s.check(t)
		})
	}
}

// simRelayRow is one relay a router holds, as its receiver sees it: what
// the (node, connection, PFS) triple advertises.
type simRelayRow struct {
	conn connID
	pfs  int32
	dist uint32
	rnss uint32
}

// relayTable is every live router's relays, each sorted by (conn, PFS).
func (s *spanSim) relayTable() [][]simRelayRow {
	t := make([][]simRelayRow, len(s.nodes))
	for i, nd := range s.nodes {
		if nd.dead {
			continue
		}
		rows := make([]simRelayRow, 0, len(nd.r.relays))
		for _, rl := range nd.r.relays {
			k := rl.node.key.pfsID
			rows = append(rows, simRelayRow{conn: rl.conn, pfs: int32(k[0]) | int32(k[1])<<8,
				dist: rl.link.dist + 1, rnss: rl.link.rnss + nd.r.salt})
		}
		slices.SortFunc(rows, func(a, b simRelayRow) int { return cmp.Or(cmp.Compare(a.conn, b.conn), cmp.Compare(a.pfs, b.pfs)) })
		t[i] = rows
	}
	return t
}

// simAffected is what an event changed between two quiet networks.
type simAffected struct {
	opened, closed, changed int // relays
	pairs                   int // distinct (node, connection) with any of them
}

// relays is the affected (node, connection, PFS) relays.
func (a simAffected) relays() int { return a.opened + a.closed + a.changed }

// floor is the fewest messages that make the change on DragonFly's wire:
// an open is a CREATE; a close a DELETE and the receiver's answering
// DELETE; a change opens the new relay before closing the old one, so
// three.
func (a simAffected) floor() int { return a.opened + 2*a.closed + 3*a.changed }

// affected diffs the relay tables of the quiet network before an event and
// the quiet network now. Only connections between nodes live now count:
// the relays of a dead node and those toward it vanish with the link, and
// no message can be spent on them. A relay that was closed and reopened
// with the same dist and rnss is not affected; its messages are overhead.
func (s *spanSim) affected(before, after [][]simRelayRow) simAffected {
	var a simAffected
	for i, nd := range s.nodes {
		if nd.dead {
			continue
		}
		var b []simRelayRow
		if i < len(before) {
			b = before[i]
		}
		live := func(c connID) bool {
			e := nd.peers[c]
			return e.up && !s.nodes[e.node].dead
		}
		var last connID
		hit := false
		note := func(c connID) {
			if !hit || c != last {
				a.pairs++
			}
			hit, last = true, c
		}
		x, y := b, after[i]
		for len(x) > 0 || len(y) > 0 {
			var c int
			switch {
			case len(x) == 0:
				c = 1
			case len(y) == 0:
				c = -1
			default:
				c = cmp.Or(cmp.Compare(x[0].conn, y[0].conn), cmp.Compare(x[0].pfs, y[0].pfs))
			}
			switch {
			case c < 0:
				if live(x[0].conn) {
					a.closed++
					note(x[0].conn)
				}
				x = x[1:]
			case c > 0:
				if live(y[0].conn) {
					a.opened++
					note(y[0].conn)
				}
				y = y[1:]
			default:
				if x[0] != y[0] && live(y[0].conn) {
					a.changed++
					note(y[0].conn)
				}
				x, y = x[1:], y[1:]
			}
		}
	}
	return a
}

// BenchmarkSpanSim: for random graphs of 10, 100 and 1000 nodes, the time
// and messages to converge after a node joins and after one dies, and the
// memory held per span. One iteration builds and converges the whole graph
// from nothing (form-ms, outside the timer), then times simEvents joins
// and deaths in turn, each on the network the last one left.
// nodes=N drains each node's input in one batch; nodes=N/each delivers one
// message at a time.
//
// Per event, "affected" is the (node, connection, PFS) relays that differ
// between the quiet network before and the one after (see affected), and
// msgs/affected the messages spent per affected relay: if it stays flat as
// the graph grows, messages grow no faster than what an event changes.
// msgs/floor divides by the fewest messages the change needs on the wire.
func BenchmarkSpanSim(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		for _, mode := range simModes {
			name := fmt.Sprintf("nodes=%d", n)
			if !mode.batch {
				name += "/" + mode.name
			}
			b.Run(name, func(b *testing.B) { benchSpanSim(b, n, mode.batch) })
		}
	}
}

// randomLive picks a live node: joining a dead one would count messages
// sent to nobody.
func (s *spanSim) randomLive(rng *rand.Rand) int {
	for {
		if k := rng.IntN(len(s.nodes)); !s.nodes[k].dead {
			return k
		}
	}
}

// simEvents is how many joins and how many deaths one iteration times.
const simEvents = 5

// simEventStats gathers one kind of event over a benchmark.
type simEventStats struct {
	t                             time.Duration
	msgs, affected, pairs, events int
	perAffected, perFloor         []float64
}

func (e *simEventStats) add(d time.Duration, msgs int, a simAffected) {
	e.t += d
	e.msgs += msgs
	e.affected += a.relays()
	e.pairs += a.pairs
	e.events++
	e.perAffected = append(e.perAffected, float64(msgs)/float64(max(a.relays(), 1)))
	e.perFloor = append(e.perFloor, float64(msgs)/float64(max(a.floor(), 1)))
}

func (e *simEventStats) report(b *testing.B, kind string, pairs int) {
	n := float64(e.events)
	b.ReportMetric(float64(e.t.Microseconds())/n/1000, kind+"-ms")
	b.ReportMetric(float64(e.msgs)/n, kind+"-msgs")
	b.ReportMetric(float64(e.msgs)/n/float64(pairs), kind+"-msgs/pair")
	b.ReportMetric(float64(e.affected)/n, kind+"-affected")
	b.ReportMetric(float64(e.pairs)/n, kind+"-touched")
	for _, v := range []struct {
		name string
		x    []float64
	}{{"/affected", e.perAffected}, {"/floor", e.perFloor}} {
		slices.Sort(v.x)
		b.ReportMetric(v.x[len(v.x)/2], kind+"-msgs"+v.name+"-med")
		b.ReportMetric(v.x[len(v.x)-1], kind+"-msgs"+v.name+"-max")
	}
}

func benchSpanSim(b *testing.B, n int, batch bool) {
	var formT time.Duration
	var formMsgs, pairs int
	var join, death simEventStats
	var bytesPerSpan float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		rng := rand.New(rand.NewPCG(uint64(i), uint64(n)))
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		t0 := time.Now()
		s := newSpanSim(n, rng, batch)
		s.randomGraph(rng, 0)
		if err := s.run(1 << 40); err != nil {
			b.Fatal(err)
		}
		formT += time.Since(t0)
		formMsgs = s.msgs
		runtime.GC()
		runtime.ReadMemStats(&m1)
		held := 0
		for _, nd := range s.nodes {
			held += len(nd.r.links)
		}
		bytesPerSpan = float64(m1.HeapAlloc-m0.HeapAlloc) / float64(held)
		pairs = s.pairs

		for range simEvents {
			before := s.relayTable()
			s.msgs = 0
			b.StartTimer()
			t0 = time.Now()
			x, y := s.randomLive(rng), s.randomLive(rng)
			j := s.addNode(rng)
			s.connect(j, x)
			s.connect(j, y)
			if err := s.run(1 << 40); err != nil {
				b.Fatal(err)
			}
			d := time.Since(t0)
			b.StopTimer()
			join.add(d, s.msgs, s.affected(before, s.relayTable()))

			before = s.relayTable()
			s.msgs = 0
			k := s.randomLive(rng)
			b.StartTimer()
			t0 = time.Now()
			s.kill(k)
			if err := s.run(1 << 40); err != nil {
				b.Fatal(err)
			}
			d = time.Since(t0)
			b.StopTimer()
			death.add(d, s.msgs, s.affected(before, s.relayTable()))
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(formT.Microseconds())/float64(b.N)/1000, "form-ms")
	b.ReportMetric(float64(formMsgs), "form-msgs")
	join.report(b, "join", pairs)
	death.report(b, "death", pairs)
	b.ReportMetric(bytesPerSpan, "B/span")
}
