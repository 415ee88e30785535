package main

// The leaf daemon: one per mounted PFS. It holds a link to every cluster
// node the PFS's REMOTE slots (and the config) name, plus the backbone,
// advertises the PFS on each, and serves the kernel's link.

import (
	"cmp"
	"context"
	"crypto/ed25519"
	crand "crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Leaf is a running leaf daemon. Its goroutines all hang off ctx and are
// waited for by Run.
type Leaf struct {
	cfg      Config
	pfs      PFS
	info     PFSInfo
	log      *slog.Logger
	node     *QuicNode
	key      ed25519.PrivateKey // the node key: signs this master's quorum join requests
	trust    *TrustStore
	hostname string
	started  time.Time
	policy   privilegePolicy // who is privileged on the local sockets
	refused  *logLimiter     // refusals on the local sockets
	sec      *tcpSecurity    // DragonFly's rule for TCP links (remote_dir, RSA keys)
	obs      *observer       // limit hits and the metrics' counters (metrics.go)
	// changes is notified whenever Status would change (counters aside),
	// for `hammer2 status --watch`.
	changes notifier

	ctx context.Context
	wg  sync.WaitGroup

	mu       sync.Mutex
	targets  map[string]*target // by dial address
	slots    map[int]string     // REMOTE slot -> dial address, as last seen
	inbound  map[*clusterLink]struct{}
	backbone *backbone
	kernel   *Link
	kernelUp time.Time
	spans    *spanTable

	quorum *quorumDriver // nil unless this PFS is a master of a quorum group
	qstore *quorumStore
	cac    *cacAgent // the kernel's cache states, master or not
	cstore *cacheStore
}

// target is one remote node we keep a link to.
type target struct {
	addr       string // a nodeTarget's String: [tcp:|quic:]<host>[:port]
	slots      []int  // REMOTE slots naming it
	fromConfig bool
	dialer     *Redialer
	cancel     context.CancelFunc
	link       *clusterLink // while up
}

// NewLeaf prepares a leaf for pfs; Run starts it.
func NewLeaf(cfg Config, pfs PFS, key ed25519.PrivateKey, trust *TrustStore, log *slog.Logger) (*Leaf, error) {
	info, err := pfs.Info()
	if err != nil {
		return nil, fmt.Errorf("read PFS registration: %w", err)
	}
	host, _ := os.Hostname()
	policy, err := newPrivilegePolicy(cfg.Security.Group)
	if err != nil {
		return nil, err
	}
	l := &Leaf{
		cfg: cfg, pfs: pfs, info: info, key: key, trust: trust, hostname: host, started: time.Now(), policy: policy,
		log:     log.With("pfs", info.Label),
		refused: newLogLimiter(cfg.Limits.RefusedLogsPerSecond),
		targets: map[string]*target{},
		slots:   map[int]string{},
		inbound: map[*clusterLink]struct{}{},
		spans:   newSpanTable(cfg.Limits),
		obs:     newObserver(),
	}
	l.obs.register(newLeafCollector(l), l.obs.commit)
	l.sec = newTCPSecurity(cfg.TCPRemoteDir(), cfg.TCPKeyDir(), policy, crand.Reader, l.log)
	// The stand-in PFS's kernel.sock takes the same mode and checks as
	// the other local sockets.
	if sa, ok := pfs.(interface {
		SetSocketAccess(privilegePolicy, *slog.Logger)
	}); ok {
		sa.SetSocketAccess(policy, l.log)
	}
	qc := QuicConfig{Listen: cfg.Listen, DeadAfter: cfg.RemoteDeadAfter.Duration, Logger: l.log,
		RefusedLogsPerSecond: cfg.Limits.RefusedLogsPerSecond}
	if cfg.Listen == "none" {
		qc.Listen, qc.DialOnly = ":0", true // a socket to dial from, accepting nothing
	}
	node, err := NewQuicNode(key, trust, qc)
	if err != nil {
		return nil, err
	}
	l.node = node
	l.spans.changes = &l.changes
	if l.cstore, err = openCacheStore(l.stateDir()); err == nil {
		l.cstore.changes = &l.changes
		l.cac, err = newCacAgent(info.Fsid, l.cstore, l.log)
	}
	if err == nil {
		err = l.openQuorum()
	}
	if err != nil {
		if l.cstore != nil {
			l.cstore.Close()
		}
		node.Close()
		return nil, err
	}
	return l, nil
}

// stateDir holds quorum.db and cache.db.
func (l *Leaf) stateDir() string { return leafStateDir(l.cfg, l.pfs, l.info) }

func leafStateDir(cfg Config, pfs PFS, info PFSInfo) string {
	if d := cfg.Quorum.StateDir; d != "" {
		return d
	}
	return leafPaths(cfg, pfs, info).dir
}

// openQuorum starts this master's member of its cluster's quorum group,
// if the config names the founding masters.
func (l *Leaf) openQuorum() error {
	qc := l.cfg.Quorum
	if len(qc.Masters) == 0 {
		return nil
	}
	if l.info.Type&0x0F != PFSMaster {
		l.log.Info("not a MASTER PFS: no quorum group member here", "type", pfsTypeName(l.info.Type))
		return nil
	}
	var founders []uint64
	for _, m := range qc.Masters {
		u, err := ParseUUID(m)
		if err != nil {
			return fmt.Errorf("quorum.masters: %w", err)
		}
		founders = append(founders, masterID(u))
	}
	dir := l.stateDir()
	self := masterID(l.info.Fsid)
	if !slices.Contains(founders, self) {
		// Not a founder: join the group the founders formed. It asks the
		// members to admit it (signed with the node key, which they must
		// trust); the leader adds it as a learner and promotes it.
		l.log.Info("quorum: not among quorum.masters; asking the group's masters to admit this master",
			"master", fmt.Sprintf("%x", self), "key", l.node.Fingerprint())
		founders = nil
	}
	store, err := openQuorumStore(dir, quorumStoreOptions{noSync: qc.UnsafeNoFsync})
	if err != nil {
		return err
	}
	ticks := int(qc.CommitTimeout.Duration / qc.Tick.Duration)
	log := l.log.With("quorum", fmt.Sprintf("%x", masterID(l.info.Fsid)))
	node, err := newQuorumNode(self, founders, store, quorumConfig{ProposeTimeoutTicks: ticks,
		Logf: func(format string, args ...any) { log.Debug(fmt.Sprintf(format, args...)) }})
	if err != nil {
		store.Close()
		return err
	}
	qclock, err := processClock()
	if err != nil {
		store.Close()
		return fmt.Errorf("quorum: clock: %w", err)
	}
	l.qstore = store
	l.quorum = newQuorumDriver(l, node, quorumDriverConfig{Clid: l.info.Clid, Fsid: l.info.Fsid, Key: l.key,
		Log: l.log, CAC: l.cac, Clock: qclock, Transport: newQuorumWire(l, self, l.info.Clid, l.log),
		Tick: qc.Tick.Duration, Lease: qc.Lease.Duration, CommitTimeout: qc.CommitTimeout.Duration,
		Inbox: quorumInboxLimits{Raft: quorumInboxRaft, Requests: quorumInboxRequests}, Changed: l.changes.Notify})
	l.quorum.obs = l.obs
	l.quorum.adoptRecovered(l.cac.Recovered())
	return nil
}

// The Leaf is its quorum driver's quorumHost.

func (l *Leaf) masterSpan(id uint64) *Trans {
	return l.spans.find(func(s *LnkSpan) bool {
		return s.PeerID == l.info.Clid && s.PfsType&0x0F == PFSMaster && masterID(s.PfsID) == id
	})
}

func (l *Leaf) masters() map[uint64]bool {
	seen := map[uint64]bool{}
	for _, e := range l.spans.list() {
		if e.Span.PeerID == l.info.Clid && e.Span.PfsType&0x0F == PFSMaster {
			seen[masterID(e.Span.PfsID)] = true
		}
	}
	return seen
}

func (l *Leaf) trusted(key ed25519.PublicKey) (string, bool) {
	if l.trust == nil {
		return "", false
	}
	return l.trust.Lookup(key)
}

var _ quorumHost = (*Leaf)(nil)

// Info is the PFS registration the leaf advertises.
func (l *Leaf) Info() PFSInfo { return l.info }

// Addr is the UDP address remote nodes dial.
func (l *Leaf) Addr() net.Addr { return l.node.Addr() }

// Run serves until ctx ends (a clean shutdown: every link sends its
// DELETEs) or the PFS is unmounted, and returns nil in both cases. It
// serves the control socket at control ("" for none) and calls ready once
// that answers.
func (l *Leaf) Run(ctx context.Context, control string, ready func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l.mu.Lock()
	l.ctx = ctx
	l.mu.Unlock()
	if err := l.obs.serveMetrics(ctx, l.cfg.MetricsListen, l.log, l.spawn); err != nil {
		l.node.Close()
		return err
	}
	if control != "" {
		if err := l.serveControl(ctx, control); err != nil {
			l.node.Close()
			return err
		}
	}
	l.log.Info("leaf starting", "label", l.info.Label, "pfs_clid", l.info.Clid, "pfs_fsid", l.info.Fsid,
		"type", pfsTypeName(l.info.Type), "listen", l.node.Addr(), "key", l.node.Fingerprint(), "encrypted", true)
	if err := l.Rescan(); err != nil {
		l.log.Warn("reading REMOTE slots", "err", err)
	}
	l.applyConfigRemotes(l.cfg)
	l.startBackbone(l.cfg.Backbone)
	l.spawn(func() { l.acceptLoop(ctx) })
	l.spawn(func() { l.kernelLoop(ctx, cancel) })
	l.spawn(func() { l.watchMount(ctx, cancel) })
	if l.quorum != nil {
		l.spawn(func() { l.quorum.run(ctx) })
	}
	l.spawn(func() {
		// The kernel revalidates what it held within two leases of our
		// start, or the group expires those states without us.
		select {
		case <-ctx.Done():
		case <-time.After(2 * l.cfg.Quorum.Lease.Duration):
			l.cac.dropUnclaimed()
		}
	})
	// The stand-in PFS's kernel.sock is there once the leaf says it is
	// ready (its kernel loop would make it a moment later): a simulated
	// kernel may dial at once.
	if st, ok := l.pfs.(interface {
		listener() (*net.UnixListener, error)
	}); ok {
		if _, err := st.listener(); err != nil {
			l.log.Warn("kernel socket", "err", err)
		}
	}
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	l.shutdown()
	l.wg.Wait()
	if l.qstore != nil {
		l.qstore.Close() // after the driver, which stopped with ctx
	}
	l.cstore.Close()
	return nil
}

func (l *Leaf) spawn(f func()) {
	l.wg.Add(1)
	go func() { defer l.wg.Done(); f() }()
}

// watchMount ends the leaf when the PFS goes away (it was unmounted).
func (l *Leaf) watchMount(ctx context.Context, stop context.CancelFunc) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if !l.pfs.Mounted() {
				l.log.Info("PFS is no longer mounted; leaf exiting")
				stop()
				return
			}
		}
	}
}

