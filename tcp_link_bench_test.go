package main

// Benchmarks of dmsg Links over DragonFly's TCP links (docs/BENCHMARKS.md,
// "Encrypted TCP links (issue 12)"): a Link over an encrypted TCP link
// (RSA handshake, AES-256-GCM chunks, as the service and the leaf run
// them: a *tcpConn from the rule), over a plaintext one (remote/<ip>.none)
// and over our QUIC link, interleaved in one run so the ratios hold when
// the machine's load moves the absolute figures.
//
//	go test -run XXX -bench 'TCPLink' -count 3 .

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// benchTCPSec is a node's rule: testdata RSA key name, remote files given.
func benchTCPSec(b *testing.B, name string, remote map[string]string) *tcpSecurity {
	b.Helper()
	dir := b.TempDir()
	installRSAKeys(b, dir, name, 0o400)
	for f, data := range remote {
		writeFile(b, filepath.Join(dir, remoteDirName, f), data)
	}
	return newTCPSecurity(filepath.Join(dir, remoteDirName), dir, privilegePolicy{self: os.Geteuid(), group: -1},
		rand.Reader, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// benchTCPLinks runs a Link on each end of a fresh TCP link on 127.0.0.1
// set up by the rule: encrypted (keys a and b, each the other's .pub) or
// plaintext (.none on both ends). rxh gets every message for rx.
func benchTCPLinks(b *testing.B, encrypted bool, rxh Handler) (tx, rx *Link) {
	b.Helper()
	srvFiles := map[string]string{"127.0.0.1.none": ""}
	cliFiles := srvFiles
	if encrypted {
		srvFiles = map[string]string{"127.0.0.1.pub": string(mustRead(b, "testdata/crypto/b.pub"))}
		cliFiles = map[string]string{"127.0.0.1.pub": string(mustRead(b, "testdata/crypto/a.pub"))}
	}
	srv, cli := benchTCPSec(b, "a", srvFiles), benchTCPSec(b, "b", cliFiles)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   *tcpConn
		err error
	}
	acc := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- res{nil, err}
			return
		}
		_ = c.(*net.TCPConn).SetNoDelay(true)
		tc, err := srv.accept(context.Background(), c.(*net.TCPConn))
		acc <- res{tc, err}
	}()
	dc, err := cli.dial(context.Background(), ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	r := <-acc
	if r.err != nil {
		dc.Close()
		b.Fatal(r.err)
	}
	if want := map[bool]string{true: "tcp+rsa", false: "tcp"}[encrypted]; dc.Transport() != want || r.c.Transport() != want {
		b.Fatalf("links run on %s and %s, want %s", dc.Transport(), r.c.Transport(), want)
	}
	return qlbLinks(b, dc, r.c, rxh)
}

// BenchmarkTCPLinkThroughput: one-way 64 KiB DBG_SHELL messages from a
// Link, back-pressured by SendWait, over an encrypted TCP link (timed),
// a plaintext one and a QUIC link. The ratios are the encrypted link's
// throughput over each other's.
func BenchmarkTCPLinkThroughput(b *testing.B) {
	aux := benchAux64K()
	ctx := context.Background()
	send := func(mk func(Handler) (tx, rx *Link)) func(k int) {
		c := newQlbCounter()
		tx, rx := mk(func(t *Trans, m *Msg) { c.add(m.WireHdrSize() + len(m.Aux)) })
		root := tx.Root()
		return func(k int) {
			c.target.Add(int64(k) * qlbMsgBytes)
			for range k {
				if err := root.SendWait(ctx, &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux}); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-c.reached:
			case <-rx.Done():
				b.Fatalf("receiving link down: %v", rx.Err())
			}
		}
	}
	enc := send(func(h Handler) (*Link, *Link) { return benchTCPLinks(b, true, h) })
	plain := send(func(h Handler) (*Link, *Link) { return benchTCPLinks(b, false, h) })
	quic := send(func(h Handler) (*Link, *Link) { tx, rx, _ := qlbQuicLinks(b, h); return tx, rx })
	b.SetBytes(qlbMsgBytes)
	wall := qlbInterleave(b, enc, plain, quic)
	mbs := func(i int) float64 { return float64(b.N) * qlbMsgBytes / 1e6 / wall[i].Seconds() }
	b.ReportMetric(mbs(0), "MB/s")
	b.ReportMetric(mbs(1), "plain-tcp-MB/s")
	b.ReportMetric(mbs(2), "quic-MB/s")
	b.ReportMetric(mbs(0)/mbs(1), "ratio-vs-plain-tcp")
	b.ReportMetric(mbs(0)/mbs(2), "ratio-vs-quic")
}

// BenchmarkTCPLinkPing: the dmsg PING round trip as the link measures it
// (Link.RTT), on an idle encrypted TCP link (timed), a plaintext one and a
// QUIC link. The x- metrics are the encrypted round trip as a multiple of
// each other's.
func BenchmarkTCPLinkPing(b *testing.B) {
	ping := func(tx *Link) func(k int) {
		return func(k int) {
			for range k {
				if _, err := qlbPing(tx); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	etx, _ := benchTCPLinks(b, true, nil)
	ptx, _ := benchTCPLinks(b, false, nil)
	qtx, _, _ := qlbQuicLinks(b, nil)
	wall := qlbInterleave(b, ping(etx), ping(ptx), ping(qtx))
	us := func(i int) float64 { return float64(wall[i].Nanoseconds()) / 1e3 / float64(b.N) }
	b.ReportMetric(us(0), "us/rt")
	b.ReportMetric(us(1), "plain-tcp-us/rt")
	b.ReportMetric(us(2), "quic-us/rt")
	b.ReportMetric(us(0)/us(1), "x-plain-tcp")
	b.ReportMetric(us(0)/us(2), "x-quic")
}
