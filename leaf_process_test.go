//go:build !dragonfly

package main

// End-to-end tests of the hammer2 binary: leaves run as real processes on
// 127.0.0.1, with their own keys, config files and PFS directories, and are
// inspected the way an operator would, with `hammer2 status --json`.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// leafNode is one leaf process with its directories, key and config.
type leafNode struct {
	*daemonProc
	dir     string // everything of this node lives under it
	pfs     string // the PFS directory
	cfgPath string
	keyDir  string
	port    int
	addr    string // 127.0.0.1:port
	pub     string // "ed25519:..."
	fp      string // SHA256:...
	info    PFSInfo
	opts    daemonOpts
}

// newLeafNode prepares a leaf (PFS, key, config) without starting it.
func newLeafNode(t *testing.T, name string, o daemonOpts) *leafNode {
	t.Helper()
	bin := h2Binary(t)
	dir := shortTempDir(t)
	n := &leafNode{daemonProc: newDaemon(t, "leaf", name, bin, filepath.Join(dir, "leaf.log")), dir: dir,
		pfs: filepath.Join(dir, "pfs"), cfgPath: filepath.Join(dir, "leaf.toml"), keyDir: filepath.Join(dir, "keys"),
		opts: o.withDefaults()}
	n.port = freeUDPPort(t)
	n.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(n.port))
	n.info = PFSInfo{Label: "pfs-" + name, Clid: testClusterID, Fsid: NewUUID(), Type: PFSMaster}
	if err := CreatePFS(n.pfs, n.info); err != nil {
		t.Fatal(err)
	}
	n.writeConfig("")
	out, errOut, code := n.h2("keygen")
	if code != 0 {
		t.Fatalf("%s: keygen exit %d: %s", name, code, errOut)
	}
	n.pub = strings.TrimSpace(out)
	pub, err := ParsePublicKey(n.pub)
	if err != nil {
		t.Fatalf("%s: keygen printed %q: %v", name, out, err)
	}
	n.fp = Fingerprint(pub)
	return n
}

// testClusterID is the pfs_clid every test PFS belongs to.
var testClusterID = NewUUID()

// configText is the node's config with extra appended (extra [[remote]]s).
func (n *leafNode) configText(extra string) string {
	o := n.opts
	return fmt.Sprintf(`# test leaf %s
key_dir = %q
listen = %q
remote_dead_after = %q
dead_after = %q
ping_interval = %q
redial_min = %q
redial_max = %q
%s`, n.name, n.keyDir, n.addr, o.RemoteDeadAfter, o.DeadAfter, o.PingInterval, o.RedialMin, o.RedialMax, extra)
}

func (n *leafNode) writeConfig(extra string) {
	n.t.Helper()
	if err := os.WriteFile(n.cfgPath, []byte(n.configText(extra)), 0o600); err != nil {
		n.t.Fatal(err)
	}
}

// remoteTOML is a [[remote]] table naming peer's address (not its key:
// keys are trusted with trust()).
func remoteTOML(peers ...*leafNode) string {
	var b strings.Builder
	for _, p := range peers {
		fmt.Fprintf(&b, "\n[[remote]]\naddress = %q\nname = %q\n", p.addr, p.name)
	}
	return b.String()
}

// trust puts each peer's public key line in n's remote/<name>.pub.
func (n *leafNode) trust(peers ...*leafNode) {
	n.t.Helper()
	dir := filepath.Join(n.keyDir, "remote")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		n.t.Fatal(err)
	}
	for _, p := range peers {
		if err := os.WriteFile(filepath.Join(dir, p.name+".pub"), []byte(p.pub+"\n"), 0o644); err != nil {
			n.t.Fatal(err)
		}
	}
}

// h2 runs `hammer2 -c <config> args...` to completion (at most 20 s).
func (n *leafNode) h2(args ...string) (stdout, stderr string, code int) {
	n.t.Helper()
	return runH2(n.t, n.bin, append([]string{"-c", n.cfgPath}, args...)...)
}

// start runs the leaf in the foreground (-d) and waits until it is ready.
func (n *leafNode) start() {
	n.t.Helper()
	n.startArgs(n.addr, "-d", "leaf", "--listen", n.addr, n.pfs)
}

