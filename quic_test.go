package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// logBuffer collects a node's log lines for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testNode struct {
	*QuicNode
	key   ed25519.PrivateKey
	trust *TrustStore
	logs  *logBuffer
}

func (n *testNode) pub() ed25519.PublicKey { return n.key.Public().(ed25519.PublicKey) }

// newTestKey goes through the real key files.
func newTestKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	dir := t.TempDir()
	if _, err := GenerateKey(dir, false); err != nil {
		t.Fatal(err)
	}
	key, err := LoadNodeKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

type peer struct {
	name string
	key  ed25519.PublicKey
}

// startNode runs a QuicNode on 127.0.0.1 that trusts the given peers.
func startNode(t testing.TB, key ed25519.PrivateKey, cfg QuicConfig, trusted ...peer) *testNode {
	t.Helper()
	trust, err := LoadTrustStore("")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range trusted {
		if err := trust.AddKey(p.name, p.key); err != nil {
			t.Fatal(err)
		}
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	n, err := NewQuicNode(key, trust, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return &testNode{QuicNode: n, key: key, trust: trust, logs: logs}
}

// crash stops n the way a killed process stops: the socket goes away and
// no peer is told.
func (n *QuicNode) crash() {
	n.closing.Do(func() {
		n.mu.Lock()
		n.closed = true
		n.mu.Unlock()
		n.cancel()
		n.closeEr = n.udp.Close() // first, so that nothing more leaves
		n.ln.Close()
		n.tr.Close()
		n.wg.Wait()
	})
}

// linkPair has d dial a and returns both ends.
func linkPair(t testing.TB, ctx context.Context, d, a *testNode) (dialed, accepted *QuicLink) {
	t.Helper()
	type result struct {
		l   *QuicLink
		err error
	}
	acc := make(chan result, 1)
	go func() {
		l, err := a.Accept(ctx)
		acc <- result{l, err}
	}()
	dl, err := d.Dial(ctx, a.Addr().String())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { dl.Close() })
	r := <-acc
	if r.err != nil {
		t.Fatalf("Accept: %v", r.err)
	}
	t.Cleanup(func() { r.l.Close() })
	return dl, r.l
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestQuicLinkExchange(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 15*time.Second)
	ka, kb := newTestKey(t), newTestKey(t)
	a := startNode(t, ka, QuicConfig{}, peer{"b", kb.Public().(ed25519.PublicKey)})
	b := startNode(t, kb, QuicConfig{}, peer{"a", ka.Public().(ed25519.PublicKey)})
	la, lb := linkPair(t, ctx, a, b)

	if !la.PeerKey().Equal(b.pub()) || la.PeerName() != "b" || !la.Dialed() {
		t.Errorf("dialer sees peer %s %q dialed=%v", la.PeerFingerprint(), la.PeerName(), la.Dialed())
	}
	if !lb.PeerKey().Equal(a.pub()) || lb.PeerName() != "a" || lb.Dialed() {
		t.Errorf("acceptor sees peer %s %q dialed=%v", lb.PeerFingerprint(), lb.PeerName(), lb.Dialed())
	}
	if la.RemoteAddr().String() != b.Addr().String() {
		t.Errorf("RemoteAddr %v, want %v", la.RemoteAddr(), b.Addr())
	}

	// Both directions at once, more than one flow-control window.
	const size = 4 << 20
	payload := func(seed byte) []byte {
		p := make([]byte, size)
		for i := range p {
			p[i] = byte(i) ^ seed
		}
		return p
	}
	pa, pb := payload(0xa5), payload(0x5a)
	errc := make(chan error, 4)
	send := func(l *QuicLink, p []byte) {
		_, err := l.Stream().Write(p)
		errc <- err
	}
	recv := func(l *QuicLink, want []byte) {
		got := make([]byte, len(want))
		if _, err := io.ReadFull(l.Stream(), got); err != nil {
			errc <- err
			return
		}
		if !bytes.Equal(got, want) {
			errc <- errors.New("payload corrupted")
			return
		}
		errc <- nil
	}
	go send(la, pa)
	go send(lb, pb)
	go recv(lb, pa)
	go recv(la, pb)
	for range 4 {
		select {
		case err := <-errc:
			if err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatal("exchange timed out")
		}
	}

	st := la.Stats()
	if st.RTT <= 0 || st.BytesSent < size || st.BytesReceived < size {
		t.Errorf("implausible stats %+v", st)
	}
	if la.Err() != nil {
		t.Errorf("Err on a live link: %v", la.Err())
	}

	// An orderly close reaches the peer as application error 0.
	if err := la.Stream().Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lb.Done():
	case <-ctx.Done():
		t.Fatal("peer did not see the close")
	}
	var ae *quic.ApplicationError
	if err := lb.Err(); !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != quicCodeClose {
		t.Errorf("peer's Err = %v, want remote application error 0", err)
	}
}

