//go:build !dragonfly

package main

// What a service's memory costs per link and per relayed span, so that
// limits (limits.go) can be chosen against a memory budget
// (docs/SECURITY.md). A real service process; N leaves played by links in
// this process over its Unix socket, each advertising one span, which the
// service relays to the N-1 others.
//
//	go test -run '^$' -bench BenchmarkServiceMemory -benchtime 1x .

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchService runs a service process on a Unix socket only.
func benchService(b *testing.B) (sock string, pid int) {
	b.Helper()
	return benchServiceConfig(b, "/dev/null")
}

// benchServiceConfig is benchService with a config file.
func benchServiceConfig(b *testing.B, config string) (sock string, pid int) {
	b.Helper()
	dir := shortTempDir(b)
	sock = filepath.Join(dir, "s.sock")
	logPath := filepath.Join(dir, "svc.log")
	lf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(h2Binary(b), "-c", config, "-d", "service", "--unix", sock, "--tcp", "none", "--listen", "none")
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		lf.Close()
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if out, _ := os.ReadFile(logPath); bytes.Contains(out, []byte("service running")) {
			return sock, cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			b.Fatal("the service did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settledRSS is the service's RSS once it has stopped growing: two reads
// 200 ms apart within 1 %, after a forced GC would be ideal but the
// process is not ours to collect, so it is given the time instead.
func settledRSS(b *testing.B, pid int) int {
	b.Helper()
	prev := rssKiB(b, pid)
	for range 25 {
		time.Sleep(200 * time.Millisecond)
		cur := rssKiB(b, pid)
		if d := cur - prev; d*100 <= prev && -d*100 <= prev {
			return cur
		}
		prev = cur
	}
	return prev
}

func BenchmarkServiceMemory(b *testing.B) {
	for _, n := range []int{10, 100, 500} {
		b.Run(fmt.Sprintf("leaves=%d", n), func(b *testing.B) {
			for range b.N {
				sock, pid := benchService(b)
				base := settledRSS(b, pid)
				var relayed atomic.Int64
				want := int64(n * (n - 1))
				reached := make(chan struct{})
				links := make([]*Link, n)
				for i := range n {
					c, err := net.Dial("unix", sock)
					if err != nil {
						b.Fatal(err)
					}
					cfg := LinkConfig{Name: "leaf", PingInterval: -1, DeadAfter: -1, Logger: discardLogger(),
						Handler: func(t *Trans, m *Msg) {
							if !t.IsRoot() && t.Cmd() == CmdLnkSpan && m.Cmd&FlagCreate != 0 {
								t.SetHandler(func(*Trans, *Msg) {})
								_ = t.Reply(ErrOK)
								if relayed.Add(1) == want {
									close(reached)
								}
							}
						}}
					l := NewLink(c, cfg)
					conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1}
					if _, err := l.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: conn.Marshal()}, func(*Trans, *Msg) {}); err != nil {
						b.Fatal(err)
					}
					l.Start()
					links[i] = l
				}
				idle := settledRSS(b, pid)
				clid := NewUUID()
				for _, l := range links {
					sp := LnkSpan{PeerID: clid, PfsID: NewUUID(), PfsType: PFSMaster, PeerType: PeerHammer2, ProtoVersion: SpanProto1}
					sp.SetLabels("bench", "")
					if _, err := l.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(*Trans, *Msg) {}); err != nil {
						b.Fatal(err)
					}
				}
				select {
				case <-reached:
				case <-time.After(2 * time.Minute):
					b.Fatalf("%d of %d relays after 2 minutes", relayed.Load(), want)
				}
				spans := settledRSS(b, pid)
				b.ReportMetric(float64(base)/1024, "MB-empty")
				b.ReportMetric(float64(idle)/1024, "MB-idle")
				b.ReportMetric(float64(spans)/1024, "MB-relaying")
				b.ReportMetric(float64(idle-base)*1024/float64(n), "B/idle-link")
				b.ReportMetric(float64(spans-idle)*1024/float64(want), "B/relay")
				for _, l := range links {
					l.Close()
				}
			}
		})
	}
}

// BenchmarkServiceLeaves: a service relaying n leaves (leafSim,
// service_scale_bench_test.go) in clusters of size, its resident memory
// empty, relaying, and after a tenth left.
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