// startArgs starts the leaf with hammer2 -c <config> args, banner saying
// how in its log.
func (n *leafNode) startArgs(banner string, args ...string) {
	n.t.Helper()
	n.daemonProc.start(append([]string{"-c", n.cfgPath}, args...), banner, "leaf ready", n.controlPath())
}

// controlPath is where the leaf of the node's PFS (as it is now: a test
// may replace the PFS before starting) listens for control requests.
func (n *leafNode) controlPath() string {
	return filepath.Join(n.pfs, "leaf-"+n.info.Fsid.String()+".sock")
}

// procStatusDoc is what `hammer2 status --json` prints, as a script
// reads it.
type procStatusDoc struct {
	SchemaVersion int          `json:"schema_version"`
	PFS           []procStatus `json:"pfs"`
}

// procStatus is `hammer2 status --json` for one PFS, as a script reads it.
type procStatus struct {
	Path    string `json:"path"`
	Running bool   `json:"leaf_running"`
	Error   string `json:"leaf_error"`
	Slots   []struct {
		CopyID int    `json:"copy_id"`
		Path   string `json:"path"`
	} `json:"slots"`
	Health struct {
		State   string   `json:"state"`
		Reasons []string `json:"reasons"`
	} `json:"health"`
	Leaf *struct {
		Label    string         `json:"label"`
		Pid      int            `json:"pid"`
		Listen   string         `json:"listen"`
		NodeKey  string         `json:"node_key"`
		Kernel   procLinkStat   `json:"kernel"`
		Remotes  []procLinkStat `json:"remotes"`
		Inbound  []procLinkStat `json:"inbound"`
		Spans    []procSpanStat `json:"spans"`
		Backbone *procLinkStat  `json:"backbone"`
	} `json:"leaf"`
	raw string
}

type procLinkStat struct {
	Target  string `json:"target"`
	Slots   []int  `json:"slots"`
	State   string `json:"state"`
	Since   string `json:"since"`
	LastErr string `json:"last_error"`
	PeerKey string `json:"peer_key"`
	// Transport is "quic", "tcp" or "tcp+rsa" while up ("" for a Unix
	// backbone).
	Transport string `json:"transport"`
}

type procSpanStat struct {
	Label string `json:"label"`
	PfsID string `json:"pfs_id"`
	Via   string `json:"via"`
}

func (s procStatus) remote(addr string) *procLinkStat {
	if s.Leaf == nil {
		return nil
	}
	for i := range s.Leaf.Remotes {
		if s.Leaf.Remotes[i].Target == addr {
			return &s.Leaf.Remotes[i]
		}
	}
	return nil
}

func (s procStatus) remoteUp(addr string) bool {
	r := s.remote(addr)
	return r != nil && r.State == DialUp
}

// spansOf counts the spans advertising peer's PFS.
func (s procStatus) spansOf(peer *leafNode) int {
	if s.Leaf == nil {
		return 0
	}
	c := 0
	for _, sp := range s.Leaf.Spans {
		if sp.Label == peer.info.Label && sp.PfsID == peer.info.Fsid.String() {
			c++
		}
	}
	return c
}

func (s procStatus) inboundUp() int {
	if s.Leaf == nil {
		return 0
	}
	c := 0
	for _, l := range s.Leaf.Inbound {
		if l.State == DialUp {
			c++
		}
	}
	return c
}

// status runs `hammer2 status --json` on the node's PFS: what a script
// sees, through the CLI.
func (n *leafNode) status() procStatus {
	n.t.Helper()
	out, errOut, code := n.h2("status", "--json", n.pfs)
	if code != 0 {
		n.t.Fatalf("%s: status exit %d: %s", n.name, code, errOut)
	}
	var doc procStatusDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.PFS) != 1 || doc.SchemaVersion != statusSchemaVersion {
		n.t.Fatalf("%s: status --json printed %q: %v", n.name, out, err)
	}
	doc.PFS[0].raw = out
	return doc.PFS[0]
}

