//go:build !dragonfly

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestDmsgCryptoCPeer checks the link crypto against DragonFly's own C
// `hammer2 service`, built on Linux as /work/shared/interop-peer/README.md
// says. It needs that binary, so it runs only by hand:
//
//	H2_CPEER=/tmp/c-peer/bin/hammer2 go test -run TestDmsgCryptoCPeer -v .
//
// Each run makes one key pair with the C rsainit (openssl genrsa) and one
// with ours, trusts each side's key on the other under remote/127.0.0.1.pub,
// and checks a link each way on 127.0.0.1: Go dialling the C service, and
// the C service dialling a Go listener from its autoconn file. Over each
// link the C side's first message (its LNK_CONN) must decrypt and pass its
// CRCs here, and our PING and DBG_SHELL "help" must be answered, which
// means the C side decrypted ours. It runs with the C service's keys made
// by its rsainit and by ours, and with 4096-bit keys (one RSA block).
func TestDmsgCryptoCPeer(t *testing.T) {
	t.Parallel()
	bin := os.Getenv("H2_CPEER")
	if bin == "" {
		t.Skip("set H2_CPEER to DragonFly's C hammer2 (see /work/shared/interop-peer) to run")
	}
	for _, tc := range []struct {
		cKeys string
		bits  int
	}{{"C rsainit", 2048}, {"Go rsainit", 2048}, {"Go rsainit", 4096}} {
		t.Run(fmt.Sprintf("C keys by %s, %d bits", tc.cKeys, tc.bits), func(t *testing.T) {
			tmp := t.TempDir()
			cDir, goDir := filepath.Join(tmp, "c"), filepath.Join(tmp, "go")
			if tc.cKeys == "C rsainit" { // always 2048 bits
				if out, err := exec.Command(bin, "rsainit", cDir).CombinedOutput(); err != nil {
					t.Fatalf("C rsainit: %v\n%s", err, out)
				}
			} else if err := rsaInit(cDir, tc.bits, io.Discard); err != nil {
				t.Fatal(err)
			}
			if err := rsaInit(goDir, tc.bits, io.Discard); err != nil {
				t.Fatal(err)
			}
			// The C rsainit leaves rsa.prv at 0400 as we require.
			keys, err := loadDmsgCryptoKeys(goDir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := loadDmsgCryptoKeys(cDir); err != nil {
				t.Fatalf("reading the C side's keys: %v", err)
			}
			writeFile(t, filepath.Join(cDir, "remote", "127.0.0.1.pub"), string(mustRead(t, filepath.Join(goDir, rsaPubFile))))
			writeFile(t, filepath.Join(goDir, "remote", "127.0.0.1.pub"), string(mustRead(t, filepath.Join(cDir, rsaPubFile))))

			port := freePort(t, "tcp")
			log := &syncBuffer{}
			cmd := exec.Command(bin, "-d", "-d", "service") // -d -d: libdmsg logs at level 1
			cmd.Env = append(os.Environ(), "H2_DIR="+cDir, "H2_BIND=127.0.0.1", fmt.Sprintf("H2_PORT=%d", port))
			cmd.Stdout, cmd.Stderr = log, log
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				cmd.Process.Kill()
				cmd.Wait()
				t.Logf("C service log:\n%s", log.String())
			})
			addr := fmt.Sprintf("127.0.0.1:%d", port)

			// Go dials the C service.
			var c net.Conn
			for i := 0; ; i++ {
				if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
					break
				}
				if i == 100 {
					t.Fatalf("C service never listened on %s: %v", addr, err)
				}
				time.Sleep(50 * time.Millisecond)
			}
			checkCLink(t, "Go→C", c, goDir, keys)

			// The C service dials Go from its autoconn file (read every
			// 5 s, acted on once it has been seen twice).
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			writeFile(t, filepath.Join(cDir, "autoconn"), ln.Addr().String()+"\n")
			ln.(*net.TCPListener).SetDeadline(time.Now().Add(40 * time.Second))
			ac, err := ln.Accept()
			if err != nil {
				t.Fatalf("the C service never dialled %s: %v", ln.Addr(), err)
			}
			checkCLink(t, "C→Go", ac, goDir, keys)

			if n := strings.Count(log.String(), "auth success: Testing 1 2 3"); n < 2 {
				t.Errorf("the C log has %d \"auth success\" lines, want 2", n)
			}
			for _, bad := range []string{"auth failure", "MACFAIL", "decrypt_chunk", "encrypt_chunk"} {
				if strings.Contains(log.String(), bad) {
					t.Errorf("the C log mentions %q", bad)
				}
			}
		})
	}
}

