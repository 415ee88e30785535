//go:build !dragonfly

package main

// End-to-end tests of `hammer2 service`: services run as real processes on
// 127.0.0.1, linked to each other over QUIC with pinned keys, with leaves
// using them as their backbone over the services' Unix sockets. What the
// cluster advertises is read the way an operator reads it: `hammer2 status
// --json` on each leaf and `hammer2 shell` on the services. The harness of
// leaf_process_test.go builds the binary and runs the leaves.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// svcNode is one service process with its directory, key and config.
type svcNode struct {
	*daemonProc
	dir      string
	cfgPath  string
	keyDir   string
	sock     string // the Unix socket leaves use
	tcp      string // 127.0.0.1:port, plaintext dmsg (the shell)
	udp      string // 127.0.0.1:port, QUIC from other services
	autoconn []string
	pub, fp  string
	opts     daemonOpts
}

// svcFreeTCPPort picks a free TCP port on 127.0.0.1, never the same one
// twice in a test run.
func svcFreeTCPPort(t testing.TB) int { return freePort(t, "tcp") }

// newSvcNode prepares a service (key, config, ports) without starting it.
func newSvcNode(t *testing.T, name string, o daemonOpts) *svcNode {
	t.Helper()
	bin := h2Binary(t)
	dir := shortTempDir(t)
	s := &svcNode{daemonProc: newDaemon(t, "service", name, bin, filepath.Join(dir, "fg.log")), dir: dir,
		cfgPath: filepath.Join(dir, "svc.toml"), keyDir: filepath.Join(dir, "keys"), sock: filepath.Join(dir, "s.sock"),
		opts: o.withDefaults()}
	s.tcp = net.JoinHostPort("127.0.0.1", strconv.Itoa(svcFreeTCPPort(t)))
	s.udp = net.JoinHostPort("127.0.0.1", strconv.Itoa(freeUDPPort(t)))
	o = s.opts
	cfg := fmt.Sprintf(`# test service %s
key_dir = %q
remote_dead_after = %q
dead_after = %q
ping_interval = %q
redial_min = %q
redial_max = %q
`, name, s.keyDir, o.RemoteDeadAfter, o.DeadAfter, o.PingInterval, o.RedialMin, o.RedialMax)
	if err := os.WriteFile(s.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runH2(t, bin, "-c", s.cfgPath, "keygen")
	if code != 0 {
		t.Fatalf("service %s: keygen exit %d: %s", name, code, errOut)
	}
	// DragonFly's rule holds on loopback too: the shell, the test roles
	// and leaves reach the TCP port in plaintext only by this file.
	writeRemoteNone(t, filepath.Join(s.keyDir, remoteDirName), "127.0.0.1")
	s.pub = strings.TrimSpace(out)
	pub, err := ParsePublicKey(s.pub)
	if err != nil {
		t.Fatalf("service %s: keygen printed %q: %v", name, out, err)
	}
	s.fp = Fingerprint(pub)
	return s
}

// trustSvcs puts each peer's public key line in s's remote/<name>.pub.
func (s *svcNode) trustSvcs(peers ...*svcNode) {
	s.t.Helper()
	dir := filepath.Join(s.keyDir, "remote")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		s.t.Fatal(err)
	}
	for _, p := range peers {
		if err := os.WriteFile(filepath.Join(dir, p.name+".pub"), []byte(p.pub+"\n"), 0o644); err != nil {
			s.t.Fatal(err)
		}
	}
}

// svcLinkBoth has a keep a link to b (a autoconns to b), each trusting
// the other.
func svcLinkBoth(a, b *svcNode) {
	a.trustSvcs(b)
	b.trustSvcs(a)
	// quic: since the services' remote_dir names 127.0.0.1 (for their
	// shells), which makes a bare 127.0.0.1 target DragonFly's TCP.
	a.autoconn = append(a.autoconn, "quic:"+b.udp)
}

// args is the command line of the foreground service, before globals.
func (s *svcNode) args(quiet, foreground bool) []string {
	a := []string{"-c", s.cfgPath}
	if quiet {
		a = append(a, "-q")
	}
	if foreground {
		a = append(a, "-d")
	}
	a = append(a, "service", "--unix", s.sock, "--tcp", s.tcp, "--listen", s.udp)
	for _, ac := range s.autoconn {
		a = append(a, "--autoconn", ac)
	}
	return a
}

// start runs the service in the foreground (-d) and waits until it serves.
func (s *svcNode) start() {
	s.t.Helper()
	s.daemonProc.start(s.args(false, true), fmt.Sprintf("udp %s, tcp %s, key %s", s.udp, s.tcp, s.fp),
		"service running", serviceControlPath(s.sock))
}