// procStatusOf is a watched status line as `hammer2 status --json`
// prints it for the node's PFS (slots and all).
func (n *leafNode) procStatusOf(r *controlResponse) procStatus {
	n.t.Helper()
	var slots []Volconf
	if _, err := os.Stat(n.pfs); err == nil { // OpenPFS would make it anew
		if pfs, err := OpenPFS(n.pfs); err == nil {
			slots, _ = pfs.RemoteScan()
			pfs.Close()
		}
	}
	s := newStatusJSON(n.pfs, slots, r.Status, nil)
	raw, err := json.MarshalIndent(leafStatusDoc{SchemaVersion: statusSchemaVersion, PFS: []statusJSON{s}}, "", "  ")
	if err != nil {
		n.t.Fatal(err)
	}
	var doc procStatusDoc
	if err := json.Unmarshal(raw, &doc); err != nil || len(doc.PFS) != 1 {
		n.t.Fatalf("%s: status %s: %v", n.name, raw, err)
	}
	doc.PFS[0].raw = string(raw)
	return doc.PFS[0]
}

// waitStatus waits until a status update of the leaf satisfies cond (the
// current status first), for at most d, and returns that status.
func (n *leafNode) waitStatus(d time.Duration, what string, cond func(procStatus) bool) procStatus {
	n.t.Helper()
	st, _ := n.waitStatusSince(time.Now(), d, what, cond)
	return st
}

// waitStatusSince is waitStatus looking from the status as it was at
// since, and also says when the satisfying update came.
func (n *leafNode) waitStatusSince(since time.Time, d time.Duration, what string, cond func(procStatus) bool) (procStatus, time.Time) {
	n.t.Helper()
	var st procStatus
	u, ok := n.watch.waitSince(since, d, func(r *controlResponse) bool {
		st = n.procStatusOf(r)
		return cond(st)
	})
	if !ok {
		last := "(none: the leaf is not running)"
		if u.resp != nil {
			last = n.procStatusOf(u.resp).raw
		}
		n.t.Fatalf("%s: %s: not within %v; last status:\n%s", n.name, what, d, last)
	}
	return st, u.at
}

// now is the leaf's current status, asked over its control socket.
func (n *leafNode) now() procStatus {
	n.t.Helper()
	r := n.query()
	if r == nil {
		n.t.Fatalf("%s: no status: the leaf is not running", n.name)
	}
	return n.procStatusOf(r)
}

// startPair starts a and b trusting each other, a dialing b from its
// config, and waits until the link is up on both sides.
func startPair(t *testing.T, o daemonOpts) (a, b *leafNode) {
	t.Helper()
	a, b = newLeafNode(t, "a", o), newLeafNode(t, "b", o)
	a.trust(b)
	b.trust(a)
	a.writeConfig(remoteTOML(b))
	b.start()
	a.start()
	waitLinked(t, a, b)
	return a, b
}

// waitLinked waits until a's remote link to b is up and each side has
// the other's span.
func waitLinked(t *testing.T, a, b *leafNode) (procStatus, procStatus) {
	t.Helper()
	sa := a.waitStatus(10*time.Second, "link to "+b.name+" up with its span", func(s procStatus) bool {
		return s.remoteUp(b.addr) && s.spansOf(b) >= 1
	})
	sb := b.waitStatus(10*time.Second, "inbound link from "+a.name+" with its span", func(s procStatus) bool {
		return s.inboundUp() >= 1 && s.spansOf(a) >= 1
	})
	return sa, sb
}

func TestProcessLinksUp(t *testing.T) {
	t.Parallel()
	a, b := startPair(t, daemonOpts{})
	sa, sb := waitLinked(t, a, b)
	r := sa.remote(b.addr)
	if r.PeerKey != b.fp {
		t.Errorf("a's link to b: peer_key %q, want b's fingerprint %q", r.PeerKey, b.fp)
	}
	if sa.Leaf.NodeKey != a.fp || sb.Leaf.NodeKey != b.fp {
		t.Errorf("node_key: a %q (want %q), b %q (want %q)", sa.Leaf.NodeKey, a.fp, sb.Leaf.NodeKey, b.fp)
	}
	if sa.Leaf.Listen != a.addr {
		t.Errorf("a listens on %q, want %q", sa.Leaf.Listen, a.addr)
	}
	if got := sb.Leaf.Inbound[0]; got.Target != a.addr || got.PeerKey != a.fp {
		t.Errorf("b's inbound link: target %q key %q, want %q %q", got.Target, got.PeerKey, a.addr, a.fp)
	}
	// The text form an operator reads.
	out, _, code := a.h2("status", a.pfs)
	if code != 0 || !strings.Contains(out, "config    "+b.addr+" up") || !strings.Contains(out, b.info.Label) {
		t.Errorf("a's status (exit %d) lacks the config link to b up and b's span:\n%s", code, out)
	}
}

