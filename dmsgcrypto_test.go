package main

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"io"
	"math"
	"math/big"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite testdata/crypto/*.hex from the current code")

// testRand is a deterministic "random" source for golden bytes: ChaCha8's
// output is specified, so it does not change between Go releases.
func testRand(seed string) io.Reader {
	var s [32]byte
	copy(s[:], seed)
	return rand.NewChaCha8(s)
}

// tcpPair is two ends of a loopback TCP connection.
func tcpPair(tb testing.TB) (dialed, accepted net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	d, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		tb.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		d.Close()
		tb.Fatal(r.err)
	}
	tb.Cleanup(func() { d.Close(); r.c.Close() })
	return d, r.c
}

type hsResult struct {
	c   *dmsgCryptoConn
	err error
}

// handshakePair runs both ends' handshakes at once: A with key a (trusting
// aPeer as B's key) on ca, B with key b (trusting bPeer) on cb.
func handshakePair(t testing.TB, ca, cb net.Conn, a *rsa.PrivateKey, aPeer *rsa.PublicKey, b *rsa.PrivateKey, bPeer *rsa.PublicKey,
	ra, rb io.Reader) (hsResult, hsResult) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ch := make(chan hsResult, 1)
	go func() {
		c, err := dmsgHandshake(ctx, cb, b, bPeer, rb)
		ch <- hsResult{c, err}
	}()
	c, err := dmsgHandshake(ctx, ca, a, aPeer, ra)
	return hsResult{c, err}, <-ch
}

func mustHandshake(t testing.TB, ca, cb net.Conn) (*dmsgCryptoConn, *dmsgCryptoConn) {
	t.Helper()
	a, b := testRSAKey(t, "a"), testRSAKey(t, "b")
	ra, rb := handshakePair(t, ca, cb, a, &b.PublicKey, b, &a.PublicKey, testRand("A"), testRand("B"))
	if ra.err != nil || rb.err != nil {
		t.Fatalf("handshake: A %v, B %v", ra.err, rb.err)
	}
	return ra.c, rb.c
}

// goldenPlain is what the golden chunks carry: a one-way LNK_PING and a
// DBG_SHELL "hello" (128 bytes: header and padded aux), as a link sends
// them.
func goldenPlain() []byte {
	out := (&Msg{Header: Header{Cmd: CmdLnkPing}}).AppendWire(nil, 0)
	return (&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: ShellAux("hello")}).AppendWire(out, 1)
}

func hexFile(t *testing.T, name string, data []byte) []byte {
	t.Helper()
	path := filepath.Join("testdata", "crypto", name)
	if *updateGolden {
		var sb strings.Builder
		for i := 0; i < len(data); i += 32 {
			sb.WriteString(hex.EncodeToString(data[i:min(i+32, len(data))]))
			sb.WriteByte('\n')
		}
		if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-golden to create it)", err)
	}
	want, err := hex.DecodeString(strings.Join(strings.Fields(string(text)), ""))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return want
}

// recordConn records what is written through it.
type recordConn struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	r.out.Write(p)
	r.mu.Unlock()
	return r.Conn.Write(p)
}

func (r *recordConn) written() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.out.Bytes())
}

// TestDmsgHandshakeGolden pins the bytes each side sends for fixed keys and
// fixed random bytes: both 512-byte handshake buffers and the first chunks
// in both directions. TestDmsgHandshakeGoldenDecodes checks the same files
// against the format with math/big alone.
func TestDmsgHandshakeGolden(t *testing.T) {
	t.Parallel()
	ca, cb := tcpPair(t)
	ra, rb := &recordConn{Conn: ca}, &recordConn{Conn: cb}
	a, b := mustHandshake(t, ra, rb)
	plain := goldenPlain()
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, len(plain))
		if _, err := io.ReadFull(b, buf); err != nil {
			done <- err
			return
		}
		if !bytes.Equal(buf, plain) {
			done <- errors.New("B read other bytes than A wrote")
			return
		}
		_, err := b.Write(plain)
		done <- err
	}()
	if _, err := a.Write(plain); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(plain))
	if _, err := io.ReadFull(a, got); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, plain) {
		t.Fatal("A read other bytes than B wrote")
	}
	for _, tc := range []struct {
		name string
		wire []byte
	}{{"a-to-b", ra.written()}, {"b-to-a", rb.written()}} {
		if len(tc.wire) != hsSize+len(plain)/chunkPlain*chunkWire {
			t.Fatalf("%s: %d bytes on the wire", tc.name, len(tc.wire))
		}
		if want := hexFile(t, "handshake-"+tc.name+".hex", tc.wire[:hsSize]); !bytes.Equal(tc.wire[:hsSize], want) {
			t.Errorf("%s: handshake bytes differ from the golden file", tc.name)
		}
		if want := hexFile(t, "chunks-"+tc.name+".hex", tc.wire[hsSize:]); !bytes.Equal(tc.wire[hsSize:], want) {
			t.Errorf("%s: chunk bytes differ from the golden file", tc.name)
		}
	}
}

// TestDmsgHandshakeGoldenDecodes reads the golden files with nothing but
// math/big and crypto/aes, straight from the format: each 256-byte block
// is c^d mod n with the receiver's key, then ^e mod n with the sender's;
// the buffer is the random bytes with magic, version, flags, quickmsg and
// verifier set, pad1[0] and pad2[0] cleared in the top two bits and the
// little-endian u32 at each block's offset 4 incremented at least once;
// the chunks are AES-256-GCM under sess[0:32], nonce sess[32:36] ||
// big-endian chunk number, 64+16 bytes each.
func TestDmsgHandshakeGoldenDecodes(t *testing.T) {
	t.Parallel()
	plain := goldenPlain()
	for _, tc := range []struct {
		name     string
		from, to string
		seed     string
	}{{"a-to-b", "a", "b", "A"}, {"b-to-a", "b", "a", "B"}} {
		t.Run(tc.name, func(t *testing.T) {
			wire := hexFile(t, "handshake-"+tc.name+".hex", nil)
			recv, send := testRSAKey(t, tc.to), testRSAKey(t, tc.from)
			var buf []byte
			for off := 0; off < len(wire); off += 256 {
				c := new(big.Int).SetBytes(wire[off : off+256])
				m := new(big.Int).Exp(c, recv.D, recv.N)
				m.Exp(m, big.NewInt(int64(send.E)), send.N)
				buf = append(buf, m.FillBytes(make([]byte, 256))...)
			}
			rnd := make([]byte, hsSize)
			io.ReadFull(testRand(tc.seed), rnd)
			le := binary.LittleEndian
			switch {
			case !bytes.Equal(buf[8:10], []byte{0x32, 0x48}):
				t.Errorf("magic bytes % x", buf[8:10])
			case le.Uint16(buf[10:]) != 1 || le.Uint32(buf[12:]) != 0:
				t.Errorf("version %d flags %d", le.Uint16(buf[10:]), le.Uint32(buf[12:]))
			case !bytes.Equal(buf[0x10:0x50], rnd[0x10:0x50]):
				t.Error("sess is not the random bytes")
			case string(buf[0x60:0x6e]) != "Testing 1 2 3\x00" || !bytes.Equal(buf[0x6e:0x80], rnd[0x6e:0x80]):
				t.Errorf("quickmsg %q", buf[0x60:0x80])
			case buf[0] != rnd[0]&0x3F || buf[256] != rnd[256]&0x3F:
				t.Errorf("pad1[0] %#x pad2[0] %#x from %#x %#x", buf[0], buf[256], rnd[0], rnd[256])
			case !bytes.Equal(buf[0x80:0x100], rnd[0x80:0x100]) || !bytes.Equal(buf[0x108:], rnd[0x108:]):
				t.Error("junk is not the random bytes")
			}
			for k := range 16 {
				if buf[0x50+k] != buf[0x10+4*k]^buf[0x11+4*k]^buf[0x12+4*k]^buf[0x13+4*k] {
					t.Fatalf("verf[%d] wrong", k)
				}
			}
			for _, off := range []int{4, 256 + 4} {
				if d := le.Uint32(buf[off:]) - le.Uint32(rnd[off:]); d < 1 || d > 64 {
					t.Errorf("retry counter at %d moved by %d", off, d)
				}
			}

			chunks := hexFile(t, "chunks-"+tc.name+".hex", nil)
			blk, _ := aes.NewCipher(buf[0x10:0x30])
			gcm, _ := cipher.NewGCM(blk)
			var got []byte
			for i := 0; i*80 < len(chunks); i++ {
				nonce := binary.BigEndian.AppendUint64(bytes.Clone(buf[0x30:0x34]), uint64(i))
				p, err := gcm.Open(nil, nonce, chunks[i*80:(i+1)*80], nil)
				if err != nil {
					t.Fatalf("chunk %d: %v", i, err)
				}
				got = append(got, p...)
			}
			if !bytes.Equal(got, plain) {
				t.Fatal("chunks do not decrypt to the plaintext")
			}
		})
	}
}

// exchange writes msgs from w while reading them back from r, and checks
// what arrives.
func exchange(t *testing.T, w io.Writer, r io.Reader, msgs [][]byte) {
	t.Helper()
	var want []byte
	for _, m := range msgs {
		want = append(want, m...)
	}
	done := make(chan error, 1)
	go func() {
		for _, m := range msgs {
			if _, err := w.Write(m); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("received bytes differ from those sent")
	}
}

// testMessages is a mix of sizes: single chunks, large aux, and writes that
// end inside a chunk (completed by the next write).
func testMessages() [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	var msgs [][]byte
	for _, n := range []int{64, 128, 1 << 20, 3, 61, 64, 1, 127, 64*cryptoBatchChunks + 64, 448, 48, 16} {
		m := make([]byte, n)
		for i := range m {
			m[i] = byte(r.Uint32())
		}
		msgs = append(msgs, m)
	}
	return msgs // 3+61, 1+127 and 48+16 complete their chunks: the total is whole chunks
}

func TestDmsgCryptoRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		pair func(testing.TB) (net.Conn, net.Conn)
	}{
		{"net.Pipe", func(testing.TB) (net.Conn, net.Conn) { return net.Pipe() }},
		{"TCP loopback", tcpPair},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca, cb := tc.pair(t)
			a, b := mustHandshake(t, ca, cb)
			defer a.Close()
			defer b.Close()
			if a.PeerGreeting() != "Testing 1 2 3" || b.PeerGreeting() != "Testing 1 2 3" {
				t.Fatalf("greetings %q %q", a.PeerGreeting(), b.PeerGreeting())
			}
			msgs := testMessages()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { // both directions at once
				defer wg.Done()
				exchange(t, b, a, msgs)
			}()
			exchange(t, a, b, msgs)
			wg.Wait()
			// Reads shorter than a chunk.
			done := make(chan error, 1)
			go func() { _, err := a.Write(bytes.Repeat([]byte("x"), 128)); done <- err }()
			var one [1]byte
			for i := range 128 {
				if _, err := io.ReadFull(b, one[:]); err != nil || one[0] != 'x' {
					t.Fatalf("byte %d: %q %v", i, one, err)
				}
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			// WriteBuffers as a link writer would use it.
			bufs := net.Buffers{make([]byte, 64), bytes.Repeat([]byte{7}, 64<<10), make([]byte, 64)}
			go func() { _, err := a.WriteBuffers(bufs); done <- err }()
			got := make([]byte, 64+64<<10+64)
			if _, err := io.ReadFull(b, got); err != nil || got[64] != 7 || got[64+64<<10-1] != 7 || got[len(got)-1] != 0 {
				t.Fatalf("WriteBuffers: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			// Close closes the TCP connection: the peer reads EOF.
			a.Close()
			if _, err := b.Read(one[:]); err != io.EOF {
				t.Fatalf("read after the peer closed: %v, want EOF", err)
			}
		})
	}
}

// Every size DragonFly's rule allows: 1024 (four blocks a side), 2048 and
// 4096 bits (one block), each key talking to itself.
func TestDmsgCryptoKeySizes(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"d", "a", "c"} {
		k := testRSAKey(t, name)
		t.Run(name, func(t *testing.T) {
			ca, cb := tcpPair(t)
			ra, rb := handshakePair(t, ca, cb, k, &k.PublicKey, k, &k.PublicKey, testRand("x"+name), testRand("y"+name))
			if ra.err != nil || rb.err != nil {
				t.Fatalf("%d bits: A %v, B %v", k.N.BitLen(), ra.err, rb.err)
			}
			exchange(t, ra.c, rb.c, [][]byte{make([]byte, 4096)})
		})
	}
}

func TestDmsgHandshakeRefused(t *testing.T) {
	t.Parallel()
	a, b, c := testRSAKey(t, "a"), testRSAKey(t, "b"), testRSAKey(t, "c")
	for _, tc := range []struct {
		name         string
		aPeer, bPeer *rsa.PublicKey
		b            *rsa.PrivateKey
		wantA, wantB error
	}{
		// A believes B's key is its own: B cannot undo A's outer
		// layer, and A cannot undo B's inner one.
		{"A has the wrong key for B", &a.PublicKey, &a.PublicKey, b, errIOQKeyExchange, errIOQKeyExchange},
		{"B has the wrong key for A", &b.PublicKey, &b.PublicKey, b, errIOQKeyExchange, errIOQKeyExchange},
		{"key sizes differ", &c.PublicKey, &a.PublicKey, c, errIOQKeyFormat, errIOQKeyFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca, cb := tcpPair(t)
			ra, rb := handshakePair(t, ca, cb, a, tc.aPeer, tc.b, tc.bPeer, testRand("A"), testRand("B"))
			if !errors.Is(ra.err, tc.wantA) || !errors.Is(rb.err, tc.wantB) {
				t.Fatalf("A: %v (want %v); B: %v (want %v)", ra.err, tc.wantA, rb.err, tc.wantB)
			}
			if !strings.Contains(ra.err.Error(), ca.RemoteAddr().String()) {
				t.Errorf("error %q does not name the peer %s", ra.err, ca.RemoteAddr())
			}
		})
	}
}

// sendRawHandshake plays a peer that sends buf as it is, sealed with key
// from for the receiver to, and reads the 512 bytes sent to it.
func sendRawHandshake(t *testing.T, c net.Conn, buf *handshakeBuf, from *rsa.PrivateKey, to *rsa.PublicKey) {
	t.Helper()
	own, err := newRawRSAPrivate(from)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := newRawRSAPublic(to)
	if err != nil {
		t.Fatal(err)
	}
	wire, err := sealHandshake(buf, own, peer)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c.Write(wire)
		io.CopyN(io.Discard, c, hsSize)
	}()
}

func TestDmsgHandshakeBufferChecks(t *testing.T) {
	t.Parallel()
	a, b := testRSAKey(t, "a"), testRSAKey(t, "b")
	le := binary.LittleEndian
	for _, tc := range []struct {
		name  string
		edit  func(b *handshakeBuf)
		want  error  // nil: accepted
		wantS string // in the error
	}{
		{"as sent", func(*handshakeBuf) {}, nil, ""},
		// A big-endian sender: magic and version both byte-swapped.
		{"swapped magic", func(b *handshakeBuf) {
			binary.BigEndian.PutUint16(b[hsOffMagic:], hsMagic)
			binary.BigEndian.PutUint16(b[hsOffVersion:], 1)
			binary.BigEndian.PutUint32(b[hsOffFlags:], 7)
		}, nil, ""},
		{"swapped magic, version not swapped", func(b *handshakeBuf) {
			binary.BigEndian.PutUint16(b[hsOffMagic:], hsMagic)
		}, errIOQKeyExchange, "version 256"},
		{"flags ignored", func(b *handshakeBuf) { le.PutUint32(b[hsOffFlags:], 0xFFFFFFFF) }, nil, ""},
		{"version 2", func(b *handshakeBuf) { le.PutUint16(b[hsOffVersion:], 2) }, errIOQKeyExchange, "version 2"},
		{"bad magic", func(b *handshakeBuf) { le.PutUint16(b[hsOffMagic:], 0x1234) }, errIOQKeyExchange, "bad magic"},
		{"verifier off", func(b *handshakeBuf) { b[hsOffVerf+15] ^= 1 }, errIOQKeyExchange, "verifier"},
		{"session key off", func(b *handshakeBuf) { b[hsOffSess] ^= 0x80 }, errIOQKeyExchange, "verifier"},
		{"other quickmsg", func(b *handshakeBuf) { copy(b[hsOffQuickmsg:], "hi\x00") }, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf, err := newHandshakeBuf(testRand("peer"))
			if err != nil {
				t.Fatal(err)
			}
			tc.edit(buf)
			if err := buf.check(); !errors.Is(err, tc.want) || (err != nil && !strings.Contains(err.Error(), tc.wantS)) {
				t.Fatalf("check: %v, want %v with %q", err, tc.want, tc.wantS)
			}
			// The same over a socket, through the whole handshake.
			ca, cb := tcpPair(t)
			sendRawHandshake(t, cb, buf, b, &a.PublicKey)
			c, err := dmsgHandshake(context.Background(), ca, a, &b.PublicKey, testRand("A"))
			if !errors.Is(err, tc.want) {
				t.Fatalf("handshake: %v, want %v", err, tc.want)
			}
			if err == nil {
				defer c.Close()
				if want := strings.SplitN(string(buf[hsOffQuickmsg:hsOffQuickmsg+32]), "\x00", 2)[0]; c.PeerGreeting() != want {
					t.Fatalf("greeting %q, want %q", c.PeerGreeting(), want)
				}
			}
		})
	}
}

func TestDmsgHandshakeGreetingSanitized(t *testing.T) {
	t.Parallel()
	var b handshakeBuf
	copy(b[hsOffQuickmsg:], "ok\x1b[31m\xff")
	if got := b.quickmsg(); got != "ok?[31m?" {
		t.Fatalf("quickmsg %q", got)
	}
	for i := range hsQuickSize {
		b[hsOffQuickmsg+i] = 'z'
	}
	if got := b.quickmsg(); got != strings.Repeat("z", hsQuickSize) {
		t.Fatalf("unterminated quickmsg %q", got)
	}
}

// A peer that stalls, or a context cancelled, ends the handshake with
// KEYXCHGFAIL and the cause, and the writer goroutine is gone by then.
func TestDmsgHandshakeDeadline(t *testing.T) {
	t.Parallel()
	a, b := testRSAKey(t, "a"), testRSAKey(t, "b")
	t.Run("deadline", func(t *testing.T) {
		ca, cb := tcpPair(t)
		go io.Copy(io.Discard, cb) // reads, never answers
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		_, err := dmsgHandshake(ctx, ca, a, &b.PublicKey, testRand("A"))
		if !errors.Is(err, errIOQKeyExchange) || !(errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)) {
			t.Fatalf("error %v, want KEYXCHGFAIL and a deadline", err)
		}
		if d := time.Since(t0); d > 5*time.Second {
			t.Fatalf("took %v", d)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ca, _ := net.Pipe() // nobody reads: the write blocks too
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err := dmsgHandshake(ctx, ca, a, &b.PublicKey, testRand("A"))
		if !errors.Is(err, errIOQKeyExchange) || !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want KEYXCHGFAIL and context.Canceled", err)
		}
	})
	t.Run("short buffer", func(t *testing.T) {
		ca, cb := tcpPair(t)
		go func() {
			cb.Write(make([]byte, 100))
			io.CopyN(io.Discard, cb, hsSize)
			cb.Close()
		}()
		_, err := dmsgHandshake(context.Background(), ca, a, &b.PublicKey, testRand("A"))
		if !errors.Is(err, errIOQKeyExchange) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("error %v, want KEYXCHGFAIL and unexpected EOF", err)
		}
	})
	t.Run("bad random", func(t *testing.T) {
		ca, _ := tcpPair(t)
		_, err := dmsgHandshake(context.Background(), ca, a, &b.PublicKey, bytes.NewReader(make([]byte, hsSize)))
		if !errors.Is(err, errIOQBadRandom) {
			t.Fatalf("error %v, want BADURANDOM", err)
		}
	})
}

// flipConn flips one bit of the byte at stream offset at on its way out.
type flipConn struct {
	net.Conn
	at, off int64
}

func (f *flipConn) Write(p []byte) (int, error) {
	if i := f.at - f.off; i >= 0 && i < int64(len(p)) {
		p = bytes.Clone(p)
		p[i] ^= 0x10
	}
	f.off += int64(len(p))
	return f.Conn.Write(p)
}

// A ciphertext byte changed in flight fails the chunk's tag: MACFAIL on
// that link, which closes; the chunks before it were delivered.
func TestDmsgCryptoMACFail(t *testing.T) {
	t.Parallel()
	for _, at := range []int64{2*chunkWire + 5, 2*chunkWire + chunkPlain + 3} { // in the ciphertext, in the tag
		ca, cb := tcpPair(t)
		a, b := mustHandshake(t, &flipConn{Conn: ca, at: hsSize + at}, cb)
		if _, err := a.Write(make([]byte, 4*chunkPlain)); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4*chunkPlain)
		n, err := io.ReadFull(b, got)
		if n != 2*chunkPlain || !errors.Is(err, errIOQMACFail) {
			t.Fatalf("read %d bytes, %v; want 128 and MACFAIL", n, err)
		}
		if !strings.Contains(err.Error(), cb.RemoteAddr().String()) || !strings.Contains(err.Error(), "chunk 2") {
			t.Errorf("error %q should name the peer and the chunk", err)
		}
		if _, err2 := b.Read(got); !errors.Is(err2, errIOQMACFail) {
			t.Errorf("second read: %v, want the same MACFAIL", err2)
		}
		// B closed the TCP connection: A sees EOF.
		a.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := a.Read(got); err != io.EOF {
			t.Errorf("A read %v, want EOF once B dropped the link", err)
		}
	}
}

// IVWRAP through the unexported seam: the counters start near the end.
func TestDmsgCryptoIVWrap(t *testing.T) {
	t.Parallel()
	t.Run("sender", func(t *testing.T) {
		ca, cb := tcpPair(t)
		a, b := mustHandshake(t, ca, cb)
		a.tx.ctr, b.rx.ctr = math.MaxUint64-2, math.MaxUint64-2
		if _, err := a.Write(make([]byte, 2*chunkPlain)); err != nil {
			t.Fatalf("the last two counters: %v", err)
		}
		got := make([]byte, 2*chunkPlain)
		if _, err := io.ReadFull(b, got); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Write(make([]byte, chunkPlain)); !errors.Is(err, errIOQIVWrap) {
			t.Fatalf("write past the end: %v, want IVWRAP", err)
		}
		if _, err := a.Write(make([]byte, chunkPlain)); !errors.Is(err, errIOQIVWrap) {
			t.Fatalf("write after IVWRAP: %v, want IVWRAP again", err)
		}
		b.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := b.Read(got); err != io.EOF {
			t.Fatalf("peer read %v, want EOF", err)
		}
	})
	t.Run("receiver", func(t *testing.T) {
		ca, cb := tcpPair(t)
		a, b := mustHandshake(t, ca, cb)
		a.tx.ctr, b.rx.ctr = math.MaxUint64-1, math.MaxUint64-1
		if _, err := a.Write(make([]byte, chunkPlain)); err != nil {
			t.Fatal(err)
		}
		b.rx.ctr = math.MaxUint64 // as if it had received one more
		if _, err := b.Read(make([]byte, chunkPlain)); !errors.Is(err, errIOQIVWrap) {
			t.Fatalf("read: %v, want IVWRAP", err)
		}
	})
}

func TestDmsgCryptoTruncatedChunk(t *testing.T) {
	t.Parallel()
	ca, cb := tcpPair(t)
	a, b := mustHandshake(t, ca, cb)
	if _, err := a.Write(make([]byte, chunkPlain)); err != nil {
		t.Fatal(err)
	}
	go func() {
		ca.Write(make([]byte, 30)) // part of a chunk, then EOF
		ca.(*net.TCPConn).CloseWrite()
	}()
	buf := make([]byte, 256)
	if n, err := io.ReadFull(b, buf[:chunkPlain]); err != nil || n != chunkPlain {
		t.Fatal(n, err)
	}
	if _, err := b.Read(buf); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read %v, want unexpected EOF", err)
	}
}

func writeFile(tb testing.TB, path, data string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		tb.Fatal(err)
	}
}

func TestTcpPeerPolicy(t *testing.T) {
	t.Parallel()
	remote := t.TempDir()
	writeFile(t, filepath.Join(remote, "127.0.0.2.pub"), string(mustRead(t, "testdata/crypto/b.pub")))
	writeFile(t, filepath.Join(remote, "127.0.0.3.none"), "")
	writeFile(t, filepath.Join(remote, "127.0.0.4.pub"), string(mustRead(t, "testdata/crypto/b.pub")))
	writeFile(t, filepath.Join(remote, "127.0.0.4.none"), "")
	writeFile(t, filepath.Join(remote, "127.0.0.5.pub"), "garbage\n")
	writeFile(t, filepath.Join(remote, "127.0.0.5.none"), "")
	writeFile(t, filepath.Join(remote, "::1.none"), "")
	writeFile(t, filepath.Join(remote, "fe80::1%lo.pub"), string(mustRead(t, "testdata/crypto/b.pub")))
	bpub := testRSAPub(t, "b")
	for _, tc := range []struct {
		ip   string
		want dmsgPeerPolicy
		err  error
		msg  string
	}{
		{"127.0.0.2", dmsgPeerEncrypted, nil, ""},
		{"::ffff:127.0.0.2", dmsgPeerEncrypted, nil, ""}, // named by its IPv4 form
		{"127.0.0.3", dmsgPeerPlaintext, nil, ""},
		{"127.0.0.4", dmsgPeerEncrypted, nil, ""},                       // .pub wins
		{"127.0.0.5", dmsgPeerRefused, errIOQKeyFormat, "no PEM block"}, // never falls back to .none
		{"::1", dmsgPeerPlaintext, nil, ""},
		{"fe80::1%lo", dmsgPeerEncrypted, nil, ""},
		{"127.0.0.9", dmsgPeerRefused, errIOQNoRemoteKey,
			"neither " + filepath.Join(remote, "127.0.0.9.pub") + " nor " + filepath.Join(remote, "127.0.0.9.none")},
	} {
		pol, pub, err := tcpPeerPolicy(remote, netip.MustParseAddr(tc.ip))
		if pol != tc.want || !errors.Is(err, tc.err) || (err != nil && !strings.Contains(err.Error(), tc.msg)) {
			t.Errorf("%s: %v, %v; want %v, %v with %q", tc.ip, pol, err, tc.want, tc.err, tc.msg)
		}
		if (pol == dmsgPeerEncrypted) != (pub != nil) || (pub != nil && !pub.Equal(bpub)) {
			t.Errorf("%s: key %v", tc.ip, pub)
		}
	}
	if _, _, err := tcpPeerPolicy(remote, netip.Addr{}); !errors.Is(err, errIOQNoPeer) {
		t.Errorf("invalid address: %v", err)
	}
}

// keyDir makes a key directory with testdata key name installed and the
// remote/ files given.
func keyDir(t *testing.T, name string, remote map[string]string) string {
	dir := t.TempDir()
	if name != "" {
		installRSAKeys(t, dir, name, 0o400)
	}
	for f, data := range remote {
		writeFile(t, filepath.Join(dir, remoteDirName, f), data)
	}
	return dir
}

func loadKeysOrNil(t *testing.T, dir string) *dmsgCryptoKeys {
	k, err := loadDmsgCryptoKeys(dir)
	if errors.Is(err, errIOQNoLocalKey) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// dmsgSecureTCP on both ends of a real TCP connection, each with its own
// key directory, as the service's accept and dial paths will run it.
func TestDmsgSecureTCP(t *testing.T) {
	t.Parallel()
	apub, bpub := string(mustRead(t, "testdata/crypto/a.pub")), string(mustRead(t, "testdata/crypto/b.pub"))
	for _, tc := range []struct {
		name       string
		aDir, bDir func(t *testing.T) string
		want       dmsgPeerPolicy
		errA, errB error
	}{
		{"encrypted", func(t *testing.T) string { return keyDir(t, "a", map[string]string{"127.0.0.1.pub": bpub}) },
			func(t *testing.T) string { return keyDir(t, "b", map[string]string{"127.0.0.1.pub": apub}) },
			dmsgPeerEncrypted, nil, nil},
		{"plaintext without keys", func(t *testing.T) string { return keyDir(t, "", map[string]string{"127.0.0.1.none": ""}) },
			func(t *testing.T) string { return keyDir(t, "", map[string]string{"127.0.0.1.none": ""}) },
			dmsgPeerPlaintext, nil, nil},
		{"unknown peer", func(t *testing.T) string { return keyDir(t, "a", nil) },
			func(t *testing.T) string { return keyDir(t, "b", map[string]string{"127.0.0.1.pub": apub}) },
			dmsgPeerRefused, errIOQNoRemoteKey, errIOQKeyExchange},
		{"peer key but no own key", func(t *testing.T) string { return keyDir(t, "", map[string]string{"127.0.0.1.pub": bpub}) },
			func(t *testing.T) string { return keyDir(t, "b", map[string]string{"127.0.0.1.pub": apub}) },
			dmsgPeerEncrypted, errIOQNoLocalKey, errIOQKeyExchange},
	} {
		t.Run(tc.name, func(t *testing.T) {
			aDir, bDir := tc.aDir(t), tc.bDir(t)
			ka, kb := loadKeysOrNil(t, aDir), loadKeysOrNil(t, bDir)
			ca, cb := tcpPair(t)
			type res struct {
				c   net.Conn
				pol dmsgPeerPolicy
				err error
			}
			ch := make(chan res, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			go func() {
				c, pol, err := dmsgSecureTCP(ctx, cb, filepath.Join(bDir, remoteDirName), kb, testRand("B"))
				if err != nil {
					cb.Close() // as the service drops a refused link
				}
				ch <- res{c, pol, err}
			}()
			c, pol, err := dmsgSecureTCP(ctx, ca, filepath.Join(aDir, remoteDirName), ka, testRand("A"))
			if err != nil {
				ca.Close()
			}
			rb := <-ch
			if pol != tc.want || !errors.Is(err, tc.errA) || !errors.Is(rb.err, tc.errB) {
				t.Fatalf("A: %v %v (want %v %v); B: %v %v (want %v)", pol, err, tc.want, tc.errA, rb.pol, rb.err, tc.errB)
			}
			if err != nil {
				return
			}
			if _, enc := c.(*dmsgCryptoConn); enc != (tc.want == dmsgPeerEncrypted) {
				t.Fatalf("A got a %T for a %v link", c, tc.want)
			}
			if tc.want == dmsgPeerPlaintext {
				// Not one handshake byte: the first bytes are ours.
				go c.Write([]byte("plain"))
				buf := make([]byte, 5)
				if _, err := io.ReadFull(cb, buf); err != nil || string(buf) != "plain" {
					t.Fatalf("plaintext link carried %q, %v", buf, err)
				}
				return
			}
			exchange(t, c, rb.c, [][]byte{goldenPlain()})
			exchange(t, rb.c, c, [][]byte{goldenPlain()})
		})
	}
}
