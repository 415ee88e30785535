package main

// The service daemon (`hammer2 service`): the node's backbone in full
// relay mode. It accepts leaves on a Unix socket, DragonFly's dmsg over TCP
// by DragonFly's rule (dmsgtcp.go: what DragonFly's mount_hammer2, kernel,
// C tools and other machines' services use, port 987) and QUIC links from
// other nodes, keeps links to the nodes its config lists and to those the
// kernel's REMOTE slots name (service_volconf.go), and runs the span router
// over all of them.

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// tcpHandshakesMax bounds the RSA handshakes a service runs at once. Each
// costs 15-35 ms of CPU and may wait up to dmsgHandshakeTimeout for its
// peer; only peers whose address has a remote/<ip>.pub get one, and past
// the bound a connection is refused at accept.
const tcpHandshakesMax = 32

// applySlice bounds the router actions applied under one hold of the
// service's lock. Forming a mesh of 1,000 leaves decides a million relays
// in one batch; applied at once, that held the lock over a second (many
// seconds on a loaded machine), while every link's reader waited on it in
// its handler, read nothing, and looked silent to the dead_after check.
const applySlice = 4096

// Service is a running service daemon.
type Service struct {
	cfg      ServiceConfig
	log      *slog.Logger
	node     *QuicNode
	hostname string

	ctx context.Context
	wg  sync.WaitGroup
	// changes is notified whenever Status would change (counters aside),
	// for `hammer2 status --service --watch`.
	changes notifier

	mu     sync.Mutex // guards router and everything reached from links
	router *spanRouter
	links  map[connID]*svcLink
	nextID connID
	nextSp spanID
	spanTx map[spanID]*Trans // each received span's transaction, for circuits
	// relayExt is where applyLocked encodes each relay's LNK_SPAN: the
	// link copies it when queueing, so one buffer serves them all instead
	// of 448 bytes of garbage per relay (a burst of relays is most of a
	// service's peak memory).
	relayExt []byte
	// acts are the router's actions not yet applied, oldest first from
	// actsHead (applyLocked applies them a slice at a time).
	acts     []spanAction
	actsHead int
	started  time.Time
	// unpriv counts the unprivileged links of all listeners.
	unpriv int
	// kicked wakes the applier: router events are applied in batches.
	kicked chan struct{}
	// refused rate-limits the log lines about refused connections.
	refused *logLimiter
	// autoconn are the redialers of the configured nodes, set by Run
	// before anything reads it.
	autoconn []*Redialer
	// sec is DragonFly's rule for TCP links, dialing from the TCP
	// listener's address; set by Run before anything reads it.
	sec *tcpSecurity
	// handshakes holds a token per RSA handshake running on an accepted
	// connection.
	handshakes chan struct{}
	// obs holds the limit hits and the metrics' counters (metrics.go).
	obs *observer
}

// ServiceConfig says where the service listens and whom it dials.
type ServiceConfig struct {
	Unix      string        // leaves connect here; "" for none
	TCP       string        // DragonFly's dmsg over TCP, e.g. ":987"; "" for none
	Autoconn  []string      // nodes to keep links to: [tcp:|quic:]<host>[:port]
	DeadAfter time.Duration // dmsg silence bound on each link
	Ping      time.Duration
	RedialMin time.Duration
	RedialMax time.Duration
	// Policy says which local peers are privileged; Limits bound what
	// any peer can make the service hold. Zero values: root and our own
	// user only, defaultLimits.
	Policy privilegePolicy
	Limits Limits
	// Control is the control socket `hammer2 status --service` asks;
	// "" for none.
	Control string
	// TCPSec is DragonFly's rule for TCP links (remote_dir, RSA keys);
	// nil refuses every TCP peer.
	TCPSec *tcpSecurity
	// MetricsListen is the TCP address of the Prometheus endpoint; ""
	// or "none" for none (metrics_http.go).
	MetricsListen string
}

// svcLink is one connection of the service. Its fields are guarded by the
// service's mu, except those of svcLinkInfo and link, which never change.
type svcLink struct {
	svcLinkInfo
	id    connID
	link  *Link
	since time.Time
	conn  *Trans // the peer's LNK_CONN, while open
	spans map[*Trans]spanID
	// relays are the spans we opened on the link, by the router's id;
	// each one's Trans.Data is that id (a relayID), so a transaction
	// the peer opens under one finds its relay at once (relayOf).
	relays map[relayID]*Trans
	// onRelay is the handler of every relay of the link: one closure
	// per link, not one per relay.
	onRelay Handler
	// ignored counts the spans of an unprivileged link: answered, kept
	// open and never relayed. circuits counts the circuits it has open
	// through us.
	ignored  int
	circuits int
	// unanswered are withdrawn spans whose DELETE we have not returned:
	// the router holds the answer while it withdraws the node elsewhere.
	unanswered map[spanID]*Trans
	// label is the peer's LNK_CONN label; kernel says it is DragonFly's
	// kernel (svcKernelConn), whose link is never timed out for silence.
	label  string
	kernel bool
	// volconf are the links the kernel's REMOTE slots asked for, by
	// (media, slot) (service_volconf.go).
	volconf map[volconfKey]*volconfWorker
}

