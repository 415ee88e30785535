package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
)

// handshakeSeeds are buffers for both handshake fuzzers: the golden wire
// bytes (b-to-a opens and checks with own key a, peer key b; a-to-b is
// sealed for b and does not), a plaintext buffer as sent, one with the
// magic swapped, and degenerate ones.
func handshakeSeeds(f *testing.F) [][]byte {
	plain, err := newHandshakeBuf(testRand("fuzz"))
	if err != nil {
		f.Fatal(err)
	}
	swapped := *plain
	binary.BigEndian.PutUint16(swapped[hsOffMagic:], hsMagic)
	binary.BigEndian.PutUint16(swapped[hsOffVersion:], hsVersion)
	return [][]byte{hexFileF(f, "handshake-b-to-a.hex"), hexFileF(f, "handshake-a-to-b.hex"), plain[:], swapped[:],
		bytes.Repeat([]byte{0xFF}, hsSize), make([]byte, hsSize), []byte("short")}
}

// FuzzDmsgHandshakeCheck feeds a decrypted 512-byte buffer to the checks,
// which must agree with the format's rule written out plainly and fail
// only with KEYXCHGFAIL. Inputs of another length are cut or zero-filled.
func FuzzDmsgHandshakeCheck(f *testing.F) {
	for _, s := range handshakeSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var hb handshakeBuf
		copy(hb[:], in)
		err := hb.check()
		if (err == nil) != handshakeValidRef(hb[:]) {
			t.Fatalf("check says %v, the format says valid=%v", err, handshakeValidRef(hb[:]))
		}
		if err != nil && !errors.Is(err, errIOQKeyExchange) {
			t.Fatalf("check: %v is not KEYXCHGFAIL", err)
		}
		_ = hb.quickmsg()
	})
}

// FuzzDmsgHandshakeRead feeds the peer's wire bytes to the handshake
// reader with own key a and peer key b: RSA opening block by block, then
// the checks. Each input costs four 2048-bit RSA operations, so this one
// runs at tens of inputs per second. It must fail only with KEYXCHGFAIL, never panic on a block
// at or above a modulus, and a buffer that passes must key a conn.
func FuzzDmsgHandshakeRead(f *testing.F) {
	a, b := testRSAKey(f, "a"), testRSAKey(f, "b")
	own, err := newRawRSAPrivate(a)
	if err != nil {
		f.Fatal(err)
	}
	peer, err := newRawRSAPublic(&b.PublicKey)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range handshakeSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) != hsSize {
			if _, err := openHandshake(in, own, peer); !errors.Is(err, errIOQKeyExchange) {
				t.Fatalf("open of %d bytes: %v, want KEYXCHGFAIL", len(in), err)
			}
			// Go on with the 512 bytes a reader would have waited
			// for, so that every input reaches the RSA steps.
			in = append(bytes.Clone(in), make([]byte, hsSize)...)[:hsSize]
		}
		rx, err := openHandshake(in, own, peer)
		if err != nil {
			if !errors.Is(err, errIOQKeyExchange) {
				t.Fatalf("open: %v is not KEYXCHGFAIL", err)
			}
			return
		}
		if err := rx.check(); err == nil {
			if _, err := newDmsgCryptoConn(nopConn{}, rx, rx); err != nil {
				t.Fatalf("a buffer that checks gives no keys: %v", err)
			}
		}
	})
}

// handshakeValidRef is the acceptance rule written out plainly.
func handshakeValidRef(b []byte) bool {
	magic := uint16(b[8]) | uint16(b[9])<<8
	version := uint16(b[10]) | uint16(b[11])<<8
	switch magic {
	case 0x4832:
	case 0x3248:
		version = uint16(b[11]) | uint16(b[10])<<8
	default:
		return false
	}
	for k := 0; k < 16; k++ {
		if b[0x50+k] != b[0x10+4*k]^b[0x11+4*k]^b[0x12+4*k]^b[0x13+4*k] {
			return false
		}
	}
	return version == 1
}

// FuzzDmsgChunkDecode feeds wire bytes to a dmsgCryptoConn's reader, read
// in pieces of a fuzzed size. Whatever it returns must be authentic: the
// plaintext re-encrypts to exactly the bytes it came from, and it stops
// with EOF only at a chunk boundary, else with a truncated chunk or
// MACFAIL.
func FuzzDmsgChunkDecode(f *testing.F) {
	keys, _ := newHandshakeBuf(testRand("fuzz-keys"))
	sealer := func() *gcmStream {
		k, fx := keys.sessionKey()
		s, err := newGCMStream(k, fx)
		if err != nil {
			f.Fatal(err)
		}
		return s
	}
	good, _ := sealer().seal(nil, goldenPlain())
	f.Add(good, uint16(4096))
	f.Add(good, uint16(1))
	f.Add(good[:len(good)-7], uint16(64))
	flipped := bytes.Clone(good)
	flipped[chunkWire+3] ^= 1
	f.Add(flipped, uint16(200))
	f.Add([]byte{}, uint16(10))
	f.Fuzz(func(t *testing.T, in []byte, readSize uint16) {
		size := int(readSize%8192) + 1
		c, err := newDmsgCryptoConn(&bytesConn{r: bytes.NewReader(in)}, keys, keys)
		if err != nil {
			t.Fatal(err)
		}
		var out []byte
		buf := make([]byte, size)
		for i := 0; ; i++ {
			if i > len(in)+2 {
				t.Fatal("reader does not make progress")
			}
			n, err := c.Read(buf)
			out = append(out, buf[:n]...)
			if err == nil {
				continue
			}
			whole := len(out) / chunkPlain * chunkWire
			switch {
			case err == io.EOF:
				if len(in) != whole {
					t.Fatalf("EOF after %d of %d wire bytes", whole, len(in))
				}
			case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, errIOQMACFail):
			default:
				t.Fatalf("read: %v", err)
			}
			break
		}
		if len(out)%chunkPlain != 0 {
			t.Fatalf("%d plaintext bytes: not whole chunks", len(out))
		}
		again, err := sealer().seal(nil, out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, in[:len(again)]) {
			t.Fatal("accepted plaintext does not re-encrypt to its input")
		}
	})
}

func hexFileF(f *testing.F, name string) []byte {
	b, err := hex.DecodeString(strings.Join(strings.Fields(string(mustRead(f, "testdata/crypto/"+name))), ""))
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// bytesConn is a net.Conn that reads from r and has nothing else.
type bytesConn struct {
	nopConn
	r io.Reader
}

func (b *bytesConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// nopConn is a net.Conn whose methods do nothing; only fields of the
// dmsgCryptoConn under test touch it.
type nopConn struct{ net.Conn }

func (nopConn) Read([]byte) (int, error)    { return 0, io.EOF }
func (nopConn) Write(p []byte) (int, error) { return len(p), nil }
func (nopConn) Close() error                { return nil }
func (nopConn) RemoteAddr() net.Addr        { return &net.TCPAddr{} }
