package main

// DragonFly's session negotiation for dmsg over TCP (libdmsg crypto.c),
// byte for byte (docs/INTEROP.md records the check against the C code).
//
// Which rule applies to a peer depends on files named after its numeric
// address: remote/<ip>.pub holds its RSA public key and means an encrypted
// link; an empty remote/<ip>.none means a plaintext link with no handshake
// bytes at all; with neither the link is refused (NORKEY).
//
// The handshake: each side fills a 512-byte buffer with random bytes, sets
// a few fields (magic, version, a session key sess[64] and its verifier),
// encrypts it block by block with raw RSA, first with its own private key
// and then with the peer's public key, writes it, and reads the peer's. The
// receiver undoes the two steps in the same order, own private key first.
// Each direction then runs AES-256-GCM keyed by the *sender's* sess
// (dmsgcryptoconn.go); the two buffers are not combined.

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Handshake buffer layout (struct dmsg_handshake). Every multi-byte field is
// in the sender's byte order, little-endian in practice; a receiver that
// reads the magic swapped swaps version and flags.
const (
	hsSize        = 512
	hsOffPad1     = 0x000 // pad1[8]: bytes 4..7 are block 0's retry counter
	hsOffMagic    = 0x008 // u16
	hsOffVersion  = 0x00A // u16
	hsOffFlags    = 0x00C // u32, unused
	hsOffSess     = 0x010 // sess[64]
	hsOffVerf     = 0x050 // verf[16]: verf[k] = sess[4k]^…^sess[4k+3]
	hsOffQuickmsg = 0x060 // quickmsg[32]: NUL-terminated text, random after the NUL
	hsOffPad2     = 0x100 // pad2[8]: block 1's retry counter with 2048-bit keys
	hsSessSize    = 64
	hsVerfSize    = 16
	hsQuickSize   = 32

	hsMagic    = 0x4832 // DMSG_HDR_MAGIC, as for message headers
	hsMagicRev = 0x3248
	hsVersion  = 1
	hsQuickmsg = "Testing 1 2 3"

	gcmKeySize     = 32 // AES-256 key: sess[0:32]
	gcmFixedIVSize = 4  // the IV's fixed field: sess[32:36]

	// rsaRetryMax bounds the loop that makes the first RSA step's output
	// fit the second key's modulus; each try succeeds with probability
	// at least 1/4, so 256 failures do not happen by chance.
	rsaRetryMax = 256

	// dmsgHandshakeTimeout is how long a handshake may take when the
	// context sets no earlier deadline. DragonFly's comment asks for
	// 10 s (its code sets none): two 512-byte writes and a handful of
	// RSA operations take milliseconds, so this only cuts off a peer
	// that stalls.
	dmsgHandshakeTimeout = 10 * time.Second
)

// dmsgPeerPolicy is what the remote/ directory says about one peer.
type dmsgPeerPolicy int

const (
	dmsgPeerRefused   dmsgPeerPolicy = iota // neither file: NORKEY
	dmsgPeerPlaintext                       // remote/<ip>.none
	dmsgPeerEncrypted                       // remote/<ip>.pub
)

func (p dmsgPeerPolicy) String() string {
	switch p {
	case dmsgPeerPlaintext:
		return "plaintext"
	case dmsgPeerEncrypted:
		return "encrypted"
	}
	return "refused"
}

