package main

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// spanSim runs many span routers over in-memory links: the same router code
// the service runs, with message delivery replaced by a FIFO queue. Every
// node has one local PFS (a leaf's span at dist 0 on a connection that sent
// no LNK_CONN, so it is advertised but receives nothing).
type spanSim struct {
	nodes []*simNode
	queue []simMsg
	head  int
	msgs  int // span CREATEs and DELETEs sent between nodes
	pairs int // connections between live nodes, counted per direction
}

type simNode struct {
	r     *spanRouter
	dead  bool
	peers map[connID]simEnd // conn -> the other end
	next  connID
	spans spanID
	sent  map[relayID]simEnd // our relay -> the span it became at the peer
	from  map[spanID]simEnd  // a span we received -> the relay it was at the sender
}

type simEnd struct {
	node  int
	conn  connID
	span  spanID
	relay relayID
}

type simKind uint8

const (
	simConnUp simKind = iota
	simSpanUp
	simSpanDown
	simLinkDown
	simAnswer // the DELETE that answers a withdrawal
)

type simMsg struct {
	to    int
	kind  simKind
	conn  connID
	span  spanID
	relay relayID
	body  *LnkSpan
	dist  uint32
	rnss  uint32
}

const simLocal connID = 0 // the local leaf's connection on every node

func newSpanSim(n int, rng *rand.Rand) *spanSim {
	s := &spanSim{}
	for range n {
		s.addNode(rng)
	}
	return s
}

func (s *spanSim) addNode(rng *rand.Rand) int {
	i := len(s.nodes)
	nd := &simNode{r: newSpanRouter(rng.Uint32() | 1), peers: map[connID]simEnd{}, sent: map[relayID]simEnd{},
		from: map[spanID]simEnd{}}
	s.nodes = append(s.nodes, nd)
	body := &LnkSpan{PeerType: PeerHammer2, ProtoVersion: 1, PfsType: PFSMaster, PfsID: UUID{0: byte(i), 1: byte(i >> 8), 2: 1}}
	body.SetLabels("cluster", fmt.Sprintf("pfs%d", i))
	nd.spans++
	s.push(simMsg{to: i, kind: simSpanUp, conn: simLocal, span: nd.spans, body: body})
	return i
}

// connect links nodes a and b; each sends its LNK_CONN.
func (s *spanSim) connect(a, b int) {
	na, nb := s.nodes[a], s.nodes[b]
	na.next++
	nb.next++
	ca, cb := na.next, nb.next
	na.peers[ca] = simEnd{node: b, conn: cb}
	nb.peers[cb] = simEnd{node: a, conn: ca}
	s.pairs += 2
	s.push(simMsg{to: a, kind: simConnUp, conn: ca})
	s.push(simMsg{to: b, kind: simConnUp, conn: cb})
}

// kill makes node k vanish: its neighbours see their links drop.
func (s *spanSim) kill(k int) {
	nk := s.nodes[k]
	nk.dead = true
	for _, e := range nk.peers {
		s.push(simMsg{to: e.node, kind: simLinkDown, conn: e.conn})
		s.pairs -= 2
	}
}

func (s *spanSim) push(m simMsg) { s.queue = append(s.queue, m) }

// run delivers messages until the network is quiet, up to limit.
func (s *spanSim) run(limit int) error {
	for n := 0; s.head < len(s.queue); n++ {
		if n >= limit {
			return fmt.Errorf("not converged after %d deliveries", limit)
		}
		m := s.queue[s.head]
		s.queue[s.head] = simMsg{}
		s.head++
		if s.head > 1<<16 && s.head*2 > len(s.queue) {
			s.queue = append(s.queue[:0], s.queue[s.head:]...)
			s.head = 0
		}
		nd := s.nodes[m.to]
		if nd.dead {
			continue
		}
		switch m.kind {
		case simConnUp:
			nd.r.connUp(m.conn, LnkConn{PeerType: PeerCluster, PeerMask: ^uint64(0)})
		case simSpanUp:
			nd.r.spanUp(m.conn, m.span, m.body, m.dist, m.rnss)
		case simSpanDown:
			nd.r.spanDown(m.span)
		case simLinkDown:
			nd.r.linkDown(m.conn)
			delete(nd.peers, m.conn)
		case simAnswer:
			nd.r.relayClosed(m.relay)
		}
		for _, a := range nd.r.take() {
			peer, ok := nd.peers[a.Conn]
			if !ok {
				continue // the link is gone; nothing can be sent on it
			}
			s.msgs++
			switch {
			case a.Ack:
				if e, ok := nd.from[a.Acked]; ok {
					delete(nd.from, a.Acked)
					s.push(simMsg{to: e.node, kind: simAnswer, relay: e.relay})
				}
			case a.Open:
				pn := s.nodes[peer.node]
				pn.spans++
				nd.sent[a.Relay] = simEnd{node: peer.node, conn: peer.conn, span: pn.spans}
				pn.from[pn.spans] = simEnd{node: m.to, relay: a.Relay}
				s.push(simMsg{to: peer.node, kind: simSpanUp, conn: peer.conn, span: pn.spans, body: a.Span,
					dist: a.Dist, rnss: a.RNSS})
			default:
				if e, ok := nd.sent[a.Relay]; ok {
					delete(nd.sent, a.Relay)
					s.push(simMsg{to: e.node, kind: simSpanDown, span: e.span})
				}
			}
		}
	}
	return nil
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
		if e.node == b {
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
	live := 0
	for _, nd := range s.nodes {
		if !nd.dead {
			live++
		}
	}
	for i, nd := range s.nodes {
		if nd.dead {
			continue
		}
		dist := s.bfs(i)
		seen := 0
		for _, cl := range nd.r.clusters {
			for _, n := range cl.nodes {
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
		}
		if seen != len(dist) {
			t.Fatalf("node %d knows %d PFSs, %d are reachable", i, seen, len(dist))
		}
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
			if _, ok := dist[e.node]; !ok && !s.nodes[e.node].dead {
				dist[e.node] = dist[x] + 1
				q = append(q, e.node)
			}
		}
	}
	return dist
}

func TestSpanSimConverges(t *testing.T) {
	for _, tc := range []struct{ n, seed int }{{2, 1}, {10, 2}, {50, 3}, {120, 4}} {
		t.Run(fmt.Sprint(tc.n), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.seed), 0))
			s := newSpanSim(tc.n, rng)
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

// A ring of services: no span above the dist cap, and it goes quiet.
func TestSpanSimRing(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	const n = 40
	s := newSpanSim(n, rng)
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
}

// BenchmarkSpanSim: for random graphs of 10, 100 and 1000 nodes, the time
// and messages to converge after a node joins and after one dies, and the
// memory held per span. One iteration builds and converges the whole graph
// from nothing (form-ms, outside the timer), then times a join and a death.
func BenchmarkSpanSim(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
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
				s := newSpanSim(n, rng)
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
		})
	}
}
