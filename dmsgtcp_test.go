package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseNodeTarget(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in        string
		transport string
		addr      string
		err       string
	}{
		{"host", "", "host", ""},
		{"10.0.0.5:9870", "", "10.0.0.5:9870", ""},
		{"tcp:10.0.0.5", transportTCP, "10.0.0.5", ""},
		{"tcp:[::1]:987", transportTCP, "[::1]:987", ""},
		{"quic:node2.example.org:987", transportQUIC, "node2.example.org:987", ""},
		{"::1", "", "::1", ""}, // a bare IPv6 address, no port
		{"tcp:", "", "", "empty address"},
		{"", "", "", "empty address"},
		{"tcp::987", "", "", "names no host"},
		{"quic:host:0", "", "", "port 0"},
		{"host:99999", "", "", `bad port "99999"`},
	} {
		got, err := parseNodeTarget(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %+v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got.Transport != tc.transport || got.Addr != tc.addr || got.String() != tc.in {
			t.Errorf("%q: %+v (%q), %v; want %s %s", tc.in, got, got.String(), err, tc.transport, tc.addr)
		}
	}
}

// The REMOTE path forms the leaf, the service and `hammer2 connect` take.
func TestRemotePathTargets(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path   string
		target string // "" for no link
	}{
		{"span:10.0.0.5", "10.0.0.5"},
		{"span:10.0.0.5:9870", "10.0.0.5:9870"},
		{"tcp:10.0.0.5", "tcp:10.0.0.5"},
		{"quic:10.0.0.5:1", "quic:10.0.0.5:1"},
		{"span:", ""},
		{"span:tcp:", ""},
		{"nfs:10.0.0.5", ""},
		{"10.0.0.5", ""}, // DragonFly acts on span: only
		{"", ""},
	} {
		got, ok := spanTarget(tc.path)
		if ok != (tc.target != "") || got != tc.target {
			t.Errorf("spanTarget(%q) = %q, %v; want %q", tc.path, got, ok, tc.target)
		}
		if err := checkSpanTarget(tc.path); (err == nil) != (tc.target != "") {
			t.Errorf("checkSpanTarget(%q) = %v", tc.path, err)
		}
		if _, ok := volconfTarget(Volconf{CopyID: 0, Path: tc.path}); ok {
			t.Errorf("volconfTarget(%q) with copyid 0 names a link", tc.path)
		}
	}
}

func TestSvcKernelConn(t *testing.T) {
	t.Parallel()
	kernel := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: 1, PeerLabel: "dfly/hammer2-mount"}
	leaf := kernel
	leaf.PeerLabel = "dfly/hammer2-leaf"
	cluster := kernel
	cluster.PeerType = PeerCluster
	for _, tc := range []struct {
		c     LnkConn
		local bool
		want  bool
	}{
		{kernel, true, true},
		{kernel, false, false}, // a remote peer's death would go unnoticed
		{leaf, true, false},
		{cluster, true, false},
	} {
		if got := svcKernelConn(tc.c, tc.local); got != tc.want {
			t.Errorf("%+v local %v: %v, want %v", tc.c, tc.local, got, tc.want)
		}
	}
}

func TestTCPSecuritySource(t *testing.T) {
	t.Parallel()
	base := &tcpSecurity{}
	for _, tc := range []struct {
		listen, to, want string
	}{
		{"127.0.0.2:987", "127.0.0.1", "127.0.0.2"},
		{"127.0.0.2:987", "10.0.0.5", ""}, // a loopback source reaches no other machine
		{"10.0.0.1:987", "10.0.0.5", "10.0.0.1"},
		{"10.0.0.1:987", "127.0.0.1", ""},
		{"[::]:987", "10.0.0.5", ""},
		{"0.0.0.0:987", "10.0.0.5", ""},
		{"[::1]:987", "127.0.0.1", ""}, // other family
		{"localhost:987", "127.0.0.1", ""},
	} {
		got := base.withSource(tc.listen).sourceFor(netip.MustParseAddr(tc.to))
		if (tc.want == "" && got.IsValid()) || (tc.want != "" && got.String() != tc.want) {
			t.Errorf("listen %s, to %s: source %v, want %q", tc.listen, tc.to, got, tc.want)
		}
	}
}