// svcLinkInfo is what the service knows of a link when it starts it.
type svcLinkInfo struct {
	name      string
	peer      PeerIdentity
	lsn       *svcListener // the listener it came in on, nil if dialed
	quic      *QuicLink
	transport string // "unix", "tcp", "tcp+rsa" or "quic"
	// local: accepted on the Unix socket or from a loopback address, so
	// the peer's death closes the socket (the kernel rule needs it).
	local bool
}

// NewService prepares a service; node may be nil (no QUIC links).
func NewService(cfg ServiceConfig, node *QuicNode, log *slog.Logger) *Service {
	host, _ := os.Hostname()
	if cfg.Limits == (Limits{}) {
		cfg.Limits = defaultLimits()
	}
	if cfg.Policy == (privilegePolicy{}) {
		cfg.Policy = privilegePolicy{self: os.Geteuid(), group: -1}
	}
	if cfg.TCPSec == nil {
		cfg.TCPSec = &tcpSecurity{policy: cfg.Policy, rand: crand.Reader, keysErr: errors.New("no RSA keys configured")}
	}
	s := &Service{cfg: cfg, log: log, node: node, hostname: host, started: time.Now(),
		router: newSpanRouter(rand.Uint32() | 1), links: map[connID]*svcLink{}, spanTx: map[spanID]*Trans{},
		kicked: make(chan struct{}, 1), refused: newLogLimiter(cfg.Limits.RefusedLogsPerSecond),
		sec: cfg.TCPSec, handshakes: make(chan struct{}, tcpHandshakesMax), obs: newObserver()}
	s.obs.register(newServiceCollector(s))
	return s
}

// svcListener is one of the service's stream listeners and the links it
// holds (guarded by the service's mu).
type svcListener struct {
	ln    net.Listener
	name  string // its address, for logs
	links int
}

// errAlreadyRunning means another service holds the listening socket.
var errAlreadyRunning = errors.New("daemon already running")

// Run serves until ctx ends. Binding the TCP or Unix socket failing because
// it is in use means another service runs: errAlreadyRunning, as DragonFly's
// "master listen: daemon already running".
func (s *Service) Run(ctx context.Context, ready func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.ctx = ctx
	var lns []*svcListener
	if s.cfg.TCP != "" {
		ln, err := net.Listen("tcp", s.cfg.TCP)
		if err != nil {
			return s.listenErr(err)
		}
		lns = append(lns, &svcListener{ln: ln, name: "tcp " + ln.Addr().String()})
		s.sec = s.cfg.TCPSec.withSource(ln.Addr().String())
	}
	if s.cfg.Unix != "" {
		ln, err := s.cfg.Policy.listenUnix(s.cfg.Unix)
		if err != nil {
			closeAll(lns)
			if errors.Is(err, errSocketInUse) {
				return errAlreadyRunning
			}
			return err
		}
		lns = append(lns, &svcListener{ln: ln, name: "unix " + s.cfg.Unix})
	}
	s.spawn(func() { s.applier(ctx) })
	for _, ln := range lns {
		s.spawn(func() { s.acceptStream(ctx, ln) })
	}
	if s.node != nil {
		s.spawn(func() { s.acceptQuic(ctx) })
	}
	for _, addr := range s.cfg.Autoconn {
		t, err := parseNodeTarget(addr)
		if err != nil {
			s.log.Warn("autoconn entry skipped", "autoconn", addr, "err", err) // validated with the config
			continue
		}
		d := newRedialerDial(addr, s.sec.dialer(t, s.node), RedialConfig{MinBackoff: s.cfg.RedialMin,
			MaxBackoff: s.cfg.RedialMax, Logger: s.log.With("autoconn", addr), OnChange: s.changes.Notify})
		s.autoconn = append(s.autoconn, d)
		s.spawn(func() { _ = d.Run(ctx, func(c redialConn) { s.runDialed(ctx, c, "node "+addr) }) })
	}
	if err := s.obs.serveMetrics(ctx, s.cfg.MetricsListen, s.log, s.spawn); err != nil {
		cancel()
		closeAll(lns)
		s.wg.Wait()
		return err
	}
	if s.cfg.Control != "" {
		cs := &controlServer{path: s.cfg.Control, policy: s.cfg.Policy, log: s.log, refused: s.refused, spawn: s.spawn,
			handle: s.control, changes: &s.changes}
		if err := cs.serve(ctx); err != nil {
			cancel()
			closeAll(lns)
			s.wg.Wait()
			return err
		}
	}
	s.log.Info("service running", "tcp", s.cfg.TCP, "unix", s.cfg.Unix, "quic", s.quicAddr(), "autoconn", s.cfg.Autoconn,
		"control", s.cfg.Control, "remote_dir", s.sec.remoteDir, "rsa_key", s.sec.Fingerprint())
	if ready != nil {
		ready()
	}
	<-ctx.Done()
	closeAll(lns)
	s.shutdown()
	s.wg.Wait()
	return nil
}

