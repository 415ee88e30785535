package main

import (
	"crypto/ed25519"
	"io"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
)

// The "link" sub-benchmarks run over QuicLink; "raw" over a bare quic-go
// stream with the same TLS and quic.Config on fresh sockets, so the ratio
// of the two in one run is the cost of our layer.

func benchNodes(b *testing.B) (a, c *testNode) {
	ka, kc := newTestKey(b), newTestKey(b)
	a = startNode(b, ka, QuicConfig{}, peer{"c", kc.Public().(ed25519.PublicKey)})
	c = startNode(b, kc, QuicConfig{}, peer{"a", ka.Public().(ed25519.PublicKey)})
	return a, c
}

func benchLinkStreams(b *testing.B) (w, r io.ReadWriter) {
	a, c := benchNodes(b)
	ctx := testCtx(b, 10*time.Second)
	la, lc := linkPair(b, ctx, a, c)
	return la.Stream(), lc.Stream()
}

func benchRawStreams(b *testing.B) (w, r io.ReadWriter) { return benchRawQuic(b, nil) }

// benchRawQuic is a QUIC stream pair between two nodes' TLS configs
// without our link around it, on conf (nil: the nodes' own).
func benchRawQuic(b *testing.B, conf *quic.Config) (w, r io.ReadWriter) {
	b.Helper()
	a, c := benchNodes(b)
	aconf, cconf := a.qconf, c.qconf
	if conf != nil {
		aconf, cconf = conf, conf
	}
	ctx := testCtx(b, 10*time.Second)
	transport := func() *quic.Transport {
		udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		tr := &quic.Transport{Conn: udp}
		b.Cleanup(func() { tr.Close(); udp.Close() })
		return tr
	}
	ln, err := transport().Listen(c.srvTLS, cconf)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	tc := a.cliTLS.Clone()
	tc.VerifyConnection = a.verifyPeer(ln.Addr(), "dial")
	cc, err := transport().Dial(ctx, ln.Addr(), tc, aconf)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cc.CloseWithError(0, "") })
	sc, err := ln.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	cs, err := cc.OpenStreamSync(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := cs.Write([]byte{0}); err != nil { // make the stream visible
		b.Fatal(err)
	}
	ss, err := sc.AcceptStream(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(ss, make([]byte, 1)); err != nil {
		b.Fatal(err)
	}
	return cs, ss
}

var benchVariants = []struct {
	name  string
	setup func(*testing.B) (io.ReadWriter, io.ReadWriter)
}{
	{"link", benchLinkStreams},
	{"raw", benchRawStreams},
}

// BenchmarkQuicStreamThroughput: one-way bulk in 64 KiB writes, timed until
// the receiver has everything.
func BenchmarkQuicStreamThroughput(b *testing.B) {
	for _, v := range benchVariants {
		b.Run(v.name, func(b *testing.B) {
			w, r := v.setup(b)
			buf := make([]byte, 64<<10)
			total := int64(b.N) * int64(len(buf))
			done := make(chan error, 1)
			go func() {
				rb := make([]byte, 256<<10)
				var n int64
				for n < total {
					m, err := r.Read(rb)
					n += int64(m)
					if err != nil && n < total {
						done <- err
						return
					}
				}
				done <- nil
			}()
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for range b.N {
				if _, err := w.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
		})
	}
}

// BenchmarkQuicRoundTrip: 64-byte ping-pong; ns/op is the round-trip time.
func BenchmarkQuicRoundTrip(b *testing.B) {
	for _, v := range benchVariants {
		b.Run(v.name, func(b *testing.B) {
			c, s := v.setup(b)
			go func() { // echo until the streams are closed at cleanup
				p := make([]byte, 64)
				for {
					if _, err := io.ReadFull(s, p); err != nil {
						return
					}
					if _, err := s.Write(p); err != nil {
						return
					}
				}
			}()
			p := make([]byte, 64)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(p); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, p); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
		})
	}
}
