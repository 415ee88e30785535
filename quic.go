package main

// QUIC links between leaf daemons.
//
// A QuicNode owns one UDP socket and one quic.Transport for both directions:
// QUIC demultiplexes by connection ID, so listening and dialing share the
// port, and a peer behind NAT sees the same source port we listen on.
//
// Authentication is by pinned Ed25519 key, both ways: each node presents a
// self-signed certificate over its node key, and each side accepts the other
// only if that key is in its TrustStore. Certificate chains, names and dates
// mean nothing here.
//
// One QUIC connection carries one dmsg link on two bidirectional streams:
// the control stream, urgent, for everything but bulk, and the bulk stream
// (iocom.go, "Lanes"; docs/PROTOCOL.md §3). The dialer opens the control
// stream and writes an 8-byte preamble, then opens the bulk stream and
// writes another; the acceptor checks both and echoes the first. Only then
// does either side hand the link out. The preambles exist because a QUIC
// peer learns of a stream only when data arrives on it, and the echo because
// a TLS 1.3 client finishes its handshake before the server has judged the
// client's certificate: without it, Dial would "succeed" against a peer that
// is about to refuse us.

import (
	"context"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

const (
	quicALPN     = "hammer2-dmsg"
	quicPreamble = "H2DMSG\x00\x02" // magic, then a big-endian version
	// quicBulkPreamble opens the bulk stream. Version 2 of the control
	// preamble is what says the link has one.
	quicBulkPreamble = "H2DBULK\x00"

	// Application error codes carried in CONNECTION_CLOSE.
	quicCodeClose    quic.ApplicationErrorCode = 0 // orderly close
	quicCodeProtocol quic.ApplicationErrorCode = 1 // missing or bad preamble

	// Two streams carry the link; leave room for later use without
	// letting a peer make us track thousands.
	quicMaxStreams = 16

	resetKeyInfo = "hammer2-leaf quic stateless reset key v1"
)

var errDialOnly = errors.New("quic: this node only dials (listen = none)")

// quicBulkBatch is the dmsg writer's bulk turn on a QUIC link
// (LinkConfig.BulkBatch): a stream write returns only as its data is
// packetized, so a smaller turn lets control messages in sooner.
const quicBulkBatch = 64 << 10

// Flow control is what bounds a link's bulk data in flight. A stream Write
// returns once its bytes are packetized, so what the link has written and
// the peer's link has not yet read is in flight. On one stream a PING or
// span update written after it waits behind all of it; on the two streams of
// a link it has a stream of its own, but the connection window is shared, so
// unread bulk can still hold it back (and the packets sent ahead of it still
// go first). When the receiving link reads more slowly than the path
// delivers (a busy CPU), the whole receive window fills with unread bulk and
// each PING waits window/read rate: with quic-go's defaults (512 KiB per
// stream, auto-tuned up to 6 MiB, 15 MiB per connection) the PING p99
// reached 20-150 ms on a 2-vCPU machine busy with other work
// (docs/BENCHMARKS.md, "QUIC links"). Windows sized for the local path would
// instead hold a long path to window/RTT. So the windows start at what a
// fast short path needs (a 384 KiB connection window keeps loopback
// throughput within about 10 % of quic-go's defaults; 96 KiB halves it), and
// auto-tuning may grow the connection's only on paths with a minimum RTT of
// quicLongPath or more, to twice the bandwidth-delay product of a
// quicPathRate path (allowWindowIncrease).
const (
	quicStreamWindow    = 256 << 10 // initial, per stream
	quicConnWindow      = 384 << 10 // initial, per connection: the binding limit
	quicMaxStreamWindow = 6 << 20   // quic-go's default ceilings
	quicMaxConnWindow   = 15 << 20
	quicPathRate        = 10e9 / 8 // bytes per second: 10 Gbit/s
	// quicLongPath separates a path whose window may grow from loopback
	// and LAN paths, whose minimum RTT right after the handshake (which
	// includes its crypto) is still well under a millisecond.
	quicLongPath = time.Millisecond
)

// QuicConfig configures a QuicNode. Zero values take the defaults noted.
type QuicConfig struct {
	// Listen is the UDP address to bind, used for dialing too.
	// Default ":987" (DMSG_LISTEN_PORT, all addresses).
	Listen string
	// DeadAfter declares a silent peer dead (QUIC idle timeout). It also
	// bounds the handshake and the preamble exchange. Default 3 s.
	DeadAfter time.Duration
	// KeepAlive is how often an idle link sends a PING so that it is not
	// taken for dead. Default DeadAfter/3, so two PINGs may be lost.
	KeepAlive time.Duration
	// DialOnly binds Listen only to dial from: no connection is accepted
	// (a leaf configured with listen = "none").
	DialOnly bool
	// Logger receives refusals and protocol errors. Default slog.Default().
	Logger *slog.Logger
	// RefusedLogsPerSecond bounds the log lines about refused handshakes
	// (limits.refused_logs_per_second). Default defaultLimits'.
	RefusedLogsPerSecond float64
}

func (c *QuicConfig) setDefaults() {
	if c.Listen == "" {
		c.Listen = ":" + strconv.Itoa(ListenPort)
	}
	if c.DeadAfter <= 0 {
		c.DeadAfter = 3 * time.Second
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = c.DeadAfter / 3
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.RefusedLogsPerSecond <= 0 {
		c.RefusedLogsPerSecond = defaultLimits().RefusedLogsPerSecond
	}
}

// UntrustedKeyError reports a peer whose key is not in our TrustStore.
type UntrustedKeyError struct {
	Addr net.Addr
	Key  ed25519.PublicKey
}

func (e *UntrustedKeyError) Error() string {
	return fmt.Sprintf("untrusted peer key %s from %v", Fingerprint(e.Key), e.Addr)
}

// PeerRefusedError reports that the peer rejected our key during the
// handshake: it has no copy of our node.pub.
type PeerRefusedError struct {
	Addr        string
	Fingerprint string // our key's fingerprint, the one the peer refused
	Err         error
}

func (e *PeerRefusedError) Error() string {
	return fmt.Sprintf("peer %s refused our key %s (install our node.pub in its remote directory): %v",
		e.Addr, e.Fingerprint, e.Err)
}

func (e *PeerRefusedError) Unwrap() error { return e.Err }

// QuicNode is this daemon's QUIC endpoint.
type QuicNode struct {
	cfg     QuicConfig
	log     *slog.Logger
	refused *logLimiter // refusals of handshakes and preambles
	trust   *TrustStore
	fp      string // our key's fingerprint
	qconf   *quic.Config
	srvTLS  *tls.Config
	cliTLS  *tls.Config // template; Dial clones it per peer
	udp     *net.UDPConn
	tr      *quic.Transport
	ln      *quic.Listener
	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	wg      sync.WaitGroup // acceptLoop and admit goroutines
	ready   chan *QuicLink // admitted links waiting for Accept
	lnDone  chan struct{}  // closed when acceptLoop ends
	lnErr   error          // why acceptLoop ended; read after lnDone
	closing sync.Once
	closeEr error

	mu     sync.Mutex
	closed bool
	links  map[*QuicLink]struct{} // live links, closed by Close

	winMu sync.Mutex
	wins  map[*quic.Conn]uint64 // receive window of each connection that asked to grow it
}

// NewQuicNode binds cfg.Listen and starts accepting links.
func NewQuicNode(key ed25519.PrivateKey, trust *TrustStore, cfg QuicConfig) (*QuicNode, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("quic: invalid node key")
	}
	if trust == nil {
		return nil, errors.New("quic: nil trust store")
	}
	cfg.setDefaults()

	cert, err := selfSignedCert(key)
	if err != nil {
		return nil, err
	}
	// Deriving the reset key from the node key keeps it stable across
	// restarts: a restarted node answers packets of its previous life
	// with a stateless reset the peer can verify, so the peer drops the
	// dead connection at once instead of after the idle timeout.
	rk, err := hkdf.Key(sha256.New, key.Seed(), nil, resetKeyInfo, len(quic.StatelessResetKey{}))
	if err != nil {
		return nil, fmt.Errorf("quic: derive reset key: %w", err)
	}
	var resetKey quic.StatelessResetKey
	copy(resetKey[:], rk)

	laddr, err := resolveListen(cfg.Listen)
	if err != nil {
		return nil, err
	}
	udp, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("quic: %w", err)
	}

	n := &QuicNode{
		cfg:     cfg,
		log:     cfg.Logger,
		refused: newLogLimiter(cfg.RefusedLogsPerSecond),
		trust:   trust,
		fp:      Fingerprint(key.Public().(ed25519.PublicKey)),
		qconf: &quic.Config{
			HandshakeIdleTimeout:  cfg.DeadAfter,
			MaxIdleTimeout:        cfg.DeadAfter,
			KeepAlivePeriod:       cfg.KeepAlive,
			MaxIncomingStreams:    quicMaxStreams,
			MaxIncomingUniStreams: -1,

			InitialStreamReceiveWindow:     quicStreamWindow,
			MaxStreamReceiveWindow:         quicMaxStreamWindow,
			InitialConnectionReceiveWindow: quicConnWindow,
			MaxConnectionReceiveWindow:     quicMaxConnWindow,
		},
		udp:    udp,
		tr:     &quic.Transport{Conn: udp, StatelessResetKey: &resetKey},
		ready:  make(chan *QuicLink),
		lnDone: make(chan struct{}),
		links:  map[*QuicLink]struct{}{},
		wins:   map[*quic.Conn]uint64{},
	}
	n.qconf.AllowConnectionWindowIncrease = n.allowWindowIncrease
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.cliTLS = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{quicALPN},
		// Only the chain and host name checks are skipped; the key is
		// pinned in VerifyConnection, set per dial.
		InsecureSkipVerify: true,
	}
	base := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{quicALPN},
		// Ask, but let VerifyConnection refuse a missing certificate, so
		// that the refusal is logged (tls would fail the handshake first,
		// silently).
		ClientAuth: tls.RequestClientCert,
		// Resumption would skip the certificate exchange; a full
		// handshake costs little on long-lived links.
		SessionTicketsDisabled: true,
	}
	n.srvTLS = base.Clone()
	n.srvTLS.GetConfigForClient = func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		var remote net.Addr
		if chi.Conn != nil { // quic-go fills in a stand-in with the addresses
			remote = chi.Conn.RemoteAddr()
		}
		if !slices.Contains(chi.SupportedProtos, quicALPN) {
			n.refused.Warn(n.log, "quic: refused a client that does not speak "+quicALPN, "remote", remote,
				"alpn", chi.SupportedProtos)
			return nil, fmt.Errorf("quic: ALPN %q required", quicALPN)
		}
		c := base.Clone()
		c.VerifyConnection = n.verifyPeer(remote, "accept")
		return c, nil
	}

	if cfg.DialOnly {
		// Without a listener the transport drops every handshake it is
		// offered: nothing can be accepted, not even from a trusted key.
		n.lnErr = errDialOnly
		close(n.lnDone)
		return n, nil
	}
	n.ln, err = n.tr.Listen(n.srvTLS, n.qconf)
	if err != nil {
		n.tr.Close()
		udp.Close()
		return nil, fmt.Errorf("quic: listen: %w", err)
	}
	n.wg.Add(1)
	go n.acceptLoop()
	return n, nil
}