// shutdown closes every link cleanly, in parallel, within a bound.
func (l *Leaf) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	l.mu.Lock()
	var links []*Link
	for _, t := range l.targets {
		if t.link != nil {
			links = append(links, t.link.link)
		}
	}
	for c := range l.inbound {
		links = append(links, c.link)
	}
	if l.backbone != nil && l.backbone.current() != nil {
		links = append(links, l.backbone.current().link)
	}
	if l.kernel != nil {
		links = append(links, l.kernel)
	}
	l.mu.Unlock()
	var wg sync.WaitGroup
	for _, k := range links {
		wg.Add(1)
		go func() { defer wg.Done(); _ = k.Shutdown(ctx) }()
	}
	wg.Wait()
	l.node.Close()
	l.log.Info("leaf stopped")
}

// Rescan rereads the REMOTE slots and reconciles the remote links.
func (l *Leaf) Rescan() error {
	vs, err := l.pfs.RemoteScan()
	if err != nil {
		return err
	}
	slots := map[int]string{}
	for _, v := range vs {
		if addr, ok := spanTarget(v.Path); ok {
			slots[int(v.CopyID)] = addr
		}
	}
	l.mu.Lock()
	l.slots = slots
	l.mu.Unlock()
	l.reconcile()
	return nil
}

