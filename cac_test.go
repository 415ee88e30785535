package main

import (
	"cmp"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
	pb "go.etcd.io/raft/v3/raftpb"
)

// The CAC rules in process: testdata/cac/*.txt drive a group of masters
// held in memory, as testdata/quorum does, but through each master's
// quorumDriver, the code the daemon runs: its lock requests, grants,
// revocations, leases and expiries. Each master's kernel is a real dmsg
// link pair (a socketpair): the kernel end opens CAC_LOCK transactions,
// the leaf end is the daemon's kernel link (newKernelLink), which hands
// them to the driver. Raft messages between masters go through an
// in-memory network the script partitions, and time is a clock the
// script moves: one tick of 100 ms at a time.
//
// The harness's goroutine is every driver's goroutine: it runs their
// ticks, inboxes and pumps in master order, so a script's output is the
// same on every run. Nothing waits on time; after every step the harness
// waits for the links by PING round trips (a link's reader answers a
// PING only after it has handled everything before it).

const cacTick = 100 * time.Millisecond

// cacClock is the masters' shared clock, moved by the script.
type cacClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *cacClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *cacClock) Wall() time.Time { return c.Now() }

func (c *cacClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// cacMasterClock is one master's own clock, as its machine keeps it: it
// runs at rate against the harness's (its drift), and its wall clock may
// be stepped (step) without its monotonic reading moving. A restart keeps
// it: it is the machine's.
type cacMasterClock struct {
	mu   sync.Mutex
	mono time.Time
	wall time.Duration // the wall clock's steps in all
	rate float64
}

func (c *cacMasterClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono
}

func (c *cacMasterClock) Wall() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mono.Add(c.wall)
}

func (c *cacMasterClock) rateNow() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rate
}

func (c *cacMasterClock) advance(d time.Duration) {
	c.mu.Lock()
	c.mono = c.mono.Add(time.Duration(float64(d) * c.rate))
	c.mu.Unlock()
}

// cacMaster is one master: its stores survive a crash, everything else
// is rebuilt from them on restart, as the daemon does.
type cacMaster struct {
	id      uint64
	dir     string
	store   *quorumStore
	node    *quorumNode
	cstore  *cacheStore
	agent   *cacAgent
	d       *quorumDriver
	kernel  *cacKernel
	clock   *cacMasterClock
	stopped bool // SIGSTOP: no ticks, nothing taken; messages to it wait
	// kernelDelay: what the leaf sends its kernel reaches the kernel this
	// much later (a loaded machine, or a leaf that forwards), while the
	// link's own answers (a close's DELETE) go back at once, as a
	// forwarding leaf's do.
	kernelDelay time.Duration
}

func (m *cacMaster) up() bool { return m.d != nil }

// cacKernel is one master's kernel link. Its transactions are named by
// the script ("as=a"); what the leaf sends on them is recorded with the
// clock's time as it arrives.
type cacKernel struct {
	h    *cacHarness
	id   uint64
	kern *Link // the kernel's end
	leaf *Link // the leaf's end: newKernelLink

	mu     sync.Mutex
	events []cacEvent
}

type cacEvent struct {
	at   time.Duration // since the harness started
	text string
}

type cacHarness struct {
	t       *testing.T
	root    string
	log     *slog.Logger
	clock   *cacClock
	start   time.Time
	clid    UUID
	masters map[uint64]*cacMaster
	queue   []*pb.Message
	groups  map[uint64]int // partition; nil when healed

	lease, commitTimeout time.Duration
	inbox                quorumInboxLimits

	trans   map[string]*cacTrans // the kernels' transactions, by script name
	holdsMu sync.Mutex           // the kernels' readers record holds too
	holds   []*cacHold           // what the kernels held, by their account
	kernels []*cacKernel         // every kernel link, in the order connected
	out     strings.Builder
}

