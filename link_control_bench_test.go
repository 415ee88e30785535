package main

// Control ahead of bulk on every link kind (docs/BENCHMARKS.md, "Control
// ahead of bulk (issue 15)"), in one run per link kind:
//
//	go test -run XXX -bench LinkControlUnderBulk -benchtime 400x -count 3 .
//
// Each sub-benchmark, on one fresh link, measures in turn:
//
//   - the dmsg PING round trip on the idle link (b.N samples after a
//     warm-up), p50 and p99;
//   - bulk alone: 64 KiB one-way messages through SendWait for
//     lcbBulkSpan, no control traffic (the unpaced rate);
//   - the same bulk with a PING loop on the same link (b.N samples): the
//     loaded p50 and p99, and the bulk rate meanwhile (paced);
//   - bulk alone again right after (its rate once control traffic stops);
//   - the same bytes, one write per message, over the bare transport
//     (a socketpair, plaintext TCP, a quic-go stream with its default
//     configuration), read with the link's read size (the raw rate).
//
// ratio-p50 and ratio-p99 are loaded over idle; the targets are both
// under 2. unpaced-vs-raw is the link's bulk alone against the bare
// transport; after-vs-unpaced is the bulk rate once control stops against
// the unpaced one (target 0.7 or more); paced-vs-unpaced is the price of
// the control traffic.

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// lcbBulkSpan is how long each bulk-alone phase runs.
const lcbBulkSpan = 300 * time.Millisecond

// lcbBulk keeps tx saturated with 64 KiB one-way messages until stop is
// called; rx's handler adds the bytes into got.
type lcbBulk struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func lcbStartBulk(tx *Link) *lcbBulk {
	ctx, cancel := context.WithCancel(context.Background())
	bl := &lcbBulk{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(bl.done)
		aux := benchAux64K()
		for ctx.Err() == nil {
			if err := tx.Root().SendWait(ctx, &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux}); err != nil {
				return
			}
		}
	}()
	return bl
}

func (bl *lcbBulk) stop() { bl.cancel(); <-bl.done }

// lcbRate is the MB/s got moves by within d.
func lcbRate(got *atomic.Int64, d time.Duration) float64 {
	b0, t0 := got.Load(), time.Now()
	time.Sleep(d)
	return float64(got.Load()-b0) / 1e6 / time.Since(t0).Seconds()
}

// lcbRawRate writes 64 KiB messages to w for d while a reader drains r
// with reads of readBufSize, and returns the MB/s read.
func lcbRawRate(b *testing.B, w io.Writer, r io.Reader, d time.Duration) float64 {
	var got atomic.Int64
	stop := make(chan struct{})
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		chunk := make([]byte, qlbMsgBytes)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}()
	go func() {
		buf := make([]byte, readBufSize)
		for {
			n, err := r.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	time.Sleep(20 * time.Millisecond) // past slow start
	rate := lcbRate(&got, d)
	close(stop)
	return rate
}

// lcbRawTCP is a plaintext TCP connection on 127.0.0.1, no delay, as the
// links' own.
func lcbRawTCP(b *testing.B) (w, r net.Conn) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- nil
			return
		}
		acc <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	s := <-acc
	if s == nil {
		b.Fatal("accept failed")
	}
	_ = c.(*net.TCPConn).SetNoDelay(true)
	_ = s.(*net.TCPConn).SetNoDelay(true)
	b.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// lcbControlUnderBulk runs the phases above on the link mk makes; raw
// gives the bare transport's two ends.
func lcbControlUnderBulk(b *testing.B, mk func(Handler) *Link, raw func() (io.Writer, io.Reader)) {
	var got atomic.Int64
	tx := mk(func(t *Trans, m *Msg) { got.Add(int64(m.WireHdrSize() + len(m.Aux))) })
	n := max(b.N, 100)
	pings := func() []time.Duration {
		d := make([]time.Duration, 0, n)
		for range n {
			p, err := qlbPing(tx)
			if err != nil {
				b.Fatal(err)
			}
			d = append(d, p)
		}
		return d
	}
	pings() // warm-up
	idle := pings()

	bl := lcbStartBulk(tx)
	time.Sleep(50 * time.Millisecond) // past slow start
	unpaced := lcbRate(&got, lcbBulkSpan)
	b.ResetTimer()
	b0, t0 := got.Load(), time.Now()
	loaded := pings()
	paced := float64(got.Load()-b0) / 1e6 / time.Since(t0).Seconds()
	b.StopTimer()
	after := lcbRate(&got, lcbBulkSpan)
	bl.stop()
	w, r := raw()
	rawRate := lcbRawRate(b, w, r, lcbBulkSpan)

	ip50, ip99 := qlbPercentiles(idle)
	lp50, lp99 := qlbPercentiles(loaded)
	b.ReportMetric(ip50, "idle-p50-us")
	b.ReportMetric(ip99, "idle-p99-us")
	b.ReportMetric(lp50, "load-p50-us")
	b.ReportMetric(lp99, "load-p99-us")
	b.ReportMetric(lp50/ip50, "ratio-p50")
	b.ReportMetric(lp99/ip99, "ratio-p99")
	b.ReportMetric(lp99/ip50, "ratio-p99-vs-idle-p50")
	b.ReportMetric(unpaced, "unpaced-MB/s")
	b.ReportMetric(paced, "paced-MB/s")
	b.ReportMetric(after, "after-MB/s")
	b.ReportMetric(rawRate, "raw-MB/s")
	b.ReportMetric(unpaced/rawRate, "unpaced-vs-raw")
	b.ReportMetric(paced/unpaced, "paced-vs-unpaced")
	b.ReportMetric(after/unpaced, "after-vs-unpaced")
}

// BenchmarkLinkControlUnderBulk: PING idle and under saturating bulk, and
// the bulk rate unpaced, paced and raw, on a Unix socketpair, plaintext
// and encrypted TCP (DragonFly's rule), and QUIC.
func BenchmarkLinkControlUnderBulk(b *testing.B) {
	b.Run("unix", func(b *testing.B) {
		lcbControlUnderBulk(b, func(h Handler) *Link {
			tx, _ := qlbUnixLinks(b, h)
			return tx
		}, func() (io.Writer, io.Reader) {
			w, r := socketPair(b)
			return w, r
		})
	})
	b.Run("tcp", func(b *testing.B) {
		lcbControlUnderBulk(b, func(h Handler) *Link {
			tx, _ := benchTCPLinks(b, false, h)
			return tx
		}, func() (io.Writer, io.Reader) { return lcbRawTCP(b) })
	})
	b.Run("tcp+rsa", func(b *testing.B) {
		lcbControlUnderBulk(b, func(h Handler) *Link {
			tx, _ := benchTCPLinks(b, true, h)
			return tx
		}, func() (io.Writer, io.Reader) { return lcbRawTCP(b) })
	})
	b.Run("quic", func(b *testing.B) {
		lcbControlUnderBulk(b, func(h Handler) *Link {
			tx, _, _ := qlbQuicLinks(b, h)
			return tx
		}, func() (io.Writer, io.Reader) { return qlbRawQuic(b) })
	})
}