// setSlot applies one VOLCONF from the kernel.
func (l *Leaf) setSlot(v LnkVolconf) {
	addr, ok := spanTarget(v.Copy.Path)
	l.mu.Lock()
	if v.Copy.CopyID == 0 || !ok {
		delete(l.slots, int(v.Index))
	} else {
		l.slots[int(v.Index)] = addr
	}
	l.mu.Unlock()
	l.reconcile()
}

// spanTarget reads a REMOTE path: "span:<host>[:port]" names a node, as
// in DragonFly's service daemon (over TCP when remote_dir names its
// address, else QUIC), and "tcp:<host>[:port]" or "quic:<host>[:port]" a
// node over that transport. It returns the target's String.
func spanTarget(path string) (string, bool) {
	t, ok := volconfTarget(Volconf{CopyID: 1, Path: path})
	if !ok {
		return "", false
	}
	return t.String(), true
}

// applyConfigRemotes trusts exactly the config's keys and marks its
// targets.
func (l *Leaf) applyConfigRemotes(cfg Config) {
	var keys []TrustedKey
	for _, r := range cfg.Remotes {
		if r.Key == "" {
			continue
		}
		pub, err := ParsePublicKey(r.Key)
		if err != nil {
			continue // validated at load
		}
		keys = append(keys, TrustedKey{Name: cmp.Or(r.Name, r.Address), Key: pub})
	}
	if err := l.trust.SetConfigKeys(keys); err != nil {
		l.log.Warn("trusting configured keys", "err", err)
	}
	l.mu.Lock()
	l.cfg.Remotes = cfg.Remotes
	l.mu.Unlock()
	l.reconcile()
}