// killNoticedWithin bounds how long a leaf takes to notice that its peer
// was killed: remote_dead_after (1 s in these tests) is the QUIC idle
// bound that tells it, and the rest is margin for a loaded two-core
// machine, whose timers and scheduling run late. It is timed from the
// status line that showed the link down, not from when a poll found it.
const killNoticedWithin = 4 * time.Second

func TestProcessKillAndRestartPeer(t *testing.T) {
	t.Parallel()
	a, b := startPair(t, daemonOpts{})
	b.kill9()
	killed := time.Now()
	st, at := a.waitStatusSince(killed, 10*time.Second, "link to the killed b down and its span withdrawn", func(s procStatus) bool {
		r := s.remote(b.addr)
		return r != nil && r.State != DialUp && s.spansOf(b) == 0
	})
	took := at.Sub(killed)
	t.Logf("a noticed b's death after %v: %+v", took.Round(time.Millisecond), *st.remote(b.addr))
	if took > killNoticedWithin {
		t.Errorf("a took %v to notice b was killed; remote_dead_after is 1s, want <= %v", took, killNoticedWithin)
	}
	if s := st.remote(b.addr).State; s != DialBackoff && s != DialDialing {
		t.Errorf("a's link to the dead b is %q, want backoff or dialing", s)
	}

	b.start() // same key, same port, same PFS directory
	restarted := time.Now()
	_, at = a.waitStatusSince(restarted, 10*time.Second, "link to the restarted b up with its span", func(s procStatus) bool {
		return s.remoteUp(b.addr) && s.spansOf(b) >= 1
	})
	waitLinked(t, a, b)
	// redial_max is 500 ms: a redials within that of b's return; the rest
	// is the handshake and margin for a loaded machine.
	t.Logf("link back up %v after b restarted", at.Sub(restarted).Round(time.Millisecond))
	if d := at.Sub(restarted); d > 5*time.Second {
		t.Errorf("link took %v to come back after b restarted (redial_max 500ms)", d)
	}
	if n := b.status().spansOf(a); n != 1 {
		t.Errorf("b has %d spans of a after the restart, want 1", n)
	}
}

// TestProcessKillAndRestartDialer: the accepting side notices a killed
// dialer as fast as the dialer notices a killed peer, and the restarted
// dialer links again. (A test of its own beside
// TestProcessKillAndRestartPeer: each waits out remote_dead_after once.)
func TestProcessKillAndRestartDialer(t *testing.T) {
	t.Parallel()
	a, b := startPair(t, daemonOpts{})
	a.kill9()
	killed := time.Now()
	_, at := b.waitStatusSince(killed, 10*time.Second, "the killed a's inbound link and span gone", func(s procStatus) bool {
		return s.inboundUp() == 0 && s.spansOf(a) == 0
	})
	if took := at.Sub(killed); took > killNoticedWithin {
		t.Errorf("b took %v to notice a was killed; remote_dead_after is 1s, want <= %v", took, killNoticedWithin)
	}
	a.start()
	waitLinked(t, a, b)
}

func TestProcessUntrustedKeyRefused(t *testing.T) {
	t.Parallel()
	a, b := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "b", daemonOpts{})
	a.trust(b) // but b does not trust a
	a.writeConfig(remoteTOML(b))
	b.start()
	a.start()
	st := a.waitStatus(10*time.Second, "link to b refused", func(s procStatus) bool {
		r := s.remote(b.addr)
		return r != nil && r.State == DialRefused
	})
	r := st.remote(b.addr)
	if !strings.Contains(r.LastErr, a.fp) {
		t.Errorf("a's last_error %q does not name a's refused key %s", r.LastErr, a.fp)
	}
	if st.spansOf(b) != 0 {
		t.Errorf("a has b's span over a refused link")
	}
	// The refusing side says who knocked: address and fingerprint.
	b.waitLogLine(5*time.Second, "a line naming a's address "+a.addr+" and fingerprint "+a.fp, func(line string) bool {
		return strings.Contains(line, a.addr) && strings.Contains(line, a.fp)
	})
	if sb := b.status(); sb.inboundUp() != 0 || sb.spansOf(a) != 0 {
		t.Errorf("b accepted the untrusted a:\n%s", sb.raw)
	}

	// Once b trusts a and rereads its keys, the link comes up.
	b.trust(a)
	b.signal(syscall.SIGHUP)
	waitLinked(t, a, b)
}

