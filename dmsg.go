package main

// The dmsg wire format: DragonFly's sys/sys/dmsg.h, newest layout.
//
// A message is a 64-byte base header, the rest of its extended header (the
// command's payload struct; the total size is the low byte of cmd times 64),
// and aux data padded with zeroes to a multiple of 64. Everything we send is
// little-endian; a peer whose magic reads byte-swapped has only its 64-byte
// base header swapped, never the payload, exactly as libdmsg does. The
// commands and error codes, with their names, are in cmds.go.

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Sizes and limits.
const (
	HdrSize    = 64      // the base header
	HdrMax     = 2048    // the largest extended header libdmsg and the kernel accept
	AuxMax     = 1 << 20 // DMSG_AUX_MAX, checked against the aligned size
	Align      = 64      // DMSG_ALIGN: headers and aux are padded to this
	ListenPort = 987     // DMSG_LISTEN_PORT
	LabelSize  = 128     // DMSG_LABEL_SIZE

	MagicLE      = 0x4832 // as read when the sender wrote little-endian
	MagicSwapped = 0x3248 // as read when the sender wrote the other byte order
)

// Header offsets.
const (
	offMagic     = 0x00
	offReserved2 = 0x02
	offSalt      = 0x04
	offMsgID     = 0x08
	offCircuit   = 0x10
	offReserved3 = 0x18
	offCmd       = 0x20
	offAuxCRC    = 0x24
	offAuxBytes  = 0x28
	offError     = 0x2C
	offAuxDescr  = 0x30
	offReserved4 = 0x38
	offHdrCRC    = 0x3C
)