// dropUntrusted closes live links whose peer key is no longer trusted: a
// key removed on reload is revoked, not merely refused next time. For an
// encrypted TCP link that is its remote/<ip>.pub gone or changed.
func (l *Leaf) dropUntrusted() {
	l.mu.Lock()
	var links []*clusterLink
	for _, t := range l.targets {
		if t.link != nil {
			links = append(links, t.link)
		}
	}
	for c := range l.inbound {
		links = append(links, c)
	}
	if l.backbone != nil && l.backbone.current() != nil {
		links = append(links, l.backbone.current())
	}
	l.mu.Unlock()
	for _, c := range links {
		switch {
		case c.quic != nil:
			if _, ok := l.trust.Lookup(c.quic.PeerKey()); !ok {
				l.log.Warn("closing link: its peer key is no longer trusted", "link", c.name, "fingerprint", c.quic.PeerFingerprint())
				c.link.Close()
			}
		case c.tcp != nil && c.tcp.policy == dmsgPeerEncrypted:
			pol, pub, err := l.sec.check(tcpRemoteIP(c.tcp.raw))
			if err != nil || pol != dmsgPeerEncrypted || rsaFingerprint(pub) != c.tcp.peer.Fingerprint {
				l.log.Warn("closing link: its peer's remote/<ip>.pub is gone or changed", "link", c.name,
					"fingerprint", c.tcp.peer.Fingerprint, "err", err)
				c.link.Close()
			}
		}
	}
}