func TestProcessUntrustedPeerKey(t *testing.T) {
	t.Parallel()
	// The dialing side refuses: a dials c but does not trust c's key.
	a, c := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "c", daemonOpts{})
	c.trust(a)
	a.writeConfig(remoteTOML(c))
	c.start()
	a.start()
	st := a.waitStatus(10*time.Second, "link to untrusted c refused", func(s procStatus) bool {
		r := s.remote(c.addr)
		return r != nil && r.State == DialRefused
	})
	if r := st.remote(c.addr); !strings.Contains(r.LastErr, c.fp) {
		t.Errorf("a's last_error %q does not name c's untrusted key %s", r.LastErr, c.fp)
	}
	// The status may show the refusal before the log line is written.
	a.waitLog(5*time.Second, c.fp)
	if sc := c.status(); sc.inboundUp() != 0 || sc.spansOf(a) != 0 {
		t.Errorf("c has a link from a that a refused:\n%s", sc.raw)
	}
	// Trusting c and reloading brings the link up.
	a.trust(c)
	a.signal(syscall.SIGHUP)
	waitLinked(t, a, c)
}

func TestProcessConnectDisconnect(t *testing.T) {
	t.Parallel()
	a, b := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "b", daemonOpts{})
	a.trust(b)
	b.trust(a)
	b.start()
	a.start()
	target := "span:" + b.addr
	if _, errOut, code := a.h2("-s", a.pfs, "connect", target); code != 0 {
		t.Fatalf("connect: exit %d: %s", code, errOut)
	}
	st := a.waitStatus(10*time.Second, "connect: link to b up with its span", func(s procStatus) bool {
		return s.remoteUp(b.addr) && s.spansOf(b) == 1
	})
	if len(st.Slots) != 1 || st.Slots[0].Path != target || st.Slots[0].CopyID != 1 {
		t.Errorf("after connect the slots are %+v, want slot 1 = %s", st.Slots, target)
	}
	if r := st.remote(b.addr); len(r.Slots) != 1 || r.Slots[0] != 1 {
		t.Errorf("the link to b has slots %v, want [1]", r.Slots)
	}
	b.waitStatus(10*time.Second, "inbound link from a with its span", func(s procStatus) bool {
		return s.inboundUp() == 1 && s.spansOf(a) == 1
	})

	if _, errOut, code := a.h2("-s", a.pfs, "disconnect", target); code != 0 {
		t.Fatalf("disconnect: exit %d: %s", code, errOut)
	}
	st = a.status() // disconnect returns after the leaf has rescanned
	if len(st.Slots) != 0 || st.remote(b.addr) != nil {
		t.Errorf("after disconnect: slots %+v, link to b %+v; want neither", st.Slots, st.remote(b.addr))
	}
	a.waitStatus(5*time.Second, "b's span gone from a", func(s procStatus) bool { return s.spansOf(b) == 0 })
	b.waitStatus(5*time.Second, "a's link and span gone from b", func(s procStatus) bool {
		return s.inboundUp() == 0 && s.spansOf(a) == 0
	})
	if _, errOut, code := a.h2("-s", a.pfs, "disconnect", target); code == 0 || !strings.Contains(errOut, target) {
		t.Errorf("a second disconnect: exit %d, stderr %q; want a failure naming the target", code, errOut)
	}
}

