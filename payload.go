package main

// Typed payloads of the LNK and DBG commands. Offsets are from the start of
// the message, as in sys/sys/dmsg.h; a payload's bytes are Msg.Ext, which
// starts at offset 0x40. Payload structs are never byte-swapped (libdmsg
// swaps only the base header), so they are always read little-endian.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// UUID is DragonFly's struct uuid as it lies in memory on amd64, on media,
// in ioctls and on the wire: time_low, time_mid and time_hi little-endian
// (GUID layout), then clock_seq and node as bytes.
type UUID [16]byte

// NewUUID returns a random (version 4) uuid.
func NewUUID() UUID {
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err)) // Read never fails on supported systems
	}
	r[6] = r[6]&0x0F | 0x40
	r[8] = r[8]&0x3F | 0x80
	return uuidFromRFC(r)
}

// uuidFromRFC converts RFC 4122 byte order to the wire layout.
func uuidFromRFC(r [16]byte) UUID {
	var u UUID
	u[0], u[1], u[2], u[3] = r[3], r[2], r[1], r[0]
	u[4], u[5] = r[5], r[4]
	u[6], u[7] = r[7], r[6]
	copy(u[8:], r[8:])
	return u
}

// rfc returns the RFC 4122 byte order, in which uuids are printed.
func (u UUID) rfc() [16]byte { return uuidFromRFC(u) } // the swap is its own inverse

// IsNil reports whether u is all zero.
func (u UUID) IsNil() bool { return u == UUID{} }

func (u UUID) String() string {
	r := u.rfc()
	var b [36]byte
	hex.Encode(b[0:8], r[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], r[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], r[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], r[8:10])
	b[23] = '-'
	hex.Encode(b[24:], r[10:])
	return string(b[:])
}

// ParseUUID reads the canonical text form.
func ParseUUID(s string) (UUID, error) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return UUID{}, fmt.Errorf("uuid %q: not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	var r [16]byte
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	if _, err := hex.Decode(r[:], []byte(h)); err != nil {
		return UUID{}, fmt.Errorf("uuid %q: %w", s, err)
	}
	return uuidFromRFC(r), nil
}

func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

func (u *UUID) UnmarshalText(b []byte) error {
	v, err := ParseUUID(string(b))
	if err != nil {
		return err
	}
	*u = v
	return nil
}

// Peer types (index bits of peer_mask).
const (
	PeerNone    = 0
	PeerCluster = 1 // ROUTER in the newest header
	PeerBlock   = 2
	PeerHammer2 = 3
	PeerClient  = 63
)

// HAMMER2 on-media PFS types, as the kernel puts them in its spans.
const (
	PFSNone       = 0
	PFSCache      = 1
	PFSSlave      = 3
	PFSSoftSlave  = 4
	PFSSoftMaster = 5
	PFSMaster     = 6
	PFSSupRoot    = 8
	PFSDummy      = 9
)

// SpanProto1 is the only span protocol version.
const SpanProto1 = 1