// reconcile starts links to new targets and stops links to targets no
// longer named, leaving the others alone.
func (l *Leaf) reconcile() {
	defer l.changes.Notify()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx == nil || l.ctx.Err() != nil {
		return
	}
	want := map[string]*target{}
	for slot, addr := range l.slots {
		t := want[addr]
		if t == nil {
			t = &target{addr: addr}
			want[addr] = t
		}
		t.slots = append(t.slots, slot)
	}
	for _, r := range l.cfg.Remotes {
		t := want[r.Address]
		if t == nil {
			t = &target{addr: r.Address}
			want[r.Address] = t
		}
		t.fromConfig = true
	}
	for addr, old := range l.targets {
		if want[addr] == nil {
			l.log.Info("dropping remote link", "remote", addr)
			old.cancel()
			delete(l.targets, addr)
		}
	}
	for addr, w := range want {
		slices.Sort(w.slots)
		if old := l.targets[addr]; old != nil {
			old.slots, old.fromConfig = w.slots, w.fromConfig
			continue
		}
		l.startTarget(w)
	}
}

func (l *Leaf) startTarget(t *target) {
	ctx, cancel := context.WithCancel(l.ctx)
	t.cancel = cancel
	nt, err := parseNodeTarget(t.addr)
	if err != nil {
		l.log.Warn("remote target not dialed", "remote", t.addr, "err", err) // validated with the config
	}
	t.dialer = newRedialerDial(t.addr, l.sec.dialer(nt, l.node), RedialConfig{MinBackoff: l.cfg.RedialMin.Duration,
		MaxBackoff: l.cfg.RedialMax.Duration, Logger: l.log, OnChange: l.changes.Notify})
	l.targets[t.addr] = t
	l.log.Info("keeping a link to remote", "remote", t.addr, "slots", t.slots)
	l.spawn(func() {
		_ = t.dialer.Run(ctx, func(dc redialConn) {
			rw, q, peer := linkOver(dc)
			c := l.runClusterLink(rw, "remote "+t.addr, q, peer)
			l.mu.Lock()
			t.link = c
			l.mu.Unlock()
			l.changes.Notify()
			select {
			case <-c.link.Done():
				linkEnded(dc, c.link.Err())
			case <-ctx.Done():
				sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = c.link.Shutdown(sctx)
				cancel()
			}
			l.mu.Lock()
			t.link = nil
			l.mu.Unlock()
			l.changes.Notify()
		})
	})
}

func (l *Leaf) acceptLoop(ctx context.Context) {
	if l.cfg.Listen == "none" {
		return
	}
	for {
		q, err := l.node.Accept(ctx)
		if err != nil {
			if ctx.Err() == nil {
				l.log.Warn("accepting remote links stopped", "err", err)
			}
			return
		}
		c := l.runClusterLink(q.Stream(), "inbound "+q.RemoteAddr().String(), q, nodePeer(q.PeerFingerprint(), "quic"))
		l.mu.Lock()
		l.inbound[c] = struct{}{}
		l.mu.Unlock()
		l.changes.Notify()
		l.spawn(func() {
			<-c.link.Done()
			l.mu.Lock()
			delete(l.inbound, c)
			l.mu.Unlock()
			l.changes.Notify()
		})
	}
}