// allowWindowIncrease is quic-go's hook before its auto-tuning grows a
// connection's receive window by delta. On a path whose minimum RTT is
// quicLongPath or more it allows growth up to twice the bandwidth-delay
// product of a quicPathRate path (and quicMaxConnWindow); on loopback or a
// LAN the window stays at quicConnWindow, so bulk data cannot queue far
// ahead of control messages. A refusal is not final: quic-go asks again at
// its next window update, with a newer RTT estimate.
func (n *QuicNode) allowWindowIncrease(c *quic.Conn, delta uint64) bool {
	n.winMu.Lock()
	defer n.winMu.Unlock()
	w, ok := n.wins[c]
	if !ok {
		w = uint64(quicConnWindow)
		context.AfterFunc(c.Context(), func() {
			n.winMu.Lock()
			delete(n.wins, c)
			n.winMu.Unlock()
		})
	}
	if w+delta > quicWindowLimit(c.ConnectionStats().MinRTT) {
		n.wins[c] = w
		return false
	}
	n.wins[c] = w + delta
	return true
}

// quicWindowLimit is how far a connection's receive window may grow on a
// path whose minimum RTT is minRTT: not past quicConnWindow on loopback or
// a LAN, twice a quicPathRate path's bandwidth-delay product on a long one,
// never past quicMaxConnWindow (quic-go's own cap).
func quicWindowLimit(minRTT time.Duration) uint64 {
	limit := uint64(quicConnWindow)
	if minRTT >= quicLongPath {
		limit = max(limit, uint64(2*minRTT.Seconds()*quicPathRate))
	}
	return min(limit, quicMaxConnWindow)
}