// portInUseError is a TCP address someone already listens on: another
// service (DragonFly's or ours), or another program (ServiceCmd tells).
type portInUseError struct{ addr string }

func (e *portInUseError) Error() string { return fmt.Sprintf("TCP %s is in use", e.addr) }

func (s *Service) listenErr(err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return &portInUseError{addr: s.cfg.TCP}
	}
	return fmt.Errorf("listen: %w", err)
}

func closeAll(lns []*svcListener) {
	for _, l := range lns {
		l.ln.Close()
	}
}

func (s *Service) quicAddr() string {
	if s.node == nil {
		return "none"
	}
	return s.node.Addr().String()
}

func (s *Service) spawn(f func()) {
	s.wg.Add(1)
	go func() { defer s.wg.Done(); f() }()
}

// acceptStream serves one stream listener. Each connection's peer is
// identified before anything is read from it, and refused at once when it
// would go over the listener's link limit (or, unprivileged, over the
// limit of unprivileged links), so that a flood holds no more than that.
// A TCP peer first passes DragonFly's rule (acceptTCP).
func (s *Service) acceptStream(ctx context.Context, lsn *svcListener) {
	_ = acceptLoop(ctx, lsn.ln, s.log, lsn.name, func(c net.Conn) {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
			s.acceptTCP(ctx, lsn, tc)
			return
		}
		s.admitLink(c, svcLinkInfo{name: "local", peer: s.cfg.Policy.identify(c), lsn: lsn, transport: "unix", local: true})
	})
}

// admitLink counts an accepted connection against its listener's limits
// (admit) and starts its link, or refuses it with one log line.
func (s *Service) admitLink(c net.Conn, info svcLinkInfo) {
	if limit, n, max := s.admit(info.lsn, info.peer); limit != "" {
		s.obs.hits().hit(limit, time.Now())
		s.refused.Warn(s.log, "connection refused: over a limit", append([]any{"listen", info.lsn.name,
			"remote", c.RemoteAddr().String(), "limit", limit, "value", n, "max", max}, info.peer.attrs()...)...)
		c.Close()
		return
	}
	s.addLink(c, info)
}

// acceptTCP applies DragonFly's rule to an accepted TCP connection: a
// peer with neither remote/<ip>.pub nor remote/<ip>.none is refused at
// once, a .none peer's link starts at once, and a .pub peer's handshake
// runs on a goroutine of its own (never in the accept loop: it costs
// milliseconds of CPU and may wait for the peer), at most
// tcpHandshakesMax at a time.
func (s *Service) acceptTCP(ctx context.Context, lsn *svcListener, c *net.TCPConn) {
	remote := c.RemoteAddr().String()
	ip := tcpRemoteIP(c)
	pol, pub, err := s.sec.check(ip)
	if err != nil {
		s.refused.Warn(s.log, "connection refused: DragonFly's rule", "listen", lsn.name, "remote", remote, "err", err)
		c.Close()
		return
	}
	info := svcLinkInfo{name: "client " + remote, lsn: lsn, local: ip.IsLoopback()}
	if pol == dmsgPeerPlaintext {
		tc, _ := s.sec.secure(ctx, c, pol, nil) // no I/O for a plaintext peer
		info.peer, info.transport = tc.peer, tc.Transport()
		s.admitLink(tc, info)
		return
	}
	select {
	case s.handshakes <- struct{}{}:
	default:
		s.refused.Warn(s.log, "connection refused: over a limit", "listen", lsn.name, "remote", remote,
			"limit", "tcp_handshakes", "value", tcpHandshakesMax+1, "max", tcpHandshakesMax)
		c.Close()
		return
	}
	s.spawn(func() {
		defer func() { <-s.handshakes }()
		tc, err := s.sec.secure(ctx, c, pol, pub)
		if err != nil {
			s.refused.Warn(s.log, "TCP handshake failed", "listen", lsn.name, "remote", remote, "err", err)
			return
		}
		info.peer, info.transport = tc.peer, tc.Transport()
		s.log.Info("TCP peer authenticated", append([]any{"remote", remote, "greeting", tc.greeting}, tc.peer.attrs()...)...)
		s.admitLink(tc, info)
	})
}

