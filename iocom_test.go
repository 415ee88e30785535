package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// socketPair returns the two ends of a real AF_UNIX stream socketpair.
func socketPair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		tb.Fatal(err)
	}
	conn := func(fd int, name string) net.Conn {
		f := os.NewFile(uintptr(fd), name)
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			tb.Fatal(err)
		}
		return c
	}
	a, b := conn(fds[0], "a"), conn(fds[1], "b")
	tb.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// logBuf collects a link's log lines for assertions.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// recorder is a Handler that records what it sees, copying the messages.
type recorder struct {
	mu   sync.Mutex
	msgs []Msg
	ch   chan Msg
}

func newRecorder() *recorder { return &recorder{ch: make(chan Msg, 100)} }

func (r *recorder) handle(t *Trans, m *Msg) {
	c := Msg{Header: m.Header, Ext: bytes.Clone(m.Ext), Aux: bytes.Clone(m.Aux)}
	r.mu.Lock()
	r.msgs = append(r.msgs, c)
	r.mu.Unlock()
	r.ch <- c
}

func (r *recorder) next(tb testing.TB) Msg {
	tb.Helper()
	select {
	case m := <-r.ch:
		return m
	case <-time.After(5 * time.Second):
		tb.Fatal("no message within 5s")
		return Msg{}
	}
}

func quietConfig(name string, h Handler) LinkConfig {
	return LinkConfig{Name: name, PingInterval: -1, DeadAfter: -1, Handler: h,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func waitDone(tb testing.TB, l *Link) {
	tb.Helper()
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		tb.Fatalf("link %s still up after 5s", l.Name())
	}
}

func TestLinkTransactionLifecycle(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	server := newRecorder()
	var srvTrans *Trans
	b := startLink(cb, quietConfig("b", func(tr *Trans, m *Msg) {
		server.handle(tr, m)
		if m.Cmd&FlagCreate != 0 {
			srvTrans = tr
			_ = tr.Reply(ErrOK) // a result: stays open
		}
	}))
	client := newRecorder()
	a := startLink(ca, quietConfig("a", nil))
	defer a.Close()
	defer b.Close()

	tr, err := a.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: ShellAux("hi")}, client.handle)
	if err != nil {
		t.Fatal(err)
	}
	got := server.next(t)
	if got.Cmd != CmdDbgShell|FlagCreate || ShellText(got.Aux) != "hi" || got.MsgID != tr.MsgID() {
		t.Fatalf("server got %s msgid %#x aux %q", CmdString(got.Cmd), got.MsgID, got.Aux)
	}
	res := client.next(t)
	if res.Cmd != CmdLnkError|FlagCreate|FlagReply|FlagRevTrans || res.Error != 0 {
		t.Fatalf("client got %s", CmdString(res.Cmd))
	}
	// A streaming element, then our DELETE: the server's state has no
	// handler of its own, so the link closes its side automatically.
	if err := tr.Send(&Msg{Header: Header{Cmd: CmdDbgShell}}); err != nil {
		t.Fatal(err)
	}
	if m := server.next(t); m.Cmd != CmdDbgShell {
		t.Fatalf("streaming element arrived as %s", CmdString(m.Cmd))
	}
	if err := tr.Close(ErrOK); err != nil {
		t.Fatal(err)
	}
	if m := server.next(t); m.Cmd != CmdLnkError|FlagDelete {
		t.Fatalf("server saw %s, want LNK_ERROR|DELETE", CmdString(m.Cmd))
	}
	if m := client.next(t); m.Cmd != CmdLnkError|FlagDelete|FlagReply|FlagRevTrans {
		t.Fatalf("client saw %s, want the auto DELETE reply", CmdString(m.Cmd))
	}
	eventually(t, func() bool { return a.OpenCount() == 0 && b.OpenCount() == 0 }, "both tables empty")
	if srvTrans == nil || !srvTrans.removed {
		t.Error("server transaction not reaped")
	}
	if err := tr.Send(&Msg{Header: Header{Cmd: CmdDbgShell}}); err == nil {
		t.Error("send on a closed transaction succeeded")
	}
}

