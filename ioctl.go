package main

// HAMMER2 ioctl request numbers and argument layouts. The arguments are
// handled as fixed-size byte arrays rather than Go structs so that their
// sizes and offsets are exact on every OS and architecture: the kernel
// copies exactly the size encoded in the request number each way.

import (
	"encoding/binary"
)

// DragonFly sys/sys/ioccom.h encoding.
const (
	iocInOut    = 0xC0000000 // _IOWR: copied in and out
	iocParmMask = 0x1FFF     // 13-bit argument length
	iocGroupH2  = 'h'
)

// IOWR encodes a DragonFly _IOWR(group, nr, size) request number. The
// values also equal Linux's _IOWR for sizes below 8 KiB.
func IOWR(group byte, nr uint8, size int) uint32 {
	return iocInOut | uint32(size&iocParmMask)<<16 | uint32(group)<<8 | uint32(nr)
}

// h2ioc encodes a HAMMER2 request (group 'h').
func h2ioc(nr uint8, size int) uint32 { return IOWR(iocGroupH2, nr, size) }

// Argument sizes.
const (
	IocIntSize    = 256 // hammer2_ioc_version, hammer2_ioc_recluster
	IocRemoteSize = 304 // hammer2_ioc_remote
	IocPFSSize    = 320 // hammer2_ioc_pfs
)

// Request numbers used by the leaf. Vars, not consts, because they come
// from IOWR; they are pinned by ioctl_test.go.
var (
	IocVersionGet = h2ioc(64, IocIntSize)
	IocRecluster  = h2ioc(65, IocIntSize)
	IocRemoteScan = h2ioc(68, IocRemoteSize)
	IocRemoteAdd  = h2ioc(69, IocRemoteSize)
	IocRemoteDel  = h2ioc(70, IocRemoteSize)
	IocRemoteRep  = h2ioc(71, IocRemoteSize)
	IocPFSGet     = h2ioc(80, IocPFSSize)
	IocPFSCreate  = h2ioc(81, IocPFSSize)
	IocPFSDelete  = h2ioc(82, IocPFSSize)
	IocPFSLookup  = h2ioc(83, IocPFSSize)
)

// MarshalIocInt returns a hammer2_ioc_version or hammer2_ioc_recluster
// argument holding v (the version, or the fd handed to RECLUSTER).
func MarshalIocInt(v int32) (b [IocIntSize]byte) {
	binary.LittleEndian.PutUint32(b[0:], uint32(v))
	return b
}

// ParseIocInt reads the int at offset 0 of a version/recluster argument.
func ParseIocInt(b *[IocIntSize]byte) int32 {
	return int32(binary.LittleEndian.Uint32(b[0:]))
}

// IocRemote is hammer2_ioc_remote. The reserved words are not kept.
type IocRemote struct {
	CopyID int32 // slot; < 0 asks ADD/DEL to search
	NextID int32 // SCAN output: next non-empty slot, or -1
	FD     int32 // unused by every handler
	Copy1  Volconf
	Copy2  Volconf // "rename ops only"; unused
}

const (
	iocRemoteCopy1 = 0x30
	iocRemoteCopy2 = 0xB0
)

// Marshal returns the 304-byte argument.
func (r *IocRemote) Marshal() (b [IocRemoteSize]byte) {
	le := binary.LittleEndian
	le.PutUint32(b[0x00:], uint32(r.CopyID))
	le.PutUint32(b[0x04:], uint32(r.NextID))
	le.PutUint32(b[0x08:], uint32(r.FD))
	r.Copy1.MarshalTo(b[iocRemoteCopy1:])
	r.Copy2.MarshalTo(b[iocRemoteCopy2:])
	return b
}

// ParseIocRemote decodes a 304-byte argument.
func ParseIocRemote(b *[IocRemoteSize]byte) IocRemote {
	le := binary.LittleEndian
	r := IocRemote{
		CopyID: int32(le.Uint32(b[0x00:])),
		NextID: int32(le.Uint32(b[0x04:])),
		FD:     int32(le.Uint32(b[0x08:])),
	}
	// The slices are always VolconfSize long, so parsing cannot fail.
	r.Copy1, _ = ParseVolconf(b[iocRemoteCopy1 : iocRemoteCopy1+VolconfSize])
	r.Copy2, _ = ParseVolconf(b[iocRemoteCopy2 : iocRemoteCopy2+VolconfSize])
	return r
}

// IocPFSKeySelf as PFS_GET's name_key selects the PFS the fd lives in; as
// name_next it marks the end of the iteration.
const IocPFSKeySelf = ^uint64(0)

// IocPFSNameMax is the longest PFS name (NAME_MAX); the field has a NUL.
const IocPFSNameMax = 255

// IocPFS is hammer2_ioc_pfs. The reserved fields are not kept.
type IocPFS struct {
	NameKey    uint64
	NameNext   uint64
	PfsType    uint8
	PfsSubtype uint8
	PfsFlags   uint32
	PfsFsid    UUID // this PFS instance
	PfsClid    UUID // the cluster it belongs to
	Name       string
}

// Marshal returns the 320-byte argument; Name is truncated to 255 bytes.
func (p *IocPFS) Marshal() (b [IocPFSSize]byte) {
	le := binary.LittleEndian
	le.PutUint64(b[0x00:], p.NameKey)
	le.PutUint64(b[0x08:], p.NameNext)
	b[0x10] = p.PfsType
	b[0x11] = p.PfsSubtype
	le.PutUint32(b[0x14:], p.PfsFlags)
	copy(b[0x20:], p.PfsFsid[:])
	copy(b[0x30:], p.PfsClid[:])
	putLabel(b[0x40:IocPFSSize], p.Name)
	return b
}

// ParseIocPFS decodes a 320-byte argument, reading the name up to its NUL
// (forced at byte 255, as the kernel does).
func ParseIocPFS(b *[IocPFSSize]byte) IocPFS {
	le := binary.LittleEndian
	p := IocPFS{
		NameKey:    le.Uint64(b[0x00:]),
		NameNext:   le.Uint64(b[0x08:]),
		PfsType:    b[0x10],
		PfsSubtype: b[0x11],
		PfsFlags:   le.Uint32(b[0x14:]),
		Name:       label(b[0x40:IocPFSSize]),
	}
	copy(p.PfsFsid[:], b[0x20:])
	copy(p.PfsClid[:], b[0x30:])
	return p
}