func TestQuicUntrustedRefused(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 15*time.Second)
	ka, kb := newTestKey(t), newTestKey(t)
	a := startNode(t, ka, QuicConfig{}, peer{"b", kb.Public().(ed25519.PublicKey)})
	b := startNode(t, kb, QuicConfig{}) // trusts nobody
	fpA := Fingerprint(a.pub())

	// noAccept checks that n hands out no link for a while. A negative
	// can only be checked for a bounded time.
	noAccept := func(n *testNode) {
		t.Helper()
		actx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if l, err := n.Accept(actx); err == nil {
			t.Errorf("Accept returned a link from %s", l.PeerFingerprint())
			l.Close()
		}
	}

	t.Run("acceptor refuses", func(t *testing.T) {
		_, err := a.Dial(ctx, b.Addr().String())
		var pr *PeerRefusedError
		if !errors.As(err, &pr) || !strings.Contains(err.Error(), fpA) {
			t.Fatalf("Dial err = %v, want PeerRefusedError naming our key %s", err, fpA)
		}
		t.Logf("dialer sees: %v", err)
		noAccept(b)
		if logs := b.logs.String(); !strings.Contains(logs, fpA) || !strings.Contains(logs, "127.0.0.1:") {
			t.Errorf("acceptor's log lacks fingerprint or address:\n%s", logs)
		}
	})

	t.Run("dialer refuses", func(t *testing.T) {
		_, err := b.Dial(ctx, a.Addr().String())
		var ue *UntrustedKeyError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), fpA) {
			t.Fatalf("Dial err = %v, want UntrustedKeyError naming %s", err, fpA)
		}
		t.Logf("dialer sees: %v", err)
		noAccept(a)
		if n := strings.Count(b.logs.String(), "side=dial"); n != 1 {
			t.Errorf("dialer logged %d refusals, want 1:\n%s", n, b.logs.String())
		}
	})
}

func TestQuicBadPreamble(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		streams []string // what the dialer writes on each stream it opens
	}{
		{"garbage", []string{"GET / HTTP/1.0\r\n"}},
		{"version 1", []string{"H2DMSG\x00\x01"}},
		{"bad bulk preamble", []string{quicPreamble, "GET / HTTP/1.0\r\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, 10*time.Second)
			ka, kb := newTestKey(t), newTestKey(t)
			a := startNode(t, ka, QuicConfig{}, peer{"b", kb.Public().(ed25519.PublicKey)})
			b := startNode(t, kb, QuicConfig{}, peer{"a", ka.Public().(ed25519.PublicKey)})

			// A trusted peer that speaks something else on the streams.
			conn, err := a.tr.Dial(ctx, b.Addr(), a.cliTLS, a.qconf)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.CloseWithError(0, "")
			for _, w := range tc.streams {
				str, err := conn.OpenStreamSync(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := str.Write([]byte(w)); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-conn.Context().Done():
			case <-ctx.Done():
				t.Fatal("acceptor kept a connection with a bad preamble")
			}
			var ae *quic.ApplicationError
			if err := context.Cause(conn.Context()); !errors.As(err, &ae) || ae.ErrorCode != quicCodeProtocol {
				t.Errorf("close error %v, want application error %d", err, quicCodeProtocol)
			}
			actx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			if _, err := b.Accept(actx); err == nil {
				t.Error("Accept returned a link with a bad preamble")
			}
			if !strings.Contains(b.logs.String(), "preamble") {
				t.Errorf("no log of the bad preamble:\n%s", b.logs.String())
			}
			// The peer's key is trusted: the line must say whose it is.
			if !strings.Contains(b.logs.String(), "key="+Fingerprint(ka.Public().(ed25519.PublicKey))) {
				t.Errorf("the bad-preamble line does not name the peer's key:\n%s", b.logs.String())
			}
		})
	}
}