// label reads a fixed-size label, forcing the last byte to NUL as every
// DragonFly receiver does, and stops at the first NUL.
func label(b []byte) string {
	b = b[:len(b)-1]
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// putLabel writes s NUL-terminated into the fixed-size field b, truncating
// it to leave room for the NUL.
func putLabel(b []byte, s string) {
	n := copy(b[:len(b)-1], s)
	clear(b[n:])
}

// ext returns a zeroed payload buffer of cmd's header size minus the base.
func newExt(cmd uint32) []byte { return make([]byte, cmdHdrSize(cmd)-HdrSize) }

// needExt checks that a received payload is long enough for a struct whose
// last byte lies at message offset end.
func needExt(ext []byte, what string, end int) error {
	if len(ext)+HdrSize < end {
		return wireErr("cmd", uint64(len(ext)+HdrSize), "%s needs a %d-byte header", what, end)
	}
	return nil
}

// LnkConn is LNK_CONN, newest layout (328 bytes, 6 header units).
type LnkConn struct {
	MediaID      UUID
	PeerID       UUID
	PeerMask     uint64
	PeerType     uint8
	ProtoVersion uint16
	Status       uint32
	RNSS         uint32
	PeerLabel    string
}

const lnkConnSize = 328

// Marshal returns the payload bytes for Msg.Ext.
func (c *LnkConn) Marshal() []byte {
	b := newExt(CmdLnkConn)
	le := binary.LittleEndian
	copy(b[0x40-HdrSize:], c.MediaID[:])
	copy(b[0x50-HdrSize:], c.PeerID[:])
	le.PutUint64(b[0x70-HdrSize:], c.PeerMask)
	b[0x78-HdrSize] = c.PeerType
	le.PutUint16(b[0x7A-HdrSize:], c.ProtoVersion)
	le.PutUint32(b[0x7C-HdrSize:], c.Status)
	le.PutUint32(b[0x80-HdrSize:], c.RNSS)
	putLabel(b[0xC4-HdrSize:0xC4-HdrSize+LabelSize], c.PeerLabel)
	return b
}

// ParseLnkConn decodes a received LNK_CONN payload.
func ParseLnkConn(ext []byte) (LnkConn, error) {
	if err := needExt(ext, "LNK_CONN", lnkConnSize); err != nil {
		return LnkConn{}, err
	}
	le := binary.LittleEndian
	var c LnkConn
	copy(c.MediaID[:], ext[0x40-HdrSize:])
	copy(c.PeerID[:], ext[0x50-HdrSize:])
	c.PeerMask = le.Uint64(ext[0x70-HdrSize:])
	c.PeerType = ext[0x78-HdrSize]
	c.ProtoVersion = le.Uint16(ext[0x7A-HdrSize:])
	c.Status = le.Uint32(ext[0x7C-HdrSize:])
	c.RNSS = le.Uint32(ext[0x80-HdrSize:])
	c.PeerLabel = label(ext[0xC4-HdrSize : 0xC4-HdrSize+LabelSize])
	return c, nil
}

// LnkSpan is LNK_SPAN (432 bytes, 7 header units). Labels are kept as
// fixed arrays so that decoding a span allocates nothing.
type LnkSpan struct {
	PeerID       UUID // pfs_clid for HAMMER2 peers
	PfsID        UUID // pfs_fsid for HAMMER2 peers
	PfsType      uint8
	PeerType     uint8
	ProtoVersion uint16
	Status       uint32
	Dist         uint32
	RNSS         uint32
	Media        [56]byte // union; for block peers bytes u64 then blksize u32
	PeerLabel    [LabelSize]byte
	PfsLabel     [LabelSize]byte
}

const lnkSpanSize = 432

// PeerLabelString and PfsLabelString return the labels up to their NUL.
func (s *LnkSpan) PeerLabelString() string { return label(s.PeerLabel[:]) }
func (s *LnkSpan) PfsLabelString() string  { return label(s.PfsLabel[:]) }

// SetLabels sets both labels, truncated to 127 bytes.
func (s *LnkSpan) SetLabels(peer, pfs string) {
	putLabel(s.PeerLabel[:], peer)
	putLabel(s.PfsLabel[:], pfs)
}

// MarshalTo writes the payload into b, which must hold 384 bytes.
func (s *LnkSpan) MarshalTo(b []byte) {
	le := binary.LittleEndian
	b = b[:lnkSpanAlignedExt]
	copy(b[0x40-HdrSize:], s.PeerID[:])
	copy(b[0x50-HdrSize:], s.PfsID[:])
	b[0x60-HdrSize] = s.PfsType
	b[0x61-HdrSize] = s.PeerType
	le.PutUint16(b[0x62-HdrSize:], s.ProtoVersion)
	le.PutUint32(b[0x64-HdrSize:], s.Status)
	clear(b[0x68-HdrSize : 0x70-HdrSize])
	le.PutUint32(b[0x70-HdrSize:], s.Dist)
	le.PutUint32(b[0x74-HdrSize:], s.RNSS)
	copy(b[0x78-HdrSize:], s.Media[:])
	copy(b[0xB0-HdrSize:], s.PeerLabel[:])
	b[0xB0-HdrSize+LabelSize-1] = 0
	copy(b[0x130-HdrSize:], s.PfsLabel[:])
	b[0x130-HdrSize+LabelSize-1] = 0
	clear(b[lnkSpanSize-HdrSize:])
}

const lnkSpanAlignedExt = 448 - HdrSize

// Marshal returns the payload bytes for Msg.Ext.
func (s *LnkSpan) Marshal() []byte {
	b := newExt(CmdLnkSpan)
	s.MarshalTo(b)
	return b
}

// Unmarshal decodes a received LNK_SPAN payload into s without allocating.
func (s *LnkSpan) Unmarshal(ext []byte) error {
	if err := needExt(ext, "LNK_SPAN", lnkSpanSize); err != nil {
		return err
	}
	le := binary.LittleEndian
	copy(s.PeerID[:], ext[0x40-HdrSize:])
	copy(s.PfsID[:], ext[0x50-HdrSize:])
	s.PfsType = ext[0x60-HdrSize]
	s.PeerType = ext[0x61-HdrSize]
	s.ProtoVersion = le.Uint16(ext[0x62-HdrSize:])
	s.Status = le.Uint32(ext[0x64-HdrSize:])
	s.Dist = le.Uint32(ext[0x70-HdrSize:])
	s.RNSS = le.Uint32(ext[0x74-HdrSize:])
	copy(s.Media[:], ext[0x78-HdrSize:])
	copy(s.PeerLabel[:], ext[0xB0-HdrSize:])
	s.PeerLabel[LabelSize-1] = 0
	copy(s.PfsLabel[:], ext[0x130-HdrSize:])
	s.PfsLabel[LabelSize-1] = 0
	return nil
}

// Volconf is hammer2_volconf: one REMOTE slot of the volume header's
// copyinfo[] (128 bytes, packed).
type Volconf struct {
	CopyID        uint8 // equals the slot; 0 = empty, 255 = local media
	InProg        uint8
	ChainTo       uint8
	ChainFrom     uint8
	Flags         uint16
	Error         uint8
	Priority      uint8
	RemotePfsType uint8
	PfsClid       UUID
	Label         string // up to 15 bytes
	Path          string // up to 63 bytes, e.g. "span:host"
}

const (
	VolconfSize    = 128
	VolconfPathMax = 63 // the path field is 64 bytes with its NUL
	VolconfLabMax  = 15

	VolfEnabled = 0x0001
	VolfInprog  = 0x0002
)

// MarshalTo writes the 128-byte entry into b.
func (v *Volconf) MarshalTo(b []byte) {
	b = b[:VolconfSize]
	clear(b)
	b[0], b[1], b[2], b[3] = v.CopyID, v.InProg, v.ChainTo, v.ChainFrom
	binary.LittleEndian.PutUint16(b[4:], v.Flags)
	b[6], b[7], b[8] = v.Error, v.Priority, v.RemotePfsType
	copy(b[0x20:], v.PfsClid[:])
	putLabel(b[0x30:0x40], v.Label)
	putLabel(b[0x40:0x80], v.Path)
}

// ParseVolconf decodes a 128-byte entry.
func ParseVolconf(b []byte) (Volconf, error) {
	if len(b) < VolconfSize {
		return Volconf{}, wireErr("volconf", uint64(len(b)), "entry needs %d bytes", VolconfSize)
	}
	v := Volconf{
		CopyID: b[0], InProg: b[1], ChainTo: b[2], ChainFrom: b[3],
		Flags: binary.LittleEndian.Uint16(b[4:]),
		Error: b[6], Priority: b[7], RemotePfsType: b[8],
		Label: label(b[0x30:0x40]),
		Path:  label(b[0x40:0x80]),
	}
	copy(v.PfsClid[:], b[0x20:])
	return v, nil
}

// LnkVolconf is LNK_HAMMER2_VOLCONF (472 bytes, 8 header units): one slot
// pushed by the kernel inside its LNK_CONN.
type LnkVolconf struct {
	Copy    Volconf
	Index   int32
	MediaID UUID
}

const lnkVolconfSize = 472

// Marshal returns the payload bytes for Msg.Ext.
func (v *LnkVolconf) Marshal() []byte {
	b := newExt(CmdLnkVolconf)
	v.Copy.MarshalTo(b[0x40-HdrSize:])
	binary.LittleEndian.PutUint32(b[0xC0-HdrSize:], uint32(v.Index))
	copy(b[0xC8-HdrSize:], v.MediaID[:])
	return b
}

// ParseLnkVolconf decodes a received VOLCONF payload. The index is checked
// as the service daemon checks it.
func ParseLnkVolconf(ext []byte) (LnkVolconf, error) {
	if err := needExt(ext, "LNK_HAMMER2_VOLCONF", lnkVolconfSize); err != nil {
		return LnkVolconf{}, err
	}
	c, err := ParseVolconf(ext[0x40-HdrSize:])
	if err != nil {
		return LnkVolconf{}, err
	}
	v := LnkVolconf{Copy: c, Index: int32(binary.LittleEndian.Uint32(ext[0xC0-HdrSize:]))}
	copy(v.MediaID[:], ext[0xC8-HdrSize:])
	if v.Index < 0 || v.Index > 255 {
		return v, wireErr("index", uint64(uint32(v.Index)), "VOLCONF slot outside 0..255")
	}
	return v, nil
}

// ShellText returns DBG_SHELL aux text: the receiver forces the last byte to
// NUL and reads up to the first NUL.
func ShellText(aux []byte) string {
	if len(aux) == 0 {
		return ""
	}
	return label(aux)
}

// ShellAux returns text as DBG_SHELL aux data, NUL included in aux_bytes.
func ShellAux(text string) []byte { return append([]byte(text), 0) }
