package main

// What a link going up or down costs the span router as the spans it
// holds grow (issue 15: incremental, at most 2 ms at 10k spans), measured
// at 100 and 10,000 spans in one run so that the ratio means something on
// a shared machine.
//
//	go test -run '^$' -bench 'SpanRouterLinkUpDown' -count 3 .
//
// The router holds n spans, each a node of its own, received on conn 1 and
// relayed to conn 2. Then, per iteration:
//   - "filtered": a connection whose filter takes none of them (a client of
//     another cluster) comes up and goes down: what the router spends on a
//     link that changes nothing. Today's full scan and sort made it grow
//     with n; indexed it should not.
//   - "leaf": a leaf's link comes up, brings one span (relayed to the other
//     two connections) and is lost. Its own LNK_CONN takes no spans (a
//     client of another cluster) so that it, too, changes a constant
//     number of relays.
//   - "all": a connection that takes every span comes up and goes down: n
//     relays opened and closed, reported per relay.

import (
	"fmt"
	"testing"
	"time"
)

func benchRouterHolding(n int) *spanRouter {
	r := newSpanRouter(7)
	r.connUp(1, LnkConn{PeerType: PeerCluster, PeerMask: ^uint64(0)})
	r.connUp(2, LnkConn{PeerType: PeerCluster, PeerMask: ^uint64(0)})
	clid := UUID{1}
	for i := range n {
		sp := &LnkSpan{PeerID: clid, PfsID: UUID{2, byte(i), byte(i >> 8), byte(i >> 16)}, PfsType: PFSMaster,
			PeerType: PeerHammer2, ProtoVersion: SpanProto1}
		sp.SetLabels("bench", fmt.Sprintf("pfs%d", i))
		r.spanUp(1, spanID(i+1), sp, 0, 0)
	}
	r.take()
	return r
}

// routerUpDown is one iteration of a case on r; next numbers connections
// and spans so that none is reused.
type routerCase func(r *spanRouter, next uint64) (opened int, up, down time.Duration)

// upDown times f (the link coming up) and the link's loss.
func upDown(r *spanRouter, id connID, f func()) (int, time.Duration, time.Duration) {
	t0 := time.Now()
	f()
	n := len(r.take())
	t1 := time.Now()
	r.linkDown(id)
	r.take()
	return n, t1.Sub(t0), time.Since(t1)
}

var routerCases = []struct {
	name string
	run  routerCase
}{
	{"filtered", func(r *spanRouter, next uint64) (int, time.Duration, time.Duration) {
		id := connID(next)
		return upDown(r, id, func() { r.connUp(id, LnkConn{PeerType: PeerClient, PeerMask: ^uint64(0), PeerID: UUID{9}}) })
	}},
	{"leaf", func(r *spanRouter, next uint64) (int, time.Duration, time.Duration) {
		id := connID(next)
		sp := &LnkSpan{PeerID: UUID{1}, PfsID: UUID{3, byte(next), byte(next >> 8), byte(next >> 16)}, PfsType: PFSMaster,
			PeerType: PeerHammer2, ProtoVersion: SpanProto1}
		sp.SetLabels("bench", "leaf")
		return upDown(r, id, func() {
			r.connUp(id, LnkConn{PeerType: PeerClient, PeerMask: ^uint64(0), PeerID: UUID{9}})
			r.spanUp(id, spanID(1<<40+next), sp, 0, 0)
		})
	}},
	{"all", func(r *spanRouter, next uint64) (int, time.Duration, time.Duration) {
		id := connID(next)
		return upDown(r, id, func() { r.connUp(id, LnkConn{PeerType: PeerCluster, PeerMask: ^uint64(0)}) })
	}},
}

func BenchmarkSpanRouterLinkUpDown(b *testing.B) {
	sizes := []int{100, 10000}
	for _, c := range routerCases {
		b.Run(c.name, func(b *testing.B) {
			routers := make([]*spanRouter, len(sizes))
			for i, n := range sizes {
				routers[i] = benchRouterHolding(n)
			}
			// Interleaved in slices: both sizes see the same machine.
			up := make([]time.Duration, len(sizes))
			down := make([]time.Duration, len(sizes))
			next := uint64(100)
			b.ResetTimer()
			for range b.N {
				for k, r := range routers {
					next++
					_, u, d := c.run(r, next)
					up[k] += u
					down[k] += d
				}
			}
			for k, n := range sizes {
				b.ReportMetric(float64(up[k].Nanoseconds())/float64(b.N)/1e3, fmt.Sprintf("µs/up-%d", n))
				b.ReportMetric(float64(down[k].Nanoseconds())/float64(b.N)/1e3, fmt.Sprintf("µs/down-%d", n))
			}
			b.ReportMetric(float64(up[1])/float64(up[0]), "ratio-up")
			b.ReportMetric(float64(down[1])/float64(down[0]), "ratio-down")
		})
	}
}