// timerQuicDeadPeer is run by TestTimers (schedule_test.go).
func timerQuicDeadPeer(t *testing.T) {
	ctx := testCtx(t, 10*time.Second)
	const deadAfter = 400 * time.Millisecond // above quic-go's floor of three PTOs (~100 ms on loopback)
	ka, kb := newTestKey(t), newTestKey(t)
	a := startNode(t, ka, QuicConfig{DeadAfter: deadAfter}, peer{"b", kb.Public().(ed25519.PublicKey)})
	b := startNode(t, kb, QuicConfig{DeadAfter: deadAfter}, peer{"a", ka.Public().(ed25519.PublicKey)})
	la, _ := linkPair(t, ctx, a, b)

	b.crash()
	start := time.Now()
	select {
	case <-la.Done():
	case <-time.After(deadAfter + time.Second):
		t.Fatalf("dead peer not noticed within %v", deadAfter+time.Second)
	}
	t.Logf("dead peer noticed after %v: %v", time.Since(start), la.Err())
	var ie *quic.IdleTimeoutError
	if !errors.As(la.Err(), &ie) {
		t.Errorf("Err = %v, want an idle timeout", la.Err())
	}
	// The stream fails too, so a dmsg reader blocked on it wakes up.
	if _, err := la.Stream().Read(make([]byte, 1)); err == nil {
		t.Error("read on a dead link succeeded")
	}
}

// timerQuicStatelessReset is run by TestTimers (schedule_test.go).
func timerQuicStatelessReset(t *testing.T) {
	ctx := testCtx(t, 15*time.Second)
	// Idle timeout far beyond the assertion: only a reset can be this fast.
	cfg := QuicConfig{DeadAfter: 20 * time.Second, KeepAlive: 200 * time.Millisecond}
	ka, kb := newTestKey(t), newTestKey(t)
	a := startNode(t, ka, cfg, peer{"b", kb.Public().(ed25519.PublicKey)})
	b := startNode(t, kb, cfg, peer{"a", ka.Public().(ed25519.PublicKey)})
	la, _ := linkPair(t, ctx, a, b)

	port := b.Addr().(*net.UDPAddr).Port
	b.crash()
	restarted := cfg
	restarted.Listen = fmt.Sprintf("127.0.0.1:%d", port)
	startNode(t, kb, restarted, peer{"a", a.pub()})
	start := time.Now()

	// Nothing is written: the idle link's keep-alive alone must draw the
	// reset from the restarted peer.
	select {
	case <-la.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("restarted peer not noticed within 5s")
	}
	t.Logf("restart noticed after %v: %v", time.Since(start), la.Err())
	var se *quic.StatelessResetError
	if !errors.As(la.Err(), &se) {
		t.Errorf("Err = %v, want a stateless reset", la.Err())
	}
}

func TestQuicSplitAddr(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		host string
		port uint16
		err  bool
	}{
		{"peer", "peer", 987, false},
		{"peer:1234", "peer", 1234, false},
		{"10.1.2.3", "10.1.2.3", 987, false},
		{"10.1.2.3:5", "10.1.2.3", 5, false},
		{"[::1]", "::1", 987, false},
		{"[::1]:988", "::1", 988, false},
		{"fe80::1", "fe80::1", 987, false},
		{"[fe80::1%em0]:9", "fe80::1%em0", 9, false},
		{":987", "", 987, false},
		{"", "", 0, true},
		{"peer:http", "", 0, true},
		{"peer:70000", "", 0, true},
	}
	for _, tc := range tests {
		host, port, err := splitHostPortDefault(tc.in, ListenPort)
		if (err != nil) != tc.err || host != tc.host || port != tc.port {
			t.Errorf("splitHostPortDefault(%q) = %q, %d, %v", tc.in, host, port, err)
		}
	}
}

