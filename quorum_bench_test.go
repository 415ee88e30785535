//go:build !dragonfly

package main

// Benchmarks of the quorum group (docs/BENCHMARKS.md, "Quorum group").
//
// BenchmarkQuorumCommit runs, in this process, one service on a Unix
// socket and three MASTER leaves of one cluster on it (stub PFSs, fsync'd
// bbolt stores, the default 100 ms tick), and serves QRM_COMMIT to clients
// that play the kernel on each leaf's kernel.sock. Its baseline, timed in
// the same sub-benchmark and interleaved with it, is the engine alone:
// three quorumNodes on their own fsync'd bbolt files, stepped in memory
// (qbRawGroup). Each sub-benchmark reports the cluster's latency and rate
// against the engine's and their ratios.
//
// BenchmarkQuorumLock does the same for the kernel's CAC_LOCK (served by
// quorumDriver.lock), against quorumOpLock/quorumOpRelease entries on
// the engine alone.
//
// BenchmarkQuorumCommit also runs a 4 KiB write and fdatasync loop on
// the same filesystem between the cluster's slices (qbFsyncProbe) and
// reports commits per fsync for either side.
//
//	go test -run XXX -bench Quorum -benchtime 3s -count 3 .

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"golang.org/x/sys/unix"
)

// qbSlices is how many alternating slices the cluster and the engine runs
// are cut into, so that load from elsewhere falls on both alike.
const qbSlices = 8

// qbTimeout bounds one commit; commit_timeout is 5 s, so a commit that
// takes longer has failed on the leaf's side too.
const qbTimeout = 10 * time.Second

