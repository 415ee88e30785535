//go:build !dragonfly

package main

// DragonFly's TCP links between our own daemons, as real processes with
// real key files: services and leaves on 127.0.0.1, 127.0.0.2 and
// 127.0.0.3 stand for machines (a service dials from its TCP listener's
// address, so the peer sees the address its remote/ files name), each
// with a testdata RSA key as `hammer2 rsainit` would make it. And the
// kernel's mount-time link arriving over TCP, as mount_hammer2 hands it.

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// rsaFP is the fingerprint of testdata key name.
func rsaFP(t testing.TB, name string) string { return rsaFingerprint(testRSAPub(t, name)) }

// trustRSA makes remoteDir/<ip>.pub testdata key name's public key (and
// drops an <ip>.none: the .pub would win anyway).
func trustRSA(t testing.TB, remoteDir, ip, name string) {
	t.Helper()
	writeFile(t, filepath.Join(remoteDir, ip+".pub"), string(mustRead(t, filepath.Join("testdata", "crypto", name+".pub"))))
	if err := os.Remove(filepath.Join(remoteDir, ip+".none")); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}

func (s *svcNode) remoteDir() string  { return filepath.Join(s.keyDir, remoteDirName) }
func (n *leafNode) remoteDir() string { return filepath.Join(n.keyDir, remoteDirName) }

// listenTCPOn moves the service's TCP port to ip, as another machine's.
func (s *svcNode) listenTCPOn(ip string) {
	_, port, _ := net.SplitHostPort(s.tcp)
	s.tcp = net.JoinHostPort(ip, port)
}

// startLeafTCP starts n with DragonFly's TCP link to addr as its backbone.
func startLeafTCP(n *leafNode, addr string) {
	n.t.Helper()
	n.startArgs("backbone tcp:"+addr, "-d", "leaf", "--listen", "none", "--backbone", "tcp:"+addr, n.pfs)
}

// linkWhere is the first of the service's links cond accepts.
func (st ServiceStatus) linkWhere(cond func(ServiceLinkStatus) bool) *ServiceLinkStatus {
	for i := range st.Links {
		if cond(st.Links[i]) {
			return &st.Links[i]
		}
	}
	return nil
}

// svcHuman is `hammer2 status --service` for people.
func (s *svcNode) svcHuman() string {
	s.t.Helper()
	out, errOut, code := runH2(s.t, s.bin, "-c", s.cfgPath, "status", "--service", "--unix", s.sock)
	if code != 0 {
		s.t.Fatalf("service %s: status --service: exit %d: %s", s.name, code, errOut)
	}
	return out
}