// admit counts a new link against its listener's limits; it returns the
// limit that refuses it, if any.
func (s *Service) admit(lsn *svcListener, peer PeerIdentity) (limit string, n, max int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lim := s.cfg.Limits
	switch {
	case lsn.links >= lim.Links:
		return "links", lsn.links + 1, lim.Links
	case !peer.Class.Privileged() && s.unpriv >= lim.UnprivilegedLinks:
		return "unprivileged_links", s.unpriv + 1, lim.UnprivilegedLinks
	}
	lsn.links++
	if !peer.Class.Privileged() {
		s.unpriv++
	}
	return "", 0, 0
}

func (s *Service) acceptQuic(ctx context.Context) {
	for {
		q, err := s.node.Accept(ctx)
		if err != nil {
			return
		}
		s.addLink(q.Stream(), svcLinkInfo{name: "node " + q.RemoteAddr().String(), quic: q,
			peer: nodePeer(q.PeerFingerprint(), "quic"), transport: "quic"})
	}
}

// runDialed runs a link over c, which a Redialer dialed, until it ends or
// ctx does.
func (s *Service) runDialed(ctx context.Context, c redialConn, name string) {
	rw, q, peer := linkOver(c)
	sl := s.addLink(rw, svcLinkInfo{name: name, quic: q, peer: peer, transport: c.Transport()})
	select {
	case <-sl.link.Done():
		linkEnded(c, sl.link.Err())
	case <-ctx.Done():
	}
}

// addLink starts a link and sends our LNK_CONN on it, as DragonFly's
// service does on every connection: peer_type CLUSTER, every peer type.
// info.lsn is the listener that accepted it (already counted by admit),
// nil for links we dialed.
func (s *Service) addLink(rw io.ReadWriteCloser, info svcLinkInfo) *svcLink {
	s.mu.Lock()
	s.nextID++
	info.name = fmt.Sprintf("%s #%d", info.name, s.nextID)
	sl := &svcLink{svcLinkInfo: info, id: s.nextID, since: time.Now(), spans: map[*Trans]spanID{},
		relays: map[relayID]*Trans{}, unanswered: map[spanID]*Trans{}, volconf: map[volconfKey]*volconfWorker{}}
	peer, lsn, q := info.peer, info.lsn, info.quic
	lim := s.cfg.Limits
	cfg := LinkConfig{Name: sl.name, PingInterval: s.cfg.Ping, DeadAfter: s.cfg.DeadAfter, Logger: s.log,
		Peer: peer, MaxPeerTrans: lim.TransPerLink, HardQueueBytes: lim.QueueBytes, LimitHits: s.obs.hits(),
		OnRTT:   s.obs.rttObserver(peer.Class.String()),
		Handler: func(t *Trans, m *Msg) { s.handle(sl, t, m) },
		OnClose: func(error) { s.linkGone(sl) }}
	if lsn != nil {
		// A peer that connected to us says who it is at once; one we
		// dialed (or that dialed our QUIC port, authenticated) need not.
		cfg.HelloTimeout = lim.HelloTimeout.Duration
	}
	if q != nil {
		cfg.BulkBatch = quicBulkBatch
	}
	sl.link = NewLink(rw, cfg)
	sl.onRelay = func(t *Trans, m *Msg) { s.relayMsg(sl, t, m) }
	s.links[sl.id] = sl
	c := LnkConn{PeerType: PeerCluster, PeerMask: ^uint64(0), PeerLabel: s.hostname + "/hammer2-service"}
	if _, err := sl.link.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: c.Marshal()}, func(*Trans, *Msg) {}); err != nil {
		s.log.Warn("sending LNK_CONN", "link", sl.name, "err", err)
	}
	s.mu.Unlock()
	// Published: its handlers find it in s.links from the first message.
	sl.link.Start()
	sl.link.log.Info("link up", "link", sl.name, "transport", sl.transport)
	s.changes.Notify()
	return sl
}

