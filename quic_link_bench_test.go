package main

// Benchmarks of dmsg Links over QUIC links (docs/BENCHMARKS.md, "QUIC links"):
//
//	go test -run XXX -bench Quic -count 3 .
//
// BenchmarkQuicDmsgThroughput and BenchmarkQuicDmsgRoundTrip run a dmsg
// Link over a QuicLink and, inside the same benchmark, the same bytes or
// the same number of round trips over a bare quic-go stream (quic-go's
// default quic.Config, on sockets of its own) and over TCP with TLS 1.3
// (the nodes' own pinned-Ed25519 TLS configs). The three run in
// alternating slices, so machine noise falls on all of them alike and the
// ratios mean something even when the absolute figures move.
//
// BenchmarkQuicPingUnderLoad measures the dmsg PING round trip (what
// Link.RTT reports) and a one-message transaction round trip (a span
// update stands for it) on an idle link, then while another goroutine
// keeps the same link saturated with 64 KiB messages; over QUIC and, for
// comparison, over a Unix socketpair.

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// qlbAuxSize is the bulk message's aux; with its header, qlbMsgBytes on
// the wire.
const (
	qlbAuxSize  = 64 << 10
	qlbMsgBytes = HdrSize + qlbAuxSize
)

// qlbQuicLinks runs a dmsg Link on each end of a fresh QuicLink between
// two nodes; rx's handler gets every message for rx.
func qlbQuicLinks(b *testing.B, rxh Handler) (tx, rx *Link, ql *QuicLink) {
	b.Helper()
	na, nc := benchNodes(b)
	la, lc := linkPair(b, testCtx(b, 10*time.Second), na, nc)
	tx, rx = qlbLinks(b, la.Stream(), lc.Stream(), rxh)
	return tx, rx, la
}

// qlbUnixLinks is qlbQuicLinks over a Unix socketpair.
func qlbUnixLinks(b *testing.B, rxh Handler) (tx, rx *Link) {
	b.Helper()
	ca, cb := socketPair(b)
	return qlbLinks(b, ca, cb, rxh)
}

func qlbLinks(b *testing.B, ca, cb io.ReadWriteCloser, rxh Handler) (tx, rx *Link) {
	rx = startLink(cb, quietConfig("rx", rxh))
	tx = startLink(ca, quietConfig("tx", nil))
	b.Cleanup(func() { tx.Close(); rx.Close() })
	return tx, rx
}

// qlbRawQuic connects a bare quic-go stream with quic-go's default
// configuration (flow-control windows, no pacing of ours) on sockets of its
// own, authenticated by the nodes' TLS configs.
func qlbRawQuic(b *testing.B) (w, r io.ReadWriter) {
	return benchRawQuic(b, &quic.Config{MaxIdleTimeout: time.Minute})
}

// qlbTLS connects TCP with TLS 1.3 on 127.0.0.1, authenticated like a QUIC
// link: the nodes' own configs, pinned Ed25519 keys both ways.
func qlbTLS(b *testing.B) (w, r io.ReadWriter) {
	b.Helper()
	na, nc := benchNodes(b)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   *tls.Conn
		err error
	}
	acc := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- res{nil, err}
			return
		}
		s := tls.Server(c, nc.srvTLS)
		acc <- res{s, s.Handshake()}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	tc := na.cliTLS.Clone()
	tc.VerifyConnection = na.verifyPeer(raw.RemoteAddr(), "dial")
	c := tls.Client(raw, tc)
	if err := c.Handshake(); err != nil {
		b.Fatal(err)
	}
	s := <-acc
	if s.err != nil {
		b.Fatal(s.err)
	}
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		b.Fatalf("TLS version %#x, want 1.3", v)
	}
	b.Cleanup(func() { c.Close(); s.c.Close() })
	return c, s.c
}

// qlbCounter counts bytes on a receiving goroutine and signals once the
// count reaches the target set for the current slice.
type qlbCounter struct {
	got, target atomic.Int64
	reached     chan struct{}
}

func newQlbCounter() *qlbCounter { return &qlbCounter{reached: make(chan struct{}, 1)} }

func (c *qlbCounter) add(n int) {
	if c.got.Add(int64(n)) == c.target.Load() {
		c.reached <- struct{}{}
	}
}

// qlbDrain reads r until it fails, counting into c.
func qlbDrain(r io.Reader, c *qlbCounter) {
	buf := make([]byte, readBufSize)
	for {
		n, err := r.Read(buf)
		c.add(n)
		if err != nil {
			return
		}
	}
}

