package main

// In-process checks of the limits and the file rules (issue 9); the
// attacks by another uid are in security_process_test.go.

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startTestService runs a service on a fresh Unix socket with lim.
func startTestService(t *testing.T, lim Limits) (*Service, string, *logBuf) {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "s.sock")
	logs := &logBuf{}
	svc := NewService(ServiceConfig{Unix: sock, Limits: lim, DeadAfter: -1, Ping: -1}, nil, logs.logger())
	runServiceInProcess(t, svc)
	return svc, sock, logs
}

// runServiceInProcess runs svc until the test ends, once it is ready; a
// service that fails to start fails the test.
func runServiceInProcess(tb testing.TB, svc *Service) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-done:
		tb.Fatalf("service: %v", err)
	}
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("service: %v", err)
		}
	})
}

func testLimits() Limits {
	l := defaultLimits()
	l.Links, l.SpansPerLink, l.Spans, l.HelloTimeout = 4, 5, 8, Duration{300 * time.Millisecond}
	return l
}

// dialSpans links to the service and advertises n spans; it returns the
// link once all were answered or the link is down.
func dialSpans(t *testing.T, sock string, n int) *Link {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	l := startLink(c, quietConfig("spans", rec.handle))
	t.Cleanup(func() { l.Close() })
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1}
	if _, err := l.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: conn.Marshal()}, func(*Trans, *Msg) {}); err != nil {
		t.Fatal(err)
	}
	answered := make(chan struct{}, n)
	for range n {
		sp := LnkSpan{PeerID: NewUUID(), PfsID: NewUUID(), PfsType: PFSMaster, PeerType: PeerHammer2, ProtoVersion: SpanProto1}
		if _, err := l.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(_ *Trans, m *Msg) {
			if m.Cmd&FlagCreate != 0 && m.Error != ErrLostLink {
				answered <- struct{}{}
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		select {
		case <-answered:
		case <-l.Done():
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("spans not answered")
		}
	}
	return l
}

func waitClosed(t *testing.T, l *Link, d time.Duration) {
	t.Helper()
	select {
	case <-l.Done():
	case <-time.After(d):
		t.Fatalf("link still up after %v", d)
	}
}

func TestServiceSpanLimits(t *testing.T) {
	t.Parallel()
	svc, sock, logs := startTestService(t, testLimits())
	over := dialSpans(t, sock, 6)
	waitClosed(t, over, 5*time.Second)
	eventually(t, func() bool { return strings.Contains(logs.String(), "limit=spans_per_link value=6 max=5") },
		"the spans_per_link line")
	eventually(t, func() bool { return svc.Status().Spans == 0 }, "the closed link's spans withdrawn")
	a := dialSpans(t, sock, 5) // at the per-link limit: kept
	// 5 held by a; the next link may add 3 before the service is full.
	b := dialSpans(t, sock, 4)
	waitClosed(t, b, 5*time.Second)
	eventually(t, func() bool { return strings.Contains(logs.String(), "limit=spans value=9 max=8") }, "the spans line")
	select {
	case <-a.Done():
		t.Fatalf("a link within its limits was closed: %v", a.Err())
	default:
	}
	if st := svc.Status(); st.Spans != 5 {
		t.Errorf("service holds %d spans, want a's 5", st.Spans)
	}
}

func TestServiceLinkLimitAndHello(t *testing.T) {
	t.Parallel()
	_, sock, logs := startTestService(t, testLimits())
	// A peer that says nothing but LNK_PAD is closed at the hello deadline.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pad := (&Msg{Header: Header{Cmd: CmdLnkPad}}).AppendWire(nil, 0)
	if _, err := c.Write(pad); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := readUntilClosed(c); err != nil {
		t.Fatalf("a silent peer was not closed: %v", err)
	}
	eventually(t, func() bool { return strings.Contains(logs.String(), "limit=hello_timeout") }, "the hello_timeout line")

	// Four links say hello and stay; the fifth is closed at once.
	for range 4 {
		dialSpans(t, sock, 0)
	}
	fifth, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer fifth.Close()
	_ = fifth.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := readUntilClosed(fifth); err != nil {
		t.Fatalf("the fifth link was not refused: %v", err)
	}
	eventually(t, func() bool { return strings.Contains(logs.String(), "limit=links value=5 max=4") }, "the links line")
}

// readUntilClosed reads to EOF: a closed connection gives a nil error.
func readUntilClosed(c net.Conn) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return out, err
			}
			return out, nil
		}
	}
}