func TestProcessSecondLeafRefused(t *testing.T) {
	t.Parallel()
	a := newLeafNode(t, "a", daemonOpts{})
	a.start()
	other := net.JoinHostPort("127.0.0.1", strconv.Itoa(freeUDPPort(t)))
	for _, fg := range []bool{true, false} {
		args := []string{"leaf", "--listen", other, a.pfs}
		if fg {
			args = append([]string{"-d"}, args...)
		}
		_, errOut, code := a.h2(args...)
		if code != 1 || !strings.Contains(errOut, "already running") || !strings.Contains(errOut, strconv.Itoa(a.pid())) {
			t.Errorf("second leaf (foreground %v): exit %d, stderr %q; want exit 1 saying a leaf is already running with pid %d",
				fg, code, errOut, a.pid())
		}
	}
	if st := a.status(); !st.Running || st.Leaf.Pid != a.pid() {
		t.Errorf("the first leaf is not the one answering after the refused starts:\n%s", st.raw)
	}
}

func TestProcessSIGTERMWithdrawsSpan(t *testing.T) {
	t.Parallel()
	// With 10 s before a silent peer counts as dead, only DELETEs sent at
	// exit can make b forget a's span within a second or two.
	a, b := startPair(t, daemonOpts{RemoteDeadAfter: "10s", DeadAfter: "10s"})
	a.signal(syscall.SIGTERM)
	sent := time.Now()
	code, ok := a.waitExit(8 * time.Second)
	if !ok {
		t.Fatal("a still running 8s after SIGTERM")
	}
	if code != 0 {
		t.Errorf("a exited with %d after SIGTERM, want 0", code)
	}
	b.waitStatus(3*time.Second, "a's span withdrawn and its link gone", func(s procStatus) bool {
		return s.spansOf(a) == 0 && s.inboundUp() == 0
	})
	t.Logf("b forgot a %v after SIGTERM", time.Since(sent).Round(time.Millisecond))
	if !strings.Contains(a.logText(), "leaf stopped") {
		t.Error(`a's log lacks "leaf stopped"`)
	}
	if _, err := os.Stat(filepath.Join(a.pfs, "leaf-"+a.info.Fsid.String()+".pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file left after a clean exit: %v", err)
	}
}

// waitPidfd waits up to d for the process behind pidfd to exit.
func waitPidfd(t testing.TB, pidfd int, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(max(time.Until(deadline), 0).Milliseconds()))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			t.Fatalf("poll on a pidfd: %v", err)
		}
		return n > 0
	}
}

func TestProcessBackground(t *testing.T) {
	t.Parallel()
	a := newLeafNode(t, "a", daemonOpts{})
	pidPath := filepath.Join(a.pfs, "leaf-"+a.info.Fsid.String()+".pid")
	logPath := filepath.Join(a.pfs, "leaf-"+a.info.Fsid.String()+".log")
	var pid int
	t.Cleanup(func() {
		if pid > 0 && procAlive(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("background log:\n%s", b)
		}
	})
	start := time.Now()
	// Started as the mount helper would: by its hammer2-leaf name.
	_, errOut, code := runH2(t, filepath.Join(filepath.Dir(a.bin), "hammer2-leaf"), "-c", a.cfgPath, "--listen", a.addr, a.pfs)
	if code != 0 {
		t.Fatalf("background start: exit %d: %s", code, errOut)
	}
	t.Logf("background start returned after %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(errOut))
	b, err := os.ReadFile(pidPath)
	if err != nil {
		t.Fatalf("no pid file after a background start: %v", err)
	}
	pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !procAlive(pid) {
		t.Fatalf("pid file holds %q (%v), not a running process", b, err)
	}
	st := a.status()
	if !st.Running || st.Leaf.Pid != pid || st.Leaf.Listen != a.addr {
		t.Errorf("status of the background leaf does not match pid %d listen %s:\n%s", pid, a.addr, st.raw)
	}
	// Not our child (it detached): its exit is seen through a pidfd.
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatalf("pidfd of the background leaf %d: %v", pid, err)
	}
	defer unix.Close(pidfd)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !waitPidfd(t, pidfd, 8*time.Second) {
		t.Fatalf("background leaf %d still running 8s after SIGTERM", pid)
	}
	if _, err := os.Stat(pidPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pid file left after SIGTERM: %v", err)
	}
	if st := a.status(); st.Running {
		t.Errorf("status still finds a running leaf:\n%s", st.raw)
	}
	if lb, _ := os.ReadFile(logPath); !bytes.Contains(lb, []byte("leaf ready")) || !bytes.Contains(lb, []byte("leaf stopped")) {
		t.Errorf("background log %s lacks the ready and stopped lines:\n%s", logPath, lb)
	}
}