// handle runs on sl's reader goroutine.
func (s *Service) handle(sl *svcLink, t *Trans, m *Msg) {
	if t.IsRoot() {
		if m.Cmd&(maskBaseCmd|FlagReply) == CmdDbgShell {
			sl.link.Hello() // a shell says who it is with its first line
			text := ShellText(m.Aux)
			if strings.HasPrefix(text, "@") {
				s.shellViaSpan(sl, t, text)
				return
			}
			sc := shellCommands{tree: s.tree, span: s.shellSpan, ping: shellPing(s.ctx, s.spawn, sl.link),
				notHere: quorumNotHere("a service runs no quorum group; ask a master's leaf: @<span> " + shellWord(text) + " ...")}
			if !sl.peer.Class.Privileged() {
				sc.refuse = func(cmd string) string { return s.cfg.Policy.needs(cmd, sl.peer) }
			}
			sc.answer(t, text)
		}
		return
	}
	if m.Cmd&FlagCreate == 0 {
		return
	}
	if p := t.Parent(); p != nil {
		s.forwardCircuit(sl, p, t, m)
		return
	}
	switch t.Cmd() {
	case CmdLnkConn:
		filter, err := ParseLnkConn(m.Ext)
		if err != nil {
			_ = t.Close(ErrParam)
			return
		}
		sl.link.Hello()
		kernel := svcKernelConn(filter, sl.local)
		if kernel {
			// DragonFly's kernel answers no PINGs and sends none: only
			// its socket closing means it is gone.
			sl.link.SetQuietPeer()
			sl.link.log.Info("kernel link: no silence check on it", "link", sl.name, "label", filter.PeerLabel)
		}
		t.SetHandler(func(t *Trans, m *Msg) {
			switch {
			case m.Cmd&FlagDelete != 0:
				s.mu.Lock()
				sl.conn = nil
				s.router.begin()
				s.router.connDown(sl.id)
				s.kick()
				s.stopVolconfLocked(sl)
				s.mu.Unlock()
				s.changes.Notify()
				_ = t.Close(ErrOK)
			case m.Cmd&maskBaseCmd == CmdLnkVolconf:
				s.volconf(sl, m)
			}
		})
		_ = t.Reply(ErrOK)
		s.mu.Lock()
		sl.conn = t
		sl.label, sl.kernel = filter.PeerLabel, kernel
		s.router.begin()
		s.router.connUp(sl.id, filter)
		s.kick()
		s.mu.Unlock()
		s.changes.Notify()
	case CmdLnkSpan:
		body := new(LnkSpan)
		if err := body.Unmarshal(m.Ext); err != nil {
			_ = t.Close(ErrParam)
			return
		}
		if !sl.peer.Class.Privileged() {
			s.ignoreSpan(sl, t, m)
			return
		}
		if err := s.countSpan(sl); err != nil {
			sl.link.Abort(err)
			return
		}
		t.SetHandler(func(t *Trans, m *Msg) {
			if m.Cmd&FlagDelete != 0 && m.Cmd&FlagReply == 0 {
				s.spanGone(sl, t) // the router says when to answer
			}
		})
		_ = t.Reply(ErrOK)
		s.mu.Lock()
		s.nextSp++
		sl.spans[t] = s.nextSp
		s.spanTx[s.nextSp] = t
		s.obs.spanUpdated()
		s.router.begin()
		s.router.spanUp(sl.id, s.nextSp, body, body.Dist, body.RNSS)
		s.kick()
		s.mu.Unlock()
		if m.Cmd&FlagDelete != 0 {
			s.spanGone(sl, t)
		}
	}
}

// countSpan checks a privileged link's new span against the limits.
func (s *Service) countSpan(sl *svcLink) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lim := s.cfg.Limits
	switch {
	case len(sl.spans) >= lim.SpansPerLink:
		return &LimitError{Limit: "spans_per_link", Value: uint64(len(sl.spans) + 1), Max: uint64(lim.SpansPerLink),
			Reason: "the link advertised one span more than it may"}
	case len(s.spanTx) >= lim.Spans:
		return &LimitError{Limit: "spans", Value: uint64(len(s.spanTx) + 1), Max: uint64(lim.Spans),
			Reason: "the service holds as many spans as it may, from all links"}
	}
	return nil
}

// ignoreSpan answers a span from an unprivileged link and keeps it open,
// as the protocol asks of unwanted spans (a relay closed on a DragonFly
// peer is only opened again), but never relays it: no one downstream
// could tell it from a span a privileged peer vouches for. The result
// carries ErrNoPerm, which DragonFly's peers ignore and ours log.
func (s *Service) ignoreSpan(sl *svcLink, t *Trans, m *Msg) {
	s.mu.Lock()
	sl.ignored++
	n := sl.ignored
	s.mu.Unlock()
	s.changes.Notify()
	if n > s.cfg.Limits.SpansPerLink {
		sl.link.Abort(&LimitError{Limit: "spans_per_link", Value: uint64(n), Max: uint64(s.cfg.Limits.SpansPerLink),
			Reason: "the link advertised one span more than it may"})
		return
	}
	if n == 1 {
		sl.link.log.Info("spans from an unprivileged link are not relayed", "link", sl.name)
	}
	t.SetHandler(func(t *Trans, m *Msg) {
		if m.Cmd&FlagDelete != 0 {
			s.mu.Lock()
			sl.ignored--
			s.mu.Unlock()
			s.changes.Notify()
			_ = t.Close(ErrOK)
		}
	})
	if m.Cmd&FlagDelete != 0 {
		_ = t.Close(ErrOK)
		return
	}
	_ = t.Reply(ErrNoPerm)
}