// window is the receive window a connection has been allowed.
func (n *QuicNode) window(c *quic.Conn) uint64 {
	n.winMu.Lock()
	defer n.winMu.Unlock()
	return max(n.wins[c], quicConnWindow)
}

func selfSignedCert(key ed25519.PrivateKey) (tls.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return tls.Certificate{}, err
	}
	pub := key.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "hammer2-leaf " + Fingerprint(pub)},
		// Nobody checks validity dates (the key is pinned), but x509
		// wants some; keep them wide to survive clock skew.
		NotBefore: time.Now().Add(-24 * time.Hour),
		NotAfter:  time.Now().Add(100 * 365 * 24 * time.Hour),
		KeyUsage:  x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{
			x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth,
		},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("quic: self-signed certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// verifyPeer returns the TLS check that pins the peer's key to the trust
// store. VerifyConnection (unlike VerifyPeerCertificate) also runs on
// resumed sessions, so no path skips it.
func (n *QuicNode) verifyPeer(remote net.Addr, side string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			n.refused.Warn(n.log, "quic: refused a peer that sent no certificate", "remote", remote, "side", side)
			return errors.New("peer sent no certificate")
		}
		pub, ok := cs.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
		if !ok {
			n.refused.Warn(n.log, "quic: refused a peer whose key is not Ed25519", "remote", remote, "side", side,
				"type", fmt.Sprintf("%T", cs.PeerCertificates[0].PublicKey))
			return fmt.Errorf("peer key is %T, not Ed25519", cs.PeerCertificates[0].PublicKey)
		}
		if _, ok := n.trust.Lookup(pub); !ok {
			n.refused.Warn(n.log, "quic: refused untrusted peer key", "remote", remote,
				"key", Fingerprint(pub), "side", side)
			return &UntrustedKeyError{Addr: remote, Key: pub}
		}
		return nil
	}
}