// cacTrans is one CAC_LOCK a kernel opened.
type cacTrans struct {
	name string
	k    *cacKernel
	t    *Trans
	req  cacLock
}

func newCacHarness(t *testing.T) *cacHarness {
	start := time.Unix(1700000000, 0)
	log := discardLogger()
	if os.Getenv("CAC_DEBUG") != "" {
		log = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return &cacHarness{t: t, root: t.TempDir(), log: log, clock: &cacClock{now: start}, start: start,
		clid: qhUUID(0xc1d), masters: map[uint64]*cacMaster{}, trans: map[string]*cacTrans{}}
}

type testLogWriter struct{ t *testing.T }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = testLogWriter{}

func (h *cacHarness) ids() []uint64 {
	var ids []uint64
	for id := range h.masters {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// running are the masters that are up and not stopped, in id order.
func (h *cacHarness) running() []*cacMaster {
	var out []*cacMaster
	for _, id := range h.ids() {
		if m := h.masters[id]; m.up() && !m.stopped {
			out = append(out, m)
		}
	}
	return out
}

func (h *cacHarness) connected(a, b uint64) bool {
	return h.groups == nil || h.groups[a] == h.groups[b]
}

// ---- what a driver is given ----

// cacHost is a master's quorumHost: it sees the spans of the masters it
// is connected to (a crashed master withdraws its span, a stopped one
// does not), and nothing else is asked of it here.
type cacHost struct {
	h  *cacHarness
	id uint64
}

func (c cacHost) masterSpan(uint64) *Trans { return nil } // no joins: the group is founded by all
func (c cacHost) masters() map[uint64]bool {
	seen := map[uint64]bool{}
	for id, m := range c.h.masters {
		if m.up() && c.h.connected(c.id, id) {
			seen[id] = true
		}
	}
	return seen
}
func (c cacHost) trusted(ed25519.PublicKey) (string, bool) { return "", false }
func (c cacHost) changeMember(string, string) ([]uint64, []uint64, error) {
	return nil, nil, errors.New("no membership changes in the CAC harness")
}
func (c cacHost) spawn(func()) { c.h.t.Error("the CAC harness spawns nothing") }

// cacNet is a master's quorumTransport: a message to a master across the
// partition or down is a send error, as a lost circuit would be.
type cacNet struct {
	h    *cacHarness
	from uint64
}

func (n cacNet) send(m *pb.Message) error {
	to := n.h.masters[m.GetTo()]
	if to == nil || !to.up() || !n.h.connected(n.from, m.GetTo()) {
		return fmt.Errorf("link %d->%d down", n.from, m.GetTo())
	}
	n.h.queue = append(n.h.queue, m)
	return nil
}

func (cacNet) close() {}

// ---- masters ----

func (h *cacHarness) open(id uint64, peers []uint64) {
	m := h.masters[id]
	if m == nil {
		m = &cacMaster{id: id, dir: fmt.Sprintf("%s/n%d", h.root, id), clock: &cacMasterClock{mono: h.clock.Now(), rate: 1}}
		h.masters[id] = m
	}
	var err error
	if m.store, err = openQuorumStore(m.dir, quorumStoreOptions{noSync: true}); err != nil {
		h.t.Fatal(err)
	}
	cfg := quorumConfig{ProposeTimeoutTicks: int(h.commitTimeout / cacTick)}
	if m.node, err = newQuorumNode(id, peers, m.store, cfg); err != nil {
		h.t.Fatal(err)
	}
	if m.cstore, err = openCacheStore(m.dir); err != nil {
		h.t.Fatal(err)
	}
	if m.agent, err = newCacAgent(qhUUID(id), m.cstore, h.log); err != nil {
		h.t.Fatal(err)
	}
	m.d = newQuorumDriver(cacHost{h, id}, m.node, quorumDriverConfig{Clid: h.clid, Fsid: qhUUID(id),
		Log: h.log.With("master", id), CAC: m.agent, Clock: m.clock, Transport: cacNet{h, id},
		Tick: cacTick, Lease: h.lease, CommitTimeout: h.commitTimeout, Inbox: h.inbox})
	m.d.adoptRecovered(m.agent.Recovered())
	m.stopped = false
	h.connectKernel(m)
}

// connectKernel gives master m a new kernel link, as RECLUSTER does.
func (h *cacHarness) connectKernel(m *cacMaster) {
	a, b := socketPair(h.t)
	k := &cacKernel{h: h, id: m.id}
	k.kern = NewLink(a, LinkConfig{Name: fmt.Sprintf("kernel %d", m.id), PingInterval: -1, DeadAfter: -1, Logger: h.log})
	k.kern.Start()
	// The leaf's end is the daemon's own kernel link, around a Leaf that
	// holds just this master's driver.
	shell := &Leaf{cfg: Config{Limits: defaultLimits()}, log: h.log, hostname: "cac", quorum: m.d}
	k.leaf = newKernelLink(shell, b, PeerIdentity{Class: ClassLocalPrivileged, UID: 0, GID: 0, PID: -1, Via: "socketpair"})
	m.kernel = k
	h.kernels = append(h.kernels, k)
}

// crash ends master id as kill -9 would: its kernel link drops, its
// driver and node are gone, its files stay.
func (h *cacHarness) crash(id uint64) {
	m := h.masters[id]
	if !m.up() {
		h.t.Fatalf("n%d is already down", id)
	}
	h.dropKernel(m)
	m.d, m.node = nil, nil
	if err := m.store.Close(); err != nil {
		h.t.Fatal(err)
	}
	if err := m.cstore.Close(); err != nil {
		h.t.Fatal(err)
	}
	h.queue = slices.DeleteFunc(h.queue, func(msg *pb.Message) bool { return msg.GetTo() == id })
}

// dropKernel cuts master m's kernel link and waits until both ends have
// failed their transactions (each handler has seen LOSTLINK).
func (h *cacHarness) dropKernel(m *cacMaster) {
	k := m.kernel
	if k == nil {
		return
	}
	m.kernel = nil
	_ = k.kern.Close()
	for _, l := range []*Link{k.kern, k.leaf} {
		select {
		case <-l.Done():
		case <-time.After(10 * time.Second):
			// Seen once under a heavily loaded full suite, never alone:
			// the goroutines say what held the link up.
			var stacks strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			h.t.Fatalf("kernel link of n%d did not go down (%s end) within 10s; goroutines:\n%s", m.id, l.cfg.Name, stacks.String())
		}
	}
}

func (h *cacHarness) closeAll() {
	for _, id := range h.ids() {
		m := h.masters[id]
		if m.up() {
			h.crash(id)
		}
	}
}

// ---- settling ----

// barrier waits until l's peer has handled everything l sent before.
func (h *cacHarness) barrier(l *Link) {
	done := make(chan time.Duration, 1)
	if !l.ping(done, false) {
		return // down: nothing more will arrive
	}
	select {
	case <-done:
	case <-l.Done():
	case <-time.After(10 * time.Second):
		h.t.Fatalf("%s: no answer to a PING in 10 s", l.Name())
	}
}

// deliver steps every queued raft message whose master runs, as the
// driver does with what its QRM_RAFT transactions bring (stepRaft), then
// pumps every running master; until nothing is left to deliver. Messages
// to a stopped master wait for it; those across the partition or to a
// master that is down are lost.
func (h *cacHarness) deliver() {
	for i := 0; ; i++ {
		if i > 1000 {
			h.t.Fatal("raft traffic did not settle within 1000 rounds")
		}
		var now, later []*pb.Message
		for _, msg := range h.queue {
			to := h.masters[msg.GetTo()]
			switch {
			case !to.up() || !h.connected(msg.GetFrom(), msg.GetTo()):
			case to.stopped:
				later = append(later, msg)
			default:
				now = append(now, msg)
			}
		}
		h.queue = later
		if len(now) == 0 {
			return
		}
		for _, msg := range now {
			h.masters[msg.GetTo()].d.stepRaft(msg)
		}
		for _, m := range h.running() {
			m.d.pump()
		}
	}
}

func inboxEmpty(d *quorumDriver) bool {
	d.inbox.mu.Lock()
	defer d.inbox.mu.Unlock()
	return len(d.inbox.work)+len(d.inbox.news) == 0
}

// settle runs the drivers until nothing moves: each takes its inbox and
// pumps, raft traffic is delivered, and every kernel has received what
// its leaf sent (and its leaf what the kernel's link answered by itself).
func (h *cacHarness) settle() {
	for round := 0; ; round++ {
		if round > 100 {
			h.t.Fatal("the drivers did not settle within 100 rounds")
		}
		for _, m := range h.running() {
			m.d.drain()
			m.d.pump()
		}
		h.deliver()
		for _, id := range h.ids() {
			if k := h.masters[id].kernel; k != nil {
				h.barrier(k.leaf)
			}
		}
		idle := true
		for _, m := range h.running() {
			idle = idle && inboxEmpty(m.d)
		}
		if idle {
			return
		}
	}
}

// tick moves the clock by one tick, ticks every running master, and
// settles.
func (h *cacHarness) tick() {
	h.clock.advance(cacTick)
	for _, id := range h.ids() {
		h.masters[id].clock.advance(cacTick) // a machine's clock runs while its leaf is down or stopped
	}
	for _, m := range h.running() {
		m.d.onTick()
		m.d.pump()
	}
	h.settle()
}

// ---- the kernels ----

func (k *cacKernel) record(name string, m *Msg) {
	var text string
	switch base := m.Cmd & maskBaseCmd; {
	case base == CmdCacLock:
		c, err := parseCacLock(m.Ext)
		switch {
		case err != nil:
			text = fmt.Sprintf("bad %s: %v", CmdString(m.Cmd), err)
		case m.Cmd&FlagDelete != 0:
			text = fmt.Sprintf("released %s %s txid=%d", c.Domain, fmtRange(c.Lo, c.Hi), c.Txid)
		case c.Flags&cacFlagRevoke != 0:
			text = fmt.Sprintf("revoke: keep %s of %s %s txid=%d within %dms", c.Mode, c.Domain, fmtRange(c.Lo, c.Hi), c.Txid, c.LeaseMs)
		default:
			text = fmt.Sprintf("granted %s %s %s txid=%d", c.Mode, c.Domain, fmtRange(c.Lo, c.Hi), c.Txid)
		}
	case base == CmdLnkError && m.Cmd&FlagDelete != 0:
		text = "closed " + ErrString(m.Error)
	default:
		text = "unexpected " + CmdString(m.Cmd)
	}
	now := k.h.clock.Now()
	if m := k.h.masters[k.id]; m != nil {
		now = now.Add(m.kernelDelay)
	}
	k.mu.Lock()
	k.events = append(k.events, cacEvent{now.Sub(k.h.start), fmt.Sprintf("k%d/%s: %s", k.id, name, text)})
	k.mu.Unlock()
	k.h.account(name, m, now, k.h.masters[k.id].clock.rateNow())
}

// cacHold is one state a kernel held, by its own account: from the grant's
// arrival until it released it, its leaf closed the transaction, or the
// time a revoke gave it ran out (a kernel may use all of it to flush).
type cacHold struct {
	name     string
	grant    cacLock
	from, to time.Time // to zero: still held
}

// account follows what the kernels hold, from what reaches them.
func (h *cacHarness) account(name string, m *Msg, now time.Time, rate float64) {
	h.holdsMu.Lock()
	defer h.holdsMu.Unlock()
	end := func(at time.Time) {
		for _, x := range h.holds {
			if x.name == name && (x.to.IsZero() || at.Before(x.to)) {
				x.to = at
			}
		}
	}
	c, err := parseCacLock(m.Ext)
	switch base := m.Cmd & maskBaseCmd; {
	case base == CmdCacLock && err == nil && m.Cmd&FlagDelete == 0 && c.Flags&cacFlagRevoke != 0:
		// The kernel times the revoke on its machine's clock, its
		// master's: a slow one gives it longer.
		end(now.Add(time.Duration(float64(time.Duration(c.LeaseMs)*time.Millisecond) / rate)))
	case base == CmdCacLock && err == nil && m.Cmd&FlagDelete == 0:
		end(now) // a new mode replaces the old
		h.holds = append(h.holds, &cacHold{name: name, grant: c, from: now})
	default:
		end(now)
	}
}

// conflicts lists every two holders that held conflicting states at one
// instant, by their own account.
func (h *cacHarness) conflicts() []string {
	h.holdsMu.Lock()
	defer h.holdsMu.Unlock()
	var out []string
	for i, a := range h.holds {
		for _, b := range h.holds[i+1:] {
			if a.name == b.name || a.grant.Domain != b.grant.Domain || a.grant.Hi < b.grant.Lo || b.grant.Hi < a.grant.Lo ||
				a.grant.Mode == cacShared && b.grant.Mode == cacShared {
				continue
			}
			aTo, bTo := a.to, b.to
			if aTo.IsZero() {
				aTo = h.clock.Now().Add(time.Hour)
			}
			if bTo.IsZero() {
				bTo = h.clock.Now().Add(time.Hour)
			}
			if a.from.Before(bTo) && b.from.Before(aTo) {
				out = append(out, fmt.Sprintf("%s %s %s %s from %.1fs to %s and %s %s %s %s from %.1fs to %s",
					a.name, a.grant.Mode, a.grant.Domain, fmtRange(a.grant.Lo, a.grant.Hi), a.from.Sub(h.start).Seconds(), h.fmtTo(a.to),
					b.name, b.grant.Mode, b.grant.Domain, fmtRange(b.grant.Lo, b.grant.Hi), b.from.Sub(h.start).Seconds(), h.fmtTo(b.to)))
			}
		}
	}
	return out
}

func (h *cacHarness) fmtTo(at time.Time) string {
	if at.IsZero() {
		return "now"
	}
	return fmt.Sprintf("%.1fs", at.Sub(h.start).Seconds())
}

func (k *cacKernel) take() []cacEvent {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.events
	k.events = nil
	return e
}

// kernelSent waits until the leaf has handled what kernel k sent, then
// settles.
func (h *cacHarness) kernelSent(k *cacKernel) {
	h.barrier(k.kern)
	h.settle()
}

// ---- script commands ----

func (h *cacHarness) master(t *testing.T, td *datadriven.TestData) *cacMaster {
	id := argU(t, td, "node", 0)
	m := h.masters[id]
	if m == nil {
		td.Fatalf(t, "no master n%d", id)
	}
	return m
}

func (h *cacHarness) nodes(t *testing.T, td *datadriven.TestData) []*cacMaster {
	a, ok := td.Arg("node")
	if !ok {
		var all []*cacMaster
		for _, id := range h.ids() {
			all = append(all, h.masters[id])
		}
		return all
	}
	var out []*cacMaster
	for _, v := range a.Vals {
		id, err := strconv.ParseUint(v, 10, 64)
		if err != nil || h.masters[id] == nil {
			td.Fatalf(t, "bad node %q", v)
		}
		out = append(out, h.masters[id])
	}
	return out
}

func (h *cacHarness) transArg(t *testing.T, td *datadriven.TestData) *cacTrans {
	name := argOr(td, "as", "")
	tr := h.trans[name]
	if tr == nil {
		td.Fatalf(t, "no transaction %q", name)
	}
	return tr
}

// holderNames shows holders as n<id>/<boot>.<seq> rather than by fsid.
func (h *cacHarness) holderNames(s string) string {
	for _, id := range h.ids() {
		s = strings.ReplaceAll(s, qhUUID(id).String(), fmt.Sprintf("n%d", id))
	}
	return strings.ReplaceAll(s, qhUUID(0xf0).String(), "leafF")
}

func (h *cacHarness) lockReq(t *testing.T, td *datadriven.TestData) cacLock {
	var req cacLock
	var err error
	if req.Domain, err = parseCacDomain(argOr(td, "domain", "INUM")); err != nil {
		td.Fatalf(t, "%v", err)
	}
	if req.Mode, err = parseCacMode(argOr(td, "mode", "SHARED")); err != nil {
		td.Fatalf(t, "%v", err)
	}
	req.Lo, req.Hi = qhRange(t, td)
	if td.HasArg("revalidate") {
		req.Flags |= cacFlagRevalidate
		req.Txid = argU(t, td, "txid", 0)
	}
	if v := argOr(td, "forwarded", ""); v != "" {
		// As a non-master's leaf forwards its kernel's request: the
		// holder is named (leafF/1.<seq>).
		seq, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			td.Fatalf(t, "forwarded=%s: %v", v, err)
		}
		req.Holder, req.Boot, req.Seq = qhUUID(0xf0), 1, uint32(seq)
	}
	return req
}

func (h *cacHarness) run(t *testing.T, td *datadriven.TestData) string {
	switch td.Cmd {
	case "cluster":
		// cluster n=3 lease=10 commit-timeout=5 inbox=4096 (in ticks of
		// 100 ms; inbox bounds the requests waiting for each driver)
		h.lease = time.Duration(argU(t, td, "lease", 10)) * cacTick
		h.commitTimeout = time.Duration(argU(t, td, "commit-timeout", 5)) * cacTick
		h.inbox = quorumInboxLimits{Raft: quorumInboxRaft, Requests: int(argU(t, td, "inbox", quorumInboxRequests))}
		var peers []uint64
		for i := uint64(1); i <= argU(t, td, "n", 3); i++ {
			peers = append(peers, i)
		}
		for _, id := range peers {
			h.open(id, peers)
		}
		h.settle()
	case "campaign":
		m := h.master(t, td)
		if err := m.node.Campaign(); err != nil {
			td.Fatalf(t, "%v", err)
		}
		m.d.pump()
		h.settle()
	case "lock":
		// lock node=1 as=a mode=EXCLUSIVE domain=INUM range=10-20
		//   [revalidate txid=3] [forwarded=<seq>] [hold]
		// hold: the leaf's link has handed it to the driver, which has
		// not run yet (see take, stabilize).
		m := h.master(t, td)
		name := argOr(td, "as", "")
		if name == "" || h.trans[name] != nil {
			td.Fatalf(t, "lock needs a new as=<name>")
		}
		if m.kernel == nil {
			td.Fatalf(t, "n%d has no kernel link", m.id)
		}
		req := h.lockReq(t, td)
		k := m.kernel
		tr := &cacTrans{name: name, k: k, req: req}
		var err error
		tr.t, err = k.kern.Root().Open(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: req.marshal()},
			func(_ *Trans, msg *Msg) { k.record(name, msg) })
		if err != nil {
			td.Fatalf(t, "%v", err)
		}
		h.trans[name] = tr
		if td.HasArg("hold") { // the leaf has it, the driver has not looked yet
			h.barrier(k.kern)
			h.barrier(k.leaf)
			break
		}
		h.kernelSent(k)
	case "mode":
		// mode as=a mode=SHARED: the kernel changes the mode of what it holds.
		tr := h.transArg(t, td)
		c := tr.req
		c.Flags, c.Txid = 0, 0
		var err error
		if c.Mode, err = parseCacMode(argOr(td, "mode", "")); err != nil {
			td.Fatalf(t, "%v", err)
		}
		if err := tr.t.Send(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: c.marshal()}); err != nil {
			td.Fatalf(t, "%v", err)
		}
		h.kernelSent(tr.k)
	case "release":
		tr := h.transArg(t, td)
		h.account(tr.name, &Msg{Header: Header{Cmd: CmdCacLock | FlagDelete}}, h.clock.Now(), 1)
		_ = tr.t.Close(ErrOK)
		if td.HasArg("hold") {
			h.barrier(tr.k.kern)
			h.barrier(tr.k.leaf)
			break
		}
		h.kernelSent(tr.k)
	case "holders":
		// Were two holders ever in conflict at one instant, by their own
		// account? (A revoke ends a hold only when its time is out.)
		if c := h.conflicts(); len(c) > 0 {
			for _, v := range c {
				h.printf("CONFLICT: %s\n", v)
			}
		} else {
			h.printf("no two holders in conflict at once (%d states held)\n", len(h.holds))
		}
	case "kernel-lost":
		// The kernel's link to its leaf is gone (the leaf lives on).
		for _, m := range h.nodes(t, td) {
			h.dropKernel(m)
		}
		h.settle()
	case "kernel-delay":
		// kernel-delay node=2 ms=50: what master 2's leaf sends its
		// kernel arrives 50 ms later by the kernel's account.
		for _, m := range h.nodes(t, td) {
			m.kernelDelay = time.Duration(argU(t, td, "ms", 0)) * time.Millisecond
		}
	case "kernel":
		for _, m := range h.nodes(t, td) {
			if m.kernel == nil && m.up() {
				h.connectKernel(m)
			}
		}
	case "tick":
		for range argU(t, td, "n", 1) {
			h.tick()
		}
	case "stabilize":
		h.settle()
	case "clock":
		// clock node=2 step=-30s rate=1.2: master 2's wall clock is
		// stepped by -30 s (its monotonic clock is not), and its clock
		// runs 1.2 times as fast as the harness's from now on.
		for _, m := range h.nodes(t, td) {
			if v := argOr(td, "step", ""); v != "" {
				d, err := time.ParseDuration(v)
				if err != nil {
					td.Fatalf(t, "step=%s: %v", v, err)
				}
				m.clock.mu.Lock()
				m.clock.wall += d
				m.clock.mu.Unlock()
			}
			if v := argOr(td, "rate", ""); v != "" {
				r, err := strconv.ParseFloat(v, 64)
				if err != nil || r <= 0 {
					td.Fatalf(t, "rate=%s: a positive number", v)
				}
				m.clock.mu.Lock()
				m.clock.rate = r
				m.clock.mu.Unlock()
			}
		}
	case "take":
		// take node=3: the driver takes its inbox and pumps once; what
		// it sends stays in flight (a request on hold is proposed).
		m := h.master(t, td)
		m.d.drain()
		m.d.pump()
	case "partition":
		groups := map[uint64]int{}
		g := 1
		for _, a := range td.CmdArgs {
			if a.Key == "|" {
				g++
				continue
			}
			id, err := strconv.ParseUint(a.Key, 10, 64)
			if err != nil || h.masters[id] == nil {
				td.Fatalf(t, "partition wants ids and |, got %q", a.Key)
			}
			groups[id] = g
		}
		for _, id := range h.ids() {
			if _, ok := groups[id]; !ok {
				groups[id] = -int(id)
			}
		}
		h.groups = groups
		h.settle()
	case "heal":
		h.groups = nil
		h.settle()
	case "stop":
		// stop node=3: the master's leaf is descheduled (SIGSTOP): it
		// neither ticks nor takes anything; what is sent to it waits.
		for _, m := range h.nodes(t, td) {
			m.stopped = true
		}
	case "cont":
		for _, m := range h.nodes(t, td) {
			m.stopped = false
		}
		h.settle()
	case "crash":
		for _, m := range h.nodes(t, td) {
			h.crash(m.id)
		}
		h.settle()
	case "restart":
		for _, m := range h.nodes(t, td) {
			h.open(m.id, nil)
			h.printf("n%d: restarted at txid=%d, %d cache states to revalidate\n", m.id, m.node.Status().LastTxid,
				len(m.agent.Recovered()))
		}
		h.settle()
	case "drop-unclaimed":
		// Two leases after its start the leaf forgets the states its
		// kernel did not revalidate (Leaf.Run).
		for _, m := range h.nodes(t, td) {
			m.agent.dropUnclaimed()
		}
	case "locks":
		// The group's table as each master has it; "here" marks the
		// states it granted and how its transaction stands.
		for _, m := range h.nodes(t, td) {
			if !m.up() {
				h.printf("n%d: down\n", m.id)
				continue
			}
			hs := m.node.Holdings()
			h.printf("n%d: txid=%d %d holdings\n", m.id, m.node.Status().LastTxid, len(hs))
			for _, x := range hs {
				h.printf("  %s %s %s %s txid=%d%s\n", h.holderNames(x.Holder), x.Domain, x.Mode, fmtRange(x.Lo, x.Hi), x.Txid,
					grantNote(m.d.grants[x.Holder]))
			}
		}
	case "records":
		// What each leaf recorded in cache.db of its kernel's states.
		for _, m := range h.nodes(t, td) {
			if !m.up() {
				h.printf("n%d: down\n", m.id)
				continue
			}
			hs, err := m.cstore.list()
			if err != nil {
				td.Fatalf(t, "%v", err)
			}
			h.printf("n%d: %d records\n", m.id, len(hs))
			for _, x := range hs {
				h.printf("  %s %s %s %s txid=%d\n", h.holderNames(x.Holder), x.Domain, x.Mode, fmtRange(x.Lo, x.Hi), x.Txid)
			}
		}
	case "status":
		for _, m := range h.nodes(t, td) {
			if !m.up() {
				h.printf("n%d: down\n", m.id)
				continue
			}
			st := m.node.Status()
			h.printf("n%d: leader=%d txid=%d quorum=%v contact-age=%d renewed=%s waits=%d grants=%d\n", m.id, st.Leader,
				st.LastTxid, st.HasQuorum, m.node.ContactAge(), m.d.renewedAgo(m.clock.Now()), len(m.d.waits), len(m.d.grants))
		}
	default:
		td.Fatalf(t, "unknown command %q", td.Cmd)
	}
	return h.takeOut()
}