func eventually(tb testing.TB, cond func() bool, what string) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLinkUnknownCreateGetsNoSupp(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	b := startLink(cb, quietConfig("b", nil))
	a := startLink(ca, quietConfig("a", nil))
	defer a.Close()
	defer b.Close()
	rec := newRecorder()
	if _, err := a.Root().Open(&Msg{Header: Header{Cmd: mkcmd(ProtoBLK, 1, 72)}}, rec.handle); err != nil {
		t.Fatal(err)
	}
	m := rec.next(t)
	if m.Cmd != CmdLnkError|FlagCreate|FlagDelete|FlagReply|FlagRevTrans || m.Error != ErrNoSupp {
		t.Fatalf("got %s error %#x, want LNK_ERROR|CREATE|DELETE|REPLY|REVTRANS NOSUPP", CmdString(m.Cmd), m.Error)
	}
	eventually(t, func() bool { return a.OpenCount() == 0 && b.OpenCount() == 0 }, "tables empty")
}

func TestLinkPingAndRTT(t *testing.T) {
	// Not parallel: it times the link against its own bounds, which a
	// machine busy with the parallel tests would blur.
	ca, cb := socketPair(t)
	cfg := quietConfig("a", nil)
	cfg.PingInterval = 20 * time.Millisecond
	a := startLink(ca, cfg)
	b := startLink(cb, quietConfig("b", nil))
	defer a.Close()
	defer b.Close()
	eventually(t, func() bool { return a.RTT() > 0 }, "a PING answered")
	if b.MsgsIn.Load() == 0 || b.MsgsOut.Load() == 0 {
		t.Error("b neither received the PING nor answered it")
	}
}

// TestLinkNoPingBeforeHello: a link waiting for its peer's hello sends
// no keepalive PING (the peer may be DragonFly's kernel, which answers
// none, as the hello will say), and pings as usual once it has it.
func TestLinkNoPingBeforeHello(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	cfg := quietConfig("a", nil)
	cfg.PingInterval = 10 * time.Millisecond
	cfg.HelloTimeout = 30 * time.Second
	a := startLink(ca, cfg)
	defer a.Close()
	p := &rawPeer{tb: t, c: cb}
	// The peer says something, as a kernel's LNK_CONN would, and then
	// nothing: a link that pinged before the hello would have sent one
	// within a ping interval; 30 intervals without one is the bound.
	p.send(Msg{Header: Header{Cmd: CmdDbgShell}})
	_ = cb.SetReadDeadline(time.Now().Add(30 * cfg.PingInterval))
	if m, err := p.readRaw(); err == nil {
		t.Fatalf("before the hello the link sent %s", CmdString(m.Cmd))
	}
	a.Hello()
	_ = cb.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, err := p.readRaw()
	if err != nil || m.Cmd&(maskBaseCmd|FlagReply) != CmdLnkPing {
		t.Fatalf("after the hello: %s, %v; want a PING", CmdString(m.Cmd), err)
	}
}

// rawPeer speaks dmsg by hand, to send what a real link never would.
type rawPeer struct {
	tb   testing.TB
	c    net.Conn
	txSq uint32
}

func (p *rawPeer) send(m Msg) {
	p.tb.Helper()
	if _, err := p.c.Write(m.AppendWire(nil, p.txSq)); err != nil {
		p.tb.Fatal(err)
	}
	p.txSq++
}

func (p *rawPeer) read() (Msg, error) {
	p.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return p.readRaw()
}

// readRaw reads one message within whatever read deadline the caller set.
func (p *rawPeer) readRaw() (Msg, error) {
	var hdr [HdrMax]byte
	if _, err := io.ReadFull(p.c, hdr[:HdrSize]); err != nil {
		return Msg{}, err
	}
	hs, ap, err := PeekSizes(hdr[:HdrSize])
	if err != nil {
		return Msg{}, err
	}
	buf := make([]byte, hs+ap)
	copy(buf, hdr[:HdrSize])
	if _, err := io.ReadFull(p.c, buf[HdrSize:]); err != nil {
		return Msg{}, err
	}
	var m Msg
	_, err = Decode(buf, &m)
	return m, err
}