// kernelLoop holds the kernel's link, taking it again if it drops while
// the PFS is still mounted, and ends the leaf when the PFS is gone.
func (l *Leaf) kernelLoop(ctx context.Context, stop context.CancelFunc) {
	for ctx.Err() == nil {
		conn, err := l.pfs.Recluster(ctx)
		if err != nil {
			if ctx.Err() == nil {
				l.log.Warn("handing the kernel its link failed", "err", err)
				if !l.pfs.Mounted() {
					stop()
					return
				}
				select {
				case <-time.After(time.Second):
				case <-ctx.Done():
				}
			}
			continue
		}
		k := newKernelLink(l, conn, l.policy.identify(conn))
		l.mu.Lock()
		l.kernel, l.kernelUp = k, time.Now()
		l.mu.Unlock()
		l.changes.Notify()
		l.log.Info("kernel link up")
		<-k.Done()
		l.mu.Lock()
		l.kernel = nil
		l.mu.Unlock()
		l.changes.Notify()
		if ctx.Err() != nil {
			return
		}
		if !l.pfs.Mounted() {
			l.log.Info("kernel link gone and the PFS is unmounted; leaf exiting")
			stop()
			return
		}
		l.log.Info("kernel link lost; taking it again", "reason", k.Err())
	}
}

// Reload applies a new config: log format aside, the remote list, trusted
// keys and backbone change without touching links that stay.
func (l *Leaf) Reload(cfg Config) {
	if err := l.trust.Reload(); err != nil {
		l.log.Warn("reloading trusted keys", "err", err)
	}
	l.mu.Lock()
	oldBackbone := l.cfg.Backbone
	l.cfg.PingInterval, l.cfg.DeadAfter = cfg.PingInterval, cfg.DeadAfter
	l.cfg.RedialMin, l.cfg.RedialMax = cfg.RedialMin, cfg.RedialMax
	for _, t := range l.targets {
		t.dialer.Kick() // a refused peer may be trusted now
	}
	l.mu.Unlock()
	l.applyConfigRemotes(cfg)
	l.dropUntrusted()
	if cfg.Backbone != oldBackbone {
		l.startBackbone(cfg.Backbone)
	}
	l.log.Info("configuration reloaded", "remotes", len(cfg.Remotes), "backbone", cfg.Backbone)
}

func pfsTypeName(t uint8) string {
	names := map[uint8]string{PFSNone: "NONE", PFSCache: "CACHE", PFSSlave: "SLAVE", PFSSoftSlave: "SOFT_SLAVE",
		PFSSoftMaster: "SOFT_MASTER", PFSMaster: "MASTER", PFSSupRoot: "SUPROOT", PFSDummy: "DUMMY"}
	if n, ok := names[t&0x0F]; ok {
		return n
	}
	return fmt.Sprintf("TYPE%d", t)
}

// runPaths are where a leaf for a PFS keeps its pid file, control socket
// and background log.
type runPaths struct{ dir, pid, control, log string }

func leafPaths(cfg Config, pfs PFS, info PFSInfo) runPaths {
	dir := cfg.RunDir
	if dir == "" {
		dir = pfs.Path()
	}
	base := "leaf-" + info.Fsid.String()
	p := runPaths{dir: dir, pid: filepath.Join(dir, base+".pid"), control: filepath.Join(dir, base+".sock"),
		log: filepath.Join(dir, base+".log")}
	if cfg.Control != "" {
		p.control = cfg.Control
	}
	return p
}

// pfsPlaces opens the PFS at path just long enough to read its
// registration, for the commands that reach or replace its leaf's files:
// where the leaf keeps its run files, and its quorum state directory.
func pfsPlaces(cfg Config, path string) (info PFSInfo, paths runPaths, stateDir string, err error) {
	pfs, err := OpenPFS(path)
	if err != nil {
		return info, paths, "", err
	}
	defer pfs.Close()
	if info, err = pfs.Info(); err != nil {
		return info, paths, "", err
	}
	return info, leafPaths(cfg, pfs, info), leafStateDir(cfg, pfs, info), nil
}

// snapshotTargets lists targets in address order, for status.
func (l *Leaf) snapshotTargets() []*target {
	l.mu.Lock()
	defer l.mu.Unlock()
	keys := slices.Sorted(maps.Keys(l.targets))
	out := make([]*target, 0, len(keys))
	for _, k := range keys {
		t := *l.targets[k]
		out = append(out, &t)
	}
	return out
}

var errNotRunning = errors.New("no leaf is running for this PFS")
