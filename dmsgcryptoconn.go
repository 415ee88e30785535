package main

// The encrypted byte stream of a DragonFly TCP link after the handshake.
//
// Each direction cuts its plaintext into 64-byte chunks and sends every
// chunk as AES-256-GCM ciphertext (64 bytes) followed by its 16-byte tag:
// 80 bytes on the wire per 64 of plaintext, no additional data. The
// 12-byte nonce is the sender's 4-byte fixed field followed by a big-endian
// 64-bit counter that starts at 0 and counts chunks in that direction.
// dmsg messages are multiples of 64 bytes, so a chunk never spans two.

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
)

const (
	chunkPlain = 64 // DMSG_CRYPTO_CHUNK_SIZE
	chunkTag   = 16
	chunkWire  = chunkPlain + chunkTag

	// cryptoBatchChunks is how many chunks one Write or Read syscall
	// carries at most: 64 KiB of plaintext, 80 KiB on the wire, about
	// what a socket buffer takes in one go. Each direction of a link
	// holds one such buffer.
	cryptoBatchChunks = 1024
)

// gcmStream is one direction's cipher state: a deterministic core with no
// I/O. Not safe for concurrent use; dmsgCryptoConn serializes each side.
type gcmStream struct {
	aead  cipher.AEAD
	nonce [12]byte // fixed[4] || big-endian counter; the counter is kept in ctr
	ctr   uint64   // the next chunk's counter
}

func newGCMStream(key, fixed []byte) (*gcmStream, error) {
	if len(key) != gcmKeySize || len(fixed) != gcmFixedIVSize {
		return nil, fmt.Errorf("GCM key of %d bytes and fixed IV of %d, want %d and %d", len(key), len(fixed), gcmKeySize, gcmFixedIVSize)
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		return nil, err
	}
	s := &gcmStream{aead: aead}
	copy(s.nonce[:], fixed)
	return s, nil
}

// next returns the nonce for the next chunk and advances the counter.
// DragonFly increments after each chunk and fails when the counter comes
// back to 0, so the last value, 2^64-1, is never used: IVWRAP.
func (s *gcmStream) next() ([]byte, error) {
	if s.ctr == math.MaxUint64 {
		return nil, errIOQIVWrap
	}
	binary.BigEndian.PutUint64(s.nonce[gcmFixedIVSize:], s.ctr)
	s.ctr++
	return s.nonce[:], nil
}

// seal appends the wire form of plain, a multiple of 64 bytes, to dst.
func (s *gcmStream) seal(dst, plain []byte) ([]byte, error) {
	for ; len(plain) >= chunkPlain; plain = plain[chunkPlain:] {
		nonce, err := s.next()
		if err != nil {
			return dst, err
		}
		dst = s.aead.Seal(dst, nonce, plain[:chunkPlain], nil)
	}
	return dst, nil
}

// open decrypts wire, a multiple of 80 bytes, into dst, which must hold
// its 64 bytes per chunk, and returns how many plaintext bytes it wrote:
// those of the chunks before an error as well.
func (s *gcmStream) open(dst, wire []byte) (int, error) {
	n := 0
	for ; len(wire) >= chunkWire; wire = wire[chunkWire:] {
		nonce, err := s.next()
		if err != nil {
			return n, err
		}
		// A failed Open may scribble over dst up to its capacity: cap
		// it at this chunk, so that the chunks before stay intact.
		if _, err := s.aead.Open(dst[n:n:n+chunkPlain], nonce, wire[:chunkWire], nil); err != nil {
			return n, fmt.Errorf("%w at chunk %d", errIOQMACFail, s.ctr-1)
		}
		n += chunkPlain
	}
	return n, nil
}

// dmsgCryptoConn is a TCP connection after DragonFly's handshake: Read
// returns decrypted bytes, Write encrypts, Close closes the TCP connection.
// One goroutine may read while another writes; concurrent Reads (or
// Writes) are serialized.
//
// Writes of whole 64-byte chunks go out at once. A Write that ends in a
// partial chunk keeps those bytes until later writes complete the chunk:
// dmsg messages are always whole chunks, so the link never waits on this,
// but a caller writing odd sizes must complete the chunk itself.
//
// A bad tag (MACFAIL) or an exhausted counter (IVWRAP) ends the link: the
// error sticks, the TCP connection is closed, and every later Read and
// Write returns it. So does a failed Write, whose partial output has put
// the stream out of step. Deadlines apply to the TCP connection.
type dmsgCryptoConn struct {
	net.Conn // the TCP connection; its Read and Write are shadowed
	peer     string
	greeting string // the peer's quickmsg

	rmu   sync.Mutex
	rx    *gcmStream
	rbuf  []byte // ciphertext from the conn; rbuf[roff:rend] is not yet decrypted
	roff  int
	rend  int
	pend  []byte // decrypted, not yet returned (after a Read shorter than a chunk)
	rtail [chunkPlain]byte
	rerr  error

	wmu   sync.Mutex
	tx    *gcmStream
	wbuf  []byte // ciphertext ready to write
	wpart [chunkPlain]byte
	npart int
	werr  error

	closeOnce sync.Once
	closeErr  error
}