func TestLinkBadInput(t *testing.T) {
	t.Parallel()
	le := binary.LittleEndian
	ping := Msg{Header: Header{Cmd: CmdLnkPing}}
	for _, tc := range []struct {
		name  string
		feed  func(p *rawPeer)
		field string
	}{
		{"bad-magic", func(p *rawPeer) {
			b := ping.AppendWire(nil, 0)
			le.PutUint16(b, 0x1234)
			p.c.Write(b)
		}, "magic"},
		{"header-below-64", func(p *rawPeer) {
			b := ping.AppendWire(nil, 0)
			b[offCmd] = 0
			p.c.Write(b)
		}, "cmd"},
		{"header-above-2048", func(p *rawPeer) {
			b := ping.AppendWire(nil, 0)
			b[offCmd] = 33
			p.c.Write(b)
		}, "cmd"},
		{"aux-over-limit", func(p *rawPeer) {
			b := ping.AppendWire(nil, 0)
			le.PutUint32(b[offAuxBytes:], AuxMax+64)
			p.c.Write(b)
		}, "aux_bytes"},
		{"hdr-crc", func(p *rawPeer) {
			b := ping.AppendWire(nil, 0)
			b[offHdrCRC] ^= 0xFF
			p.c.Write(b)
		}, "hdr_crc"},
		{"aux-crc", func(p *rawPeer) {
			b := (&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: []byte("abc\x00")}).AppendWire(nil, 0)
			b[HdrSize] ^= 1
			p.c.Write(b)
		}, "aux_crc"},
		{"salt-gap", func(p *rawPeer) {
			p.send(ping)
			p.txSq++ // skip one
			p.send(ping)
		}, "salt"},
		{"truncated", func(p *rawPeer) {
			p.c.Write(ping.AppendWire(nil, 0)[:40])
			p.c.(*net.UnixConn).CloseWrite()
		}, "length"},
		{"create-with-revtrans", func(p *rawPeer) {
			p.send(Msg{Header: Header{Cmd: CmdDbgShell | FlagCreate | FlagRevTrans, MsgID: 5}})
		}, "cmd"},
		{"create-msgid-zero", func(p *rawPeer) {
			p.send(Msg{Header: Header{Cmd: CmdDbgShell | FlagCreate}})
		}, "msgid"},
		{"create-for-open-msgid", func(p *rawPeer) {
			p.send(Msg{Header: Header{Cmd: CmdDbgShell | FlagCreate, MsgID: 7}})
			p.send(Msg{Header: Header{Cmd: CmdDbgShell | FlagCreate, MsgID: 7}})
		}, "msgid"},
		{"reply-for-unknown-msgid", func(p *rawPeer) {
			p.send(Msg{Header: Header{Cmd: CmdLnkError | FlagCreate | FlagReply | FlagRevTrans, MsgID: 99}})
		}, "msgid"},
		{"delete-for-unknown-msgid", func(p *rawPeer) {
			p.send(Msg{Header: Header{Cmd: CmdLnkError | FlagDelete, MsgID: 99}})
		}, "msgid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca, cb := socketPair(t)
			// An unrelated link that must not notice anything.
			oa, ob := socketPair(t)
			other := startLink(oa, quietConfig("other", func(tr *Trans, m *Msg) {
				if m.Cmd&FlagCreate != 0 {
					tr.SetHandler(func(*Trans, *Msg) {}) // keep it open
					_ = tr.Reply(ErrOK)
				}
			}))
			otherPeer := startLink(ob, quietConfig("otherpeer", nil))
			defer other.Close()
			defer otherPeer.Close()
			otherRec := newRecorder()
			if _, err := otherPeer.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell}}, otherRec.handle); err != nil {
				t.Fatal(err)
			}
			otherRec.next(t)

			var logs logBuf
			cfg := quietConfig("peer-under-test", func(tr *Trans, m *Msg) {
				if m.Cmd&FlagCreate != 0 {
					tr.SetHandler(func(*Trans, *Msg) {})
					_ = tr.Reply(ErrOK)
				}
			})
			cfg.Logger = logs.logger()
			l := startLink(ca, cfg)
			p := &rawPeer{tb: t, c: cb}
			tc.feed(p)
			waitDone(t, l)
			var we *WireError
			if !errors.As(l.Err(), &we) || we.Field != tc.field {
				t.Fatalf("link error = %v, want a bad %s", l.Err(), tc.field)
			}
			log := logs.String()
			if strings.Count(log, "dmsg link closed") != 1 || !strings.Contains(log, "peer=peer-under-test") ||
				!strings.Contains(log, "field="+tc.field) || !strings.Contains(log, "value=") {
				t.Errorf("want one log line naming peer, field and value; got:\n%s", log)
			}
			select {
			case <-other.Done():
				t.Fatal("an unrelated link went down")
			default:
			}
			if other.OpenCount() != 1 {
				t.Errorf("unrelated link lost its transaction")
			}
		})
	}
}