func qbLogger() *slog.Logger {
	if os.Getenv("QB_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// qbPayload is the operation a client commits: opaque to the group.
var qbPayload = make([]byte, 64)

// ---- the kernel's side of QRM_COMMIT ----

// qbKernel plays the kernel on one leaf's kernel.sock with a plain Link:
// the leaf serves QRM_COMMIT on its kernel link whatever the handshake.
type qbKernel struct {
	link *Link
}

func dialQBKernel(name, pfsDir string) (*qbKernel, error) {
	sock := KernelSocketPath(pfsDir)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err == nil {
			cfg := quietConfig(name, func(t *Trans, m *Msg) {
				// The leaf's LNK_CONN: answer it as the kernel would.
				if !t.IsRoot() && m.Cmd&FlagCreate != 0 && t.Cmd() == CmdLnkConn {
					_ = t.Reply(ErrOK)
				}
			})
			return &qbKernel{link: startLink(c, cfg)}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dial %s: %w", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// commit opens QRM_COMMIT with qbPayload and waits for phase 2.
func (k *qbKernel) commit() (time.Duration, uint64, error) {
	type result struct {
		txid uint64
		err  error
	}
	done := make(chan result, 1)
	t0 := time.Now()
	_, err := k.link.Root().Open(&Msg{Header: Header{Cmd: CmdQrmCommit}, Ext: newExt(CmdQrmCommit), Aux: qbPayload},
		func(t *Trans, m *Msg) {
			base := m.Cmd & maskBaseCmd
			if m.Cmd&FlagDelete == 0 {
				return // phase 1 (sent in the same pump as phase 2)
			}
			if base != CmdQrmCommit {
				done <- result{err: fmt.Errorf("commit failed: %s error %#x", CmdString(m.Cmd), m.Error)}
				return
			}
			c, err := parseQrmCommit(m.Ext)
			if err == nil && (c.Phase != 2 || c.Txid == 0) {
				err = fmt.Errorf("final reply phase %d txid %d", c.Phase, c.Txid)
			}
			done <- result{c.Txid, err}
		})
	if err != nil {
		return 0, 0, err
	}
	select {
	case r := <-done:
		return time.Since(t0), r.txid, r.err
	case <-k.link.Done():
		return 0, 0, fmt.Errorf("kernel link down: %v", k.link.Err())
	case <-time.After(qbTimeout):
		return 0, 0, errors.New("no phase 2 within 10 s")
	}
}

// ---- the cluster: one service, three master leaves ----

type qbCluster struct {
	b       *testing.B
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	sockDir string
	fsids   []UUID
	leaves  []*Leaf
	pfses   []PFS
	kernels []*qbKernel
}

func qbFsid(i int) UUID {
	var u UUID
	for j := range u {
		u[j] = byte(0x10*(i+1) + j)
	}
	return u
}

func startQBCluster(b *testing.B, n int) *qbCluster {
	b.Helper()
	// kernel.sock and the service socket must fit sun_path: a short
	// directory of our own rather than b.TempDir().
	sockDir, err := os.MkdirTemp("", "qb")
	if err != nil {
		b.Fatal(err)
	}
	root := b.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	c := &qbCluster{b: b, cancel: cancel, sockDir: sockDir}
	b.Cleanup(c.stop)
	log := qbLogger()

	svcSock := filepath.Join(sockDir, "svc.sock")
	svc := NewService(ServiceConfig{Unix: svcSock}, nil, log.With("side", "service"))
	svcReady := make(chan struct{})
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := svc.Run(ctx, func() { close(svcReady) }); err != nil {
			b.Errorf("service: %v", err)
		}
	}()
	select {
	case <-svcReady:
	case <-time.After(10 * time.Second):
		b.Fatal("service not ready")
	}

	clid := NewUUID()
	var masters []string
	for i := range n {
		c.fsids = append(c.fsids, qbFsid(i))
		masters = append(masters, c.fsids[i].String())
	}
	for i := range n {
		pfsDir := filepath.Join(sockDir, fmt.Sprintf("m%d", i+1))
		if err := CreatePFS(pfsDir, PFSInfo{Label: "qb", Clid: clid, Fsid: c.fsids[i], Type: PFSMaster}); err != nil {
			b.Fatal(err)
		}
		pfs, err := OpenPFS(pfsDir)
		if err != nil {
			b.Fatal(err)
		}
		c.pfses = append(c.pfses, pfs)
		keyDir := filepath.Join(root, fmt.Sprintf("key%d", i+1))
		key, trust := newTestNodeKey(b, keyDir)
		cfg := DefaultConfig()
		cfg.KeyDir = keyDir
		cfg.RunDir = filepath.Join(root, fmt.Sprintf("run%d", i+1))
		cfg.Backbone = "unix:" + svcSock
		cfg.Listen = "none"
		cfg.Quorum.Masters = masters
		cfg.Quorum.StateDir = filepath.Join(root, fmt.Sprintf("state%d", i+1))
		l, err := NewLeaf(cfg, pfs, key, trust, log.With("side", fmt.Sprintf("m%d", i+1)))
		if err != nil {
			b.Fatal(err)
		}
		c.leaves = append(c.leaves, l)
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			if err := l.Run(ctx, "", nil); err != nil {
				b.Errorf("leaf m%d: %v", i+1, err)
			}
		}()
	}
	if _, err := c.waitLeader(30 * time.Second); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		k, err := dialQBKernel(fmt.Sprintf("k%d", i+1), c.pfses[i].Path())
		if err != nil {
			b.Fatal(err)
		}
		c.kernels = append(c.kernels, k)
	}
	// One commit through every leaf: the kernel links are taken, every
	// QRM_RAFT circuit is open.
	for i, k := range c.kernels {
		if _, _, err := k.commit(); err != nil {
			b.Fatalf("first commit via m%d: %v", i+1, err)
		}
	}
	return c
}

// waitLeader waits until every master names the same leader and reports
// a quorum, and returns the leader's index.
func (c *qbCluster) waitLeader(d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		var lead uint64
		ok := true
		for _, l := range c.leaves {
			st := l.quorum.Status()
			if st.Leader == 0 || !st.HasQuorum || lead != 0 && st.Leader != lead {
				ok = false
				break
			}
			lead = st.Leader
		}
		if ok {
			for i, f := range c.fsids {
				if masterID(f) == lead {
					return i, nil
				}
			}
		}
		if time.Now().After(deadline) {
			var s []string
			for i, l := range c.leaves {
				s = append(s, fmt.Sprintf("m%d %+v", i+1, l.quorum.Status()))
			}
			return -1, fmt.Errorf("no agreed leader with a quorum within %v: %v", d, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// term is the leader's term as the given master sees it.
func (c *qbCluster) term(i int) uint64 { return c.leaves[i].quorum.Status().Term }

func (c *qbCluster) stop() {
	for _, k := range c.kernels {
		k.link.Close()
	}
	c.cancel()
	done := make(chan struct{})
	go func() { c.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		c.b.Error("cluster did not stop within 15 s")
	}
	for _, p := range c.pfses {
		p.Close()
	}
	os.RemoveAll(c.sockDir)
}

// ---- the engine alone: three quorumNodes stepped in memory ----

type qbRawNode struct {
	id    uint64
	store *quorumStore
	n     *quorumNode
	inbox []*pb.Message
	rd    quorumReady
	err   error
}

// qbRawGroup steps a group in rounds: in each, every master steps what
// it was sent in the previous round and runs Advance (persist with
// fsync, apply); then the messages are handed over. The masters' Advance
// runs in parallel, as on separate machines (quorum_test.go's harness
// runs them one after another, which would add the followers' fsyncs
// together and flatter the cluster). No ticks: nothing times out and the
// leader stays put.
type qbRawGroup struct {
	b     testing.TB
	nodes []*qbRawNode
	byID  map[uint64]*qbRawNode
	// onResult sees every applied result at its origin.
	onResult func(r quorumResult)
}

func newQBRawGroup(b testing.TB, n int, opt quorumStoreOptions) *qbRawGroup {
	b.Helper()
	root := b.TempDir()
	g := &qbRawGroup{b: b, byID: map[uint64]*qbRawNode{}}
	var ids []uint64
	for i := range n {
		ids = append(ids, masterID(qbFsid(i)))
	}
	for i, id := range ids {
		st, err := openQuorumStore(filepath.Join(root, fmt.Sprintf("n%d", i+1)), opt)
		if err != nil {
			b.Fatal(err)
		}
		qn, err := newQuorumNode(id, ids, st, quorumConfig{})
		if err != nil {
			st.Close()
			b.Fatal(err)
		}
		rn := &qbRawNode{id: id, store: st, n: qn}
		g.nodes = append(g.nodes, rn)
		g.byID[id] = rn
	}
	b.Cleanup(func() {
		for _, rn := range g.nodes {
			rn.store.Close()
		}
	})
	if err := g.nodes[0].n.Campaign(); err != nil {
		b.Fatal(err)
	}
	for i := 0; ; i++ {
		g.round()
		ok := true
		for _, rn := range g.nodes {
			st := rn.n.Status()
			ok = ok && st.Leader == g.nodes[0].id && st.LastTxid == st.Commit && st.Commit > 1
		}
		if ok {
			break
		}
		if i > 100 {
			b.Fatal("raw group elected no leader in 100 rounds")
		}
	}
	return g
}

// round runs one step of every master and reports whether anything
// moved (a message was sent).
func (g *qbRawGroup) round() bool {
	step := func(rn *qbRawNode) {
		for _, m := range rn.inbox {
			if err := rn.n.Step(m); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
				rn.err = err
				return
			}
		}
		clear(rn.inbox)
		rn.inbox = rn.inbox[:0]
		rn.rd, rn.err = rn.n.Advance()
	}
	var wg sync.WaitGroup
	for _, rn := range g.nodes[1:] {
		wg.Go(func() { step(rn) })
	}
	step(g.nodes[0])
	wg.Wait()
	moved := false
	for _, rn := range g.nodes {
		if rn.err != nil {
			g.b.Fatalf("raw master %x: %v", rn.id, rn.err)
		}
		for _, m := range rn.rd.Messages {
			if to := g.byID[m.GetTo()]; to != nil {
				to.inbox = append(to.inbox, m)
				moved = true
			}
		}
		if len(rn.rd.Failed) > 0 {
			g.b.Fatalf("raw master %x: request failed: %v", rn.id, rn.rd.Failed[0].Err)
		}
		if g.onResult != nil {
			for _, r := range rn.rd.Applied {
				if r.Origin == rn.id {
					g.onResult(r)
				}
			}
		}
		rn.rd = quorumReady{}
	}
	return moved
}

// settle runs rounds until no message moves: requests nobody waits for
// (releases) are applied before the next measurement.
func (g *qbRawGroup) settle() {
	for i := 0; g.round(); i++ {
		if i > 1000 {
			g.b.Fatal("raw group does not settle")
		}
	}
}

func (g *qbRawGroup) leader() int {
	for i, rn := range g.nodes {
		if rn.n.Status().State == raft.StateLeader.String() {
			return i
		}
	}
	g.b.Fatal("raw group has no leader")
	return -1
}

// qbRawReq is one outstanding request of the closed loop.
type qbRawReq struct {
	client int
	start  time.Time
}

// run keeps conc clients going, client c proposing on master nodeOf(c)
// what newOp(c) gives, each answer going to done; it returns once total
// counted requests have been answered and nothing is outstanding. newOp
// says whether its op counts (a lock ask) or not (a release between two
// asks); done whether the answer counted.
func (g *qbRawGroup) run(total, conc int, nodeOf func(client int) int, newOp func(client int) (quorumOp, bool),
	done func(client int, r quorumResult, lat time.Duration) bool) {
	type key struct{ origin, req uint64 }
	type queued struct {
		op  quorumOp
		req qbRawReq
	}
	out := map[key]qbRawReq{}
	issued := 0
	// A round's new requests go to each master's raft together
	// (ProposeAll), as the driver hands over what one drain took.
	props := make([][]queued, len(g.nodes))
	propose := func(c int) {
		op, counts := newOp(c)
		if counts {
			if issued >= total {
				return // this client is done
			}
			issued++
		}
		i := nodeOf(c)
		props[i] = append(props[i], queued{op, qbRawReq{c, time.Now()}})
	}
	flush := func() {
		for i, qs := range props {
			if len(qs) == 0 {
				continue
			}
			ops := make([]quorumOp, len(qs))
			for j, q := range qs {
				ops[j] = q.op
			}
			rn := g.nodes[i]
			ids, errs := rn.n.ProposeAll(ops)
			for j, q := range qs {
				if errs[j] != nil {
					g.b.Fatal(errs[j])
				}
				out[key{rn.id, ids[j]}] = q.req
			}
			props[i] = qs[:0]
		}
	}
	g.onResult = func(r quorumResult) {
		k := key{r.Origin, r.ReqID}
		q, ok := out[k]
		if !ok {
			return
		}
		delete(out, k)
		done(q.client, r, time.Since(q.start))
		propose(q.client)
	}
	defer func() { g.onResult = nil }()
	for c := range conc {
		propose(c)
	}
	flush()
	idle := 0
	for len(out) > 0 {
		moved := g.round()
		flush()
		if moved {
			idle = 0
		} else if idle++; idle > 100 {
			g.b.Fatalf("raw group stalled with %d requests outstanding", len(out))
		}
	}
}

// ---- measurement helpers ----

type qbSide struct {
	lat  []time.Duration
	wall time.Duration
	cpu  time.Duration
	n    int
}

func (s *qbSide) add(o qbSide) {
	s.lat = append(s.lat, o.lat...)
	s.wall += o.wall
	s.cpu += o.cpu
	s.n += o.n
}

func qbPct(lat []time.Duration, p int) float64 {
	if len(lat) == 0 {
		return 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	i := min(len(s)-1, len(s)*p/100)
	return float64(s[i].Nanoseconds()) / 1e3
}

func (s *qbSide) rate() float64 { return float64(s.n) / s.wall.Seconds() }

// qbInterleave runs b.N operations on the cluster and as many on the
// engine, alternating in qbSlices slices, the timer running for the
// cluster only. A probe, if given, runs the disk's own loop after each
// slice of the cluster for a third of that slice's time.
func qbInterleave(b *testing.B, probe *qbFsyncProbe, cluster, raw func(k int) qbSide) (c, r qbSide) {
	b.ResetTimer()
	for i := range qbSlices {
		k := b.N*(i+1)/qbSlices - b.N*i/qbSlices
		if k == 0 {
			continue
		}
		b.StartTimer()
		c0, t0 := benchCPU(b), time.Now()
		s := cluster(k)
		s.wall, s.cpu, s.n = time.Since(t0), benchCPU(b)-c0, k
		b.StopTimer()
		c.add(s)
		if probe != nil {
			probe.run(b, s.wall/3)
		}
		c0, t0 = benchCPU(b), time.Now()
		s = raw(k)
		s.wall, s.cpu, s.n = time.Since(t0), benchCPU(b)-c0, k
		r.add(s)
	}
	return c, r
}

// qbFsyncProbe is what the disk under the stores does on its own: a
// 4 KiB write and an fdatasync, in a loop, on a file in the same
// directory tree (so the same filesystem) as the benchmark's stores.
// Measured in the same run as the cluster, between its slices, it is the
// yardstick of batching: without it, a commit costs at least one fsync.
type qbFsyncProbe struct {
	f    *os.File
	buf  []byte
	lat  []time.Duration
	wall time.Duration
}

func newQBFsyncProbe(b *testing.B) *qbFsyncProbe {
	b.Helper()
	f, err := os.Create(filepath.Join(b.TempDir(), "fsync-probe"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	p := &qbFsyncProbe{f: f, buf: make([]byte, 4096)}
	// The first write allocates the block; the loop rewrites it, as
	// bbolt rewrites its pages in place.
	p.once(b)
	p.lat = nil
	return p
}

func (p *qbFsyncProbe) once(b *testing.B) {
	t0 := time.Now()
	if _, err := p.f.WriteAt(p.buf, 0); err != nil {
		b.Fatal(err)
	}
	if err := unix.Fdatasync(int(p.f.Fd())); err != nil {
		b.Fatal(err)
	}
	p.lat = append(p.lat, time.Since(t0))
}

// run loops for d (at least 20 ms, at most 100 000 syncs).
func (p *qbFsyncProbe) run(b *testing.B, d time.Duration) {
	t0 := time.Now()
	end := t0.Add(max(d, 20*time.Millisecond))
	for i := 0; i < 100000 && time.Now().Before(end); i++ {
		p.buf[0] = byte(i)
		p.once(b)
	}
	p.wall += time.Since(t0)
}

func (p *qbFsyncProbe) rate() float64 { return float64(len(p.lat)) / p.wall.Seconds() }

// report adds the disk's figures and each side's commits per fsync.
func (p *qbFsyncProbe) report(b *testing.B, c, r qbSide) {
	b.ReportMetric(p.rate(), "fsyncs/s")
	b.ReportMetric(qbPct(p.lat, 50), "fsync-p50-us")
	b.ReportMetric(c.rate()/p.rate(), "commits-per-fsync")
	b.ReportMetric(r.rate()/p.rate(), "raw-commits-per-fsync")
}

func qbReport(b *testing.B, c, r qbSide, unit string) {
	b.ReportMetric(qbPct(c.lat, 50), "p50-us")
	b.ReportMetric(qbPct(c.lat, 99), "p99-us")
	b.ReportMetric(c.rate(), unit)
	b.ReportMetric(qbPct(r.lat, 50), "raw-p50-us")
	b.ReportMetric(qbPct(r.lat, 99), "raw-p99-us")
	b.ReportMetric(r.rate(), "raw-"+unit)
	b.ReportMetric(qbPct(c.lat, 50)/qbPct(r.lat, 50), "overhead-x")
	b.ReportMetric(qbPct(c.lat, 99)/qbPct(r.lat, 99), "p99-x")
	b.ReportMetric(c.rate()/r.rate(), "throughput-ratio")
	b.ReportMetric(float64(c.cpu.Microseconds())/float64(c.n), "cpu-us/op")
	b.ReportMetric(float64(r.cpu.Microseconds())/float64(r.n), "raw-cpu-us/op")
}

// ---- BenchmarkQuorumCommit ----

// qbClusterRun commits k times through the cluster with conc clients,
// client i on master nodeOf(i), each waiting for its phase 2 before the
// next.
func qbClusterRun(b *testing.B, c *qbCluster, k, conc int, nodeOf func(int) int) qbSide {
	var left atomic.Int64
	left.Store(int64(k))
	lats := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for i := range min(conc, k) {
		wg.Go(func() {
			kn := c.kernels[nodeOf(i)]
			for left.Add(-1) >= 0 {
				lat, _, err := kn.commit()
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				lats[i] = append(lats[i], lat)
			}
		})
	}
	wg.Wait()
	if e := failed.Load(); e != nil {
		b.Fatalf("commit: %v", *e)
	}
	return qbSide{lat: slices.Concat(lats...)}
}

func qbRawCommits(g *qbRawGroup, k, conc int, nodeOf func(int) int) qbSide {
	var s qbSide
	op := quorumOp{Kind: quorumOpCommit, Payload: qbPayload}
	g.run(k, conc, nodeOf, func(int) (quorumOp, bool) { return op, true }, func(_ int, r quorumResult, lat time.Duration) bool {
		if r.Err != "" {
			g.b.Fatalf("raw commit: %s", r.Err)
		}
		s.lat = append(s.lat, lat)
		return true
	})
	return s
}

// BenchmarkQuorumCommit: QRM_COMMIT through three master leaves on one
// service (Unix sockets, in process), against the engine's own
// propose/apply round on fsync'd bbolt files in the same sub-benchmark.
// One op is one commit answered with phase 2.
func BenchmarkQuorumCommit(b *testing.B) {
	c := startQBCluster(b, 3)
	g := newQBRawGroup(b, 3, quorumStoreOptions{})
	rawLead := g.leader()
	rawFollow := (rawLead + 1) % 3

	seq := func(name string, leaderSide bool) {
		b.Run(name, func(b *testing.B) {
			lead, err := c.waitLeader(10 * time.Second)
			if err != nil {
				b.Fatal(err)
			}
			at, rawAt := lead, rawLead
			if !leaderSide {
				at, rawAt = (lead+1)%3, rawFollow
			}
			term := c.term(lead)
			probe := newQBFsyncProbe(b)
			cs, rs := qbInterleave(b, probe,
				func(k int) qbSide { return qbClusterRun(b, c, k, 1, func(int) int { return at }) },
				func(k int) qbSide { return qbRawCommits(g, k, 1, func(int) int { return rawAt }) })
			if t := c.term(lead); t != term {
				b.Logf("leader changed during the run (term %d -> %d)", term, t)
			}
			qbReport(b, cs, rs, "commits/s")
			probe.report(b, cs, rs)
		})
	}
	seq("seq-leader", true)
	seq("seq-follower", false)
	for _, conc := range []int{16, 64} {
		b.Run(fmt.Sprintf("conc-%d", conc), func(b *testing.B) {
			if _, err := c.waitLeader(10 * time.Second); err != nil {
				b.Fatal(err)
			}
			spread := func(i int) int { return i % 3 }
			probe := newQBFsyncProbe(b)
			cs, rs := qbInterleave(b, probe,
				func(k int) qbSide { return qbClusterRun(b, c, k, conc, spread) },
				func(k int) qbSide { return qbRawCommits(g, k, conc, spread) })
			qbReport(b, cs, rs, "commits/s")
			probe.report(b, cs, rs)
		})
	}
}

// ---- BenchmarkQuorumLock ----

// qbLockAnswer is the leaf's answer to one CAC_LOCK.
type qbLockAnswer struct {
	lat     time.Duration
	granted bool
	txid    uint64
	t       *Trans // the open transaction of a grant: Close releases it
}

// lock asks for EXCLUSIVE on INUM keys lo-hi and waits for the grant or
// the refusal.
func (k *qbKernel) lock(lo, hi uint64) (qbLockAnswer, error) {
	type result struct {
		a   qbLockAnswer
		err error
	}
	done := make(chan result, 1)
	t0 := time.Now()
	req := cacLock{Domain: cacInum, Mode: cacExclusive, Lo: lo, Hi: hi}
	t, err := k.link.Root().Open(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: req.marshal()}, func(t *Trans, m *Msg) {
		base := m.Cmd & maskBaseCmd
		switch {
		case base == CmdCacLock && m.Cmd&FlagDelete == 0:
			g, err := parseCacLock(m.Ext)
			if err == nil && (g.Lo > lo || g.Hi < hi || g.Mode != cacExclusive || g.Txid == 0) {
				err = fmt.Errorf("grant %+v does not cover the request %d-%d", g, lo, hi)
			}
			select {
			case done <- result{qbLockAnswer{granted: true, txid: g.Txid}, err}:
			default: // a later message on a held state (revocation): not ours to time
			}
		case m.Cmd&FlagDelete != 0 && base == CmdLnkError && m.Error == ErrCacConflict:
			select {
			case done <- result{}:
			default: // the leaf closing after our release
			}
		case m.Cmd&FlagDelete != 0:
			select {
			case done <- result{err: fmt.Errorf("lock failed: %s error %#x", CmdString(m.Cmd), m.Error)}:
			default:
			}
		}
	})
	if err != nil {
		return qbLockAnswer{}, err
	}
	select {
	case r := <-done:
		r.a.lat = time.Since(t0)
		if r.a.granted {
			r.a.t = t
		}
		return r.a, r.err
	case <-k.link.Done():
		return qbLockAnswer{}, fmt.Errorf("kernel link down: %v", k.link.Err())
	case <-time.After(qbTimeout):
		return qbLockAnswer{}, errors.New("no answer to CAC_LOCK within 10 s")
	}
}

// qbLockStats gathers one side's lock answers.
type qbLockStats struct {
	mu                    sync.Mutex
	side                  qbSide
	grants, conflicts     int
	grantLat, conflictLat []time.Duration
	toGrant               []time.Duration
}

func (s *qbLockStats) answer(lat time.Duration, granted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.side.lat = append(s.side.lat, lat)
	if granted {
		s.grants++
		s.grantLat = append(s.grantLat, lat)
	} else {
		s.conflicts++
		s.conflictLat = append(s.conflictLat, lat)
	}
}

func (s *qbLockStats) granted(since time.Time) {
	s.mu.Lock()
	s.toGrant = append(s.toGrant, time.Since(since))
	s.mu.Unlock()
}

func (s *qbLockStats) report(b *testing.B, prefix string) {
	b.ReportMetric(float64(s.grants)/float64(s.grants+s.conflicts), prefix+"grant-share")
	b.ReportMetric(qbPct(s.grantLat, 50), prefix+"grant-p50-us")
	b.ReportMetric(qbPct(s.conflictLat, 50), prefix+"conflict-p50-us")
	b.ReportMetric(qbPct(s.toGrant, 50), prefix+"ask-to-grant-p50-us")
	b.ReportMetric(qbPct(s.toGrant, 99), prefix+"ask-to-grant-p99-us")
}

// qbBlock is the 16-key block number n: an aligned block is granted as
// asked, never widened.
func qbBlock(n uint64) (uint64, uint64) {
	return n * cacGrantAlign, n*cacGrantAlign + cacGrantAlign - 1
}

// qbClusterLocks has conc clients, client c on master nodeOf(c), answer
// k CAC_LOCK requests between them. blockOf(c, i) is the block client c
// asks for on its i-th ask. A grant is released (the transaction closed)
// at once, and the client asks again.
func qbClusterLocks(b *testing.B, c *qbCluster, st *qbLockStats, k, conc int, nodeOf func(int) int,
	blockOf func(c int, i uint64) uint64) {
	var left atomic.Int64
	left.Store(int64(k))
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for cl := range min(conc, k) {
		wg.Go(func() {
			kn := c.kernels[nodeOf(cl)]
			var i uint64
			var first time.Time
			for left.Add(-1) >= 0 {
				if first.IsZero() {
					first = time.Now()
				}
				a, err := kn.lock(qbBlock(blockOf(cl, i)))
				i++
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				st.answer(a.lat, a.granted)
				if a.granted {
					st.granted(first)
					first = time.Time{}
					_ = a.t.Close(ErrOK) // the kernel's release
				}
			}
		})
	}
	wg.Wait()
	if e := failed.Load(); e != nil {
		b.Fatalf("lock: %v", *e)
	}
}

// qbRawLocks is the same pattern on the engine: a grant is followed by a
// Release entry (not waited for) and the next ask, proposed together.
func qbRawLocks(g *qbRawGroup, st *qbLockStats, holders []string, k, conc int, nodeOf func(int) int,
	blockOf func(c int, i uint64) uint64) {
	next := make([]uint64, conc)
	first := make([]time.Time, conc)
	g.run(k, conc, nodeOf, func(c int) (quorumOp, bool) {
		lo, hi := qbBlock(blockOf(c, next[c]))
		next[c]++
		if first[c].IsZero() {
			first[c] = time.Now()
		}
		return quorumOp{Kind: quorumOpLock, Holder: holders[c], Domain: cacInum, Mode: cacExclusive, Lo: lo, Hi: hi}, true
	}, func(c int, r quorumResult, lat time.Duration) bool {
		if r.Err != "" || r.Grant == nil && len(r.Conflict) == 0 {
			g.b.Fatalf("raw lock: %+v", r)
		}
		st.answer(lat, r.Grant != nil)
		if r.Grant != nil {
			st.granted(first[c])
			first[c] = time.Time{}
			rel := quorumOp{Kind: quorumOpRelease, Holder: holders[c], Domain: cacInum, Lo: r.Grant.Lo, Hi: r.Grant.Hi}
			if _, err := g.nodes[nodeOf(c)].n.Propose(rel); err != nil {
				g.b.Fatal(err)
			}
		}
		return true
	})
	g.settle()
	clear(first)
}

// BenchmarkQuorumLock: the kernel's CAC_LOCK served by the leaves'
// quorumDriver (cluster as in BenchmarkQuorumCommit: three masters on
// one service), against the same pattern on the engine alone (the raw
// group, quorumOpLock/quorumOpRelease entries) in the same sub-benchmark.
// One op is one lock answered: granted, or refused with CAC_CONFLICT.
// A grant is released (DELETE) as soon as it arrives, which the leaf
// turns into a Release entry it does not answer.
//
//   - uncontended-1: one client on the leader's leaf, EXCLUSIVE on an
//     aligned 16-key block, a new block each time.
//   - uncontended-2: one client on the leader's leaf and one on a
//     follower's, each on blocks of its own.
//   - contended-2: the same two clients on the same block; a refused
//     client asks again at once. Reports the grant share and the time
//     from a client's first ask to its grant.
func BenchmarkQuorumLock(b *testing.B) {
	c := startQBCluster(b, 3)
	g := newQBRawGroup(b, 3, quorumStoreOptions{})
	rawLead := g.leader()
	rawNodes := []int{rawLead, (rawLead + 1) % 3}
	holders := []string{"leaf-a", "leaf-b"}
	var next atomic.Uint64 // fresh blocks, never reused
	next.Store(1)
	fresh := func(int, uint64) uint64 { return next.Add(1) }
	same := func(int, uint64) uint64 { return 0 }

	run := func(name string, conc int, blockOf func(int, uint64) uint64, contended bool) {
		b.Run(name, func(b *testing.B) {
			lead, err := c.waitLeader(10 * time.Second)
			if err != nil {
				b.Fatal(err)
			}
			nodes := []int{lead, (lead + 1) % 3}
			var cst, rst qbLockStats
			cs, rs := qbInterleave(b, nil,
				func(k int) qbSide {
					qbClusterLocks(b, c, &cst, k, conc, func(i int) int { return nodes[i] }, blockOf)
					return qbSide{}
				},
				func(k int) qbSide {
					qbRawLocks(g, &rst, holders, k, conc, func(i int) int { return rawNodes[i] }, blockOf)
					return qbSide{}
				})
			cs.lat, rs.lat = cst.side.lat, rst.side.lat
			qbReport(b, cs, rs, "locks/s")
			if contended {
				cst.report(b, "")
				rst.report(b, "raw-")
			} else if cst.conflicts+rst.conflicts > 0 {
				b.Fatalf("uncontended locks refused: %d through the leaves, %d on the engine", cst.conflicts, rst.conflicts)
			}
		})
	}
	run("uncontended-1", 1, fresh, false)
	run("uncontended-2", 2, fresh, false)
	run("contended-2", 2, same, true)
}