// qlbInterleave runs b.N operations through each of fns, in alternating
// slices, the benchmark timer running for fns[0] only, and returns each
// one's wall-clock time.
func qlbInterleave(b *testing.B, fns ...func(k int)) []time.Duration {
	const rounds = 16
	wall := make([]time.Duration, len(fns))
	b.ResetTimer()
	b.StopTimer()
	for i := range rounds {
		k := b.N*(i+1)/rounds - b.N*i/rounds
		if k == 0 {
			continue
		}
		for j, f := range fns {
			if j == 0 {
				b.StartTimer()
			}
			t0 := time.Now()
			f(k)
			wall[j] += time.Since(t0)
			if j == 0 {
				b.StopTimer()
			}
		}
	}
	return wall
}

// BenchmarkQuicDmsgThroughput: one-way 64 KiB DBG_SHELL messages from a
// Link over a QuicLink, back-pressured by SendWait; the same bytes in one
// write per message over a raw quic-go stream and over TCP+TLS 1.3.
func BenchmarkQuicDmsgThroughput(b *testing.B) {
	lc := newQlbCounter()
	tx, rx, ql := qlbQuicLinks(b, func(t *Trans, m *Msg) { lc.add(m.WireHdrSize() + len(m.Aux)) })
	aux := benchAux64K()
	ctx := context.Background()
	root := tx.Root()
	link := func(k int) {
		lc.target.Add(int64(k) * qlbMsgBytes)
		for range k {
			if err := root.SendWait(ctx, &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux}); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-lc.reached:
		case <-rx.Done():
			b.Fatalf("receiving link down: %v", rx.Err())
		}
	}
	chunk := make([]byte, qlbMsgBytes)
	copy(chunk[HdrSize:], aux)
	stream := func(w, r io.ReadWriter) func(k int) {
		c := newQlbCounter()
		go qlbDrain(r, c)
		return func(k int) {
			c.target.Add(int64(k) * qlbMsgBytes)
			for range k {
				if _, err := w.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			<-c.reached
		}
	}
	qw, qr := qlbRawQuic(b)
	tw, tr := qlbTLS(b)
	b.SetBytes(qlbMsgBytes)
	wall := qlbInterleave(b, link, stream(qw, qr), stream(tw, tr))
	mbs := func(d time.Duration) float64 { return float64(b.N) * qlbMsgBytes / 1e6 / d.Seconds() }
	b.ReportMetric(mbs(wall[0]), "MB/s")
	b.ReportMetric(mbs(wall[1]), "raw-quic-MB/s")
	b.ReportMetric(mbs(wall[2]), "tls-MB/s")
	b.ReportMetric(mbs(wall[0])/mbs(wall[1]), "ratio-vs-raw-quic")
	b.ReportMetric(mbs(wall[0])/mbs(wall[2]), "ratio-vs-tls")
	b.ReportMetric(float64(ql.Stats().PacketsLost), "lost-pkts")
}

// BenchmarkQuicDmsgRoundTrip: a one-message transaction (CREATE|DELETE)
// that the peer's handler closes at once, waiting for the answer each
// time; the same number of 64-byte ping-pongs over a raw quic-go stream and
// over TCP+TLS 1.3. ns/op is the dmsg round trip.
func BenchmarkQuicDmsgRoundTrip(b *testing.B) {
	tx, rx, _ := qlbQuicLinks(b, func(t *Trans, m *Msg) {
		if m.Cmd&FlagCreate != 0 && !t.IsRoot() {
			_ = t.Close(ErrOK)
		}
	})
	answered := make(chan struct{}, 1)
	h := func(t *Trans, m *Msg) {
		if m.Cmd&FlagDelete != 0 {
			answered <- struct{}{}
		}
	}
	root := tx.Root()
	link := func(k int) {
		for range k {
			if _, err := root.Open(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}}, h); err != nil {
				b.Fatal(err)
			}
			select {
			case <-answered:
			case <-tx.Done():
				b.Fatalf("link down: %v", tx.Err())
			}
		}
	}
	pingpong := func(c, s io.ReadWriter) func(k int) {
		go func() { // echo until the streams are closed at cleanup
			var p [HdrSize]byte
			for {
				if _, err := io.ReadFull(s, p[:]); err != nil {
					return
				}
				if _, err := s.Write(p[:]); err != nil {
					return
				}
			}
		}()
		var p [HdrSize]byte
		return func(k int) {
			for range k {
				if _, err := c.Write(p[:]); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, p[:]); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	qc, qs := qlbRawQuic(b)
	tc, ts := qlbTLS(b)
	wall := qlbInterleave(b, link, pingpong(qc, qs), pingpong(tc, ts))
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(b.N) }
	b.ReportMetric(us(wall[0]), "us/rt")
	b.ReportMetric(us(wall[1]), "raw-quic-us/rt")
	b.ReportMetric(us(wall[2]), "tls-us/rt")
	b.ReportMetric(us(wall[0])/us(wall[1]), "ratio-vs-raw-quic")
	b.ReportMetric(us(wall[0])/us(wall[2]), "ratio-vs-tls")
	if n := tx.OpenCount() + rx.OpenCount(); n != 0 {
		b.Fatalf("%d transactions left open", n)
	}
}