func TestLinkAcceptsByteSwappedPeer(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	l := startLink(ca, quietConfig("swapped", nil))
	defer l.Close()
	hdr := make([]byte, HdrSize)
	be := binary.BigEndian
	be.PutUint16(hdr[offMagic:], MagicLE)
	be.PutUint32(hdr[offCmd:], CmdLnkPing)
	be.PutUint32(hdr[offHdrCRC:], hdrCRC(hdr))
	if _, err := cb.Write(hdr); err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{tb: t, c: cb}
	m, err := p.read()
	if err != nil {
		t.Fatal(err)
	}
	if m.Cmd != CmdLnkPing|FlagReply {
		t.Fatalf("answer %s, want LNK_PING|REPLY", CmdString(m.Cmd))
	}
}

// A one-way LNK_ERROR is never answered (that way lies ping-pong), and a
// one-way message without a handler is dropped quietly.
func TestLinkOneWayErrorNotAnswered(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	l := startLink(ca, quietConfig("a", nil))
	defer l.Close()
	p := &rawPeer{tb: t, c: cb}
	p.send(Msg{Header: Header{Cmd: CmdLnkError, Error: ErrIO}})
	p.send(Msg{Header: Header{Cmd: CmdLnkError | FlagReply, Error: ErrIO}})
	p.send(Msg{Header: Header{Cmd: CmdLnkPing}}) // a marker we expect an answer to
	m, err := p.read()
	if err != nil {
		t.Fatal(err)
	}
	if m.Cmd != CmdLnkPing|FlagReply {
		t.Fatalf("first answer is %s: the LNK_ERROR was answered", CmdString(m.Cmd))
	}
}

func TestLinkLostLinkChildrenFirst(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	var mu sync.Mutex
	var order []string
	note := func(name string) Handler {
		return func(tr *Trans, m *Msg) {
			if m.Cmd&FlagDelete != 0 && m.Error == ErrLostLink {
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
			}
		}
	}
	// b keeps everything it is asked to open.
	b := startLink(cb, quietConfig("b", func(tr *Trans, m *Msg) {
		if m.Cmd&FlagCreate != 0 {
			tr.SetHandler(func(*Trans, *Msg) {})
			_ = tr.Reply(ErrOK)
		}
	}))
	var closed error
	cfg := quietConfig("a", nil)
	cfg.OnClose = func(err error) { closed = err }
	a := startLink(ca, cfg)
	parent, err := a.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell}}, note("parent"))
	if err != nil {
		t.Fatal(err)
	}
	child, err := parent.Open(&Msg{Header: Header{Cmd: CmdDbgShell}}, note("child"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := child.Open(&Msg{Header: Header{Cmd: CmdDbgShell}}, note("grandchild")); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool { return b.OpenCount() == 3 }, "b holds three transactions")
	b.Close() // the peer vanishes
	waitDone(t, a)
	mu.Lock()
	got := strings.Join(order, ",")
	mu.Unlock()
	if got != "grandchild,child,parent" {
		t.Errorf("LOSTLINK order %q, want grandchild,child,parent", got)
	}
	if closed == nil {
		t.Error("OnClose not called with the reason")
	}
	if err := parent.Send(&Msg{Header: Header{Cmd: CmdDbgShell}}); !errors.Is(err, ErrLinkClosed) {
		t.Errorf("send after loss = %v, want ErrLinkClosed", err)
	}
}