// newDmsgCryptoConn keys both directions from the two handshake buffers:
// ours (tx) for what we send, the peer's (rx) for what we receive.
func newDmsgCryptoConn(conn net.Conn, tx, rx *handshakeBuf) (*dmsgCryptoConn, error) {
	tk, tf := tx.sessionKey()
	txs, err := newGCMStream(tk, tf)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errIOQKeyExchange, err)
	}
	rk, rf := rx.sessionKey()
	rxs, err := newGCMStream(rk, rf)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errIOQKeyExchange, err)
	}
	return &dmsgCryptoConn{
		Conn:     conn,
		peer:     conn.RemoteAddr().String(),
		greeting: rx.quickmsg(),
		rx:       rxs,
		tx:       txs,
		rbuf:     make([]byte, cryptoBatchChunks*chunkWire),
		wbuf:     make([]byte, 0, cryptoBatchChunks*chunkWire),
	}, nil
}

// PeerGreeting is the text the peer put in its handshake ("Testing 1 2 3"
// from DragonFly), made printable.
func (c *dmsgCryptoConn) PeerGreeting() string { return c.greeting }

// Close closes the TCP connection; later calls return the first result.
func (c *dmsgCryptoConn) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.Conn.Close() })
	return c.closeErr
}

// fatal records a crypto failure and closes the link.
func (c *dmsgCryptoConn) fatal(dir string, err error) error {
	err = fmt.Errorf("dmsg crypto: %s %s: %w", dir, c.peer, err)
	_ = c.Close()
	return err
}

// Read decrypts into p. A p shorter than 64 bytes is served from one
// decrypted chunk kept between calls.
func (c *dmsgCryptoConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if len(c.pend) > 0 {
		n := copy(p, c.pend)
		c.pend = c.pend[n:]
		return n, nil
	}
	if c.rerr != nil {
		return 0, c.rerr
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if k := (c.rend - c.roff) / chunkWire; k > 0 {
			wire := c.rbuf[c.roff:]
			if len(p) >= chunkPlain {
				k = min(k, len(p)/chunkPlain)
				n, err := c.rx.open(p, wire[:k*chunkWire])
				c.roff += n / chunkPlain * chunkWire
				if err != nil {
					// The chunks before the bad one are
					// authentic: deliver them, fail next.
					c.rerr = c.fatal("link from", err)
					if n == 0 {
						return 0, c.rerr
					}
				}
				return n, nil
			}
			if _, err := c.rx.open(c.rtail[:], wire[:chunkWire]); err != nil {
				c.rerr = c.fatal("link from", err)
				return 0, c.rerr
			}
			c.roff += chunkWire
			n := copy(p, c.rtail[:])
			c.pend = c.rtail[n:]
			return n, nil
		}
		// Keep the partial chunk and read behind it.
		c.rend = copy(c.rbuf, c.rbuf[c.roff:c.rend])
		c.roff = 0
		n, err := c.Conn.Read(c.rbuf[c.rend:])
		c.rend += n
		if err != nil && c.rend < chunkWire {
			if errors.Is(err, io.EOF) {
				if c.rend == 0 {
					c.rerr = io.EOF
					return 0, io.EOF
				}
				c.rerr = fmt.Errorf("dmsg crypto: link from %s: %w inside a chunk (%d of %d bytes)",
					c.peer, io.ErrUnexpectedEOF, c.rend, chunkWire)
				return 0, c.rerr
			}
			// A timeout or a closed conn: not sticky here, the
			// conn itself reports it again.
			return 0, err
		}
	}
}

// Write encrypts p; see the type's comment for a partial last chunk.
func (c *dmsgCryptoConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	n, err := c.appendLocked(p)
	if err != nil {
		return n, err
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return n, nil
}

// WriteBuffers encrypts bufs as one write, in as few syscalls as the batch
// buffer allows: what net.Buffers.WriteTo does with writev on a plain
// socket. A link writer that sends a header and its aux as separate
// buffers should call this rather than one Write per buffer.
func (c *dmsgCryptoConn) WriteBuffers(bufs net.Buffers) (int64, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	var total int64
	for _, b := range bufs {
		n, err := c.appendLocked(b)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	if err := c.flushLocked(); err != nil {
		return 0, err
	}
	return total, nil
}

// appendLocked encrypts p behind wbuf, writing wbuf out whenever it holds a
// full batch, and keeps a trailing partial chunk in wpart.
func (c *dmsgCryptoConn) appendLocked(p []byte) (int, error) {
	if c.werr != nil {
		return 0, c.werr
	}
	n := len(p)
	if c.npart > 0 {
		k := copy(c.wpart[c.npart:], p)
		c.npart += k
		p = p[k:]
		if c.npart < chunkPlain {
			return n, nil
		}
		if err := c.sealLocked(c.wpart[:]); err != nil {
			return 0, err
		}
		c.npart = 0
	}
	for len(p) >= chunkPlain {
		room := (cap(c.wbuf) - len(c.wbuf)) / chunkWire
		if room == 0 {
			if err := c.flushLocked(); err != nil {
				return 0, err
			}
			continue
		}
		k := min(room, len(p)/chunkPlain) * chunkPlain
		if err := c.sealLocked(p[:k]); err != nil {
			return 0, err
		}
		p = p[k:]
	}
	c.npart = copy(c.wpart[:], p)
	return n, nil
}

func (c *dmsgCryptoConn) sealLocked(plain []byte) error {
	var err error
	if c.wbuf, err = c.tx.seal(c.wbuf, plain); err != nil {
		c.werr = c.fatal("link to", err)
		return c.werr
	}
	return nil
}

func (c *dmsgCryptoConn) flushLocked() error {
	if len(c.wbuf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.wbuf)
	c.wbuf = c.wbuf[:0]
	if err != nil {
		// Part of a chunk may be on the wire: the stream cannot go on.
		c.werr = fmt.Errorf("dmsg crypto: link to %s: %w", c.peer, err)
		return c.werr
	}
	return nil
}