// qlbPing sends one dmsg PING on l and returns its round trip as the link
// itself measures it for Link.RTT (from just before the PING is queued to
// the reader's handling of the REPLY). The PING counts as control traffic
// waiting, as a span update would: on a two-stream link it engages the
// bulk pacer.
func qlbPing(l *Link) (time.Duration, error) {
	done := make(chan time.Duration, 1)
	if !l.ping(done, true) {
		return 0, fmt.Errorf("PING not sent (link err %v)", l.Err())
	}
	select {
	case rtt := <-done:
		return rtt, nil
	case <-time.After(5 * time.Second):
		return 0, fmt.Errorf("no PING reply within 5s (link err %v)", l.Err())
	}
}

// qlbPercentiles returns the median and 99th percentile in microseconds.
func qlbPercentiles(d []time.Duration) (p50, p99 float64) {
	s := slices.Clone(d)
	slices.Sort(s)
	us := func(x time.Duration) float64 { return float64(x.Nanoseconds()) / 1e3 }
	return us(s[len(s)/2]), us(s[min(len(s)-1, len(s)*99/100)])
}

// qlbPingUnderLoad measures b.N PING and transaction round trips on an
// idle link, then b.N of each while a bulk sender saturates the link; the
// benchmark timer covers the loaded phase.
func qlbPingUnderLoad(b *testing.B, mk func(*testing.B, Handler) (tx *Link, ql *QuicLink)) {
	var rxBytes atomic.Int64
	tx, ql := mk(b, func(t *Trans, m *Msg) {
		if m.Cmd&FlagCreate != 0 && !t.IsRoot() {
			_ = t.Close(ErrOK)
			return
		}
		rxBytes.Add(int64(m.WireHdrSize() + len(m.Aux)))
	})
	answered := make(chan struct{}, 1)
	h := func(t *Trans, m *Msg) {
		if m.Cmd&FlagDelete != 0 {
			answered <- struct{}{}
		}
	}
	txn := func() time.Duration {
		t0 := time.Now()
		if _, err := tx.Root().Open(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}}, h); err != nil {
			b.Fatal(err)
		}
		select {
		case <-answered:
		case <-time.After(5 * time.Second):
			b.Fatalf("no transaction answer within 5s (link err %v)", tx.Err())
		}
		return time.Since(t0)
	}
	n := max(b.N, 50)
	sample := func() (ping, trans []time.Duration) {
		for range n {
			p, err := qlbPing(tx)
			if err != nil {
				b.Fatal(err)
			}
			ping = append(ping, p)
			trans = append(trans, txn())
		}
		return ping, trans
	}
	sample() // warm-up
	idlePing, idleTrans := sample()

	ctx, cancel := context.WithCancel(context.Background())
	bulkDone := make(chan struct{})
	go func() {
		defer close(bulkDone)
		aux := benchAux64K()
		for ctx.Err() == nil {
			if err := tx.Root().SendWait(ctx, &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux}); err != nil {
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond) // past slow start
	b.ResetTimer()
	b0, t0 := rxBytes.Load(), time.Now()
	loadPing, loadTrans := sample()
	loadMBs := float64(rxBytes.Load()-b0) / 1e6 / time.Since(t0).Seconds()
	b.StopTimer()
	if ql != nil {
		// QUIC's own view of the path while loaded: its smoothed RTT
		// includes the bulk queued in the sockets and quic-go's loops.
		st := ql.Stats()
		b.ReportMetric(float64(st.MinRTT.Nanoseconds())/1e3, "quic-minrtt-us")
		b.ReportMetric(float64(st.RTT.Nanoseconds())/1e3, "quic-srtt-load-us")
		b.ReportMetric(float64(st.PacketsLost), "lost-pkts")
	}
	cancel()
	<-bulkDone

	ip50, ip99 := qlbPercentiles(idlePing)
	lp50, lp99 := qlbPercentiles(loadPing)
	it50, _ := qlbPercentiles(idleTrans)
	lt50, lt99 := qlbPercentiles(loadTrans)
	b.ReportMetric(ip50, "idle-p50-us")
	b.ReportMetric(ip99, "idle-p99-us")
	b.ReportMetric(lp50, "load-p50-us")
	b.ReportMetric(lp99, "load-p99-us")
	b.ReportMetric(lp50/ip50, "ratio-p50")
	b.ReportMetric(lp99/ip50, "ratio-p99-vs-idle-p50")
	b.ReportMetric(it50, "txn-idle-p50-us")
	b.ReportMetric(lt50, "txn-load-p50-us")
	b.ReportMetric(lt99, "txn-load-p99-us")
	b.ReportMetric(loadMBs, "load-MB/s")
}