// Addr returns the bound UDP address.
func (n *QuicNode) Addr() net.Addr { return n.udp.LocalAddr() }

// Fingerprint returns our node key's fingerprint.
func (n *QuicNode) Fingerprint() string { return n.fp }

func (n *QuicNode) acceptLoop() {
	defer n.wg.Done()
	defer close(n.lnDone)
	for {
		conn, err := n.ln.Accept(n.ctx)
		if err != nil {
			if n.ctx.Err() == nil {
				n.log.Error("quic: accept failed; no more incoming links", "err", err)
			}
			n.lnErr = err
			return
		}
		n.wg.Add(1)
		go n.admit(conn)
	}
}

// admit runs the acceptor's half of the preamble and queues the link for
// Accept. It runs on its own goroutine so a slow peer cannot hold up others.
func (n *QuicNode) admit(conn *quic.Conn) {
	defer n.wg.Done()
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.DeadAfter)
	defer cancel()
	// The handshake pinned a trusted Ed25519 key (verifyPeer): every line
	// about this peer names it.
	key := Fingerprint(conn.ConnectionState().TLS.PeerCertificates[0].PublicKey.(ed25519.PublicKey))
	str, err := conn.AcceptStream(ctx)
	if err != nil {
		n.refused.Warn(n.log, "quic: peer opened no stream", "remote", conn.RemoteAddr(), "key", key, "err", err)
		conn.CloseWithError(quicCodeProtocol, "no stream")
		return
	}
	var bulk *quic.Stream
	var got [len(quicPreamble)]byte
	err = withStreamDeadline(ctx, str, func() error {
		if _, err := io.ReadFull(str, got[:]); err != nil {
			return err
		}
		if string(got[:]) != quicPreamble {
			return fmt.Errorf("bad preamble %q", got[:])
		}
		// quic-go hands out a peer's streams in the order of their
		// IDs, so this is the one opened second.
		var err error
		if bulk, err = conn.AcceptStream(ctx); err != nil {
			return fmt.Errorf("no bulk stream: %w", err)
		}
		if err := withStreamDeadline(ctx, bulk, func() error {
			if _, err := io.ReadFull(bulk, got[:]); err != nil {
				return err
			}
			if string(got[:]) != quicBulkPreamble {
				return fmt.Errorf("bad bulk preamble %q", got[:])
			}
			return nil
		}); err != nil {
			return err
		}
		_, err = io.WriteString(str, quicPreamble)
		return err
	})
	if err != nil {
		n.refused.Warn(n.log, "quic: preamble failed", "remote", conn.RemoteAddr(), "key", key, "err", err)
		conn.CloseWithError(quicCodeProtocol, "bad preamble")
		return
	}
	l := n.newLink(conn, str, bulk, false)
	if l == nil {
		return
	}
	select {
	case n.ready <- l:
	case <-n.ctx.Done():
		l.Close()
	case <-l.Done():
	}
}