// Two services on two "machines" link over DragonFly's encrypted TCP (b
// autoconnects to a, from 127.0.0.2), each knowing the other by its RSA
// key; a leaf on a reaches it over plaintext TCP (remote/127.0.0.1.none
// on both sides), a leaf on b over its Unix socket; the leaves see each
// other's spans both ways.
func TestTCPEncryptedServices(t *testing.T) {
	t.Parallel()
	a, b := newSvcNode(t, "ta", daemonOpts{}), newSvcNode(t, "tb", daemonOpts{})
	b.listenTCPOn("127.0.0.2")
	installRSAKeys(t, a.keyDir, "a", 0o400)
	installRSAKeys(t, b.keyDir, "b", 0o400)
	trustRSA(t, a.remoteDir(), "127.0.0.2", "b")
	trustRSA(t, b.remoteDir(), "127.0.0.1", "a")
	b.autoconn = []string{"tcp:" + a.tcp}
	la, lb := newSvcLeaf(t, "la", PFSInfo{}), newSvcLeaf(t, "lb", PFSInfo{})
	writeRemoteNone(t, la.remoteDir(), "127.0.0.1")
	a.start()
	b.start()
	startLeafTCP(la, a.tcp)
	startLeafOn(lb, b)

	svcWaitEach(t, time.Now(), 10*time.Second, "each leaf sees the other's PFS over the encrypted link", []*leafNode{la, lb},
		func(i int, v svcLeafView) bool {
			sp := v.of([]*leafNode{lb, la}[i])
			return len(sp) == 1 && sp[0].Dist == 2
		})
	fpA, fpB := rsaFP(t, "a"), rsaFP(t, "b")
	st := a.status()
	if l := st.linkWhere(func(l ServiceLinkStatus) bool { return l.Transport == "tcp+rsa" }); l == nil ||
		!strings.HasPrefix(l.Name, "client 127.0.0.2:") || l.Class != ClassAuthenticatedNode.String() || l.PeerKey != fpB {
		t.Errorf("a's link from b: %+v; want tcp+rsa from 127.0.0.2, an authenticated node with key %s", l, fpB)
	}
	if l := st.linkWhere(func(l ServiceLinkStatus) bool { return l.Transport == "tcp" }); l == nil ||
		l.Class != ClassLocalPrivileged.String() || l.PeerUID == nil {
		t.Errorf("a's plaintext link from la: %+v; want local-privileged by its socket's owner", l)
	}
	if st.RSAKey != fpA || st.RemoteDir != a.remoteDir() {
		t.Errorf("a's rule: remote_dir %s, rsa key %s; want %s, %s", st.RemoteDir, st.RSAKey, a.remoteDir(), fpA)
	}
	if ac := b.status().Autoconn; len(ac) != 1 || ac[0].State != DialUp || ac[0].Transport != "tcp+rsa" || ac[0].PeerName != fpA {
		t.Errorf("b's autoconn: %+v; want up over tcp+rsa to key %s", ac, fpA)
	}
	a.waitLog(5*time.Second, "TCP peer authenticated", "key="+fpB, "greeting=\"Testing 1 2 3\"")
	if out := a.svcHuman(); !strings.Contains(out, "tcp+rsa authenticated-node key "+fpB) ||
		!strings.Contains(out, "tcp rule: remote_dir "+a.remoteDir()+", rsa key "+fpA) {
		t.Errorf("a's status --service does not show b's key and the rule:\n%s", out)
	}
	if v := svcView(la); !v.backboneUp() || !strings.Contains(v.raw, `"class":"local-privileged"`) {
		t.Errorf("la's backbone: %s", v.raw)
	}
}

// flipProxy forwards TCP connections to another address from its own
// listening address, and flips one byte going upstream when asked: a
// network that corrupts one ciphertext byte.
type flipProxy struct {
	t    testing.TB
	addr string
	ln   net.Listener
	flip atomic.Bool
	wg   sync.WaitGroup
	mu   sync.Mutex
	cs   []net.Conn
}