// Flag bits of cmd.
const (
	FlagCreate   uint32 = 0x80000000
	FlagDelete   uint32 = 0x40000000
	FlagReply    uint32 = 0x20000000
	FlagAbort    uint32 = 0x10000000
	FlagRevTrans uint32 = 0x08000000 // the msgid names a transaction the receiver opened
	FlagRevCirc  uint32 = 0x04000000 // the circuit names a transaction the receiver opened

	maskFlags     uint32 = 0xFF000000
	maskProto     uint32 = 0x00F00000
	maskCmd       uint32 = 0x000FFF00
	maskSize      uint32 = 0x000000FF
	maskBaseCmd          = maskProto | maskCmd | maskSize
	maskBaseFlags        = FlagCreate | FlagDelete | FlagReply
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var zeroPad [Align]byte // read-only source of padding bytes

func align64(n int) int { return (n + Align - 1) &^ (Align - 1) }

// cmdHdrSize is the extended header size, in bytes, that cmd declares.
func cmdHdrSize(cmd uint32) int { return int(cmd&maskSize) * Align }

// Header is the 64-byte base header, decoded into host values.
type Header struct {
	Reserved02 uint16
	Salt       uint32
	MsgID      uint64
	Circuit    uint64
	Reserved18 uint64
	Cmd        uint32
	AuxCRC     uint32
	AuxBytes   uint32
	Error      uint32
	AuxDescr   uint64
	Reserved38 uint32
	HdrCRC     uint32
}

// Msg is one message: its base header, the remainder of its extended header
// (Ext, cmdHdrSize-64 bytes, the command's payload struct from offset 0x40)
// and its aux data without padding.
type Msg struct {
	Header
	Ext []byte
	Aux []byte
}

// WireError is a malformed message: what was wrong, and the value seen.
type WireError struct {
	Field  string
	Value  uint64
	Reason string
}

func (e *WireError) Error() string {
	return fmt.Sprintf("bad %s %#x: %s", e.Field, e.Value, e.Reason)
}

func wireErr(field string, v uint64, format string, args ...any) *WireError {
	return &WireError{Field: field, Value: v, Reason: fmt.Sprintf(format, args...)}
}

// hdrCRC is the CRC of a whole extended header with its hdr_crc field taken
// as zero, from offset 0 (not from salt, whatever DMSG_HDR_CRCOFF suggests).
func hdrCRC(hdr []byte) uint32 {
	c := crc32.Update(0, crcTable, hdr[:offHdrCRC])
	c = crc32.Update(c, crcTable, zeroPad[:4])
	return crc32.Update(c, crcTable, hdr[HdrSize:])
}

// auxCRC is the CRC of aux padded with zeroes to align64(len(aux)).
func auxCRC(aux []byte) uint32 {
	c := crc32.Update(0, crcTable, aux)
	if pad := align64(len(aux)) - len(aux); pad > 0 {
		c = crc32.Update(c, crcTable, zeroPad[:pad])
	}
	return c
}

// WireHdrSize is the extended header size m will be sent with.
func (m *Msg) WireHdrSize() int { return cmdHdrSize(m.Cmd) }

// checkSend reports what would make m unsendable.
func (m *Msg) checkSend() error {
	hs := cmdHdrSize(m.Cmd)
	if hs < HdrSize || hs > HdrMax {
		return wireErr("cmd", uint64(m.Cmd), "header size %d outside %d..%d", hs, HdrSize, HdrMax)
	}
	if len(m.Ext) > hs-HdrSize {
		return wireErr("cmd", uint64(m.Cmd), "payload of %d bytes does not fit a %d-byte header", len(m.Ext), hs)
	}
	if align64(len(m.Aux)) > AuxMax {
		return wireErr("aux_bytes", uint64(len(m.Aux)), "over the %d-byte limit", AuxMax)
	}
	return nil
}

// AppendHeader appends m's extended header to dst as it goes on the wire,
// with the given salt, aux_bytes and aux_crc filled in from m.Aux and the
// header CRC computed last. The aux data itself is not appended.
func (m *Msg) AppendHeader(dst []byte, salt uint32) []byte {
	hs := cmdHdrSize(m.Cmd)
	start := len(dst)
	dst = append(dst, make([]byte, hs)...)
	b := dst[start:]
	le := binary.LittleEndian
	le.PutUint16(b[offMagic:], MagicLE)
	le.PutUint16(b[offReserved2:], m.Reserved02)
	le.PutUint32(b[offSalt:], salt)
	le.PutUint64(b[offMsgID:], m.MsgID)
	le.PutUint64(b[offCircuit:], m.Circuit)
	le.PutUint64(b[offReserved3:], m.Reserved18)
	le.PutUint32(b[offCmd:], m.Cmd)
	var acrc uint32
	if len(m.Aux) > 0 {
		acrc = auxCRC(m.Aux)
	}
	le.PutUint32(b[offAuxCRC:], acrc)
	le.PutUint32(b[offAuxBytes:], uint32(len(m.Aux)))
	le.PutUint32(b[offError:], m.Error)
	le.PutUint64(b[offAuxDescr:], m.AuxDescr)
	le.PutUint32(b[offReserved4:], m.Reserved38)
	copy(b[HdrSize:], m.Ext)
	le.PutUint32(b[offHdrCRC:], hdrCRC(b))
	return dst
}

// AppendWire appends the whole message (header, aux, padding) to dst.
func (m *Msg) AppendWire(dst []byte, salt uint32) []byte {
	dst = m.AppendHeader(dst, salt)
	dst = append(dst, m.Aux...)
	return append(dst, zeroPad[:align64(len(m.Aux))-len(m.Aux)]...)
}

// byteOrder picks the decoding order from the first two bytes.
func byteOrder(b []byte) (binary.ByteOrder, error) {
	switch m := binary.LittleEndian.Uint16(b[offMagic:]); m {
	case MagicLE:
		return binary.LittleEndian, nil
	case MagicSwapped:
		return binary.BigEndian, nil
	default:
		return nil, wireErr("magic", uint64(m), "not a dmsg header")
	}
}

// PeekSizes validates a base header's framing fields and returns the
// extended header size and the padded aux size that follow it on the wire.
// It is all a stream reader needs before reading the rest of a message.
func PeekSizes(b []byte) (hdrSize, auxPadded int, err error) {
	if len(b) < HdrSize {
		return 0, 0, wireErr("length", uint64(len(b)), "short header")
	}
	bo, err := byteOrder(b)
	if err != nil {
		return 0, 0, err
	}
	cmd := bo.Uint32(b[offCmd:])
	hs := cmdHdrSize(cmd)
	if hs < HdrSize || hs > HdrMax {
		return 0, 0, wireErr("cmd", uint64(cmd), "header size %d outside %d..%d", hs, HdrSize, HdrMax)
	}
	ab := bo.Uint32(b[offAuxBytes:])
	if ab > AuxMax || align64(int(ab)) > AuxMax {
		return 0, 0, wireErr("aux_bytes", uint64(ab), "over the %d-byte limit", AuxMax)
	}
	return hs, align64(int(ab)), nil
}

// DecodeHeader decodes and verifies a complete extended header (hdr is
// exactly the declared size) into m, leaving m.Ext pointing into hdr.
func DecodeHeader(hdr []byte, m *Msg) error {
	hs, _, err := PeekSizes(hdr)
	if err != nil {
		return err
	}
	if len(hdr) != hs {
		return wireErr("length", uint64(len(hdr)), "header buffer is not the declared %d bytes", hs)
	}
	bo, _ := byteOrder(hdr)
	// The CRC is over the bytes as sent, so it is checked before any swap.
	got := bo.Uint32(hdr[offHdrCRC:])
	if want := hdrCRC(hdr); got != want {
		return wireErr("hdr_crc", uint64(got), "computed %#x", want)
	}
	m.Header = Header{
		Reserved02: bo.Uint16(hdr[offReserved2:]),
		Salt:       bo.Uint32(hdr[offSalt:]),
		MsgID:      bo.Uint64(hdr[offMsgID:]),
		Circuit:    bo.Uint64(hdr[offCircuit:]),
		Reserved18: bo.Uint64(hdr[offReserved3:]),
		Cmd:        bo.Uint32(hdr[offCmd:]),
		AuxCRC:     bo.Uint32(hdr[offAuxCRC:]),
		AuxBytes:   bo.Uint32(hdr[offAuxBytes:]),
		Error:      bo.Uint32(hdr[offError:]),
		AuxDescr:   bo.Uint64(hdr[offAuxDescr:]),
		Reserved38: bo.Uint32(hdr[offReserved4:]),
		HdrCRC:     got,
	}
	m.Ext = hdr[HdrSize:]
	m.Aux = nil
	return nil
}

// DecodeAux verifies the padded aux data that followed m's header and sets
// m.Aux to its unpadded part (pointing into padded).
func DecodeAux(padded []byte, m *Msg) error {
	n := int(m.AuxBytes)
	if len(padded) != align64(n) {
		return wireErr("aux_bytes", uint64(n), "have %d padded bytes, want %d", len(padded), align64(n))
	}
	if n == 0 {
		m.Aux = nil
		return nil
	}
	if got := crc32.Update(0, crcTable, padded); got != m.AuxCRC {
		return wireErr("aux_crc", uint64(m.AuxCRC), "computed %#x", got)
	}
	m.Aux = padded[:n]
	return nil
}

// Decode decodes one whole message from the front of b into m, verifying
// both CRCs, and returns how many bytes it used. m's slices point into b.
func Decode(b []byte, m *Msg) (int, error) {
	hs, ap, err := PeekSizes(b)
	if err != nil {
		return 0, err
	}
	if len(b) < hs+ap {
		return 0, wireErr("length", uint64(len(b)), "truncated message needs %d bytes", hs+ap)
	}
	if err := DecodeHeader(b[:hs], m); err != nil {
		return 0, err
	}
	if err := DecodeAux(b[hs:hs+ap], m); err != nil {
		return 0, err
	}
	return hs + ap, nil
}
