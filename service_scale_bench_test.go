package main

// The service at scale (issue 15, item 3).
//
//	go test -run '^$' -bench 'ServiceCircuit' -count 3 .
//	go test -run '^$' -bench 'ServiceLeaves' -benchtime 1x -timeout 60m .
//
// BenchmarkServiceCircuit: a circuit through an in-process service (a
// transaction opened under a relayed span, carried to the span's origin
// and answered), with 100 and with 10,000 spans relayed on the link that
// opens it, interleaved in one run. Finding the relay used to scan every
// relay of the link under the service's lock.
//
// BenchmarkServiceLeaves: a real service process and N leaves played by
// links of the benchmark process over its Unix socket, each advertising
// one span. It reports the service's RSS and the time to converge after
// one leaf joins and after 10 % of them leave at once.

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// scaleService runs an in-process service with no listeners; links are
// handed to it over socketpairs.
func scaleService(b testing.TB, lim Limits) *Service {
	b.Helper()
	svc := NewService(ServiceConfig{Limits: lim, DeadAfter: -1, Ping: -1}, nil, discardLogger())
	runServiceInProcess(b, svc)
	return svc
}

// attach links the benchmark to svc as a privileged local peer; h handles
// what the service sends.
func attach(b testing.TB, svc *Service, name string, h Handler) *Link {
	b.Helper()
	ours, theirs := socketPair(b)
	svc.addLink(theirs, svcLinkInfo{name: name, transport: "unix", local: true,
		peer: PeerIdentity{Class: ClassLocalPrivileged, UID: os.Geteuid(), GID: os.Getegid(), PID: -1, Via: "socketpair"}})
	l := NewLink(ours, LinkConfig{Name: name, PingInterval: -1, DeadAfter: -1, Handler: h, Logger: discardLogger(),
		MaxPeerTrans: -1})
	l.Start()
	b.Cleanup(func() { l.Close() })
	return l
}

func benchSpan(clid UUID, i int) LnkSpan {
	sp := LnkSpan{PeerID: clid, PfsID: UUID{2, byte(i), byte(i >> 8), byte(i >> 16)}, PfsType: PFSMaster,
		PeerType: PeerHammer2, ProtoVersion: SpanProto1}
	sp.SetLabels("bench", fmt.Sprintf("pfs%d", i))
	return sp
}

// circuitEnv is a service relaying n spans of link src to link cli.
type circuitEnv struct {
	n      int
	cli    *Link
	relays []*Trans
}

func newCircuitEnv(b *testing.B, n int) *circuitEnv {
	lim := defaultLimits()
	lim.SpansPerLink, lim.Spans, lim.TransPerLink = n+10, n+10, 2*n+100
	svc := scaleService(b, lim)
	// The origin answers every circuit at once.
	src := attach(b, svc, "origin", func(t *Trans, m *Msg) {
		if !t.IsRoot() && t.Parent() != nil && m.Cmd&FlagCreate != 0 {
			_ = t.Close(ErrOK)
		}
	})
	env := &circuitEnv{n: n}
	var mu sync.Mutex
	all := make(chan struct{})
	env.cli = attach(b, svc, "client", func(t *Trans, m *Msg) {
		if !t.IsRoot() && t.Parent() == nil && t.Cmd() == CmdLnkSpan && m.Cmd&FlagCreate != 0 {
			t.SetHandler(func(*Trans, *Msg) {})
			_ = t.Reply(ErrOK)
			mu.Lock()
			env.relays = append(env.relays, t)
			if len(env.relays) == n {
				close(all)
			}
			mu.Unlock()
		}
	})
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1}
	if _, err := env.cli.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: conn.Marshal()}, func(*Trans, *Msg) {}); err != nil {
		b.Fatal(err)
	}
	clid := NewUUID()
	for i := range n {
		sp := benchSpan(clid, i)
		if _, err := src.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(*Trans, *Msg) {}); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-all:
	case <-time.After(2 * time.Minute):
		b.Fatalf("%d spans: not all relayed after 2 minutes", n)
	}
	// One circuit under every relay first: the first one on a span
	// allocates its table of children on each hop, which is not the
	// lookup being measured.
	done := make(chan struct{}, 1)
	for i := range n {
		env.circuit(b, i, done)
	}
	return env
}

// circuit opens and completes one circuit under relay i.
func (e *circuitEnv) circuit(b *testing.B, i int, done chan struct{}) {
	rt := e.relays[i%len(e.relays)]
	_, err := rt.Open(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}, Aux: ShellAux("x")}, func(_ *Trans, m *Msg) {
		if m.Cmd&FlagDelete != 0 {
			done <- struct{}{}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		b.Fatal("no answer on a circuit after 10 s")
	}
}

func BenchmarkServiceCircuit(b *testing.B) {
	sizes := []int{100, 10000}
	envs := make([]*circuitEnv, len(sizes))
	for k, n := range sizes {
		envs[k] = newCircuitEnv(b, n)
	}
	// scattered: a prime stride, so that each circuit takes a relay far
	// from the last one's (and its table entries out of the cache); one:
	// every circuit under the same relay.
	for _, c := range []struct {
		name   string
		stride int
	}{{"scattered", 7919}, {"one", 0}} {
		b.Run(c.name, func(b *testing.B) {
			done := make(chan struct{}, 1)
			spent := make([]time.Duration, len(sizes))
			const slice = 50
			for i := 0; i < b.N; i += slice {
				for k, e := range envs {
					t0 := time.Now()
					for j := i; j < min(i+slice, b.N); j++ {
						e.circuit(b, j*c.stride, done)
					}
					spent[k] += time.Since(t0)
				}
			}
			for k, n := range sizes {
				b.ReportMetric(float64(spent[k].Nanoseconds())/float64(b.N)/1e3, fmt.Sprintf("µs/circuit-%d", n))
			}
			b.ReportMetric(float64(spent[1])/float64(spent[0]), "ratio")
		})
	}
}