func (s *Service) spanGone(sl *svcLink, t *Trans) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id, ok := sl.spans[t]; ok {
		delete(sl.spans, t)
		delete(s.spanTx, id)
		s.obs.spanUpdated()
		sl.unanswered[id] = t
		s.router.begin()
		s.router.spanDown(id)
		s.kick()
	}
}

// linkGone runs after the link's transactions were failed (which already
// withdrew its spans one by one); it drops whatever is left.
func (s *Service) linkGone(sl *svcLink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.router.linkDown(sl.id)
	if s.applyLocked() {
		s.kick() // the applier sends the rest (what was this link's is skipped)
	}
	s.stopVolconfLocked(sl)
	delete(s.links, sl.id)
	if sl.lsn != nil {
		sl.lsn.links--
		if !sl.peer.Class.Privileged() {
			s.unpriv--
		}
	}
	sl.link.log.Info("link down", "link", sl.name, "reason", sl.link.Err())
	s.changes.Notify()
}

// forwardCircuit carries a transaction the peer opened under one of our
// relays to the link the relayed span came from, opening it there under
// that span, and splices the two until both ends are closed. This is how a
// node talks to a PFS it only knows through spans.
func (s *Service) forwardCircuit(sl *svcLink, parent, in *Trans, m *Msg) {
	if !sl.peer.Class.Privileged() {
		// An unprivileged peer may only ask a node's shell to look.
		if t := in.Cmd(); t != CmdDbgShell || !shellReadOnly(ShellText(m.Aux)) {
			s.refused.Warn(sl.link.log, "refused a circuit from an unprivileged link", "link", sl.name, "cmd", CmdString(t))
			if t == CmdDbgShell {
				_ = in.Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete},
					Aux: ShellAux(s.cfg.Policy.needs(shellWord(ShellText(m.Aux)), sl.peer) + "\n")})
				return
			}
			_ = in.Close(ErrNoPerm)
			return
		}
	}
	s.mu.Lock()
	var src *Trans
	if rid, ok := sl.relayOf(parent); ok {
		if sid, ok := s.router.SourceOf(rid); ok {
			src = s.spanTx[sid]
		}
	}
	over := sl.circuits >= s.cfg.Limits.CircuitsPerLink
	if src != nil && !over {
		sl.circuits++
	}
	s.mu.Unlock()
	if over {
		sl.link.Abort(&LimitError{Limit: "circuits_per_link", Value: uint64(s.cfg.Limits.CircuitsPerLink + 1),
			Max: uint64(s.cfg.Limits.CircuitsPerLink), Reason: "the link opened one circuit more than it may hold open"})
		return
	}
	if src == nil {
		_ = in.Close(ErrCantCirc) // not one of our relays, or its span is gone
		return
	}
	var once sync.Once
	done := func() {
		once.Do(func() {
			s.mu.Lock()
			sl.circuits--
			s.mu.Unlock()
		})
	}
	out, err := src.Open(forwardCopy(m), func(_ *Trans, m *Msg) { forwardTo(in, m) })
	if err != nil {
		done()
		_ = in.Close(ErrCantCirc)
		return
	}
	in.SetHandler(func(_ *Trans, m *Msg) {
		if m.Cmd&FlagDelete != 0 {
			done()
		}
		forwardTo(out, m)
	})
	if m.Cmd&FlagDelete != 0 {
		done()
	}
}

// forwardCopy is m as it continues on the next hop: the command, DELETE or
// ABORT, the error and the payloads; the link sets the rest.
func forwardCopy(m *Msg) *Msg {
	return &Msg{Header: Header{Cmd: m.Cmd & (maskBaseCmd | FlagDelete | FlagAbort), Error: m.Error},
		Ext: bytes.Clone(m.Ext), Aux: bytes.Clone(m.Aux)}
}

func forwardTo(t *Trans, m *Msg) {
	if t.TxDone() {
		return
	}
	_ = t.Send(forwardCopy(m))
}