// waitState waits for r to reach a state satisfying cond.
func waitState(t *testing.T, ctx context.Context, r *Redialer, what string, cond func(DialState) bool) DialState {
	t.Helper()
	for {
		ch := r.Changed()
		if s := r.State(); cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("waiting for %s: last state %+v", what, r.State())
		}
	}
}

// runRedialer runs r until the test ends, sending each link to the
// returned channel and holding it until it ends.
func runRedialer(t *testing.T, r *Redialer) <-chan *QuicLink {
	ctx, cancel := context.WithCancel(context.Background())
	links := make(chan *QuicLink, 4)
	done := make(chan error, 1)
	go func() {
		done <- r.Run(ctx, func(c redialConn) {
			l := c.(*QuicLink)
			links <- l
			<-l.Done()
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v", err)
		}
		if s := r.State(); s.State != DialStopped {
			t.Errorf("state after Run: %+v", s)
		}
	})
	return links
}

// timerRedialerBackoffThenConnect is run by TestTimers (schedule_test.go).
func timerRedialerBackoffThenConnect(t *testing.T) {
	ctx := testCtx(t, 15*time.Second)
	ka, kb := newTestKey(t), newTestKey(t)
	// DeadAfter bounds each attempt at the silent port (a failed attempt
	// at b, once it listens, is retried within MaxBackoff).
	a := startNode(t, ka, QuicConfig{DeadAfter: 150 * time.Millisecond}, peer{"b", kb.Public().(ed25519.PublicKey)})

	// Reserve a port for b, to be bound later.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()

	r := NewRedialer(a.QuicNode, addr, RedialConfig{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if s := r.State(); s.State != DialIdle || s.Addr != addr {
		t.Fatalf("initial state %+v", s)
	}
	links := runRedialer(t, r)
	s := waitState(t, ctx, r, "two failures", func(s DialState) bool {
		return s.State == DialBackoff && s.Failures >= 2
	})
	if s.LastErr == "" || s.NextTry.IsZero() || s.NextTry.Sub(s.Since) > 200*time.Millisecond+time.Millisecond {
		t.Errorf("backoff state %+v", s)
	}

	startNode(t, kb, QuicConfig{Listen: addr}, peer{"a", a.pub()})
	select {
	case l := <-links:
		if l.PeerName() != "b" {
			t.Errorf("linked to %q", l.PeerName())
		}
	case <-ctx.Done():
		t.Fatalf("no link; state %+v", r.State())
	}
	s = waitState(t, ctx, r, "up", func(s DialState) bool { return s.State == DialUp })
	if s.Peer != "b" || s.LastErr != "" {
		t.Errorf("up state %+v", s)
	}
}

func TestRedialerRefusedThenKick(t *testing.T) {
	// Not parallel: it times the link against its own bounds, which a
	// machine busy with the parallel tests would blur.
	ctx := testCtx(t, 15*time.Second)
	ka, kb := newTestKey(t), newTestKey(t)
	a := startNode(t, ka, QuicConfig{}, peer{"b", kb.Public().(ed25519.PublicKey)})
	b := startNode(t, kb, QuicConfig{}) // does not trust a yet

	// A backoff this long means only Kick can bring the link up in time.
	r := NewRedialer(a.QuicNode, b.Addr().String(), RedialConfig{MinBackoff: time.Minute, MaxBackoff: time.Hour})
	links := runRedialer(t, r)
	s := waitState(t, ctx, r, "refused", func(s DialState) bool { return s.State == DialRefused })
	if !strings.Contains(s.LastErr, Fingerprint(a.pub())) {
		t.Errorf("refusal does not name our key: %+v", s)
	}

	if err := b.trust.AddKey("a", a.pub()); err != nil {
		t.Fatal(err)
	}
	r.Kick()
	select {
	case <-links:
	case <-ctx.Done():
		t.Fatalf("no link after Kick; state %+v", r.State())
	}
}

func TestRedialerBackoffGrowth(t *testing.T) {
	// Not parallel: it times the link against its own bounds, which a
	// machine busy with the parallel tests would blur.
	r := NewRedialer(nil, "x", RedialConfig{MinBackoff: time.Second, MaxBackoff: 30 * time.Second})
	if d := r.backoff(0); d != 0 {
		t.Errorf("backoff(0) = %v", d)
	}
	for f := 1; f < 12; f++ {
		top := min(time.Second<<(f-1), 30*time.Second)
		for range 50 {
			d := r.backoff(f)
			if d < time.Second || d < top/2 || d > top {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", f, d, max(time.Second, top/2), top)
			}
		}
	}
}

func TestQuicNodeClose(t *testing.T) {
	// Not parallel: it times the link against its own bounds, which a
	// machine busy with the parallel tests would blur.
	ctx := testCtx(t, 10*time.Second)
	before := runtime.NumGoroutine()
	ka, kb := newTestKey(t), newTestKey(t)
	a := startNode(t, ka, QuicConfig{}, peer{"b", kb.Public().(ed25519.PublicKey)})
	b := startNode(t, kb, QuicConfig{}, peer{"a", ka.Public().(ed25519.PublicKey)})
	la, lb := linkPair(t, ctx, a, b)

	// Closing a node says goodbye on its links and ends its Accept.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if lb.Err() == nil {
		t.Error("link still up after its node closed")
	}
	select {
	case <-la.Done():
	case <-ctx.Done():
		t.Fatal("peer not told of the close")
	}
	var ae *quic.ApplicationError
	if err := la.Err(); !errors.As(err, &ae) || !ae.Remote {
		t.Errorf("peer's Err = %v, want a remote application close", err)
	}
	if _, err := b.Accept(ctx); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v", err)
	}
	if _, err := b.Dial(ctx, a.Addr().String()); err == nil {
		t.Error("Dial after Close succeeded")
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	// Every goroutine ends, ours and quic-go's.
	a.Close()
	for runtime.NumGoroutine() > before {
		select {
		case <-ctx.Done():
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left over:\n%s", runtime.NumGoroutine()-before, buf[:runtime.Stack(buf, true)])
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// A client without a certificate, or without our ALPN, is refused with a
// log line (they used to be refused in silence), and a flood of them is
// held to limits.refused_logs_per_second.
func TestQuicRefusalsLogged(t *testing.T) {
	// Not parallel: it times the link against its own bounds, which a
	// machine busy with the parallel tests would blur.
	ka, kb := newTestKey(t), newTestKey(t)
	b := startNode(t, kb, QuicConfig{RefusedLogsPerSecond: 1}, peer{"a", ka.Public().(ed25519.PublicKey)})
	a := startNode(t, ka, QuicConfig{}, peer{"b", kb.Public().(ed25519.PublicKey)})
	for _, tc := range []struct {
		name string
		tls  func() *tls.Config
		want string
	}{
		{"no certificate", func() *tls.Config {
			c := a.cliTLS.Clone()
			c.Certificates = nil
			return c
		}, "refused a peer that sent no certificate"},
		{"wrong ALPN", func() *tls.Config {
			c := a.cliTLS.Clone()
			c.NextProtos = []string{"h3"}
			return c
		}, "does not speak " + quicALPN},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, 10*time.Second)
			conn, err := a.tr.Dial(ctx, b.Addr(), tc.tls(), a.qconf)
			if err == nil {
				// TLS 1.3: the client may finish before the server refuses.
				select {
				case <-conn.Context().Done():
				case <-ctx.Done():
					t.Fatal("the server kept the connection")
				}
			}
			eventually(t, func() bool { return strings.Contains(b.logs.String(), tc.want) }, tc.want)
		})
	}
	// Ten more refusals within a second give at most the burst of lines.
	before := strings.Count(b.logs.String(), "level=WARN")
	for range 10 {
		ctx := testCtx(t, 5*time.Second)
		c := a.cliTLS.Clone()
		c.NextProtos = []string{"h3"}
		if conn, err := a.tr.Dial(ctx, b.Addr(), c, a.qconf); err == nil {
			<-conn.Context().Done()
		}
	}
	if n := strings.Count(b.logs.String(), "level=WARN") - before; n > 2 {
		t.Errorf("%d refusal lines for 10 refusals at 1 line/s (burst 2)", n)
	}
}