func newFlipProxy(t testing.TB, ip, to string) *flipProxy {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	p := &flipProxy{t: t, addr: ln.Addr().String(), ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
			up, err := d.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.cs = append(p.cs, c, up)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); p.pipe(up, c, true) }()
			go func() { defer p.wg.Done(); p.pipe(c, up, false) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.cs {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// pipe copies src to dst, flipping a byte of the first read after a
// flipNext when upstream.
func (p *flipProxy) pipe(dst, src net.Conn, upstream bool) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && upstream && p.flip.CompareAndSwap(true, false) {
			buf[n/2] ^= 0x01
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// flipNext corrupts the next bytes a client sends through the proxy.
func (p *flipProxy) flipNext() { p.flip.Store(true) }

// Leaves on a service of another machine over encrypted TCP: with the
// right key the backbone is up and the service is an authenticated node;
// with a wrong key both ends refuse (KEYXCHGFAIL, named with the peer's
// address); a flipped ciphertext byte on one link closes that link alone
// (MACFAIL), and its leaf links again.
func TestTCPLeafBackbones(t *testing.T) {
	t.Parallel()
	s := newSvcNode(t, "tl", daemonOpts{})
	s.listenTCPOn("127.0.0.2")
	installRSAKeys(t, s.keyDir, "b", 0o400)
	trustRSA(t, s.remoteDir(), "127.0.0.1", "a")
	trustRSA(t, s.remoteDir(), "127.0.0.3", "a") // the proxy's address, for a leaf holding key a
	s.start()
	proxy := newFlipProxy(t, "127.0.0.3", s.tcp)
	mk := func(name, key, via string) *leafNode {
		n := newSvcLeaf(t, name, PFSInfo{})
		installRSAKeys(t, n.keyDir, key, 0o400)
		host, _, _ := net.SplitHostPort(via)
		trustRSA(t, n.remoteDir(), host, "b")
		startLeafTCP(n, via)
		return n
	}
	good, flipped := mk("lc", "a", s.tcp), mk("le", "a", proxy.addr)
	bad := mk("ld", "e", s.tcp) // machine 127.0.0.1's key is a, not e

	svcWaitEach(t, time.Now(), 10*time.Second, "both keyed leaves see each other", []*leafNode{good, flipped},
		func(i int, v svcLeafView) bool {
			sp := v.of([]*leafNode{flipped, good}[i])
			return v.backboneUp() && len(sp) == 1 && sp[0].Dist == 1
		})
	fpB := rsaFP(t, "b")
	if v := svcView(good); !strings.Contains(v.raw, `"class":"authenticated-node"`) || v.Backbone.PeerKey != fpB ||
		v.Backbone.Transport != "tcp+rsa" {
		t.Errorf("good's backbone: %s; want tcp+rsa, an authenticated node with key %s", v.raw, fpB)
	}
	// A REMOTE slot in DragonFly's own form, span:<host>: TCP, since the
	// leaf's remote_dir names the host's address.
	slot := newSvcLeaf(t, "lr", PFSInfo{})
	installRSAKeys(t, slot.keyDir, "a", 0o400)
	trustRSA(t, slot.remoteDir(), "127.0.0.2", "b")
	if _, errOut, code := slot.h2("-s", slot.pfs, "connect", "span:"+s.tcp); code != 0 {
		t.Fatalf("connect: %s", errOut)
	}
	slot.startArgs("remote span:"+s.tcp, "-d", "leaf", "--listen", "none", "--backbone", "none", slot.pfs)
	slot.waitStatus(10*time.Second, "the REMOTE slot linked over encrypted TCP", func(st procStatus) bool {
		r := st.remote(s.tcp)
		return r != nil && r.State == DialUp && r.Transport == "tcp+rsa" && r.PeerKey == fpB && st.spansOf(good) == 1
	})
	bad.waitStatus(10*time.Second, "the wrong key refused", func(st procStatus) bool {
		bb := st.Leaf.Backbone
		return bb != nil && bb.State != DialUp && strings.Contains(bb.LastErr, "KEYXCHGFAIL")
	})
	s.waitLog(10*time.Second, `msg="TCP handshake failed"`, "remote=127.0.0.1:", "KEYXCHGFAIL")

	isGood := func(l ServiceLinkStatus) bool {
		return strings.HasPrefix(l.Name, "client 127.0.0.1:") && l.Transport == "tcp+rsa"
	}
	isFlipped := func(l ServiceLinkStatus) bool { return strings.HasPrefix(l.Name, "client 127.0.0.3:") }
	before := s.status()
	g, f := before.linkWhere(isGood), before.linkWhere(isFlipped)
	if g == nil || f == nil || f.PeerKey != rsaFP(t, "a") {
		t.Fatalf("service links before the flip: good %+v, flipped %+v", g, f)
	}
	mark := s.logMark()
	proxy.flipNext() // the leaf's next PING arrives with one bit wrong
	s.waitLogSince(mark, 10*time.Second, `msg="dmsg link closed: MACFAIL"`, `peer="`+f.Name+`"`, "127.0.0.3:")
	after := s.waitStatus(10*time.Second, "the flipped leaf linked again", func(st ServiceStatus) bool {
		l := st.linkWhere(isFlipped)
		return l != nil && l.Name != f.Name
	})
	if l := after.linkWhere(isGood); l == nil || l.Name != g.Name || !l.Since.Equal(g.Since) {
		t.Errorf("the good leaf's link changed with the flip: before %+v, after %+v", g, l)
	}
	if n := strings.Count(s.logText(), `msg="dmsg link closed: MACFAIL"`); n != 1 {
		t.Errorf("%d MACFAIL closes, want one:\n%s", n, s.logText())
	}

	// A key changed on reload is revoked at once, and refused after.
	trustRSA(t, good.remoteDir(), "127.0.0.2", "e")
	good.signal(syscall.SIGHUP)
	good.waitLog(10*time.Second, "closing link: its peer's remote/<ip>.pub is gone or changed", "fingerprint="+fpB)
	good.waitStatus(10*time.Second, "the service refused under its old key", func(st procStatus) bool {
		bb := st.Leaf.Backbone
		return bb != nil && bb.State != DialUp && strings.Contains(bb.LastErr, "KEYXCHGFAIL")
	})
}

// The kernel's mount-time link over TCP, as DragonFly's mount_hammer2
// hands it: the service keeps it through silence that kills an ordinary
// link, relays its spans, and keeps a link for each of its REMOTE slots:
// over encrypted TCP to a service on 127.0.0.2, then, the entry changed,
// over QUIC; copyid 0 drops it; closing the kernel's LNK_CONN drops all.
func TestServiceKernelLinkTCP(t *testing.T) {
	t.Parallel()
	a := newSvcNode(t, "ka", daemonOpts{DeadAfter: "1s", PingInterval: "250ms"})
	b := newSvcNode(t, "kb", daemonOpts{})
	b.listenTCPOn("127.0.0.2")
	installRSAKeys(t, a.keyDir, "a", 0o400)
	installRSAKeys(t, b.keyDir, "b", 0o400)
	trustRSA(t, a.remoteDir(), "127.0.0.2", "b")
	trustRSA(t, b.remoteDir(), "127.0.0.1", "a")
	a.trustSvcs(b) // for the QUIC link the changed entry asks for
	b.trustSvcs(a)
	a.start()
	b.start()

	pfses := []simPFS{{Label: "ROOT", Clid: NewUUID(), Fsid: NewUUID(), Type: PFSMaster},
		{Label: "LOCAL", Clid: NewUUID(), Fsid: NewUUID(), Type: PFSMaster}}
	k := dialSimKernelTCP(t, "k", a.tcp, pfses, Volconf{CopyID: 5, Label: "to-b", Path: "span:" + b.tcp})
	k.waitHandshake(5 * time.Second)
	isKernel := func(l ServiceLinkStatus) bool { return l.Kernel }
	volconf := func(st ServiceStatus, slot int) *ServiceVolconfStatus {
		for i := range st.Volconf {
			if st.Volconf[i].Slot == slot {
				return &st.Volconf[i]
			}
		}
		return nil
	}
	st := a.waitStatus(10*time.Second, "the kernel's slot 5 linked over encrypted TCP", func(st ServiceStatus) bool {
		v := volconf(st, 5)
		return st.linkWhere(isKernel) != nil && v != nil && v.Link.State == DialUp && v.Link.Transport == "tcp+rsa"
	})
	kl := st.linkWhere(isKernel)
	if !strings.HasSuffix(kl.Label, "/hammer2-mount") || kl.Transport != "tcp" || kl.Class != ClassLocalPrivileged.String() {
		t.Errorf("the kernel's link: %+v", kl)
	}
	if v := volconf(st, 5); v.Kernel != kl.Name || v.Path != "span:"+b.tcp || v.Label != "to-b" || v.Link.PeerName != rsaFP(t, "b") {
		t.Errorf("slot 5: %+v", v)
	}
	// b gets the kernel's PFSs from a, at dist 1, over the link slot 5 asked for.
	b.waitStatus(10*time.Second, "the kernel's spans relayed to b", func(st ServiceStatus) bool {
		for _, p := range pfses {
			n := st.node(p.Fsid)
			if n == nil || len(n.Links) != 1 || n.Links[0].Dist != 1 || !strings.HasPrefix(n.Links[0].Via, "client 127.0.0.1:") {
				return false
			}
		}
		return true
	})
	if out := a.svcHuman(); !strings.Contains(out, "kernel (") || !strings.Contains(out, "volconf   slot 5 span:"+b.tcp+" (from "+kl.Name+") up tcp+rsa") {
		t.Errorf("a's status --service does not show the kernel and its slot:\n%s", out)
	}

	// Silence: an ordinary link that answers no PINGs, opened after the
	// kernel's, is dropped after dead_after (1s); the kernel's, silent
	// for longer, stays.
	silent, err := net.DialTimeout("tcp", a.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() { _, _ = io.Copy(io.Discard, silent) }()
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: 1, PeerLabel: "mute/hammer2-leaf"}
	(&rawPeer{tb: t, c: silent}).send(Msg{Header: Header{Cmd: CmdLnkConn | FlagCreate, MsgID: 1}, Ext: conn.Marshal()})
	a.waitLog(10*time.Second, `msg="link down"`, "peer silent")
	if err, gone := k.waitEOF(0); gone {
		t.Fatalf("the service dropped the kernel's link: %v\n%s", err, k.dump())
	}
	if l := a.status().linkWhere(isKernel); l == nil || l.Name != kl.Name {
		t.Fatalf("the kernel's link is gone from a's status: %+v", l)
	}
	for _, m := range k.received() {
		if m.Cmd&kBaseMask == kLnkPing {
			t.Errorf("the service sent %s to the kernel, which answers none", CmdString(m.Cmd))
		}
	}

	// A changed entry replaces the link: QUIC to b, by its quic: path.
	k.remoteAdd(5, Volconf{Label: "to-b", Path: "quic:" + b.udp})
	a.waitStatus(10*time.Second, "slot 5 relinked over QUIC", func(st ServiceStatus) bool {
		v := volconf(st, 5)
		return v != nil && v.Path == "quic:"+b.udp && v.Link.State == DialUp && v.Link.Transport == "quic"
	})
	b.waitStatus(10*time.Second, "b: the TCP link from a gone, a QUIC one up", func(st ServiceStatus) bool {
		return st.linkWhere(func(l ServiceLinkStatus) bool { return l.Transport == "tcp+rsa" }) == nil &&
			st.linkWhere(func(l ServiceLinkStatus) bool { return l.Transport == "quic" && l.PeerKey == a.fp }) != nil
	})
	// copyid 0 drops it.
	k.remoteDel(5)
	a.waitStatus(10*time.Second, "slot 5 dropped on copyid 0", func(st ServiceStatus) bool { return volconf(st, 5) == nil })
	b.waitStatus(10*time.Second, "b: a's link gone", func(st ServiceStatus) bool { return len(st.Links) == 0 })

	// Two slots, then the kernel closes its LNK_CONN: both go.
	k.remoteAdd(6, Volconf{Path: "span:" + b.tcp})
	k.remoteAdd(7, Volconf{Path: "quic:" + b.udp})
	a.waitStatus(10*time.Second, "slots 6 and 7 up", func(st ServiceStatus) bool {
		v6, v7 := volconf(st, 6), volconf(st, 7)
		return v6 != nil && v7 != nil && v6.Link.State == DialUp && v7.Link.State == DialUp
	})
	k.closeConn()
	st = a.waitStatus(10*time.Second, "all slots dropped with the kernel's LNK_CONN", func(st ServiceStatus) bool {
		return len(st.Volconf) == 0
	})
	if l := st.linkWhere(isKernel); l == nil {
		t.Error("the kernel's link went with its LNK_CONN; only the socket closing ends it")
	}
	b.waitStatus(10*time.Second, "b: a's links gone", func(st ServiceStatus) bool { return len(st.Links) == 0 })
	k.checkClean()
	if t.Failed() {
		raw, _ := json.MarshalIndent(a.status(), "", "  ")
		t.Logf("a's status:\n%s\nkernel link:\n%s", raw, k.dump())
	}
}