// shellViaSpan is DragonFly's `@<span> <cmd>`: the command goes as a
// DBG_SHELL transaction over a received span to the node that advertised
// it, and its answer comes back here.
func (s *Service) shellViaSpan(sl *svcLink, root *Trans, text string) {
	idText, cmd, _ := strings.Cut(strings.TrimPrefix(text, "@"), " ")
	if !sl.peer.Class.Privileged() && !shellReadOnly(cmd) {
		_ = root.Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagReply}, Aux: ShellAux(s.cfg.Policy.needs(shellWord(cmd), sl.peer) + "\n" + shellPrompt)})
		return
	}
	id, err := strconv.ParseUint(idText, 0, 64)
	s.mu.Lock()
	st := s.spanTx[spanID(id)]
	s.mu.Unlock()
	if err != nil || st == nil {
		_ = root.Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagReply}, Aux: ShellAux("@" + idText + " not found\n" + shellPrompt)})
		return
	}
	_, err = st.Open(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}, Aux: ShellAux(cmd)}, func(t *Trans, m *Msg) {
		if m.Cmd&FlagDelete == 0 && m.Cmd&maskBaseCmd != CmdDbgShell {
			return
		}
		out := ShellText(m.Aux)
		if m.Cmd&maskBaseCmd != CmdDbgShell {
			out = fmt.Sprintf("no answer (error %#x)\n", m.Error)
		}
		_ = root.Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagReply}, Aux: ShellAux(out + shellPrompt)})
	})
	if err != nil {
		_ = root.Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagReply}, Aux: ShellAux(err.Error() + "\n" + shellPrompt)})
	}
}

// kick asks the applier to send what the router decided. Router events
// are taken in batches (begin, events, take): whatever piles up while the
// applier waits for the lock, typically everything a link's read buffer
// held, is decided at once, so a path that a better one in the same burst
// supersedes is never relayed and then replaced. Withdrawals and answers
// are no faster or slower than the batch they are in.
func (s *Service) kick() {
	select {
	case s.kicked <- struct{}{}:
	default:
	}
}

// applier runs applyLocked for each batch until ctx ends, letting go of
// the lock between slices.
func (s *Service) applier(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kicked:
			for more := true; more && ctx.Err() == nil; {
				s.mu.Lock()
				more = s.applyLocked()
				s.mu.Unlock()
			}
		}
	}
}

// shellOnRelay is DragonFly's `@<msgid> <cmd>` from its C shell: the
// shell sends the command inside the span we relayed to it, to be run by
// the node that advertised the span. It goes there as a DBG_SHELL
// transaction under the span we received, and its answer comes back to
// the shell.
func (s *Service) shellOnRelay(sl *svcLink, rid relayID, relay *Trans, cmd string) {
	if !sl.peer.Class.Privileged() && !shellReadOnly(cmd) {
		_ = relay.Link().Root().Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagReply},
			Aux: ShellAux(s.cfg.Policy.needs(shellWord(cmd), sl.peer) + "\n")})
		return
	}
	s.mu.Lock()
	var src *Trans
	if sid, ok := s.router.SourceOf(rid); ok {
		src = s.spanTx[sid]
	}
	s.mu.Unlock()
	// DragonFly's shell prints a one-way DBG_SHELL|REPLY, whatever
	// transaction the command went on.
	answer := func(out string) {
		_ = relay.Link().Root().Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagReply}, Aux: ShellAux(out + shellPrompt)})
	}
	if src == nil {
		answer("span withdrawn\n")
		return
	}
	_, err := src.Open(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}, Aux: ShellAux(cmd)}, func(t *Trans, m *Msg) {
		switch {
		case m.Cmd&maskBaseCmd == CmdDbgShell:
			answer(ShellText(m.Aux))
		case m.Cmd&FlagDelete != 0:
			answer(fmt.Sprintf("no answer (error %#x)\n", m.Error))
		}
	})
	if err != nil {
		answer(err.Error() + "\n")
	}
}

// applyLocked takes what the router decided and sends the oldest
// applySlice actions of what waits, in order; it reports whether more
// wait. Actions for a link that is gone are skipped.
func (s *Service) applyLocked() (more bool) {
	defer s.changes.Notify()
	s.acts = s.router.takeAppend(s.acts)
	batch := s.acts[s.actsHead:]
	batch = batch[:min(len(batch), applySlice)]
	for i := range batch {
		s.applyOne(&batch[i])
		batch[i] = spanAction{} // let go of its span body
	}
	s.actsHead += len(batch)
	switch {
	case s.actsHead == len(s.acts):
		s.acts, s.actsHead = s.acts[:0], 0
		if cap(s.acts) > 4*applySlice {
			s.acts = nil // a burst's buffer is not kept
		}
	case s.actsHead >= len(s.acts)/2:
		old := len(s.acts)
		n := copy(s.acts, s.acts[s.actsHead:])
		clear(s.acts[n:old])
		s.acts, s.actsHead = s.acts[:n], 0
	}
	return s.actsHead < len(s.acts)
}

