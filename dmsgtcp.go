package main

// DragonFly's TCP links as the daemons run them: every TCP peer, accepted
// or dialed, is taken by the files named after its numeric address in
// remote_dir (dmsghandshake.go has the rule and the handshake), and a
// target names the transport a link to another node runs on.
//
// Targets (config, REMOTE slots, the shell's `span`):
//
//	tcp:<host>[:port]   DragonFly's TCP link, by the rule
//	quic:<host>[:port]  our QUIC link
//	<host>[:port]       TCP when remote_dir has <ip>.pub or <ip>.none for
//	                    the host's address (the machine's own DragonFly
//	                    config for that peer), QUIC otherwise; decided
//	                    again at every attempt
//
// The port is 987 by default for both.

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Target transports.
const (
	transportTCP  = "tcp"
	transportQUIC = "quic"
)

// tcpDialTimeout bounds a TCP connect: an unreachable host would
// otherwise hold an attempt for the kernel's SYN retries (minutes).
const tcpDialTimeout = 10 * time.Second

// nodeTarget is where a link to another node goes.
type nodeTarget struct {
	Transport string // transportTCP, transportQUIC, or "" to choose by the rule
	Addr      string // host or host:port
}

// parseNodeTarget reads "tcp:<host>[:port]", "quic:<host>[:port]" or
// "<host>[:port]" and checks the host and port.
func parseNodeTarget(s string) (nodeTarget, error) {
	t := nodeTarget{Addr: s}
	for _, tr := range []string{transportTCP, transportQUIC} {
		if a, ok := strings.CutPrefix(s, tr+":"); ok {
			t = nodeTarget{Transport: tr, Addr: a}
		}
	}
	host, port, err := splitHostPortDefault(t.Addr, ListenPort)
	switch {
	case err != nil:
		return t, fmt.Errorf("not [tcp:|quic:]<host>[:port]: %w", err)
	case host == "":
		return t, fmt.Errorf("%q names no host", s)
	case port == 0:
		return t, fmt.Errorf("port 0 of %q: ports are 1 to 65535", s)
	}
	return t, nil
}

func (t nodeTarget) String() string {
	if t.Transport == "" {
		return t.Addr
	}
	return t.Transport + ":" + t.Addr
}

// tcpSecurity is one daemon's side of DragonFly's rule for TCP links:
// where the peers' files are, this node's RSA keys, and how a plaintext
// peer is classed. Immutable once built; safe for concurrent use.
type tcpSecurity struct {
	remoteDir string
	keys      *dmsgCryptoKeys // nil: no usable rsa.prv; encrypted peers fail NOLKEY
	keysErr   error           // why keys is nil
	policy    privilegePolicy // classes a plaintext loopback peer by its socket's owner
	rand      io.Reader
	// source, if valid, is the address outgoing links leave from: the
	// TCP listener's own, so that peers see the address their remote/
	// files are named after (sourceFor says when it applies).
	source netip.Addr
}

// newTCPSecurity loads the node's RSA keys from keyDir. Missing keys are
// no error (plaintext peers still link); keys that are there but unusable
// are logged once, as every encrypted peer will be refused for them.
func newTCPSecurity(remoteDir, keyDir string, policy privilegePolicy, rnd io.Reader, log *slog.Logger) *tcpSecurity {
	s := &tcpSecurity{remoteDir: remoteDir, policy: policy, rand: rnd}
	s.keys, s.keysErr = loadDmsgCryptoKeys(keyDir)
	switch {
	case s.keysErr == nil:
		log.Debug("RSA keys for TCP links", "dir", keyDir, "key", s.keys.Fingerprint())
	case errors.Is(s.keysErr, errIOQNoLocalKey) && errors.Is(s.keysErr, fs.ErrNotExist):
		log.Debug("no RSA keys for TCP links: peers with a remote/<ip>.pub will be refused", "dir", keyDir)
	default:
		log.Warn("RSA keys for TCP links unusable: peers with a remote/<ip>.pub will be refused", "err", s.keysErr)
	}
	return s
}

// Fingerprint is this node's RSA key, "" without one.
func (s *tcpSecurity) Fingerprint() string {
	if s.keys == nil {
		return ""
	}
	return s.keys.Fingerprint()
}

// withSource is s dialing from the listener address listen ("host:port";
// a wildcard or a name gives no source).
func (s *tcpSecurity) withSource(listen string) *tcpSecurity {
	c := *s
	c.source = netip.Addr{}
	if ap, err := netip.ParseAddrPort(listen); err == nil && !ap.Addr().IsUnspecified() {
		c.source = ap.Addr().Unmap()
	}
	return &c
}

// sourceFor is the address to dial to from: the listener's, when it is
// of the same family and, loopback or not, of the same kind as to (a
// loopback source cannot reach another machine).
func (s *tcpSecurity) sourceFor(to netip.Addr) netip.Addr {
	src := s.source
	if !src.IsValid() || src.Is4() != to.Is4() || src.IsLoopback() != to.IsLoopback() {
		return netip.Addr{}
	}
	return src
}