// tcpSecFor is a node's rule: its RSA keys are testdata key name ("" for
// none), remote holds the files given (name -> content).
func tcpSecFor(t *testing.T, name string, remote map[string]string) *tcpSecurity {
	t.Helper()
	dir := keyDir(t, name, remote)
	return newTCPSecurity(filepath.Join(dir, remoteDirName), dir, privilegePolicy{self: os.Geteuid(), group: -1},
		rand.Reader, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// acceptOne accepts one connection on ln and runs sec's rule on it.
func acceptOne(ln net.Listener, sec *tcpSecurity) <-chan any {
	ch := make(chan any, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- err
			return
		}
		tc, err := sec.accept(context.Background(), c.(*net.TCPConn))
		if err != nil {
			ch <- err
			return
		}
		ch <- tc
	}()
	return ch
}

// Both ends of an encrypted link: the dialer and the acceptor each find
// the other's key under the other's address, end up authenticated nodes
// with the key's fingerprint, and a dmsg Link runs over the pair, its
// batches going through WriteBuffers.
func TestTCPSecurityEncryptedLink(t *testing.T) {
	t.Parallel()
	srv := tcpSecFor(t, "a", map[string]string{"127.0.0.1.pub": string(mustRead(t, "testdata/crypto/b.pub"))})
	cli := tcpSecFor(t, "b", map[string]string{"127.0.0.2.pub": string(mustRead(t, "testdata/crypto/a.pub"))})
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := acceptOne(ln, srv)
	dc, err := cli.dial(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	var ac *tcpConn
	switch r := (<-acc).(type) {
	case error:
		t.Fatal(r)
	case *tcpConn:
		ac = r
		defer ac.Close()
	}
	for _, c := range []struct {
		side string
		c    *tcpConn
		peer string
	}{{"dialer", dc, "a"}, {"acceptor", ac, "b"}} {
		fp := rsaFingerprint(testRSAPub(t, c.peer))
		if c.c.Transport() != "tcp+rsa" || c.c.peer.Class != ClassAuthenticatedNode || c.c.peer.Via != "rsa" ||
			c.c.peer.Fingerprint != fp || c.c.PeerName() != fp || c.c.greeting != hsQuickmsg {
			t.Errorf("%s: transport %s peer %+v name %s greeting %q; want tcp+rsa, authenticated node %s",
				c.side, c.c.Transport(), c.c.peer, c.c.PeerName(), c.c.greeting, fp)
		}
	}
	if _, ok := dc.Conn.(*dmsgCryptoConn); !ok {
		t.Fatalf("dialer's link runs on %T", dc.Conn)
	}

	got := newRecorder()
	counted := &writeBuffersCounter{tcpConn: dc}
	tx := startLink(counted, quietConfig("tx", nil))
	rx := startLink(ac, quietConfig("rx", got.handle))
	defer tx.Close()
	defer rx.Close()
	aux := bytes.Repeat([]byte("x"), 3000) // header and aux as separate buffers
	for range 3 {
		if err := tx.Root().Send(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux}); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if m := got.next(t); !bytes.Equal(m.Aux, aux) {
			t.Fatalf("received %s with %d bytes of aux", CmdString(m.Cmd), len(m.Aux))
		}
	}
	if rtt, err := tx.Ping(testCtx(t, 5*time.Second)); err != nil || rtt <= 0 {
		t.Fatalf("ping over the encrypted link: %v, %v", rtt, err)
	}
	counted.mu.Lock()
	defer counted.mu.Unlock()
	if counted.batches == 0 || counted.writes != 0 {
		t.Errorf("the link's writer made %d WriteBuffers and %d Write calls; want batches only", counted.batches, counted.writes)
	}
}

// writeBuffersCounter counts how the link's writer writes to a tcpConn.
type writeBuffersCounter struct {
	*tcpConn
	mu              sync.Mutex
	batches, writes int
}

func (w *writeBuffersCounter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes++
	w.mu.Unlock()
	return w.tcpConn.Write(p)
}

func (w *writeBuffersCounter) WriteBuffers(b net.Buffers) (int64, error) {
	w.mu.Lock()
	w.batches++
	w.mu.Unlock()
	return w.tcpConn.WriteBuffers(b)
}

// A peer the rule refuses is not dialed at all (nothing listens on the
// port: dialing would say "connection refused"), and the error names both
// files; a wrong key fails the handshake on both ends with KEYXCHGFAIL.
func TestTCPSecurityRefusals(t *testing.T) {
	t.Parallel()
	none := tcpSecFor(t, "a", nil)
	dead := net.JoinHostPort("127.0.0.1", "1")
	_, err := none.dial(context.Background(), dead)
	if !errors.Is(err, errIOQNoRemoteKey) || !strings.Contains(err.Error(), filepath.Join(none.remoteDir, "127.0.0.1.pub")) ||
		!strings.Contains(err.Error(), filepath.Join(none.remoteDir, "127.0.0.1.none")) {
		t.Errorf("dial with no file: %v; want NORKEY naming both files", err)
	}
	if !isKeyRefusal(err) {
		t.Errorf("NORKEY is not a key refusal for the Redialer")
	}

	// The server trusts key e for 127.0.0.1; the client holds key b.
	srv := tcpSecFor(t, "a", map[string]string{"127.0.0.1.pub": string(mustRead(t, "testdata/crypto/e.pub"))})
	cli := tcpSecFor(t, "b", map[string]string{"127.0.0.1.pub": string(mustRead(t, "testdata/crypto/a.pub"))})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := acceptOne(ln, srv)
	_, err = cli.dial(context.Background(), ln.Addr().String())
	if !errors.Is(err, errIOQKeyExchange) {
		t.Errorf("dialer with the wrong key: %v, want KEYXCHGFAIL", err)
	}
	if r, ok := (<-acc).(error); !ok || !errors.Is(r, errIOQKeyExchange) || !strings.Contains(r.Error(), "127.0.0.1:") {
		t.Errorf("acceptor: %v, want KEYXCHGFAIL naming the peer", r)
	}

	// A .pub another user could change is refused, and so is every peer
	// of a remote_dir they could write.
	loose := tcpSecFor(t, "a", map[string]string{"127.0.0.1.pub": string(mustRead(t, "testdata/crypto/b.pub")),
		"127.0.0.2.none": ""})
	if err := os.Chmod(filepath.Join(loose.remoteDir, "127.0.0.1.pub"), 0o666); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loose.check(netip.MustParseAddr("127.0.0.1")); !errors.Is(err, errWritableByOthers) {
		t.Errorf("a world-writable .pub: %v, want refused", err)
	}
	if err := os.Chmod(loose.remoteDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loose.check(netip.MustParseAddr("127.0.0.2")); !errors.Is(err, errWritableByOthers) || !errors.Is(err, errIOQNoRemoteKey) {
		t.Errorf("a world-writable remote_dir: %v, want every peer refused", err)
	}

	// A .pub peer but no rsa.prv here: NOLKEY, before any handshake.
	keyless := tcpSecFor(t, "", map[string]string{"127.0.0.1.pub": string(mustRead(t, "testdata/crypto/a.pub"))})
	acc = acceptOne(ln, srv)
	if _, err := keyless.dial(context.Background(), ln.Addr().String()); !errors.Is(err, errIOQNoLocalKey) {
		t.Errorf("dial without rsa.prv: %v, want NOLKEY", err)
	}
	<-acc
}

// A target without a transport goes over TCP when remote_dir names its
// address, else over QUIC (here: no QUIC node, which the error says).
func TestTCPSecurityDialerChooses(t *testing.T) {
	t.Parallel()
	sec := tcpSecFor(t, "", map[string]string{"127.0.0.1.none": ""})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := acceptOne(ln, sec)
	c, err := sec.dialer(nodeTarget{Addr: ln.Addr().String()}, nil)(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Transport() != "tcp" || c.PeerName() != "plaintext" {
		t.Errorf("bare target with a .none: %s %s, want a plaintext TCP link", c.Transport(), c.PeerName())
	}
	if tc, ok := (<-acc).(*tcpConn); !ok || tc.peer.Class != ClassLocalPrivileged || tc.peer.Via != "sock_diag" {
		t.Errorf("acceptor of a loopback .none peer: %+v, want it classed by its socket's owner", tc)
	} else {
		tc.Close()
	}
	_, err = sec.dialer(nodeTarget{Addr: "127.0.0.2:1"}, nil)(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no QUIC node") {
		t.Errorf("bare target without a file: %v, want a QUIC dial", err)
	}
	_, err = sec.dialer(nodeTarget{Transport: transportTCP, Addr: "127.0.0.2:1"}, nil)(context.Background())
	if !errors.Is(err, errIOQNoRemoteKey) {
		t.Errorf("tcp: target without a file: %v, want NORKEY", err)
	}
}

// SetQuietPeer: a link whose peer answers no PINGs is not declared dead
// for silence, sends no more PINGs, and takes messages out of sequence;
// the same link without it is dropped.
func TestLinkSetQuietPeer(t *testing.T) {
	t.Parallel()
	cfg := func(name string) LinkConfig {
		c := quietConfig(name, nil)
		c.PingInterval, c.DeadAfter = 50*time.Millisecond, 300*time.Millisecond
		return c
	}
	got := newRecorder()
	qa, qb := socketPair(t)
	qc := cfg("quiet")
	qc.Handler = got.handle
	quiet := startLink(qa, qc)
	quiet.SetQuietPeer()
	defer quiet.Close()
	la, lb := socketPair(t)
	loud := startLink(la, cfg("loud"))
	defer loud.Close()
	go func() { _, _ = io.Copy(io.Discard, lb) }() // reads, never answers
	// Started after the quiet one: once it is dead for silence, the quiet
	// one has been silent longer.
	waitDone(t, loud)
	if !errors.Is(loud.Err(), ErrPeerSilent) {
		t.Fatalf("loud link: %v, want silence", loud.Err())
	}
	if err := quiet.Err(); err != nil {
		t.Fatalf("the quiet link went down: %v", err)
	}
	_ = qb.SetReadDeadline(time.Now())
	if n, err := qb.Read(make([]byte, 64)); n != 0 {
		t.Fatalf("the quiet link sent %d bytes (%v), want no PINGs", n, err)
	}
	p := &rawPeer{tb: t, c: qb, txSq: 7}
	p.send(Msg{Header: Header{Cmd: CmdDbgShell}, Aux: ShellAux("out of sequence")})
	if m := got.next(t); ShellText(m.Aux) != "out of sequence" {
		t.Fatalf("got %q", ShellText(m.Aux))
	}
}