// applyOne sends one router action.
func (s *Service) applyOne(a *spanAction) {
	sl := s.links[a.Conn]
	if sl == nil {
		return
	}
	switch {
	case a.Ack:
		if t := sl.unanswered[a.Acked]; t != nil {
			delete(sl.unanswered, a.Acked)
			_ = t.Close(ErrOK)
		}
		return
	case !a.Open:
		if t := sl.relays[a.Relay]; t != nil {
			delete(sl.relays, a.Relay)
			_ = t.Close(ErrOK)
		}
		return
	}
	body := *a.Span
	body.Dist, body.RNSS = a.Dist, a.RNSS
	if s.relayExt == nil {
		s.relayExt = newExt(CmdLnkSpan)
	}
	body.MarshalTo(s.relayExt)
	t, err := sl.link.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: s.relayExt}, sl.onRelay)
	if err != nil {
		return // the link is going down; linkGone cleans up
	}
	// Under mu, as relayMsg and forwardCircuit read it: the peer's
	// answer cannot be handled before this.
	t.Data = a.Relay
	sl.relays[a.Relay] = t
}

// relayOf is the relay t is, if it is one of sl's; the caller holds mu.
func (sl *svcLink) relayOf(t *Trans) (relayID, bool) {
	rid, ok := t.Data.(relayID)
	if !ok || sl.relays[rid] != t {
		return 0, false
	}
	return rid, true
}

// relayMsg handles what the receiver sends on one of sl's relays: a
// DragonFly shell's `@<msgid> <cmd>`, or its DELETE: the answer to our
// withdrawal, or it closing a relay it does not want. The router tells
// which.
func (s *Service) relayMsg(sl *svcLink, t *Trans, m *Msg) {
	s.mu.Lock()
	rid, _ := t.Data.(relayID)
	s.mu.Unlock()
	if m.Cmd&(FlagDelete|maskBaseCmd) == CmdDbgShell {
		s.shellOnRelay(sl, rid, t, ShellText(m.Aux))
		return
	}
	if m.Cmd&FlagDelete != 0 {
		s.mu.Lock()
		if sl.relays[rid] == t {
			delete(sl.relays, rid)
		}
		s.router.begin()
		s.router.relayClosed(rid)
		s.kick()
		s.mu.Unlock()
	}
}

func (s *Service) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s.mu.Lock()
	var links []*Link
	for _, sl := range s.links {
		links = append(links, sl.link)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, k := range links {
		wg.Add(1)
		go func() { defer wg.Done(); _ = k.Shutdown(ctx) }()
	}
	wg.Wait()
	if s.node != nil {
		s.node.Close()
	}
}

// shellSpan links to another node at once, as DragonFly's `span <host>`:
// over TCP (port 987 by default) when remote_dir names the host's
// address, as DragonFly's does, else over QUIC; `span tcp:<host>` and
// `span quic:<host>` say which.
func (s *Service) shellSpan(host string) string {
	t, err := parseNodeTarget(host)
	if err != nil {
		return fmt.Sprintf("Connection to %s failed: %v\n", host, err)
	}
	ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
	defer cancel()
	c, err := s.sec.dialer(t, s.node)(ctx)
	if err != nil {
		return fmt.Sprintf("Connection to %s failed: %v\n", host, err)
	}
	rw, q, peer := linkOver(c)
	s.addLink(rw, svcLinkInfo{name: "node " + host, quic: q, peer: peer, transport: c.Transport()})
	return fmt.Sprintf("Connected to %s (%s)\n", host, c.Transport())
}

// tree dumps the router's state as DragonFly's shell does.
func (s *Service) tree() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	byConn := map[connID]string{}
	for id, sl := range s.links {
		byConn[id] = sl.name
	}
	var cluster string
	s.router.Walk(func(n NodeView) {
		if c := fmt.Sprintf("Cluster %s %s (%s)\n", peerTypeName(n.PeerType), n.PeerID, n.PeerLabel); c != cluster {
			cluster = c
			b.WriteString(c)
		}
		fmt.Fprintf(&b, "    Node %02x %s (%s)\n", n.PfsType, n.PfsID, n.PfsLabel)
		for _, l := range n.Links {
			fmt.Fprintf(&b, "\tSLink span %d dist=%d via %s\n", l.Span, l.Dist, byConn[l.Conn])
		}
		for _, r := range n.Relays {
			// The msgid is the span as the receiver knows it: DragonFly's
			// shell addresses a node with `@<msgid> <cmd>`.
			var msgid uint64
			if sl := s.links[r.Conn]; sl != nil && sl.relays[r.Relay] != nil {
				msgid = sl.relays[r.Relay].MsgID()
			}
			fmt.Fprintf(&b, "\t    Relay-out %d msgid %016x via %s\n", r.Relay, msgid, byConn[r.Conn])
		}
	})
	return b.String()
}