// withStreamDeadline runs fn with str's deadline tied to ctx.
func withStreamDeadline(ctx context.Context, str *quic.Stream, fn func() error) error {
	if d, ok := ctx.Deadline(); ok {
		str.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { str.SetDeadline(time.Now()) })
	err := fn()
	if !stop() {
		// ctx ended; the deadline is (or is about to be) in the past, so
		// the stream is unusable either way. Report why.
		return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	str.SetDeadline(time.Time{})
	return err
}

// Accept returns the next authenticated incoming link.
func (n *QuicNode) Accept(ctx context.Context) (*QuicLink, error) {
	select {
	case l := <-n.ready:
		return l, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-n.lnDone: // also after Close
		if n.ctx.Err() != nil {
			return nil, fmt.Errorf("quic accept: %w", net.ErrClosed)
		}
		return nil, fmt.Errorf("quic accept: %w", n.lnErr)
	}
}

// Dial connects to addr: "host" (port 987), "host:port", "[v6]" or
// "[v6]:port". It returns once the peer has accepted our key and the link's
// stream is open.
func (n *QuicNode) Dial(ctx context.Context, addr string) (*QuicLink, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(n.ctx, cancel) // node Close aborts dials
	defer stop()

	raddr, err := n.resolve(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	tc := n.cliTLS.Clone()
	tc.VerifyConnection = n.verifyPeer(raddr, "dial")
	conn, err := n.tr.Dial(ctx, raddr, tc, n.qconf)
	if err != nil {
		return nil, n.dialError(addr, err)
	}
	pctx, pcancel := context.WithTimeout(ctx, n.cfg.DeadAfter)
	defer pcancel()
	var bulk *quic.Stream
	str, err := conn.OpenStreamSync(pctx)
	if err == nil {
		var got [len(quicPreamble)]byte
		err = withStreamDeadline(pctx, str, func() error {
			if _, err := io.WriteString(str, quicPreamble); err != nil {
				return err
			}
			var err error
			if bulk, err = conn.OpenStreamSync(pctx); err != nil {
				return err
			}
			if err := withStreamDeadline(pctx, bulk, func() error {
				_, err := io.WriteString(bulk, quicBulkPreamble)
				return err
			}); err != nil {
				return err
			}
			if _, err := io.ReadFull(str, got[:]); err != nil {
				return err
			}
			if string(got[:]) != quicPreamble {
				return fmt.Errorf("bad preamble reply %q", got[:])
			}
			return nil
		})
	}
	if err != nil {
		// A refusal of our certificate arrives as a connection close
		// during this step; the close error says more than the
		// stream error.
		if cerr := context.Cause(conn.Context()); cerr != nil {
			err = cerr
		}
		conn.CloseWithError(quicCodeProtocol, "preamble failed")
		return nil, n.dialError(addr, err)
	}
	l := n.newLink(conn, str, bulk, true)
	if l == nil {
		return nil, fmt.Errorf("dial %s: %w", addr, net.ErrClosed)
	}
	return l, nil
}

func (n *QuicNode) dialError(addr string, err error) error {
	var te *quic.TransportError
	if errors.As(err, &te) && te.Remote && te.ErrorCode.IsCryptoError() {
		return &PeerRefusedError{Addr: addr, Fingerprint: n.fp, Err: err}
	}
	return fmt.Errorf("dial %s: %w", addr, err)
}

// resolve turns a Dial address into a UDP address our socket can reach.
func (n *QuicNode) resolve(ctx context.Context, addr string) (*net.UDPAddr, error) {
	host, port, err := splitHostPortDefault(addr, ListenPort)
	if err != nil {
		return nil, err
	}
	// A socket bound to one address family can only reach that family.
	network := "ip"
	if local, ok := n.udp.LocalAddr().(*net.UDPAddr); ok {
		if local.IP.To4() != nil {
			network = "ip4"
		} else if !local.IP.IsUnspecified() {
			network = "ip6"
		}
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		ips, err := net.DefaultResolver.LookupNetIP(ctx, network, host)
		if err != nil {
			return nil, err
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("no %s address for %s", network, host)
		}
		ip = ips[0]
	}
	ip = ip.Unmap()
	if (network == "ip4" && !ip.Is4()) || (network == "ip6" && ip.Is4()) {
		return nil, fmt.Errorf("%v is not reachable from %v", ip, n.udp.LocalAddr())
	}
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, port)), nil
}