// BenchmarkQuicPingUnderLoad: dmsg PING round trip idle and while 64 KiB
// bulk saturates the same link, over QUIC and over a Unix socketpair.
func BenchmarkQuicPingUnderLoad(b *testing.B) {
	b.Run("quic", func(b *testing.B) {
		qlbPingUnderLoad(b, func(b *testing.B, h Handler) (*Link, *QuicLink) {
			tx, _, ql := qlbQuicLinks(b, h)
			return tx, ql
		})
	})
	b.Run("unix", func(b *testing.B) {
		qlbPingUnderLoad(b, func(b *testing.B, h Handler) (*Link, *QuicLink) {
			tx, _ := qlbUnixLinks(b, h)
			return tx, nil
		})
	})
}

// qlbDelayProxy relays UDP between a client and to, adding delay each way:
// a long path on loopback. It returns the address the client should dial.
func qlbDelayProxy(tb testing.TB, to net.Addr, delay time.Duration) string {
	tb.Helper()
	front, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	back, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { front.Close(); back.Close() })
	var client atomic.Pointer[net.UDPAddr]
	relay := func(from, out *net.UDPConn, dst func() *net.UDPAddr, learn bool) {
		buf := make([]byte, 64<<10)
		for {
			n, addr, err := from.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if learn {
				client.Store(addr)
			}
			p := slices.Clone(buf[:n])
			time.AfterFunc(delay, func() {
				if d := dst(); d != nil {
					out.WriteToUDP(p, d)
				}
			})
		}
	}
	srv := to.(*net.UDPAddr)
	go relay(front, back, func() *net.UDPAddr { return srv }, true)
	go relay(back, front, client.Load, false)
	return front.LocalAddr().String()
}

// TestQuicWindowFollowsPath checks the flow-control policy: on loopback the
// connection's receive window stays at its initial size (bulk cannot queue
// far ahead of PINGs), while on a path with a 10 ms round trip it grows
// (a long link is not held to window/RTT).
// The window decision itself: loopback and LAN paths keep the initial
// window, long paths may grow it to twice their bandwidth-delay product,
// never past quic-go's cap.
func TestQuicWindowLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		rtt  time.Duration
		want uint64
	}{
		{50 * time.Microsecond, quicConnWindow},
		{quicLongPath - time.Microsecond, quicConnWindow},
		{quicLongPath, 2500000},
		{5 * time.Millisecond, 12500000},
		{100 * time.Millisecond, quicMaxConnWindow},
	} {
		if got := quicWindowLimit(tc.rtt); got != tc.want {
			t.Errorf("min RTT %v: limit %d, want %d", tc.rtt, got, tc.want)
		}
	}
}

// On a real path with 5 ms of delay each way, a bulk transfer grows the
// window past 1 MiB; status reports it.
func TestQuicWindowGrowsOnLongPath(t *testing.T) {
	// Not parallel: it times the link against its own bounds, which a
	// machine busy with the parallel tests would blur.
	ka, kc := newTestKey(t), newTestKey(t)
	a := startNode(t, ka, QuicConfig{}, peer{"c", kc.Public().(ed25519.PublicKey)})
	c := startNode(t, kc, QuicConfig{}, peer{"a", ka.Public().(ed25519.PublicKey)})
	ctx := testCtx(t, 10*time.Second)
	addr := qlbDelayProxy(t, c.Addr(), 5*time.Millisecond)
	acc := make(chan *QuicLink, 1)
	go func() {
		l, err := c.Accept(ctx)
		if err != nil {
			t.Error(err)
		}
		acc <- l
	}()
	la, err := a.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	lc := <-acc
	if lc == nil {
		return
	}
	defer lc.Close()
	go io.Copy(io.Discard, lc.Stream())
	buf := make([]byte, 64<<10)
	w := la.Stream()
	for sent := 0; sent < 64<<20 && lc.Stats().RecvWindow < 1<<20; sent += len(buf) {
		if _, err := w.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	if got := lc.Stats().RecvWindow; got < 1<<20 {
		t.Errorf("window %d KiB after 64 MiB on a 10 ms path, want 1 MiB or more (min RTT %v)", got>>10, lc.Stats().MinRTT)
	}
}
