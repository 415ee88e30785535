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
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
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

// leafSim is the benchmark's side of N leaves on a service process: each
// holds the relays the service sent it and answers their withdrawal.
type leafSim struct {
	b       *testing.B
	sock    string
	held    atomic.Int64 // relays held by all leaves
	target  atomic.Int64
	reached chan struct{}
	clids   []UUID
	// clids are the clusters. With one, every leaf sends a leaf's
	// LNK_CONN; with several, each is a client of its own cluster, as
	// DragonFly's filter has it, and gets only its spans.
	leaves []*simLeaf
}

type simLeaf struct {
	link *Link
	mu   sync.Mutex
	held int64 // counted in leafSim.held until gone
	gone bool
}

// count adds d to what the leaf holds, and to the total while it is live.
func (sl *simLeaf) count(s *leafSim, d int64) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if !sl.gone {
		sl.held += d
		s.add(d)
	}
}

// leave drops the leaf's link (its socket closes at once; its
// goroutines end in their own time, which Close would wait for, one link
// after another); what it held leaves the total with it.
func (sl *simLeaf) leave(s *leafSim) {
	sl.mu.Lock()
	sl.gone = true
	s.add(-sl.held)
	sl.mu.Unlock()
	sl.link.Abort(ErrLinkClosed)
}

func (s *leafSim) add(d int64) {
	if s.held.Add(d) == s.target.Load() {
		select {
		case s.reached <- struct{}{}:
		default:
		}
	}
}

// join connects leaf i of cluster cl and advertises its span.
func (s *leafSim) join(i, cl int) *simLeaf {
	c, err := net.Dial("unix", s.sock)
	if err != nil {
		s.b.Fatal(err)
	}
	sl := &simLeaf{}
	// It PINGs as a leaf does (every second when idle), so that the
	// service's silence check keeps it while the service is busy.
	sl.link = NewLink(c, LinkConfig{Name: "leaf", DeadAfter: -1, Logger: discardLogger(), MaxPeerTrans: -1,
		Handler: func(t *Trans, m *Msg) {
			if t.IsRoot() || t.Parent() != nil || t.Cmd() != CmdLnkSpan || m.Cmd&FlagCreate == 0 {
				return
			}
			t.SetHandler(func(t *Trans, m *Msg) {
				if m.Cmd&FlagDelete != 0 {
					sl.count(s, -1)
					_ = t.Close(ErrOK) // the answer the service's withdrawal waits for
				}
			})
			_ = t.Reply(ErrOK)
			sl.count(s, 1)
		}})
	clid := s.clids[cl]
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1}
	if len(s.clids) > 1 {
		// One of many clusters: a client of its own, as DragonFly's
		// filter has it.
		conn = LnkConn{PeerType: PeerClient, PeerMask: 1 << PeerHammer2, PeerID: clid, ProtoVersion: SpanProto1}
	}
	if _, err := sl.link.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: conn.Marshal()}, func(*Trans, *Msg) {}); err != nil {
		s.b.Fatal(err)
	}
	sl.link.Start()
	sp := benchSpan(clid, i)
	if _, err := sl.link.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(*Trans, *Msg) {}); err != nil {
		s.b.Fatal(err)
	}
	return sl
}

// expect is the relays every leaf holds when the live leaves, by cluster
// counts, have converged.
func (s *leafSim) expect(live map[int]int) int64 {
	var n int64
	for _, k := range live {
		n += int64(k * (k - 1))
	}
	return n
}

// converge sets the relays the leaves will hold in all once converged,
// runs start (which makes the change) and waits for that count: the
// total moves one way only (a leaf's single span has one path), so
// reaching it is converging. It returns the time from start.
func (s *leafSim) converge(what string, want int64, limit time.Duration, start func()) time.Duration {
	s.target.Store(want)
	for len(s.reached) > 0 {
		<-s.reached
	}
	t0 := time.Now()
	start()
	deadline := time.After(limit)
	for s.held.Load() != want {
		select {
		case <-s.reached:
		case <-deadline:
			s.b.Fatalf("%s: %d of %d relays held after %v", what, s.held.Load(), want, limit)
		}
	}
	return time.Since(t0)
}

func BenchmarkServiceLeaves(b *testing.B) {
	for _, c := range []struct{ leaves, cluster int }{{1000, 1000}, {1000, 50}, {5000, 50}} {
		b.Run(fmt.Sprintf("leaves=%d/cluster=%d", c.leaves, c.cluster), func(b *testing.B) {
			for range b.N {
				benchLeaves(b, c.leaves, c.cluster)
			}
		})
	}
}

func benchLeaves(b *testing.B, n, size int) {
	// dead_after is raised from 10 s: forming a full mesh of 1,000 puts a
	// million relays through the service in one burst, and on a loaded
	// machine a leaf's link could go 10 s without a read (docs/BENCHMARKS.md).
	cfg := filepath.Join(shortTempDir(b), "svc.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("dead_after = \"60s\"\n[limits]\nlinks = %d\nspans = %d\n", n+100, max(n+100, 4096))), 0o600); err != nil {
		b.Fatal(err)
	}
	sock, pid := benchServiceConfig(b, cfg)
	s := &leafSim{b: b, sock: sock, reached: make(chan struct{}, 1)}
	for range (n + size - 1) / size {
		s.clids = append(s.clids, NewUUID())
	}
	base := settledRSS(b, pid)
	live := map[int]int{}
	for i := range n {
		live[i/size]++
	}
	form := s.converge("forming", s.expect(live), 20*time.Minute, func() {
		for i := range n {
			s.leaves = append(s.leaves, s.join(i, i/size))
		}
	})
	relaying := settledRSS(b, pid)

	// One leaf joins, in the first cluster (a full one).
	live[0]++
	joinT := s.converge("join", s.expect(live), 5*time.Minute, func() { s.leaves = append(s.leaves, s.join(n, 0)) })

	// 10 % leave at once, spread over the clusters.
	var gone []int
	for i := 0; i < n; i += 10 {
		gone = append(gone, i)
	}
	for _, i := range gone {
		live[i/size]--
	}
	leaveT := s.converge("leave", s.expect(live), 5*time.Minute, func() {
		for _, i := range gone {
			s.leaves[i].leave(s)
		}
	})
	after := settledRSS(b, pid)
	b.ReportMetric(float64(base)/1024, "MB-empty")
	b.ReportMetric(float64(relaying)/1024, "MB-relaying")
	b.ReportMetric(float64(after)/1024, "MB-after-leave")
	b.ReportMetric(float64(s.expect(map[int]int{0: size})), "relays/cluster")
	b.ReportMetric(form.Seconds(), "s-form")
	b.ReportMetric(float64(joinT.Microseconds())/1e3, "ms-join")
	b.ReportMetric(float64(leaveT.Microseconds())/1e3, "ms-leave10%")
	for _, l := range s.leaves {
		l.link.Close()
	}
}