func TestLinkTransactionLimit(t *testing.T) {
	t.Parallel()
	a, b := socketPair(t)
	logs := &logBuf{}
	cfg := quietConfig("limited", func(t *Trans, m *Msg) { t.SetHandler(func(*Trans, *Msg) {}) })
	cfg.MaxPeerTrans, cfg.Logger = 3, logs.logger()
	lim := startLink(a, cfg)
	peer := startLink(b, quietConfig("peer", nil))
	for range 4 {
		if _, err := peer.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell}}, func(*Trans, *Msg) {}); err != nil {
			t.Fatal(err)
		}
	}
	waitClosed(t, lim, 5*time.Second)
	var le *LimitError
	if !errors.As(lim.Err(), &le) || le.Limit != "transactions_per_link" || le.Value != 4 || le.Max != 3 {
		t.Fatalf("link closed with %v, want the transactions_per_link limit at 4 of 3", lim.Err())
	}
	if !strings.Contains(logs.String(), "limit=transactions_per_link value=4 max=3") {
		t.Errorf("no log line naming the limit:\n%s", logs.String())
	}
	peer.Close()
}

// The files another user could write: a world-writable remote/ trusts
// nobody, a group-writable or foreign-owned .pub is ignored, and a
// world-writable key directory or config file is refused; each names its
// path.
func TestFilesWritableByOthers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := GenerateKey(dir, false); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(dir, remoteDirName)
	if err := os.Mkdir(remote, 0o755); err != nil {
		t.Fatal(err)
	}
	good, bad, foreign := newPub(t), newPub(t), newPub(t)
	writePub(t, dir, "good", good)
	writePub(t, dir, "bad", bad)
	writePub(t, dir, "foreign", foreign)
	if err := os.Chmod(filepath.Join(remote, "bad.pub"), 0o664); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(filepath.Join(remote, "foreign.pub"), nobodyUID, nobodyUID); err != nil {
			t.Fatal(err)
		}
	}
	ts, err := LoadTrustStore(dir)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(remote, "bad.pub")) {
		t.Errorf("load: %v; want a warning naming bad.pub", err)
	}
	if _, ok := ts.Lookup(good); !ok {
		t.Error("the safe key is not trusted")
	}
	if _, ok := ts.Lookup(bad); ok {
		t.Error("a group-writable key file is trusted")
	}
	if _, ok := ts.Lookup(foreign); ok && os.Geteuid() == 0 {
		t.Error("a key file owned by another user is trusted")
	}

	// remote/ itself world-writable: nothing in it counts, after a reload
	// (the SIGHUP path) too.
	if err := os.Chmod(remote, 0o777); err != nil {
		t.Fatal(err)
	}
	err = ts.Reload()
	if err == nil || !strings.Contains(err.Error(), remote) || !errors.Is(err, errWritableByOthers) {
		t.Errorf("reload of a world-writable remote/: %v", err)
	}
	if _, ok := ts.Lookup(good); ok {
		t.Error("a key in a world-writable remote/ is trusted")
	}

	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadNodeKey(dir); err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("node key in a world-writable directory: %v", err)
	}

	cfg := filepath.Join(t.TempDir(), "leaf.toml")
	if err := os.WriteFile(cfg, []byte("listen = \"none\"\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(cfg, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConfig(cfg); err == nil || !strings.Contains(err.Error(), cfg) || !errors.Is(err, errWritableByOthers) {
		t.Errorf("world-writable config: %v", err)
	}
}

// A user who may not read the machine's config (root made /etc/hammer2
// 0700) still runs every command on their own paths: the defaults, a note
// saying why, and keys in their own config directory.
func TestConfigUnreadableDefaultIsNoFile(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "etc-hammer2")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "leaf.toml")
	if err := os.WriteFile(path, []byte("listen = \":1\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	home := shortTempDir(t)
	if err := os.Chown(home, nobodyUID, nobodyUID); err != nil {
		t.Fatal(err)
	}
	r := startRole(t, "config-default", nobodyUID, "H2_PATH="+path, "HOME="+home, "XDG_CONFIG_HOME=")
	if got := r.line(10 * time.Second); got != "err <nil>" {
		t.Errorf("loading an unreadable default config: %s", got)
	}
	if got := r.line(10 * time.Second); !strings.Contains(got, path) || !strings.Contains(got, "using the defaults") {
		t.Errorf("note: %s", got)
	}
	if got := r.line(10 * time.Second); got != "key_dir "+filepath.Join(home, ".config", "hammer2") {
		t.Errorf("a user's keys: %s, want their own config directory", got)
	}
}

// The backbone redials no sooner than redial_min (it used to after half
// of it), and at most half as late again.
func TestBackboneWaitNeverBelowDelay(t *testing.T) {
	t.Parallel()
	for range 1000 {
		if w := backboneWait(time.Second); w < time.Second || w > 1500*time.Millisecond {
			t.Fatalf("wait %v at a delay of 1s", w)
		}
	}
}