// splitHostPortDefault splits "host", "host:port", "[v6]", "[v6]:port" or a
// bare IPv6 address, filling in def for a missing port.
func splitHostPortDefault(addr string, def uint16) (host string, port uint16, err error) {
	if addr == "" {
		return "", 0, errors.New("empty address")
	}
	var ps string
	switch {
	case strings.HasPrefix(addr, "[") && strings.HasSuffix(addr, "]"):
		host = addr[1 : len(addr)-1]
	case strings.Count(addr, ":") > 1 && !strings.HasPrefix(addr, "["):
		host = addr // bare IPv6; "::1:987" would be ambiguous, so no port
	case !strings.Contains(addr, ":"):
		host = addr
	default:
		if host, ps, err = net.SplitHostPort(addr); err != nil {
			return "", 0, err
		}
	}
	if ps == "" {
		return host, def, nil
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q in %q", ps, addr)
	}
	return host, uint16(p), nil
}

func resolveListen(listen string) (*net.UDPAddr, error) {
	host, port, err := splitHostPortDefault(listen, ListenPort)
	if err != nil {
		return nil, fmt.Errorf("quic: listen address %q: %w", listen, err)
	}
	a, err := net.ResolveUDPAddr("udp", net.JoinHostPort(host, strconv.Itoa(int(port))))
	if err != nil {
		return nil, fmt.Errorf("quic: listen address %q: %w", listen, err)
	}
	return a, nil
}

// newLink wraps an authenticated connection and tracks it until it ends,
// so Close can say goodbye. It returns nil, having closed conn, if the node
// is closing.
func (n *QuicNode) newLink(conn *quic.Conn, str, bulk *quic.Stream, dialed bool) *QuicLink {
	// The handshake guaranteed an Ed25519 leaf certificate (verifyPeer).
	pub := conn.ConnectionState().TLS.PeerCertificates[0].PublicKey.(ed25519.PublicKey)
	name, _ := n.trust.Lookup(pub)
	// Control data leaves ahead of any bulk data quic-go holds: a PING
	// then waits only for the packets already sent.
	str.SetPriority(0, false)
	l := &QuicLink{node: n, conn: conn, str: str, bulk: bulk, peer: pub, name: name, dialed: dialed, since: time.Now()}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		conn.CloseWithError(quicCodeClose, "node shutting down")
		return nil
	}
	n.links[l] = struct{}{}
	n.mu.Unlock()
	context.AfterFunc(conn.Context(), func() {
		n.mu.Lock()
		delete(n.links, l)
		n.mu.Unlock()
	})
	return l
}

// Close closes every link with a goodbye, stops accepting and releases the
// socket. Links handed out become unusable.
func (n *QuicNode) Close() error {
	n.closing.Do(func() {
		n.mu.Lock()
		n.closed = true
		links := make([]*QuicLink, 0, len(n.links))
		for l := range n.links {
			links = append(links, l)
		}
		n.mu.Unlock()

		n.cancel()
		if n.ln != nil {
			n.ln.Close()
		}
		var wg sync.WaitGroup
		for _, l := range links {
			// CloseWithError waits until CONNECTION_CLOSE is sent.
			wg.Go(func() { l.conn.CloseWithError(quicCodeClose, "node shutting down") })
		}
		wg.Wait()
		n.wg.Wait()
		n.tr.Close() // the Transport does not close a socket it was given
		n.closeEr = n.udp.Close()
	})
	return n.closeEr
}