// tcpNotSentLowat is the most a TCP link's socket holds unsent: enough
// that the writer's next batch is in before the kernel runs dry, little
// enough that a control message queued now goes out within about a
// window of the link's own (bulkwindow.go) on a fast path.
const tcpNotSentLowat = 128 << 10

// tcpConn is a TCP connection that DragonFly's rule let through: what a
// dmsg link runs on (the encrypted conn after a handshake, the TCP conn
// itself for a .none peer) and who is behind it. It is a redialConn.
type tcpConn struct {
	net.Conn
	raw      *net.TCPConn
	policy   dmsgPeerPolicy
	peer     PeerIdentity
	since    time.Time
	greeting string // an encrypted peer's quickmsg

	mu  sync.Mutex
	err error // why the link on it ended (setErr)
}

// Transport is "tcp+rsa" for an encrypted link, "tcp" for a plaintext one.
func (c *tcpConn) Transport() string {
	if c.policy == dmsgPeerEncrypted {
		return "tcp+rsa"
	}
	return "tcp"
}

// PeerName is the peer's RSA key fingerprint, or "plaintext".
func (c *tcpConn) PeerName() string {
	if c.peer.Fingerprint != "" {
		return c.peer.Fingerprint
	}
	return "plaintext"
}

func (c *tcpConn) Since() time.Time { return c.since }

// WriteBuffers writes a batch in one go: encrypted into one syscall by
// the crypto conn, or with writev on a plaintext TCP conn (the link's
// writer calls it; net.Buffers.WriteTo would fall back to one Write per
// buffer on a wrapper like this one).
func (c *tcpConn) WriteBuffers(b net.Buffers) (int64, error) {
	if bw, ok := c.Conn.(buffersWriter); ok {
		return bw.WriteBuffers(b)
	}
	return b.WriteTo(c.Conn)
}

func (c *tcpConn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// setErr records why the dmsg link on c ended, for the Redialer's status.
func (c *tcpConn) setErr(err error) {
	c.mu.Lock()
	c.err = err
	c.mu.Unlock()
}

// check applies the rule to a peer at ip: its policy, and for an
// encrypted one its public key. A refusal's error names both files. As
// for the trust store, a remote_dir another user could write (or a .pub
// in it) trusts nobody: whoever writes there could make us take their
// key for any address, which DragonFly does not check.
func (s *tcpSecurity) check(ip netip.Addr) (dmsgPeerPolicy, *rsa.PublicKey, error) {
	if s.remoteDir == "" {
		return dmsgPeerRefused, nil, fmt.Errorf("dmsg crypto: %w: peer %s: no remote_dir configured", errIOQNoRemoteKey, ip)
	}
	if err := checkNotWritableByOthers(s.remoteDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return dmsgPeerRefused, nil, fmt.Errorf("dmsg crypto: %w: peer %s: every file in remote_dir ignored: %w", errIOQNoRemoteKey, ip, err)
	}
	pol, pub, err := tcpPeerPolicy(s.remoteDir, ip)
	if err == nil && pol == dmsgPeerEncrypted {
		name, _ := dmsgPeerName(ip) // tcpPeerPolicy took it
		if werr := checkNotWritableByOthers(filepath.Join(s.remoteDir, name+".pub")); werr != nil {
			return dmsgPeerRefused, nil, fmt.Errorf("dmsg crypto: %w: peer %s: %w", errIOQKeyFormat, ip, werr)
		}
	}
	return pol, pub, err
}

// names reports whether remote_dir has either file for ip: the machine's
// own DragonFly config for that peer, which makes a target without a
// transport go over TCP.
func (s *tcpSecurity) names(ip netip.Addr) bool {
	name, err := dmsgPeerName(ip)
	if err != nil || s.remoteDir == "" {
		return false
	}
	for _, ext := range []string{".pub", ".none"} {
		if _, err := os.Stat(filepath.Join(s.remoteDir, name+ext)); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return true // there (or unreadable: the rule then says why)
		}
	}
	return false
}

