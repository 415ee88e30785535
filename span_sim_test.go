package main

import (
	"fmt"
	"math/rand/v2"
	"runtime"
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
		for _, n := range nd.r.sortedNodes() {
			if len(n.links) == 0 {
				continue
			}
			j := int(n.key.pfsID[0]) | int(n.key.pfsID[1])<<8
			d, ok := dist[j]
			if !ok {
				t.Fatalf("node %d still holds a span of unreachable node %d (dist %d)", i, j, n.links[0].dist)
			}
			if got := int(n.links[0].dist); got != d {
				t.Fatalf("node %d reaches node %d at dist %d, shortest is %d", i, j, got, d)
			}
			seen++
		}
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
	for _, mode := range simModes {
		for _, tc := range []struct{ n, seed int }{{2, 1}, {10, 2}, {50, 3}, {120, 4}} {
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
	for _, mode := range simModes {
		for seed := range 30 {
			rng := rand.New(rand.NewPCG(uint64(seed), 7))
			s := newSpanSim(3+rng.IntN(40), rng, mode.batch)
			s.randomGraph(rng, 0)
			for step := range 6 {
				if err := s.run(50_000_000); err != nil {
					t.Fatalf("%s seed %d step %d: %v", mode.name, seed, step, err)
				}
				s.check(t)
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
		}
	}
}

// A ring of services: no span above the dist cap, and it goes quiet.
func TestSpanSimRing(t *testing.T) {
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

// BenchmarkSpanSim: for random graphs of 10, 100 and 1000 nodes, the time
// and messages to converge after a node joins and after one dies, and the
// memory held per span. One iteration builds and converges the whole graph
// from nothing (form-ms, outside the timer), then times a join and a death.
// nodes=N drains each node's input in one batch; nodes=N/each delivers one
// message at a time, as the service does today.
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

func benchSpanSim(b *testing.B, n int, batch bool) {
	var joinT, deathT, formT time.Duration
	var joinMsgs, deathMsgs, formMsgs, pairs int
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
		b.StartTimer()

		s.msgs = 0
		t0 = time.Now()
		j := s.addNode(rng)
		s.connect(j, rng.IntN(j))
		s.connect(j, rng.IntN(j))
		if err := s.run(1 << 40); err != nil {
			b.Fatal(err)
		}
		joinT += time.Since(t0)
		joinMsgs = s.msgs

		s.msgs = 0
		t0 = time.Now()
		s.kill(rng.IntN(n))
		if err := s.run(1 << 40); err != nil {
			b.Fatal(err)
		}
		deathT += time.Since(t0)
		deathMsgs = s.msgs
	}
	b.ReportMetric(float64(formT.Microseconds())/float64(b.N)/1000, "form-ms")
	b.ReportMetric(float64(formMsgs), "form-msgs")
	b.ReportMetric(float64(joinT.Microseconds())/float64(b.N)/1000, "join-ms")
	b.ReportMetric(float64(deathT.Microseconds())/float64(b.N)/1000, "death-ms")
	b.ReportMetric(float64(joinMsgs), "join-msgs")
	b.ReportMetric(float64(deathMsgs), "death-msgs")
	b.ReportMetric(float64(joinMsgs)/float64(pairs), "join-msgs/pair")
	b.ReportMetric(float64(deathMsgs)/float64(pairs), "death-msgs/pair")
	b.ReportMetric(float64(joinMsgs)/float64(n+1), "join-msgs/node")
	b.ReportMetric(bytesPerSpan, "B/span")
}
