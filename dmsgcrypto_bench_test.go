package main

// Benchmarks of DragonFly's encrypted TCP link stream (docs/BENCHMARKS.md,
// "Encrypted TCP links (issue 12)"): the same traffic on an encrypted and a
// plaintext loopback TCP connection, interleaved in one run, reported as
// ratios.
//
//	go test -run XXX -bench DmsgCrypto -benchmem -count 3 .

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
)

// benchCryptoPair is an encrypted TCP loopback pair after the handshake.
func benchCryptoPair(b *testing.B) (*dmsgCryptoConn, *dmsgCryptoConn) {
	ca, cb := tcpPair(b)
	ka, kb := testRSAKey(b, "a"), testRSAKey(b, "b")
	ra, rb := handshakePair(b, ca, cb, ka, &kb.PublicKey, kb, &ka.PublicKey, rand.Reader, rand.Reader)
	if ra.err != nil || rb.err != nil {
		b.Fatal(ra.err, rb.err)
	}
	return ra.c, rb.c
}

// benchSink counts what a reader goroutine gets from r.
func benchSink(r io.Reader, c *benchCounter) {
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			c.add(n)
		}
		if err != nil {
			return
		}
	}
}

// BenchmarkDmsgCryptoThroughput streams 64 KiB DBG_SHELL-sized messages
// (header + aux, 65600 bytes, one Write each) over the encrypted stream,
// against the same writes on a plaintext TCP connection.
func BenchmarkDmsgCryptoThroughput(b *testing.B) {
	const msgBytes = HdrSize + 64<<10
	msg := make([]byte, msgBytes)
	copy(msg[HdrSize:], benchAux64K())

	ea, eb := benchCryptoPair(b)
	ec := newBenchCounter()
	go benchSink(eb, ec)
	enc := func(k int) {
		ec.target.Add(int64(k) * msgBytes)
		for range k {
			if _, err := ea.Write(msg); err != nil {
				b.Fatal(err)
			}
		}
		<-ec.reached
	}

	pa, pb := tcpPair(b)
	pc := newBenchCounter()
	go benchSink(pb, pc)
	plain := func(k int) {
		pc.target.Add(int64(k) * msgBytes)
		for range k {
			if _, err := pa.Write(msg); err != nil {
				b.Fatal(err)
			}
		}
		<-pc.reached
	}

	l, r := benchInterleave(b, enc, plain)
	benchReport(b, l, r, msgBytes/1e6, "MB/s")
}

// BenchmarkDmsgCryptoRoundTrip is a PING-sized (64-byte) ping-pong: one
// chunk each way per round trip, against the same on plaintext TCP.
func BenchmarkDmsgCryptoRoundTrip(b *testing.B) {
	echo := func(c net.Conn) {
		var buf [HdrSize]byte
		for {
			if _, err := io.ReadFull(c, buf[:]); err != nil {
				return
			}
			if _, err := c.Write(buf[:]); err != nil {
				return
			}
		}
	}
	pingPong := func(c net.Conn) func(k int) {
		var buf [HdrSize]byte
		return func(k int) {
			for range k {
				if _, err := c.Write(buf[:]); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf[:]); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	ea, eb := benchCryptoPair(b)
	go echo(eb)
	pa, pb := tcpPair(b)
	go echo(pb)
	l, r := benchInterleave(b, pingPong(ea), pingPong(pa))
	benchReport(b, l, r, 1, "rt/s")
}

// BenchmarkDmsgHandshake is one whole handshake, both ends, 2048-bit keys,
// over a loopback TCP connection made outside the timer.
func BenchmarkDmsgHandshake(b *testing.B) {
	ka, kb := testRSAKey(b, "a"), testRSAKey(b, "b")
	ctx := context.Background()
	b.ReportAllocs()
	for range b.N {
		b.StopTimer()
		ca, cb := tcpPair(b)
		b.StartTimer()
		ch := make(chan error, 1)
		go func() {
			_, err := dmsgHandshake(ctx, cb, kb, &ka.PublicKey, rand.Reader)
			ch <- err
		}()
		if _, err := dmsgHandshake(ctx, ca, ka, &kb.PublicKey, rand.Reader); err != nil {
			b.Fatal(err)
		}
		if err := <-ch; err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		ca.Close()
		cb.Close()
		b.StartTimer()
	}
}

// BenchmarkDmsgChunkSeal is the cipher alone on one core, 64 KiB at a
// time into a reused buffer: as the stream seals it (1024 chunks, each
// with its own nonce and tag) and, for scale, as one GCM message.
func BenchmarkDmsgChunkSeal(b *testing.B) {
	keys, _ := newHandshakeBuf(rand.Reader)
	k, fx := keys.sessionKey()
	plain := benchAux64K()
	b.Run("chunks", func(b *testing.B) {
		s, err := newGCMStream(k, fx)
		if err != nil {
			b.Fatal(err)
		}
		out := make([]byte, 0, len(plain)/chunkPlain*chunkWire)
		b.SetBytes(int64(len(plain)))
		b.ReportAllocs()
		for range b.N {
			if out, err = s.seal(out[:0], plain); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one-message", func(b *testing.B) {
		s, err := newGCMStream(k, fx)
		if err != nil {
			b.Fatal(err)
		}
		out := make([]byte, 0, len(plain)+chunkTag)
		b.SetBytes(int64(len(plain)))
		b.ReportAllocs()
		for range b.N {
			nonce, err := s.next()
			if err != nil {
				b.Fatal(err)
			}
			out = s.aead.Seal(out[:0], nonce, plain, nil)
		}
	})
}