// secure runs the rule's policy pol (from check) on c, accepted or dialed:
// the handshake for an encrypted peer, nothing for a plaintext one. It
// gives up at ctx's end or after dmsgHandshakeTimeout. On error c is
// closed.
func (s *tcpSecurity) secure(ctx context.Context, c *net.TCPConn, pol dmsgPeerPolicy, pub *rsa.PublicKey) (*tcpConn, error) {
	out := &tcpConn{Conn: c, raw: c, policy: pol, since: time.Now()}
	setNotSentLowat(c, tcpNotSentLowat)
	switch pol {
	case dmsgPeerPlaintext:
		// On loopback the socket's owner says who it is, as for any
		// local peer; from elsewhere a plaintext peer proves nothing.
		out.peer = s.policy.identify(c)
		return out, nil
	case dmsgPeerEncrypted:
	default:
		c.Close()
		return nil, fmt.Errorf("dmsg crypto: %w: peer %s", errIOQNoRemoteKey, c.RemoteAddr())
	}
	if s.keys == nil {
		c.Close()
		return nil, fmt.Errorf("dmsg crypto: %w: peer %s has a key in %s but this node has no usable rsa.prv (hammer2 rsainit makes one): %v",
			errIOQNoLocalKey, c.RemoteAddr(), s.remoteDir, s.keysErr)
	}
	cc, err := dmsgHandshake(ctx, c, s.keys.Priv, pub, s.rand)
	if err != nil {
		c.Close()
		return nil, err
	}
	out.Conn, out.greeting = cc, cc.PeerGreeting()
	out.peer = nodePeer(rsaFingerprint(pub), "rsa")
	return out, nil
}

// accept applies the rule to an accepted connection; see secure.
func (s *tcpSecurity) accept(ctx context.Context, c *net.TCPConn) (*tcpConn, error) {
	pol, pub, err := s.check(tcpRemoteIP(c))
	if err != nil {
		c.Close()
		return nil, err
	}
	return s.secure(ctx, c, pol, pub)
}

// tcpRemoteIP is c's peer address, unmapped.
func tcpRemoteIP(c *net.TCPConn) netip.Addr {
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// resolveTCP turns "host[:port]" into an address to dial, port 987 by
// default; a name takes its first address.
func resolveTCP(ctx context.Context, addr string) (netip.AddrPort, error) {
	host, port, err := splitHostPortDefault(addr, ListenPort)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, lerr := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		if lerr != nil {
			return netip.AddrPort{}, lerr
		}
		if len(ips) == 0 {
			return netip.AddrPort{}, fmt.Errorf("no address for %s", host)
		}
		ip = ips[0]
	}
	return netip.AddrPortFrom(ip.Unmap(), port), nil
}

// dial connects to addr ("host[:port]") by the rule. A peer the rule
// refuses is not dialed at all: the error names both files looked for.
func (s *tcpSecurity) dial(ctx context.Context, addr string) (*tcpConn, error) {
	ap, err := resolveTCP(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("tcp %s: %w", addr, err)
	}
	pol, pub, err := s.check(ap.Addr())
	if err != nil {
		return nil, fmt.Errorf("tcp %s: %w", addr, err)
	}
	d := net.Dialer{Timeout: tcpDialTimeout}
	if src := s.sourceFor(ap.Addr()); src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	c, err := d.DialContext(ctx, "tcp", ap.String())
	if err != nil {
		return nil, fmt.Errorf("tcp %s: %w", addr, err)
	}
	tc := c.(*net.TCPConn)
	_ = tc.SetNoDelay(true)
	return s.secure(ctx, tc, pol, pub)
}

// prefersTCP says whether a target without a transport goes over TCP:
// remote_dir names its address.
func (s *tcpSecurity) prefersTCP(ctx context.Context, addr string) (bool, error) {
	ap, err := resolveTCP(ctx, addr)
	if err != nil {
		return false, fmt.Errorf("%s: %w", addr, err)
	}
	return s.names(ap.Addr()), nil
}

// dialer returns a Redialer's dial function for t: TCP by the rule, QUIC
// through node (nil: none here), or, for a target without a transport,
// whichever prefersTCP says at each attempt.
func (s *tcpSecurity) dialer(t nodeTarget, node *QuicNode) func(context.Context) (redialConn, error) {
	return func(ctx context.Context) (redialConn, error) {
		useTCP := t.Transport == transportTCP
		if t.Transport == "" {
			var err error
			if useTCP, err = s.prefersTCP(ctx, t.Addr); err != nil {
				return nil, err
			}
		}
		if useTCP {
			c, err := s.dial(ctx, t.Addr)
			if err != nil {
				return nil, err
			}
			return c, nil
		}
		if node == nil {
			return nil, fmt.Errorf("quic %s: this daemon has no QUIC node (listen none, no autoconn)", t.Addr)
		}
		q, err := node.Dial(ctx, t.Addr)
		if err != nil {
			return nil, err
		}
		return q, nil
	}
}

// linkOver is what a dmsg link runs on for a dialed c, and who is behind it.
func linkOver(c redialConn) (rw io.ReadWriteCloser, q *QuicLink, peer PeerIdentity) {
	switch c := c.(type) {
	case *QuicLink:
		return c.Stream(), c, nodePeer(c.PeerFingerprint(), "quic")
	case *tcpConn:
		return c, nil, c.peer
	}
	panic(fmt.Sprintf("linkOver: %T", c))
}

// linkEnded records on c why the link on it went down (for TCP; a QUIC
// link knows by itself).
func linkEnded(c redialConn, err error) {
	if tc, ok := c.(*tcpConn); ok {
		tc.setErr(err)
	}
}