// With a wrong key for us on the C side, both ends refuse the link:
// KEYXCHGFAIL here, "auth failure" in the C log.
func TestDmsgCryptoCPeerWrongKey(t *testing.T) {
	t.Parallel()
	bin := os.Getenv("H2_CPEER")
	if bin == "" {
		t.Skip("set H2_CPEER to DragonFly's C hammer2 (see /work/shared/interop-peer) to run")
	}
	tmp := t.TempDir()
	cDir, goDir := filepath.Join(tmp, "c"), filepath.Join(tmp, "go")
	if err := rsaInit(cDir, 2048, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := rsaInit(goDir, 2048, io.Discard); err != nil {
		t.Fatal(err)
	}
	keys, err := loadDmsgCryptoKeys(goDir)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(cDir, "remote", "127.0.0.1.pub"), string(mustRead(t, "testdata/crypto/b.pub")))
	writeFile(t, filepath.Join(goDir, "remote", "127.0.0.1.pub"), string(mustRead(t, filepath.Join(cDir, rsaPubFile))))
	port := freePort(t, "tcp")
	log := &syncBuffer{}
	cmd := exec.Command(bin, "-d", "-d", "service")
	cmd.Env = append(os.Environ(), "H2_DIR="+cDir, "H2_BIND=127.0.0.1", fmt.Sprintf("H2_PORT=%d", port))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		t.Logf("C service log:\n%s", log.String())
	}()
	var c net.Conn
	for i := 0; ; i++ {
		if c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
			break
		}
		if i == 100 {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err = dmsgSecureTCP(ctx, c, filepath.Join(goDir, remoteDirName), keys, rand.Reader)
	if !errors.Is(err, errIOQKeyExchange) {
		t.Fatalf("handshake: %v, want KEYXCHGFAIL", err)
	}
	t.Logf("refused as expected: %v", err)
	for i := 0; !strings.Contains(log.String(), "auth failure"); i++ {
		if i == 100 {
			t.Fatal("the C log has no \"auth failure\"")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkCLink runs the handshake on c and one exchange with the C service.
func checkCLink(t *testing.T, name string, c net.Conn, goDir string, keys *dmsgCryptoKeys) {
	t.Helper()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cc, pol, err := dmsgSecureTCP(ctx, c, filepath.Join(goDir, remoteDirName), keys, rand.Reader)
	if err != nil || pol != dmsgPeerEncrypted {
		t.Fatalf("%s: %v link: %v", name, pol, err)
	}
	greeting := cc.(*dmsgCryptoConn).PeerGreeting()
	p := &rawPeer{tb: t, c: cc}
	var sawConn, sawPing, sawHelp bool
	p.send(Msg{Header: Header{Cmd: CmdLnkPing}})
	// "help" padded to 60 KB: about a thousand chunks in one message,
	// which the C shell parser reads as plain "help".
	p.send(Msg{Header: Header{Cmd: CmdDbgShell}, Aux: ShellAux("help" + strings.Repeat(" ", 60000))})
	var help string
	for !(sawConn && sawPing && sawHelp) {
		m, err := p.read()
		if err != nil {
			t.Fatalf("%s: reading from the C service (saw LNK_CONN %v, PING reply %v, shell reply %v): %v",
				name, sawConn, sawPing, sawHelp, err)
		}
		switch {
		case m.Cmd&maskBaseCmd == CmdLnkConn && m.Cmd&FlagCreate != 0:
			sawConn = true
		case m.Cmd == CmdLnkPing|FlagReply:
			sawPing = true
		case m.Cmd&maskBaseCmd == CmdDbgShell && m.Cmd&FlagReply != 0:
			help += ShellText(m.Aux)
			sawHelp = strings.Contains(help, "help")
		}
	}
	t.Logf("%s: encrypted link up (C greeting %q); C's LNK_CONN decrypted, PING and shell answered (%d bytes of help)",
		name, greeting, len(help))
}

// syncBuffer is a bytes.Buffer a process may write while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// cService is DragonFly's C `hammer2 service` run by a test: its config
// dir, address and log.
type cService struct {
	dir, addr string
	log       *syncBuffer
}

// startCService runs the C service (H2_CPEER) on ip with the keys its own
// rsainit makes, until the test ends.
func startCService(t *testing.T, bin, ip string) *cService {
	t.Helper()
	s := &cService{dir: filepath.Join(shortTempDir(t), "c"), log: &syncBuffer{}}
	if out, err := exec.Command(bin, "rsainit", s.dir).CombinedOutput(); err != nil {
		t.Fatalf("C rsainit: %v\n%s", err, out)
	}
	port := freePort(t, "tcp")
	s.addr = net.JoinHostPort(ip, fmt.Sprint(port))
	cmd := exec.Command(bin, "-d", "-d", "service")
	cmd.Env = append(os.Environ(), "H2_DIR="+s.dir, "H2_BIND="+ip, fmt.Sprintf("H2_PORT=%d", port))
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		t.Logf("C service log:\n%s", s.log.String())
	})
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if i == 100 {
			t.Fatalf("C service never listened on %s: %v", s.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// That probe had no key: wait for its refusal, so that a test can
	// look for failures in what the log says after.
	for i := 0; !strings.Contains(s.log.String(), "auth failure: unknown host"); i++ {
		if i == 100 {
			t.Fatal("the C service did not log refusing the probe")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return s
}

// trust makes the C service's remote/<ip>.pub our key file pub.
func (s *cService) trust(t *testing.T, ip, pub string) {
	writeFile(t, filepath.Join(s.dir, remoteDirName, ip+".pub"), string(mustRead(t, pub)))
}

// TestServiceCPeerEncrypted links our `hammer2 service` and DragonFly's
// C service over encrypted TCP at the Link level, both ways, and checks
// that each relays the other's spans: our service on 127.0.0.1 with a
// leaf on its Unix socket, the C service on 127.0.0.2 with one of our
// leaves on it over encrypted TCP (from 127.0.0.1, so it holds our
// machine's key). Hand-run, as TestDmsgCryptoCPeer:
//
//	H2_CPEER=/tmp/c-peer/bin/hammer2 go test -run TestServiceCPeerEncrypted -v .
func TestServiceCPeerEncrypted(t *testing.T) {
	t.Parallel()
	bin := os.Getenv("H2_CPEER")
	if bin == "" {
		t.Skip("set H2_CPEER to DragonFly's C hammer2 (see /work/shared/interop-peer) to run")
	}
	for _, dir := range []string{"Go dials C", "C dials Go"} {
		t.Run(dir, func(t *testing.T) {
			c := startCService(t, bin, "127.0.0.2")
			probed := len(c.log.String()) // startCService's own probe, refused ("unknown host")
			cPub := filepath.Join(c.dir, rsaPubFile)
			s := newSvcNode(t, "go", daemonOpts{})
			installRSAKeys(t, s.keyDir, "a", 0o400)
			writeFile(t, filepath.Join(s.remoteDir(), "127.0.0.2.pub"), string(mustRead(t, cPub)))
			c.trust(t, "127.0.0.1", "testdata/crypto/a.pub") // our machine, service and leaf alike
			if dir == "Go dials C" {
				s.autoconn = []string{"tcp:" + c.addr}
			} else {
				// The C service dials from 127.0.0.1: our remote/127.0.0.1
				// must then be its key (no plaintext shell here).
				writeFile(t, filepath.Join(s.remoteDir(), "127.0.0.1.pub"), string(mustRead(t, cPub)))
				if err := os.Remove(filepath.Join(s.remoteDir(), "127.0.0.1.none")); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(c.dir, "autoconn"), s.tcp+"\n")
			}
			s.start()
			ours, theirs := newSvcLeaf(t, "on-go", PFSInfo{}), newSvcLeaf(t, "on-c", PFSInfo{})
			installRSAKeys(t, theirs.keyDir, "a", 0o400)
			writeFile(t, filepath.Join(theirs.remoteDir(), "127.0.0.2.pub"), string(mustRead(t, cPub)))
			startLeafOn(ours, s)
			startLeafTCP(theirs, c.addr)
			// The C service reads its autoconn file every 5 s and acts on
			// an entry once it has seen it twice.
			svcWaitEach(t, time.Now(), 40*time.Second, "each leaf sees the other's PFS through both services",
				[]*leafNode{ours, theirs}, func(i int, v svcLeafView) bool {
					sp := v.of([]*leafNode{theirs, ours}[i])
					return v.backboneUp() && len(sp) == 1 && sp[0].Dist == 2
				})
			cFP := rsaFingerprint(testRSAPubFile(t, cPub))
			st := s.status()
			l := st.linkWhere(func(l ServiceLinkStatus) bool { return l.Transport == "tcp+rsa" })
			if l == nil || l.PeerKey != cFP || l.Class != ClassAuthenticatedNode.String() {
				t.Errorf("our service's link to the C one: %+v; want tcp+rsa, an authenticated node with key %s", l, cFP)
			}
			if v := svcView(theirs); v.Backbone.PeerKey != cFP {
				t.Errorf("the leaf on the C service: backbone %+v, want key %s", v.Backbone, cFP)
			}
			clog := c.log.String()[probed:]
			if n := strings.Count(clog, "auth success: Testing 1 2 3"); n < 2 {
				t.Errorf("the C log has %d \"auth success\" lines, want 2 (our leaf, our service)", n)
			}
			for _, bad := range []string{"auth failure", "MACFAIL", "decrypt_chunk", "encrypt_chunk"} {
				if strings.Contains(clog, bad) {
					t.Errorf("the C log mentions %q", bad)
				}
			}
			t.Logf("%s: spans relayed both ways; our service's link: %s %s key %s", dir, l.Name, l.Transport, l.PeerKey)
		})
	}
}

// testRSAPubFile reads a PEM public key file.
func testRSAPubFile(t testing.TB, path string) *rsa.PublicKey {
	t.Helper()
	pub, err := readRSAPublicKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}