// Circuits: a sub-transaction under a transaction the peer opened carries
// REVCIRC, and its replies come back with REVTRANS.
func TestLinkCircuitFlags(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	var sub *Trans
	subRec := newRecorder()
	a := startLink(ca, quietConfig("a", func(tr *Trans, m *Msg) {
		if m.Cmd&FlagCreate != 0 && tr.Parent() == nil {
			tr.SetHandler(func(*Trans, *Msg) {})
			_ = tr.Reply(ErrOK)
			s, err := tr.Open(&Msg{Header: Header{Cmd: CmdDbgShell}}, subRec.handle)
			if err != nil {
				t.Error(err)
			}
			sub = s
		}
	}))
	defer a.Close()
	p := &rawPeer{tb: t, c: cb}
	p.send(Msg{Header: Header{Cmd: CmdDbgShell | FlagCreate, MsgID: 0x77}})
	res, err := p.read()
	if err != nil || res.Cmd != CmdLnkError|FlagCreate|FlagReply|FlagRevTrans || res.MsgID != 0x77 {
		t.Fatalf("result = %s msgid %#x, %v", CmdString(res.Cmd), res.MsgID, err)
	}
	open, err := p.read()
	if err != nil {
		t.Fatal(err)
	}
	if open.Cmd != CmdDbgShell|FlagCreate|FlagRevCirc || open.Circuit != 0x77 || open.MsgID == 0 {
		t.Fatalf("sub-transaction = %s circuit %#x", CmdString(open.Cmd), open.Circuit)
	}
	// Answer it as libdmsg would: REPLY, REVTRANS, and REVCIRC unset
	// because the parent is ours on this side.
	p.send(Msg{Header: Header{Cmd: CmdLnkError | FlagCreate | FlagDelete | FlagReply | FlagRevTrans, MsgID: open.MsgID, Circuit: 0x77}})
	m := subRec.next(t)
	if m.Cmd&FlagDelete == 0 || sub == nil || !sub.RxDone() {
		t.Fatalf("sub reply not delivered: %s", CmdString(m.Cmd))
	}
}

// timerLinkDeadPeer is run by TestTimers (schedule_test.go).
func timerLinkDeadPeer(t *testing.T) {
	ca, cb := socketPair(t)
	cfg := quietConfig("a", nil)
	cfg.PingInterval = 10 * time.Millisecond
	cfg.DeadAfter = 150 * time.Millisecond
	start := time.Now()
	a := startLink(ca, cfg)
	// The peer reads everything and says nothing.
	go io.Copy(io.Discard, cb)
	waitDone(t, a)
	if !errors.Is(a.Err(), ErrPeerSilent) {
		t.Fatalf("err = %v, want ErrPeerSilent", a.Err())
	}
	if el := time.Since(start); el < 150*time.Millisecond || el > 2*time.Second {
		t.Errorf("declared dead after %v, want about 150ms", el)
	}
}

func TestLinkShutdownSendsDeletes(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	a := startLink(ca, quietConfig("a", func(tr *Trans, m *Msg) {
		if m.Cmd&FlagCreate != 0 {
			tr.SetHandler(func(*Trans, *Msg) {})
			_ = tr.Reply(ErrOK)
		}
	}))
	p := &rawPeer{tb: t, c: cb}
	p.send(Msg{Header: Header{Cmd: CmdDbgShell | FlagCreate, MsgID: 0x10}})
	if res, err := p.read(); err != nil || res.MsgID != 0x10 {
		t.Fatalf("no result for the peer's transaction: %v", err)
	}
	if _, err := a.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell}}, func(*Trans, *Msg) {}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	go a.Shutdown(ctx)
	var deletes []string
	for {
		m, err := p.read()
		if err != nil {
			break
		}
		if m.Cmd&FlagDelete != 0 {
			deletes = append(deletes, fmt.Sprintf("%#x", m.MsgID))
		}
	}
	if len(deletes) != 2 {
		t.Fatalf("saw DELETE for %v before EOF, want both transactions", deletes)
	}
	waitDone(t, a)
}

// timerLinkBackPressure is run by TestTimers (schedule_test.go).
func timerLinkBackPressure(t *testing.T) {
	ca, _ := socketPair(t) // nobody reads the other end
	cfg := quietConfig("a", nil)
	cfg.SendQueueBytes = 256 << 10
	cfg.HardQueueBytes = 8 << 20
	a := startLink(ca, cfg)
	defer a.Close()
	aux := make([]byte, 64<<10)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var err error
	sent := 0
	for i := 0; i < 1000 && err == nil; i++ {
		err = a.Root().SendWait(ctx, &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux})
		sent++
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SendWait never blocked: err %v after %d", err, sent)
	}
	// Send ignores the soft bound but not the hard one.
	for i := 0; i < 1000 && err == nil || errors.Is(err, context.DeadlineExceeded); i++ {
		err = a.Root().Send(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux})
	}
	if !errors.Is(err, ErrQueueFull) {
		t.Fatalf("Send over the hard limit = %v, want ErrQueueFull", err)
	}
	waitDone(t, a)
}

// startLink is NewLink and Start, for tests that publish nothing before
// the link runs.
func startLink(conn io.ReadWriteCloser, cfg LinkConfig) *Link {
	l := NewLink(conn, cfg)
	l.Start()
	return l
}