func TestProcessExitsWhenPFSRemoved(t *testing.T) {
	t.Parallel()
	a := newLeafNode(t, "a", daemonOpts{})
	a.start()
	if err := os.RemoveAll(a.pfs); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	code, ok := a.waitExit(6 * time.Second)
	if !ok {
		t.Fatal("leaf still running 6s after its PFS directory was removed")
	}
	t.Logf("leaf exited %v after the PFS went away, exit %d", time.Since(removed).Round(time.Millisecond), code)
	if code != 0 {
		t.Errorf("leaf exit code %d after its PFS went away, want 0", code)
	}
	if !strings.Contains(a.logText(), "no longer mounted") {
		t.Error("the log does not say why the leaf exited")
	}
}

func TestProcessConfigUnknownKey(t *testing.T) {
	t.Parallel()
	a := newLeafNode(t, "a", daemonOpts{})
	text := a.configText("") + "bogus_key = 1\n"
	line := strings.Count(text, "\n") // bogus_key is on the last line
	if err := os.WriteFile(a.cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"-d", "leaf", a.pfs}, {"leaf", a.pfs}} {
		_, errOut, code := a.h2(args...)
		want := fmt.Sprintf("%s:%d", a.cfgPath, line)
		if code != 1 || !strings.Contains(errOut, want) || !strings.Contains(errOut, "bogus_key") {
			t.Errorf("hammer2 %s with an unknown key: exit %d, stderr %q; want exit 1 naming %s and bogus_key",
				strings.Join(args, " "), code, errOut, want)
		}
	}
	// A remote table with an unknown key too.
	text = a.configText("\n[[remote]]\naddress = \"127.0.0.1:1\"\nport = 5\n")
	line = strings.Count(text, "\n")
	if err := os.WriteFile(a.cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := a.h2("-d", "leaf", a.pfs)
	if want := fmt.Sprintf("%s:%d", a.cfgPath, line); code != 1 || !strings.Contains(errOut, want) || !strings.Contains(errOut, "port") {
		t.Errorf("unknown key in [[remote]]: exit %d, stderr %q; want exit 1 naming %s and port", code, errOut, want)
	}
}

func TestProcessSIGHUPAddsRemote(t *testing.T) {
	t.Parallel()
	a, b := startPair(t, daemonOpts{})
	c := newLeafNode(t, "c", daemonOpts{})
	c.trust(a)
	c.start()
	before := a.status().remote(b.addr)
	// Trust c and name it in the config, then reload.
	a.trust(c)
	a.writeConfig(remoteTOML(b, c))
	a.signal(syscall.SIGHUP)
	st := a.waitStatus(10*time.Second, "link to c up after SIGHUP", func(s procStatus) bool {
		return s.remoteUp(c.addr) && s.spansOf(c) == 1
	})
	after := st.remote(b.addr)
	if after == nil || after.State != DialUp || after.Since != before.Since {
		t.Errorf("the link to b changed across SIGHUP: before %+v, after %+v", *before, after)
	}
	if st.spansOf(b) != 1 {
		t.Errorf("a has %d spans of b after SIGHUP, want 1", st.spansOf(b))
	}
	if code, ok := a.waitExit(0); ok {
		t.Fatalf("a exited (%d) on SIGHUP", code)
	}
	// And dropping b from the config drops only b.
	a.writeConfig(remoteTOML(c))
	cSince := st.remote(c.addr).Since
	a.signal(syscall.SIGHUP)
	st = a.waitStatus(10*time.Second, "link to b dropped after SIGHUP", func(s procStatus) bool {
		return s.remote(b.addr) == nil && s.spansOf(b) == 0
	})
	if r := st.remote(c.addr); r == nil || r.State != DialUp || r.Since != cSince {
		t.Errorf("the link to c changed when b was dropped: %+v (since was %s)", r, cSince)
	}
}