// dmsgPeerName is the file name stem DragonFly derives from a peer's
// address: the numeric host as getnameinfo(NI_NUMERICHOST) prints it. An
// IPv4 peer on a dual-stack socket is named by its IPv4 form, as on
// DragonFly's IPv4-only listener.
func dmsgPeerName(ip netip.Addr) (string, error) {
	if !ip.IsValid() {
		return "", errIOQNoPeer
	}
	s := ip.Unmap().String()
	// A zone is an interface name; keep anything path-like out of it.
	if strings.ContainsAny(s, `/\`) || strings.Contains(s, "..") {
		return "", fmt.Errorf("%w: address %q", errIOQNoPeer, s)
	}
	return s, nil
}

// tcpPeerPolicy applies DragonFly's rule for a peer at ip: remoteDir/<ip>.pub
// first (an encrypted link with that key), then remoteDir/<ip>.none (a
// plaintext link). Neither is NORKEY, with both paths in the error. A .pub
// that exists but cannot be read (NORKEY) or parsed (KEYFMT) is an error
// too, never a fallback to .none: that would turn a broken key into a
// plaintext link. Only an existing .pub is opened; a peer without one
// costs two stats and no file descriptor, so that a service out of
// descriptors still fails at accept, where it backs off, and not here.
func tcpPeerPolicy(remoteDir string, ip netip.Addr) (dmsgPeerPolicy, *rsa.PublicKey, error) {
	name, err := dmsgPeerName(ip)
	if err != nil {
		return dmsgPeerRefused, nil, fmt.Errorf("dmsg crypto: %w", err)
	}
	pubPath := filepath.Join(remoteDir, name+".pub")
	_, err = os.Stat(pubPath)
	if err == nil {
		var pub *rsa.PublicKey
		pub, err = readRSAPublicKeyFile(pubPath)
		if err == nil {
			return dmsgPeerEncrypted, pub, nil
		}
	}
	if !errors.Is(err, fs.ErrNotExist) {
		if errors.Is(err, errIOQKeyFormat) {
			return dmsgPeerRefused, nil, err
		}
		return dmsgPeerRefused, nil, fmt.Errorf("dmsg crypto: %w: peer %s: %w", errIOQNoRemoteKey, name, err)
	}
	nonePath := filepath.Join(remoteDir, name+".none")
	if _, err := os.Stat(nonePath); err == nil {
		return dmsgPeerPlaintext, nil, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return dmsgPeerRefused, nil, fmt.Errorf("dmsg crypto: %w: %w", errIOQNoRemoteKey, err)
	}
	return dmsgPeerRefused, nil, fmt.Errorf("dmsg crypto: %w: peer %s: neither %s nor %s exists",
		errIOQNoRemoteKey, name, pubPath, nonePath)
}

// dmsgSecureTCP runs DragonFly's per-peer rule on a fresh TCP connection,
// accepted or dialled alike (both ends do the same), and returns what the
// link runs on: conn itself for a .none peer, an encrypted conn after the
// handshake for a .pub peer. keys may be nil on a node without RSA keys;
// only an encrypted peer then fails (NOLKEY). On error conn is left open
// for the caller to close.
func dmsgSecureTCP(ctx context.Context, conn net.Conn, remoteDir string, keys *dmsgCryptoKeys, rnd io.Reader) (net.Conn, dmsgPeerPolicy, error) {
	ta, ok := conn.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return nil, dmsgPeerRefused, fmt.Errorf("dmsg crypto: %w: %v is not a TCP address", errIOQNoPeer, conn.RemoteAddr())
	}
	pol, pub, err := tcpPeerPolicy(remoteDir, ta.AddrPort().Addr())
	if err != nil {
		return nil, pol, err
	}
	if pol == dmsgPeerPlaintext {
		return conn, pol, nil
	}
	if keys == nil {
		return nil, pol, fmt.Errorf("dmsg crypto: %w: peer %s has a key but this node has no rsa.prv (run hammer2 rsainit)",
			errIOQNoLocalKey, ta)
	}
	cc, err := dmsgHandshake(ctx, conn, keys.Priv, pub, rnd)
	if err != nil {
		return nil, pol, err
	}
	return cc, pol, nil
}

// dmsgHandshake negotiates an encrypted session on conn with the peer
// whose public key is peer, and returns a conn that encrypts and decrypts
// transparently. It writes its 512 bytes while it reads the peer's, as
// DragonFly's write-then-read does on a socket, so a synchronous pipe
// works too. It gives up at ctx's deadline or after dmsgHandshakeTimeout,
// whichever is first; the returned conn has no deadline set. rnd supplies
// the buffer's random bytes (crypto/rand.Reader outside tests). On error
// conn is left open for the caller to close.
func dmsgHandshake(ctx context.Context, conn net.Conn, own *rsa.PrivateKey, peer *rsa.PublicKey, rnd io.Reader) (*dmsgCryptoConn, error) {
	who := conn.RemoteAddr().String()
	fail := func(err error) (*dmsgCryptoConn, error) {
		return nil, fmt.Errorf("dmsg crypto: handshake with %s: %w", who, err)
	}
	ownRaw, err := newRawRSAPrivate(own)
	if err != nil {
		return fail(fmt.Errorf("%w: own key: %v", errIOQKeyFormat, err))
	}
	peerRaw, err := newRawRSAPublic(peer)
	if err != nil {
		return fail(fmt.Errorf("%w: peer key: %v", errIOQKeyFormat, err))
	}
	tx, err := newHandshakeBuf(rnd)
	if err != nil {
		return fail(err)
	}
	wire, err := sealHandshake(tx, ownRaw, peerRaw)
	if err != nil {
		return fail(err)
	}

	deadline := time.Now().Add(dmsgHandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := conn.SetDeadline(deadline); err != nil {
		return fail(fmt.Errorf("%w: %w", errIOQKeyExchange, err))
	}
	// Cancelling ctx fails the pending I/O at once.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(wire)
		werr <- err
	}()
	var in [hsSize]byte
	_, rerr := io.ReadFull(conn, in[:])
	if rerr != nil {
		// Unblock the writer too, then wait for it: it must be gone
		// before conn is handed back.
		_ = conn.SetDeadline(time.Unix(1, 0))
	}
	wErr := <-werr
	cancelled := !stop()
	if rerr == nil && wErr == nil && !cancelled {
		if err := conn.SetDeadline(time.Time{}); err != nil {
			return fail(fmt.Errorf("%w: %w", errIOQKeyExchange, err))
		}
	}
	switch {
	case cancelled && ctx.Err() != nil:
		return fail(fmt.Errorf("%w: %w", errIOQKeyExchange, ctx.Err()))
	case rerr != nil:
		return fail(fmt.Errorf("%w: reading the peer's buffer: %w", errIOQKeyExchange, rerr))
	case wErr != nil:
		return fail(fmt.Errorf("%w: writing our buffer: %w", errIOQKeyExchange, wErr))
	}

	rx, err := openHandshake(in[:], ownRaw, peerRaw)
	if err != nil {
		return fail(err)
	}
	if err := rx.check(); err != nil {
		return fail(err)
	}
	c, err := newDmsgCryptoConn(conn, tx, rx)
	if err != nil {
		return fail(err)
	}
	return c, nil
}

// handshakeBuf is one side's 512-byte buffer in the clear.
type handshakeBuf [hsSize]byte

// newHandshakeBuf fills a buffer to send: random bytes from rnd with the
// fixed fields set, the verifier computed, and pad1[0] and pad2[0] cleared
// in their top two bits, which keeps the RSA blocks of 2048- and 4096-bit
// keys (they start there) below the modulus.
func newHandshakeBuf(rnd io.Reader) (*handshakeBuf, error) {
	var b handshakeBuf
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return nil, fmt.Errorf("%w: %w", errIOQBadRandom, err)
	}
	var zero handshakeBuf
	if b == zero {
		return nil, fmt.Errorf("%w: all zeros", errIOQBadRandom)
	}
	q := b[hsOffQuickmsg : hsOffQuickmsg+hsQuickSize]
	copy(q, hsQuickmsg)
	q[len(hsQuickmsg)] = 0
	binary.LittleEndian.PutUint16(b[hsOffMagic:], hsMagic)
	binary.LittleEndian.PutUint16(b[hsOffVersion:], hsVersion)
	binary.LittleEndian.PutUint32(b[hsOffFlags:], 0)
	b[hsOffPad1] &= 0x3F
	b[hsOffPad2] &= 0x3F
	verf := b[hsOffVerf : hsOffVerf+hsVerfSize]
	clear(verf)
	for i, s := range b[hsOffSess : hsOffSess+hsSessSize] {
		verf[i/4] ^= s
	}
	return &b, nil
}

// sealHandshake encrypts b for the wire, one key-sized block at a time:
// first with own's private key, retried with the block's little-endian u32
// at offset 4 incremented (before every try, the first included, as
// DragonFly does) until the result's top two bits are clear, so that it is
// below the peer's modulus; then with peer's public key. b keeps the
// incremented counters.
func sealHandshake(b *handshakeBuf, own *rawRSAPrivate, peer *rawRSAPublic) ([]byte, error) {
	blk, err := dmsgHandshakeBlock(own, peer)
	if err != nil {
		return nil, err
	}
	wire := make([]byte, 0, hsSize)
	for off := 0; off < hsSize; off += blk {
		block := b[off : off+blk]
		// With 1024-bit keys the odd blocks start in junk; DragonFly
		// leaves them as they are and fails when one is above its
		// modulus, we keep them below. A no-op for larger keys.
		block[0] &= 0x3F
		var mid []byte
		for try := 0; ; try++ {
			if try == rsaRetryMax {
				return nil, fmt.Errorf("%w: no first-stage RSA output fits the peer's modulus after %d tries", errIOQKeyExchange, try)
			}
			ctr := binary.LittleEndian.Uint32(block[4:])
			binary.LittleEndian.PutUint32(block[4:], ctr+1)
			mid, err = own.apply(block)
			if err != nil {
				return nil, fmt.Errorf("%w: own key on block %d: %v", errIOQKeyExchange, off/blk, err)
			}
			if mid[0]&0xC0 == 0 {
				break
			}
		}
		out, err := peer.apply(mid)
		if err != nil {
			return nil, fmt.Errorf("%w: peer key on block %d: %v", errIOQKeyExchange, off/blk, err)
		}
		wire = append(wire, out...)
	}
	return wire, nil
}

// openHandshake undoes sealHandshake on the peer's wire bytes: own private
// key first, then the peer's public key. A block at or above a modulus
// means the two sides disagree on keys: KEYXCHGFAIL.
func openHandshake(wire []byte, own *rawRSAPrivate, peer *rawRSAPublic) (*handshakeBuf, error) {
	if len(wire) != hsSize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", errIOQKeyExchange, len(wire), hsSize)
	}
	blk, err := dmsgHandshakeBlock(own, peer)
	if err != nil {
		return nil, err
	}
	var b handshakeBuf
	for off := 0; off < hsSize; off += blk {
		mid, err := own.apply(wire[off : off+blk])
		if err != nil {
			return nil, fmt.Errorf("%w: own key on block %d: %v", errIOQKeyExchange, off/blk, err)
		}
		out, err := peer.apply(mid)
		if err != nil {
			return nil, fmt.Errorf("%w: peer key on block %d: %v (wrong key for the peer?)", errIOQKeyExchange, off/blk, err)
		}
		copy(b[off:], out)
	}
	return &b, nil
}

// dmsgHandshakeBlock is the RSA block size, which both keys must share (and
// our rsa.pub too; loadDmsgCryptoKeys checks that one).
func dmsgHandshakeBlock(own *rawRSAPrivate, peer *rawRSAPublic) (int, error) {
	if own.size() != peer.size() {
		return 0, fmt.Errorf("%w: key size mismatch: ours is %d bits, the peer's %d", errIOQKeyFormat, own.size()*8, peer.size()*8)
	}
	return dmsgRSABlockSize(own.size())
}

// check validates a received buffer as DragonFly does: every verifier byte
// must equal the XOR of its four session key bytes, and the version must
// be 1 (read swapped if the magic is). DragonFly does not look at the
// magic; we also refuse one that is neither byte order of 0x4832, which no
// DragonFly peer sends. Flags are ignored.
func (b *handshakeBuf) check() error {
	version := binary.LittleEndian.Uint16(b[hsOffVersion:])
	switch m := binary.LittleEndian.Uint16(b[hsOffMagic:]); m {
	case hsMagic:
	case hsMagicRev:
		version = version>>8 | version<<8
	default:
		return fmt.Errorf("%w: bad magic %#04x (wrong key for the peer?)", errIOQKeyExchange, m)
	}
	var bad byte
	for k := range hsVerfSize {
		s := b[hsOffSess+4*k:]
		bad |= b[hsOffVerf+k] ^ s[0] ^ s[1] ^ s[2] ^ s[3]
	}
	if bad != 0 {
		return fmt.Errorf("%w: session key verifier mismatch (wrong key for the peer?)", errIOQKeyExchange)
	}
	if version != hsVersion {
		return fmt.Errorf("%w: version %d, want %d", errIOQKeyExchange, version, hsVersion)
	}
	return nil
}

// sessionKey is the AES-256 key and the IV's fixed field that the buffer's
// sender encrypts with.
func (b *handshakeBuf) sessionKey() (key, fixed []byte) {
	s := b[hsOffSess : hsOffSess+hsSessSize]
	return s[:gcmKeySize], s[gcmKeySize : gcmKeySize+gcmFixedIVSize]
}

// quickmsg is the sender's greeting up to its NUL, printable ASCII only
// (DragonFly logs it as "auth success: Testing 1 2 3").
func (b *handshakeBuf) quickmsg() string {
	q := b[hsOffQuickmsg : hsOffQuickmsg+hsQuickSize]
	if i := bytes.IndexByte(q, 0); i >= 0 {
		q = q[:i]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7E {
			return '?'
		}
		return r
	}, string(q))
}