func grantNote(g *cacGrant) string {
	switch {
	case g == nil:
		return ""
	case g.released:
		return " (here: closed, freed after the delivery margin)"
	case g.t == nil:
		return " (here: orphaned)"
	case !g.revoked.IsZero():
		return " (here: revoked)"
	}
	return " (here: open)"
}

func (h *cacHarness) printf(format string, args ...any) { fmt.Fprintf(&h.out, format, args...) }

// takeOut is the command's output: what it printed, then what the
// kernels received, in time order (within a tick, by kernel, each in
// arrival order).
func (h *cacHarness) takeOut() string {
	var events []cacEvent
	for _, k := range h.kernels {
		events = append(events, k.take()...)
	}
	slices.SortStableFunc(events, func(a, b cacEvent) int { return cmp.Compare(a.at, b.at) })
	for _, e := range events {
		h.printf("%5.1fs %s\n", e.at.Seconds(), e.text)
	}
	s := strings.TrimSuffix(h.out.String(), "\n")
	h.out.Reset()
	if s == "" {
		return "ok"
	}
	return s
}

func TestCacScripts(t *testing.T) {
	// Not parallel: its scripts are, in the sequential phase
	// (schedule_test.go).
	datadriven.Walk(t, "testdata/cac", func(t *testing.T, path string) {
		t.Parallel()
		h := newCacHarness(t)
		defer h.closeAll()
		datadriven.RunTest(t, path, h.run)
	})
}