// QuicLink is one authenticated QUIC connection carrying one dmsg link.
type QuicLink struct {
	node   *QuicNode
	conn   *quic.Conn
	str    *quic.Stream // control
	bulk   *quic.Stream
	peer   ed25519.PublicKey
	name   string
	dialed bool
	since  time.Time
}

// QuicStats is a snapshot of a link's transport counters.
type QuicStats struct {
	RTT             time.Duration // smoothed
	MinRTT          time.Duration
	BytesSent       uint64 // QUIC payload bytes, retransmissions included
	BytesReceived   uint64
	PacketsSent     uint64
	PacketsReceived uint64
	PacketsLost     uint64
	// RecvWindow is the connection receive window we allow the peer:
	// quicConnWindow on short paths, more on long ones (quicWindowLimit).
	RecvWindow uint64
}

// PeerKey returns the key the peer authenticated with.
func (l *QuicLink) PeerKey() ed25519.PublicKey { return l.peer }

// PeerName returns the trust store's name for the peer at handshake time.
func (l *QuicLink) PeerName() string { return l.name }

// PeerFingerprint returns the fingerprint of PeerKey.
func (l *QuicLink) PeerFingerprint() string { return Fingerprint(l.peer) }

// RemoteAddr returns the peer's current UDP address.
func (l *QuicLink) RemoteAddr() net.Addr { return l.conn.RemoteAddr() }

// LocalAddr returns our UDP address.
func (l *QuicLink) LocalAddr() net.Addr { return l.conn.LocalAddr() }

// Dialed reports whether we dialed the link (false: we accepted it).
func (l *QuicLink) Dialed() bool { return l.dialed }

// Since returns when the link came up.
func (l *QuicLink) Since() time.Time { return l.since }

// Stats returns the link's current transport counters.
func (l *QuicLink) Stats() QuicStats {
	s := l.conn.ConnectionStats()
	return QuicStats{
		RTT:             s.SmoothedRTT,
		MinRTT:          s.MinRTT,
		BytesSent:       s.BytesSent,
		BytesReceived:   s.BytesReceived,
		PacketsSent:     s.PacketsSent,
		PacketsReceived: s.PacketsReceived,
		PacketsLost:     s.PacketsLost,
		RecvWindow:      l.node.window(l.conn),
	}
}

// Stream returns the link's control stream, which also offers the bulk
// stream (BulkStream) for a Link to carry its bulk lane. Its Close ends the
// whole link, as closing a TCP connection would, and unblocks a pending
// Read on either stream; CloseWrite only sends a FIN after the data already
// written.
func (l *QuicLink) Stream() io.ReadWriteCloser { return quicLinkStream{l} }

// Done is closed when the link has ended, for whatever reason.
func (l *QuicLink) Done() <-chan struct{} { return l.conn.Context().Done() }

// Err returns why the link ended, nil while it is up. It is a
// *quic.IdleTimeoutError for a silent (dead) peer, *quic.StatelessResetError
// for a peer that restarted, *quic.ApplicationError for a close.
func (l *QuicLink) Err() error {
	ctx := l.conn.Context()
	if ctx.Err() == nil {
		return nil
	}
	return context.Cause(ctx)
}

// Close ends the link with an orderly CONNECTION_CLOSE. Data written but not
// yet acknowledged is discarded; use the stream's CloseWrite and wait for
// the peer's EOF first when it matters.
func (l *QuicLink) Close() error {
	return l.conn.CloseWithError(quicCodeClose, "")
}

type quicLinkStream struct{ l *QuicLink }

// BulkStream is the stream for the Link's bulk lane (dualConn).
func (s quicLinkStream) BulkStream() io.ReadWriter {
	if s.l.bulk == nil {
		return nil
	}
	return s.l.bulk
}

func (s quicLinkStream) Read(p []byte) (int, error)         { return s.l.str.Read(p) }
func (s quicLinkStream) Write(p []byte) (int, error)        { return s.l.str.Write(p) }
func (s quicLinkStream) Close() error                       { return s.l.Close() }
func (s quicLinkStream) CloseWrite() error                  { return s.l.str.Close() }
func (s quicLinkStream) SetDeadline(t time.Time) error      { return s.l.str.SetDeadline(t) }
func (s quicLinkStream) SetReadDeadline(t time.Time) error  { return s.l.str.SetReadDeadline(t) }
func (s quicLinkStream) SetWriteDeadline(t time.Time) error { return s.l.str.SetWriteDeadline(t) }