func TestProcessSIGHUPBadConfigKeepsRunning(t *testing.T) {
	t.Parallel()
	a, b := startPair(t, daemonOpts{})
	before := a.status().remote(b.addr)
	if err := os.WriteFile(a.cfgPath, []byte(a.configText(remoteTOML(b))+"no_such_key = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mark := a.logMark()
	a.signal(syscall.SIGHUP)
	a.waitLogSince(mark, 5*time.Second, "no_such_key")
	a.writeConfig(remoteTOML(b)) // status itself refuses the bad file
	// The leaf answers after it rejected the reload: it did not exit on it.
	if r := a.status().remote(b.addr); r == nil || r.State != DialUp || r.Since != before.Since {
		t.Errorf("the link to b changed on a rejected reload: before %+v, after %+v", *before, r)
	}
	if code, ok := a.waitExit(0); ok {
		t.Fatalf("a exited (%d) on SIGHUP with a bad config", code)
	}
}

func TestProcessFastRestartPeer(t *testing.T) {
	t.Parallel()
	// b comes back before a could notice it was gone: a's old connection
	// must give way to the new one, leaving exactly one span of b.
	a, b := startPair(t, daemonOpts{RemoteDeadAfter: "3s"})
	killedAt := time.Now()
	b.kill9()
	b.start()
	restarted := time.Now()
	st := a.waitStatus(8*time.Second, "a new link to the restarted b up with exactly one span of it", func(s procStatus) bool {
		r := s.remote(b.addr)
		if r == nil || r.State != DialUp || s.spansOf(b) != 1 {
			return false
		}
		since, err := time.Parse(time.RFC3339Nano, r.Since)
		return err == nil && since.After(killedAt)
	})
	t.Logf("a relinked %v after b restarted: %+v", time.Since(restarted).Round(time.Millisecond), *st.remote(b.addr))
	b.waitStatus(8*time.Second, "exactly one inbound link from a with its span", func(s procStatus) bool {
		return s.inboundUp() == 1 && s.spansOf(a) == 1
	})
}

func TestProcessConnectBeforeStart(t *testing.T) {
	t.Parallel()
	a, b := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "b", daemonOpts{})
	a.trust(b)
	b.trust(a)
	b.start()
	// No leaf runs for a: the slot is stored, and the leaf acts on it
	// when it starts.
	if _, errOut, code := a.h2("-s", a.pfs, "connect", "span:"+b.addr); code != 0 {
		t.Fatalf("connect with no leaf running: exit %d: %s", code, errOut)
	}
	out, _, _ := a.h2("status", a.pfs)
	if !strings.Contains(out, "span:"+b.addr) || !strings.Contains(out, "not running") {
		t.Errorf("status with no leaf running:\n%s", out)
	}
	a.start()
	a.waitStatus(10*time.Second, "link to b from the stored slot", func(s procStatus) bool {
		r := s.remote(b.addr)
		return r != nil && r.State == DialUp && len(r.Slots) == 1 && r.Slots[0] == 1 && s.spansOf(b) == 1
	})
}

func TestProcessSIGHUPRevokesConfigKey(t *testing.T) {
	t.Parallel()
	// a trusts b only through a [[remote]] key in its config; b dials a.
	a, b := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "b", daemonOpts{})
	b.trust(a)
	b.writeConfig(remoteTOML(a))
	unused := net.JoinHostPort("127.0.0.1", strconv.Itoa(freeUDPPort(t)))
	a.writeConfig(fmt.Sprintf("\n[[remote]]\naddress = %q\nkey = %q\nname = \"b\"\n", unused, b.pub))
	a.start()
	b.start()
	b.waitStatus(10*time.Second, "b's link to a up (a trusts b's configured key)", func(s procStatus) bool {
		return s.remoteUp(a.addr) && s.spansOf(a) == 1
	})
	// The key leaves a's config: a must no longer accept b.
	a.writeConfig("")
	a.signal(syscall.SIGHUP)
	a.waitStatus(5*time.Second, "the configured remote dropped after SIGHUP", func(s procStatus) bool {
		return s.remote(unused) == nil
	})
	b.kill9()
	b.start()
	st := b.waitStatus(10*time.Second, "b's new link to a up or refused", func(s procStatus) bool {
		r := s.remote(a.addr)
		return r != nil && (r.State == DialUp || r.State == DialRefused)
	})
	if r := st.remote(a.addr); r.State != DialRefused {
		t.Errorf("a still accepts b after b's key was removed from a's config and a reloaded it: b's link to a is %q", r.State)
	}
}