// writeRemoteNone writes dir/<ip>.none for each ip: DragonFly's rule's
// plaintext link.
func writeRemoteNone(t testing.TB, dir string, ips ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, ip := range ips {
		if err := os.WriteFile(filepath.Join(dir, ip+".none"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// svcShell runs `hammer2 -c cfg shell target` with lines on its stdin; cfg
// ("" for none) gives a TCP target's remote_dir.
func svcShell(t testing.TB, bin, cfg, target string, lines ...string) (stdout, stderr string, code int) {
	t.Helper()
	var args []string
	if cfg != "" {
		args = append(args, "-c", cfg)
	}
	return runH2In(t, bin, strings.Join(lines, "\n")+"\n", append(args, "shell", target)...)
}

// tree is the service's `tree`, over its Unix socket, without the
// shell's banner and prompts (the prompt asked for on the service's
// LNK_CONN may come before or after the tree).
func (s *svcNode) tree() string {
	s.t.Helper()
	out, errOut, code := svcShell(s.t, s.bin, "", "unix:"+s.sock, "tree")
	if code != 0 {
		s.t.Fatalf("service %s: shell tree: exit %d: %s%s", s.name, code, out, errOut)
	}
	out = strings.ReplaceAll(out, shellPrompt, "")
	out = strings.Replace(out, "Debug Shell received LNK_CONN\n", "", 1)
	return out
}

// status is the service's current status, asked over its control socket.
func (s *svcNode) status() ServiceStatus {
	s.t.Helper()
	r := s.query()
	if r == nil || r.Service == nil {
		s.t.Fatalf("service %s: no status: it is not running", s.name)
	}
	return *r.Service
}

// waitStatus waits until a status update of the service satisfies cond
// (the current status first), for at most d, and returns that status.
func (s *svcNode) waitStatus(d time.Duration, what string, cond func(ServiceStatus) bool) ServiceStatus {
	s.t.Helper()
	u, ok := s.watch.waitSince(time.Now(), d, func(r *controlResponse) bool { return r.Service != nil && cond(*r.Service) })
	if !ok {
		raw, _ := json.MarshalIndent(u.resp, "", "  ")
		s.t.Fatalf("service %s: %s: not within %v; last status:\n%s", s.name, what, d, raw)
	}
	return *u.resp.Service
}

// node is the service's router entry for the PFS fsid, nil if it has none.
func (st ServiceStatus) node(fsid UUID) *ServiceNodeStatus {
	for i := range st.Nodes {
		if st.Nodes[i].PfsID == fsid {
			return &st.Nodes[i]
		}
	}
	return nil
}

// svcNodeLinksDown counts the QUIC links to other services that went down.
func (s *svcNode) svcNodeLinksDown() int {
	return strings.Count(s.logText(), `msg="link down" link="node `)
}

// svcTreeClusters reads a tree: each Cluster line with the Node lines
// under it.
func svcTreeClusters(tree string) map[string][]string {
	m := map[string][]string{}
	cur := ""
	for line := range strings.Lines(tree) {
		line = strings.TrimRight(strings.TrimPrefix(line, shellPrompt), "\n")
		switch {
		case strings.HasPrefix(line, "Cluster "):
			cur = line
			if _, ok := m[cur]; !ok {
				m[cur] = nil
			}
		case strings.HasPrefix(strings.TrimSpace(line), "Node ") && cur != "":
			m[cur] = append(m[cur], strings.TrimSpace(line))
		}
	}
	return m
}

// ---- leaves on a service ----

// newSvcLeaf is a leaf whose PFS is info (zero fields: newLeafNode's).
func newSvcLeaf(t *testing.T, name string, info PFSInfo) *leafNode {
	t.Helper()
	n := newLeafNode(t, name, daemonOpts{})
	if info == (PFSInfo{}) {
		return n
	}
	if info.Label == "" {
		info.Label = n.info.Label
	}
	if info.Fsid.IsNil() {
		info.Fsid = NewUUID()
	}
	if info.Type == PFSNone {
		info.Type = PFSMaster
	}
	if err := os.RemoveAll(n.pfs); err != nil {
		t.Fatal(err)
	}
	if err := CreatePFS(n.pfs, info); err != nil {
		t.Fatal(err)
	}
	n.info = info
	return n
}

// startLeafOn runs n in the foreground with s as its backbone and no QUIC
// listener, as the brief's `hammer2 -d leaf --listen none --backbone
// unix:SOCK PFS`, and waits for "leaf ready".
func startLeafOn(n *leafNode, s *svcNode) {
	n.t.Helper()
	n.startArgs("backbone service "+s.name, "-d", "leaf", "--listen", "none", "--backbone", "unix:"+s.sock, n.pfs)
}

// svcSpan is one span of `hammer2 status --json`, every field.
type svcSpan struct {
	Label    string `json:"label"`
	PeerID   string `json:"peer_id"`
	PfsID    string `json:"pfs_id"`
	PfsType  string `json:"pfs_type"`
	PeerType uint8  `json:"peer_type"`
	Dist     uint32 `json:"dist"`
	Via      string `json:"via"`
}

func (sp svcSpan) String() string {
	return fmt.Sprintf("%s/%s clid %s dist %d via %s", sp.Label, sp.PfsID, sp.PeerID, sp.Dist, sp.Via)
}

// svcLeafView is the part of a leaf's status these tests read.
type svcLeafView struct {
	Backbone *procLinkStat
	Spans    []svcSpan
	raw      string
}

// svcView is the leaf's current status, asked over its control socket.
func svcView(n *leafNode) svcLeafView {
	n.t.Helper()
	r := n.query()
	if r == nil {
		n.t.Fatalf("%s: no status: the leaf is not running", n.name)
	}
	return svcViewOf(n.t, r)
}

// svcViewOf reads a watched status line the way a script reads
// `hammer2 status --json`.
func svcViewOf(t testing.TB, r *controlResponse) svcLeafView {
	raw, err := json.Marshal(r.Status)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Backbone *procLinkStat `json:"backbone"`
		Spans    []svcSpan     `json:"spans"`
	}
	if r.Status == nil || json.Unmarshal(raw, &st) != nil {
		t.Fatalf("status line %s: no leaf status", raw)
	}
	return svcLeafView{Backbone: st.Backbone, Spans: st.Spans, raw: string(raw)}
}

// of returns the spans advertising peer's PFS.
func (v svcLeafView) of(peer *leafNode) []svcSpan {
	var out []svcSpan
	for _, sp := range v.Spans {
		if sp.Label == peer.info.Label && sp.PfsID == peer.info.Fsid.String() {
			out = append(out, sp)
		}
	}
	return out
}

func (v svcLeafView) backboneUp() bool { return v.Backbone != nil && v.Backbone.State == DialUp }

// svcWaitEach waits until a status update of every leaf satisfies cond,
// looking from each leaf's status as it was at start, all within d of
// start, and returns when each leaf's satisfying update came, from start.
func svcWaitEach(t *testing.T, start time.Time, d time.Duration, what string, leaves []*leafNode,
	cond func(i int, v svcLeafView) bool) []time.Duration {
	t.Helper()
	took := make([]time.Duration, len(leaves))
	var bad strings.Builder
	for i, n := range leaves {
		var last svcLeafView
		u, ok := n.watch.waitSince(start, max(time.Until(start.Add(d)), 0), func(r *controlResponse) bool {
			last = svcViewOf(t, r)
			return cond(i, last)
		})
		if !ok {
			fmt.Fprintf(&bad, "\n%s's last spans: %v (backbone %+v)", n.name, last.Spans, last.Backbone)
			continue
		}
		took[i] = u.at.Sub(start)
	}
	if bad.Len() > 0 {
		t.Fatalf("%s: not within %v%s", what, d, bad.String())
	}
	return took
}

// svcSpanSet is a leaf's spans as comparable text, in status order.
func svcSpanSet(v svcLeafView) string {
	var lines []string
	for _, sp := range v.Spans {
		lines = append(lines, sp.String())
	}
	return strings.Join(lines, "\n")
}

// ---- the tests ----

// svcLine is s1 - s2 - s3, a leaf at each end (a on s1, b on s3), up:
// each leaf sees the other's PFS at dist 3 (the leaf's span is dist 0 at
// its service and each relay adds one: s1->s2 1, s2->s3 2, s3->leaf 3).
type svcLine struct {
	s      [3]*svcNode
	leaves []*leafNode // a, b
	peers  []*leafNode // the other end's: b, a
	linked func(i int, v svcLeafView) bool
}

func newSvcLine(t *testing.T) *svcLine {
	t.Helper()
	s1, s2, s3 := newSvcNode(t, "s1", daemonOpts{}), newSvcNode(t, "s2", daemonOpts{}), newSvcNode(t, "s3", daemonOpts{})
	svcLinkBoth(s2, s1)
	svcLinkBoth(s2, s3)
	a, b := newSvcLeaf(t, "a", PFSInfo{}), newSvcLeaf(t, "b", PFSInfo{})
	s1.start()
	s3.start()
	s2.start()
	startLeafOn(a, s1)
	startLeafOn(b, s3)
	ln := &svcLine{s: [3]*svcNode{s1, s2, s3}, leaves: []*leafNode{a, b}, peers: []*leafNode{b, a}}
	// Exactly one span of the other's PFS, at dist 3, and no span of
	// one's own PFS (split horizon at the service).
	ln.linked = func(i int, v svcLeafView) bool {
		sp := v.of(ln.peers[i])
		return v.backboneUp() && len(sp) == 1 && sp[0].Dist == 3 && len(v.of(ln.leaves[i])) == 0
	}
	took := svcWaitEach(t, time.Now(), 15*time.Second, "each end leaf sees the other's PFS at dist 3", ln.leaves, ln.linked)
	t.Logf("spans across the line: a after %v, b after %v", took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	return ln
}

// TestServiceLine: on the line, each leaf's span of the other is exact.
// Killing s2 withdraws both within the dead-peer bound; restarting it
// brings them back. A SIGTERMed s2 withdraws them at once.
func TestServiceLine(t *testing.T) {
	t.Parallel()
	ln := newSvcLine(t)
	s1, s2, s3, leaves, peers, linked := ln.s[0], ln.s[1], ln.s[2], ln.leaves, ln.peers, ln.linked
	var took []time.Duration
	for i, n := range leaves {
		v := svcView(n)
		sp := v.of(peers[i])[0]
		if sp.PeerID != peers[i].info.Clid.String() || sp.PfsType != "MASTER" {
			t.Errorf("%s's span of %s: %+v; want peer_id %s and pfs_type MASTER", n.name, peers[i].name, sp, peers[i].info.Clid)
		}
		if want := "backbone unix:" + []*svcNode{s1, s3}[i].sock; sp.Via != want {
			t.Errorf("%s's span of %s comes via %q, want %q", n.name, peers[i].name, sp.Via, want)
		}
		if len(v.Spans) != 1 {
			t.Errorf("%s sees %d spans, want only %s's: %v", n.name, len(v.Spans), peers[i].name, v.Spans)
		}
	}

	// kill -9 the middle: only the QUIC idle bound (remote_dead_after 1s)
	// tells s1 and s3 that s2 is gone.
	s2.kill9()
	killed := time.Now()
	withdrawn := func(i int, v svcLeafView) bool { return len(v.of(peers[i])) == 0 }
	took = svcWaitEach(t, killed, 8*time.Second, "spans withdrawn after kill -9 of the middle service", leaves, withdrawn)
	t.Logf("after kill -9 of s2: a lost b's span after %v, b lost a's after %v (bound: remote_dead_after 1s + 2s)",
		took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	for i, n := range leaves {
		if took[i] > 3*time.Second {
			t.Errorf("%s kept %s's span %v after s2 was killed; want <= remote_dead_after (1s) + 2s",
				n.name, peers[i].name, took[i].Round(time.Millisecond))
		}
		if v := svcView(n); !v.backboneUp() {
			t.Errorf("%s's backbone to its own service went down when s2 died: %+v", n.name, v.Backbone)
		}
	}

	// Same key, same ports: s2 redials both neighbours.
	s2.start()
	restarted := time.Now()
	took = svcWaitEach(t, restarted, 10*time.Second, "spans back at dist 3 after s2 restarted", leaves, linked)
	t.Logf("after s2 restarted: a had b's span again after %v, b had a's after %v",
		took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	for i, n := range leaves {
		if took[i] > 5*time.Second {
			t.Errorf("%s took %v to see %s's span again after s2 restarted; want <= 5s (redial_max 500ms)",
				n.name, took[i].Round(time.Millisecond), peers[i].name)
		}
	}
	// The middle service's own view: both PFSs.
	st := s2.status()
	for _, n := range leaves {
		if st.node(n.info.Fsid) == nil {
			t.Errorf("s2's table after the restart lacks %s's PFS %s:\n%s", n.name, n.info.Fsid, nodesKey(&st))
		}
	}

	// SIGTERM the middle: a clean stop sends its DELETEs and closes its
	// QUIC links, so the ends forget at once, not after the idle bound.
	s2.signal(syscall.SIGTERM)
	termed := time.Now()
	took = svcWaitEach(t, termed, 8*time.Second, "spans withdrawn after SIGTERM of the middle service", leaves, withdrawn)
	t.Logf("after SIGTERM of s2: a lost b's span after %v, b lost a's after %v",
		took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	for i, n := range leaves {
		if took[i] >= time.Second {
			t.Errorf("%s kept %s's span %v after s2 was stopped cleanly; want < 1s (remote_dead_after is 1s: only a clean close beats it)",
				n.name, peers[i].name, took[i].Round(time.Millisecond))
		}
	}
	if code, ok := s2.waitExit(8 * time.Second); !ok {
		t.Fatal("s2 still running 8s after SIGTERM")
	} else if code != 0 {
		t.Errorf("s2 exited %d after SIGTERM, want 0", code)
	}
	for _, f := range []string{s2.sock, strings.TrimSuffix(s2.sock, ".sock") + ".pid"} {
		if _, err := os.Stat(f); err == nil {
			t.Errorf("%s left behind after s2 stopped cleanly", f)
		}
	}
	s2.start()
	svcWaitEach(t, time.Now(), 10*time.Second, "spans back after s2 started again", leaves, linked)
}

// TestServiceLineEndKilled: on the line, killing and restarting s3, b's
// own service, takes b's spans away and back.
func TestServiceLineEndKilled(t *testing.T) {
	t.Parallel()
	ln := newSvcLine(t)
	s3, leaves, peers, linked := ln.s[2], ln.leaves, ln.peers, ln.linked
	b := leaves[1]
	// kill -9 the end service b uses: b's backbone breaks at once (its
	// Unix socket closes) and every span it had goes with it; a loses b's
	// span when s2 notices s3 is gone. Restarted, s3 takes b back.
	s3.kill9()
	killed := time.Now()
	took := svcWaitEach(t, killed, 8*time.Second, "spans gone after kill -9 of b's service", leaves,
		func(i int, v svcLeafView) bool {
			if i == 1 {
				return !v.backboneUp() && len(v.Spans) == 0
			}
			return len(v.of(b)) == 0
		})
	t.Logf("after kill -9 of s3: a lost b's span after %v; b's backbone down with no spans after %v",
		took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	if took[0] > 3*time.Second || took[1] > time.Second {
		t.Errorf("after s3 was killed a kept b's span %v (want <= 3s) and b its spans %v (want < 1s)",
			took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	}
	s3.start()
	restarted := time.Now()
	took = svcWaitEach(t, restarted, 10*time.Second, "spans back at dist 3 after s3 restarted", leaves, linked)
	t.Logf("after s3 restarted: a had b's span again after %v, b had a's after %v",
		took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
	for i, n := range leaves {
		if took[i] > 5*time.Second {
			t.Errorf("%s took %v to see %s's span again after s3 restarted; want <= 5s",
				n.name, took[i].Round(time.Millisecond), peers[i].name)
		}
	}
}

// svcHops is the hop count between services on an undirected graph of
// the alive ones (-1: not connected).
func svcHops(from, to int, edges [][2]int, alive []bool) int {
	dist := map[int]int{from: 0}
	queue := []int{from}
	for len(queue) > 0 {
		u := queue[0]
		queue = queue[1:]
		if u == to {
			return dist[u]
		}
		for _, e := range edges {
			for _, v := range []int{e[0], e[1]} {
				w := e[0] + e[1] - v // the other end
				if v == u && alive[w] {
					if _, seen := dist[w]; !seen {
						dist[w] = dist[u] + 1
						queue = append(queue, w)
					}
				}
			}
		}
	}
	return -1
}

// svcMesh is services with a leaf on each, linked along edges.
type svcMesh struct {
	t      *testing.T
	svcs   []*svcNode
	leaves []*leafNode
	edges  [][2]int
	svcUp  []bool
	leafUp []bool
	// every span seen above the relayed cap SpanMaxDist+1, ever
	overCap []string
	// the highest dist seen, per advertised PFS (by leaf index)
	maxDist map[int]uint32
}

// leafByLabel is the index of the leaf that advertises label and fsid in
// a service's table, or -1.
func (m *svcMesh) leafByLabel(label string, fsid UUID) int {
	for j, l := range m.leaves {
		if label == l.info.Label && fsid == l.info.Fsid {
			return j
		}
	}
	return -1
}

func (m *svcMesh) peerIndex(sp svcSpan) int {
	for j, l := range m.leaves {
		if sp.Label == l.info.Label && sp.PfsID == l.info.Fsid.String() {
			return j
		}
	}
	return -1
}

// observe records over-cap and maximal dists in one leaf's view.
func (m *svcMesh) observe(i int, v svcLeafView) {
	for _, sp := range v.Spans {
		if sp.Dist > SpanMaxDist+1 {
			m.overCap = append(m.overCap, fmt.Sprintf("%s: %v", m.leaves[i].name, sp))
		}
		if j := m.peerIndex(sp); j >= 0 && sp.Dist > m.maxDist[j] {
			m.maxDist[j] = sp.Dist
		}
	}
}

// want says whether leaf i's view is the converged one: exactly one span
// of every other live leaf whose service is reachable, at dist hops+1,
// nothing else.
func (m *svcMesh) want(i int, v svcLeafView) (bool, string) {
	if !v.backboneUp() {
		return false, "backbone not up"
	}
	expect := 0
	for j, p := range m.leaves {
		if j == i {
			if own := v.of(p); len(own) != 0 {
				return false, fmt.Sprintf("own span shown: %v", own)
			}
			continue
		}
		hops := -1
		if m.leafUp[j] && m.svcUp[j] {
			hops = svcHops(i, j, m.edges, m.svcUp)
		}
		sp := v.of(p)
		if hops < 0 {
			if len(sp) != 0 {
				return false, fmt.Sprintf("unreachable %s still shown: %v", p.name, sp)
			}
			continue
		}
		expect++
		if len(sp) != 1 || sp[0].Dist != uint32(hops+1) {
			return false, fmt.Sprintf("spans of %s: %v, want one at dist %d", p.name, sp, hops+1)
		}
	}
	if len(v.Spans) != expect {
		return false, fmt.Sprintf("%d spans, want %d: %v", len(v.Spans), expect, v.Spans)
	}
	return true, ""
}

// svcSteadyWindow is how long a converged mesh is watched for churn. A
// span that keeps being reopened (a withdrawn one chasing its tail round a
// loop, two paths replacing each other) does so every relay round trip,
// milliseconds on loopback: a second without a single change in any
// leaf's spans or any service's table is hundreds of those. It is not a
// bound on anything the daemons do, so it need not grow under load.
const svcSteadyWindow = time.Second

// nodesKey is a service's router table as comparable text: the span and
// relay numbers change on every reopen, so any churn shows.
func nodesKey(st *ServiceStatus) string {
	b, _ := json.Marshal(st.Nodes)
	return string(b)
}

// converge waits until every live leaf's view is the converged one, then
// checks that it stays so: no status update of any leaf or service in the
// svcSteadyWindow after it changes a leaf's spans or a service's router
// table (whose span and relay numbers change on every reopen). Every leaf
// update from since on is checked for spans above the dist cap. It returns
// how long convergence took from since.
func (m *svcMesh) converge(phase string, since time.Time, within time.Duration) time.Duration {
	t := m.t
	t.Helper()
	live := func(i int) bool { return m.leafUp[i] && m.svcUp[i] }
	var srcs []changeSource
	for i, l := range m.leaves {
		if live(i) {
			srcs = append(srcs, &l.watch)
		}
	}
	for i, s := range m.svcs {
		if m.svcUp[i] {
			srcs = append(srcs, &s.watch)
		}
	}
	waitEvent(t, max(time.Until(since.Add(within)), 0), phase+": not converged to shortest-path spans", func() (bool, string) {
		bad := map[string]string{}
		// No service still holds a span of a leaf that is gone: a
		// withdrawal travelling the long way round reaches a service
		// after the leaves' views (capped in dist) have settled.
		for i, s := range m.svcs {
			r := s.latest()
			if !m.svcUp[i] || r == nil || r.Service == nil {
				continue
			}
			for _, n := range r.Service.Nodes {
				if j := m.leafByLabel(n.PeerLabel, n.PfsID); j >= 0 && !live(j) {
					bad[s.name] = "holds the span of " + m.leaves[j].name + ", which is gone"
				}
			}
		}
		for i, l := range m.leaves {
			if !live(i) {
				continue
			}
			r := l.latest()
			if r == nil {
				bad[l.name] = "not running"
				continue
			}
			if ok, why := m.want(i, svcViewOf(t, r)); !ok {
				bad[l.name] = why
			}
		}
		return len(bad) == 0, fmt.Sprint(bad)
	}, srcs...)
	took := time.Since(since)
	// The converged state is read from each daemon directly, and then its
	// watch stream is let catch up to it: an update still in flight from
	// before would otherwise look like churn after steadyFrom.
	asked := time.Now()
	views := make([]string, len(m.leaves))
	for i, l := range m.leaves {
		if live(i) {
			views[i] = svcSpanSet(svcView(l))
			if !l.watch.catchUp(asked, 5*time.Second, func(r *controlResponse) bool {
				return svcSpanSet(svcViewOf(t, r)) == views[i]
			}) {
				t.Errorf("%s: %s's status stream never showed its converged spans (churn)", phase, l.name)
			}
		}
	}
	tables := make([]string, len(m.svcs))
	downs := make([]int, len(m.svcs))
	for i, s := range m.svcs {
		downs[i] = s.svcNodeLinksDown()
		if m.svcUp[i] {
			st := s.status()
			tables[i] = nodesKey(&st)
			if !s.watch.catchUp(asked, 5*time.Second, func(r *controlResponse) bool {
				return r.Service != nil && nodesKey(r.Service) == tables[i]
			}) {
				t.Errorf("%s: service %s's status stream never showed its converged table (churn)", phase, s.name)
			}
		}
	}
	steadyFrom := time.Now()
	time.Sleep(svcSteadyWindow) // see svcSteadyWindow: a window of silence, not a wait for an event
	for i, l := range m.leaves {
		if !live(i) {
			continue
		}
		for _, u := range l.watch.history(since) {
			v := svcViewOf(t, u.resp)
			m.observe(i, v)
			if u.at.After(steadyFrom) {
				if got := svcSpanSet(v); got != views[i] {
					t.Errorf("%s: %s's spans changed %v after convergence (churn):\nbefore:\n%s\nafter:\n%s", phase, l.name,
						u.at.Sub(steadyFrom).Round(time.Millisecond), views[i], got)
					break
				}
			}
		}
	}
	for i, s := range m.svcs {
		if !m.svcUp[i] {
			continue
		}
		for _, u := range s.watch.history(steadyFrom) {
			if u.resp.Service == nil || !u.at.After(steadyFrom) {
				continue
			}
			if got := nodesKey(u.resp.Service); got != tables[i] {
				t.Errorf("%s: service %s's table changed %v after convergence (churn):\nbefore:\n%s\nafter:\n%s", phase, s.name,
					u.at.Sub(steadyFrom).Round(time.Millisecond), tables[i], got)
				break
			}
		}
		st := s.status()
		// No ghosts: a withdrawn PFS must not live on in the services'
		// tables, relayed or not, once the spans have converged.
		for j, l := range m.leaves {
			want := live(j) && svcHops(i, j, m.edges, m.svcUp) >= 0
			if has := st.node(l.info.Fsid) != nil; has != want {
				t.Errorf("%s: service %s's table holds %s's PFS: %v, want %v:\n%s", phase, s.name, l.name, has, want, nodesKey(&st))
			}
		}
		for _, n := range st.Nodes {
			for _, lk := range n.Links {
				if lk.Dist > SpanMaxDist+1 {
					t.Errorf("%s: service %s holds a link above the cap: %s %+v", phase, s.name, n.PfsID, lk)
				}
			}
		}
		if c := s.svcNodeLinksDown(); c != downs[i] {
			t.Errorf("%s: service %s lost %d links to other services while the mesh was steady", phase, s.name, c-downs[i])
		}
	}
	if len(m.overCap) > 0 {
		t.Errorf("%s: spans above the relayed dist cap %d seen: %v", phase, SpanMaxDist+1, m.overCap)
		m.overCap = nil
	}
	t.Logf("%s: converged after %v, steady for %v", phase, took.Round(time.Millisecond), svcSteadyWindow)
	return took
}

// svcLinkedPair starts two linked services (a autoconns to b) with a leaf
// on each.
func svcLinkedPair(t *testing.T, la, lb *leafNode) (a, b *svcNode) {
	t.Helper()
	a, b = newSvcNode(t, "sa", daemonOpts{}), newSvcNode(t, "sb", daemonOpts{})
	svcLinkBoth(a, b)
	b.start()
	a.start()
	startLeafOn(la, a)
	startLeafOn(lb, b)
	return a, b
}

// TestServiceSameClid: two PFSs with the same pfs_clid on two nodes are
// one cluster: each leaf's span of the other carries the shared clid, and
// the services' tree puts both PFSs under that cluster.
//
// libdmsg keys a cluster by (peer_type, peer_id, peer_label), and the leaf,
// as DragonFly's kernel, puts the PFS name in peer_label: members of one
// cluster normally share the PFS name, and then the tree shows one
// "Cluster HAMMER2 <clid>" with a Node per PFS. With different names the
// tree shows one Cluster line per name, all with the same clid; the
// subtest "labels differ" checks only what holds either way and logs it.
func TestServiceSameClid(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name           string
		labelA, labelB string
	}{
		{"same label", "shared", "shared"},
		{"labels differ", "pfs-x", "pfs-y"},
	} {
		// One after the other, in this test's slot: parallel subtests
		// would start only after the whole suite (schedule_test.go).
		t.Run(tc.name, func(t *testing.T) {
			clid := NewUUID()
			la := newSvcLeaf(t, "x", PFSInfo{Label: tc.labelA, Clid: clid, Type: PFSMaster})
			lb := newSvcLeaf(t, "y", PFSInfo{Label: tc.labelB, Clid: clid, Type: PFSSlave})
			sa, sb := svcLinkedPair(t, la, lb)
			leaves, peers := []*leafNode{la, lb}, []*leafNode{lb, la}
			took := svcWaitEach(t, time.Now(), 15*time.Second, "each leaf sees the other's PFS", leaves, func(i int, v svcLeafView) bool {
				return len(v.of(peers[i])) == 1
			})
			t.Logf("spans seen after %v, %v", took[0].Round(time.Millisecond), took[1].Round(time.Millisecond))
			for i, n := range leaves {
				v := svcView(n)
				sp := v.of(peers[i])[0]
				if sp.PeerID != clid.String() {
					t.Errorf("%s's span of %s has peer_id %s, want the shared pfs_clid %s", n.name, peers[i].name, sp.PeerID, clid)
				}
				if sp.Dist != 2 {
					t.Errorf("%s's span of %s: dist %d, want 2 (leaf 0, service->service 1, service->leaf 2)", n.name, peers[i].name, sp.Dist)
				}
				if want := pfsTypeName(peers[i].info.Type); sp.PfsType != want {
					t.Errorf("%s's span of %s: pfs_type %s, want %s", n.name, peers[i].name, sp.PfsType, want)
				}
				// Its own PFS is not relayed back to it, though another
				// member of its cluster is.
				if own := v.of(n); len(own) != 0 {
					t.Errorf("%s is shown its own PFS: %v", n.name, own)
				}
			}
			for _, s := range []*svcNode{sa, sb} {
				tree := s.tree()
				cl := svcTreeClusters(tree)
				var lines []string
				nodes := 0
				for c, ns := range cl {
					if strings.HasPrefix(c, "Cluster HAMMER2 "+clid.String()+" ") {
						lines = append(lines, c)
						nodes += len(ns)
					}
				}
				for _, n := range leaves {
					if !strings.Contains(tree, "Node "+fmt.Sprintf("%02x", n.info.Type)+" "+n.info.Fsid.String()) {
						t.Errorf("service %s's tree lacks a Node line for %s's PFS %s:\n%s", s.name, n.name, n.info.Fsid, tree)
					}
				}
				if nodes != 2 {
					t.Errorf("service %s's tree has %d Node lines under clid %s, want 2:\n%s", s.name, nodes, clid, tree)
				}
				if tc.labelA == tc.labelB {
					if len(lines) != 1 {
						t.Errorf("service %s's tree has %d Cluster lines for clid %s, want one cluster:\n%s", s.name, len(lines), clid, tree)
					}
				} else {
					t.Logf("service %s, different PFS names: %d Cluster lines for clid %s: %q", s.name, len(lines), clid, lines)
				}
			}
		})
	}
}

var (
	svcRaceOnce sync.Once
	svcRaceErr  error
)

// svcRaceBinary is a race-built hammer2 binary (the harness's own when
// H2_TEST_RACE_BINARY is set), in a directory of its own beside the
// harness's binary so that TestMain removes it: this test binary when it
// is race-built itself (go test -race), else built. Its dependencies are
// in the build cache already when the tests run with -race, so a build
// takes seconds.
func svcRaceBinary(t *testing.T) string {
	t.Helper()
	plain := h2Binary(t)
	if os.Getenv("H2_TEST_RACE_BINARY") != "" {
		return plain
	}
	dir := filepath.Join(filepath.Dir(plain), "race")
	bin := filepath.Join(dir, "hammer2")
	svcRaceOnce.Do(func() {
		if svcRaceErr = os.Mkdir(dir, 0o755); svcRaceErr != nil {
			return
		}
		if raceEnabled {
			svcRaceErr = copySelf(bin)
		} else {
			svcRaceErr = goBuild(bin, true)
		}
	})
	if svcRaceErr != nil {
		t.Fatalf("making the race-detecting hammer2 binary: %v", svcRaceErr)
	}
	return bin
}

// TestServiceShell: the debug shell over TCP and over the Unix socket,
// and `span <host>` linking two services at once.
func TestServiceShell(t *testing.T) {
	t.Parallel()
	s1, s2 := newSvcNode(t, "sh1", daemonOpts{}), newSvcNode(t, "sh2", daemonOpts{})
	s1.trustSvcs(s2) // trusted both ways, but no autoconn
	s2.trustSvcs(s1)
	l1, l2 := newSvcLeaf(t, "m", PFSInfo{}), newSvcLeaf(t, "n", PFSInfo{})
	s1.start()
	s2.start()
	startLeafOn(l1, s1)
	startLeafOn(l2, s2)

	for _, target := range []string{s1.tcp, "unix:" + s1.sock} {
		out, errOut, code := svcShell(t, s1.bin, s1.cfgPath, target, "help", "ping", "bogus")
		if code != 0 {
			t.Errorf("shell %s: exit %d: %s", target, code, errOut)
		}
		if !strings.HasPrefix(out, "Debug Shell received LNK_CONN") {
			t.Errorf("shell %s: output does not start with %q:\n%s", target, "Debug Shell received LNK_CONN", out)
		}
		for _, want := range []string{"tree ", "ping ", "span <host>", "ping reply", "Unrecognized command: bogus", shellPrompt} {
			if !strings.Contains(out, want) {
				t.Errorf("shell %s: output lacks %q:\n%s", target, want, out)
			}
		}
	}

	// Before span: s1 knows only its own leaf.
	if tree := s1.tree(); strings.Contains(tree, l2.info.Fsid.String()) || !strings.Contains(tree, l1.info.Fsid.String()) {
		t.Errorf("s1's tree before span should hold only %s's PFS:\n%s", l1.name, tree)
	}
	// s1's remote_dir names 127.0.0.1 (for its shell), so a bare
	// 127.0.0.1 target would be DragonFly's TCP: quic: says QUIC.
	out, errOut, code := svcShell(t, s1.bin, s1.cfgPath, s1.tcp, "span quic:"+s2.udp)
	if code != 0 || !strings.Contains(out, "Connected to quic:"+s2.udp+" (quic)") {
		t.Fatalf("shell span %s: exit %d, output:\n%s%s", s2.udp, code, out, errOut)
	}
	s1.waitStatus(10*time.Second, l2.name+"'s PFS in s1's table after span", func(st ServiceStatus) bool {
		return st.node(l2.info.Fsid) != nil
	})
	if tree := s1.tree(); !strings.Contains(tree, "dist=1 via node quic:"+s2.udp) {
		t.Errorf("s1's tree should hold %s's PFS at dist 1 via the spanned link to %s:\n%s", l2.name, s2.udp, tree)
	}
	// And the leaves see each other through the new link.
	svcWaitEach(t, time.Now(), 10*time.Second, "leaves see each other after span", []*leafNode{l1, l2},
		func(i int, v svcLeafView) bool {
			p := []*leafNode{l2, l1}[i]
			sp := v.of(p)
			return len(sp) == 1 && sp[0].Dist == 2
		})

	// span to a node that is not there fails, and says so.
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(freeUDPPort(t)))
	out, _, _ = svcShell(t, s1.bin, "", "unix:"+s1.sock, "span "+dead)
	if !strings.Contains(out, "Connection to "+dead+" failed") {
		t.Errorf("shell span to a dead address: output lacks %q:\n%s", "Connection to "+dead+" failed", out)
	}
}

// TestServiceAlreadyRunning: starting a service whose sockets another one
// holds is success, silent with -q, in the foreground and in the
// background.
func TestServiceAlreadyRunning(t *testing.T) {
	t.Parallel()
	s := newSvcNode(t, "once", daemonOpts{})
	s.start()
	pid := s.pid()
	var strays []int
	t.Cleanup(func() {
		for _, p := range strays {
			if procAlive(p) {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	bgPid := regexp.MustCompile(`pid (\d+)`)
	for _, fg := range []bool{true, false} {
		for _, quiet := range []bool{true, false} {
			what := fmt.Sprintf("second service (foreground %v, -q %v)", fg, quiet)
			out, errOut, code := runH2(t, s.bin, s.args(quiet, fg)...)
			if m := bgPid.FindStringSubmatch(errOut); m != nil {
				if p, _ := strconv.Atoi(m[1]); p > 0 && p != pid {
					strays = append(strays, p)
				}
			}
			if code != 0 {
				t.Errorf("%s: exit %d, want 0; stdout %q stderr %q", what, code, out, errOut)
			}
			if quiet {
				if out != "" || errOut != "" {
					t.Errorf("%s: printed stdout %q stderr %q, want nothing", what, out, errOut)
				}
			} else if !strings.Contains(errOut, "daemon already running") || out != "" {
				t.Errorf("%s: stdout %q stderr %q, want %q on stderr", what, out, errOut, "daemon already running")
			}
		}
	}
	if !s.running() || s.pid() != pid {
		t.Fatal("the first service is gone after the second starts")
	}
	if b, err := os.ReadFile(strings.TrimSuffix(s.sock, ".sock") + ".pid"); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Errorf("pid file holds %q (%v), want the first service's pid %d", b, err, pid)
	}
	if c := strings.Count(s.logText(), "service running"); c != 1 {
		t.Errorf("%d services ran with this log, want 1", c)
	}
	// The first still answers on both sockets.
	for _, target := range []string{s.tcp, "unix:" + s.sock} {
		if out, _, code := svcShell(t, s.bin, s.cfgPath, target, "ping"); code != 0 || !strings.Contains(out, "ping reply") {
			t.Errorf("the first service no longer answers on %s: exit %d:\n%s", target, code, out)
		}
	}
}

// TestServiceLeafSIGTERM: a leaf on a service stops cleanly; the other
// leaf on that service sees its span withdrawn at once, long before any
// dead-peer bound (set to 10s here) could do it.
func TestServiceLeafSIGTERM(t *testing.T) {
	t.Parallel()
	s := newSvcNode(t, "term", daemonOpts{DeadAfter: "10s"})
	mk := func(name string) *leafNode {
		l := newSvcLeaf(t, name, PFSInfo{})
		l.opts.DeadAfter, l.opts.RemoteDeadAfter = "10s", "10s"
		l.writeConfig("")
		return l
	}
	a, b := mk("p"), mk("q")
	s.start()
	startLeafOn(a, s)
	startLeafOn(b, s)
	svcWaitEach(t, time.Now(), 10*time.Second, "each leaf sees the other at dist 1", []*leafNode{a, b},
		func(i int, v svcLeafView) bool {
			sp := v.of([]*leafNode{b, a}[i])
			return len(sp) == 1 && sp[0].Dist == 1
		})
	a.signal(syscall.SIGTERM)
	sent := time.Now()
	took := svcWaitEach(t, sent, 5*time.Second, "the stopped leaf's span withdrawn", []*leafNode{b},
		func(_ int, v svcLeafView) bool { return len(v.of(a)) == 0 })
	t.Logf("b lost a's span %v after SIGTERM", took[0].Round(time.Millisecond))
	if took[0] >= time.Second {
		t.Errorf("b kept a's span %v after a was SIGTERMed; want < 1s", took[0].Round(time.Millisecond))
	}
	if code, ok := a.waitExit(8 * time.Second); !ok || code != 0 {
		t.Errorf("a after SIGTERM: exited %v, code %d; want a clean exit 0", ok, code)
	}
	if tree := s.tree(); strings.Contains(tree, a.info.Fsid.String()) {
		t.Errorf("the service still holds the stopped leaf's PFS:\n%s", tree)
	}
	// b's own link is untouched, and a comes back.
	startLeafOn(a, s)
	svcWaitEach(t, time.Now(), 10*time.Second, "a's span back after it restarted", []*leafNode{b},
		func(_ int, v svcLeafView) bool { sp := v.of(a); return len(sp) == 1 && sp[0].Dist == 1 })
}

// TestServiceLeafListenNone: a leaf on a service with --listen none (the
// configuration the other tests use) must not take inbound QUIC links. It
// still needs a UDP socket to dial from, but a trusted node that finds that
// socket must not get a link that looks up and carries nothing.
func TestServiceLeafListenNone(t *testing.T) {
	t.Parallel()
	s := newSvcNode(t, "ln", daemonOpts{})
	l := newSvcLeaf(t, "nolisten", PFSInfo{})
	// The dialer gives each handshake 400 ms, not the tests' usual 1 s:
	// one with a QUIC node that listens takes milliseconds on loopback,
	// so the two that nothing answers still prove it, in half the time.
	d := newLeafNode(t, "dialer", daemonOpts{RemoteDeadAfter: "400ms"})
	l.trust(d)
	d.trust(l)
	s.start()
	startLeafOn(l, s)
	m := regexp.MustCompile(`msg="leaf starting".* listen=\S*:(\d+) `).FindStringSubmatch(l.logText())
	if m == nil {
		t.Fatalf("the leaf's log does not say which UDP port it dials from:\n%s", l.logText())
	}
	port := m[1]
	target := "127.0.0.1:" + port
	d.writeConfig(fmt.Sprintf("\n[[remote]]\naddress = %q\nname = %q\n", target, l.name))
	d.start()
	// Every status line of d from its start: the link to target must
	// never be up, through two failed attempts (each a handshake that
	// nothing answers, then a backoff).
	began := time.Now()
	failures, prev := 0, ""
	d.waitStatusSince(began, 15*time.Second, "two failed dials of the --listen none leaf's socket", func(st procStatus) bool {
		r := st.remote(target)
		if r != nil && r.State == DialUp {
			t.Fatalf("a leaf started with --listen none accepted a QUIC link on its dial socket %s: the dialer's link "+
				"is up with %d spans (a dial-only QUIC node must not listen)\n%s", target, len(st.Leaf.Spans), st.raw)
		}
		state := ""
		if r != nil {
			state = r.State
		}
		if state == DialBackoff && prev != DialBackoff {
			failures++
		}
		prev = state
		return failures == 2
	})
	if v := svcView(l); len(v.Spans) != 0 {
		t.Errorf("the --listen none leaf shows spans from a node it should not have accepted: %v", v.Spans)
	}
}

// svcProbeConn connects to a service's Unix socket as a leaf would, its
// LNK_CONN written in the same breath as the connect (so that it is
// usually waiting when the service starts reading), and waits until the
// service relays the span of pfs to it (the pfs_id's bytes go by), then
// drops the connection.
func svcProbeConn(sock string, pfs UUID) error {
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	c := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1, PeerLabel: "probe"}
	m := &Msg{Header: Header{MsgID: 1, Cmd: CmdLnkConn | FlagCreate}, Ext: c.Marshal()}
	if _, err := conn.Write(m.AppendWire(nil, 0)); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var seen []byte
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		seen = append(seen, buf[:n]...)
		if bytes.Contains(seen, pfs[:]) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("no span of the leaf's PFS (%d bytes read): %w", len(seen), err)
		}
	}
}
