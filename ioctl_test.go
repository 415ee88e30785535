package main

import (
	"encoding/binary"
	"testing"
)

func TestIoctlRequestNumbers(t *testing.T) {
	t.Parallel()
	// Every row of the HAMMER2 ioctl table, computed from (nr, size).
	table := []struct {
		name string
		nr   uint8
		size int
		want uint32
	}{
		{"VERSION_GET", 64, 256, 0xC1006840},
		{"RECLUSTER", 65, 256, 0xC1006841},
		{"REMOTE_SCAN", 68, 304, 0xC1306844},
		{"REMOTE_ADD", 69, 304, 0xC1306845},
		{"REMOTE_DEL", 70, 304, 0xC1306846},
		{"REMOTE_REP", 71, 304, 0xC1306847},
		{"SOCKET_GET", 76, 304, 0xC130684C},
		{"SOCKET_SET", 77, 304, 0xC130684D},
		{"PFS_GET", 80, 320, 0xC1406850},
		{"PFS_CREATE", 81, 320, 0xC1406851},
		{"PFS_DELETE", 82, 320, 0xC1406852},
		{"PFS_LOOKUP", 83, 320, 0xC1406853},
		{"PFS_SNAPSHOT", 84, 320, 0xC1406854},
		{"INODE_GET", 86, 1056, 0xC4206856},
		{"INODE_SET", 87, 1056, 0xC4206857},
		{"INODE_GET_2014", 86, 1040, 0xC4106856},
		{"INODE_SET_2014", 87, 1040, 0xC4106857},
		{"DEBUG_DUMP", 91, 4, 0xC004685B},
		{"BULKFREE_SCAN", 92, 64, 0xC040685C},
		{"BULKFREE_ASYNC", 93, 64, 0xC040685D},
		{"DESTROY", 94, 272, 0xC110685E},
		{"EMERG_MODE", 95, 4, 0xC004685F},
		{"GROWFS", 96, 72, 0xC0486860},
		{"VOLUME_LIST", 97, 272, 0xC1106861},
		{"VOLUME_LIST2", 197, 5896, 0xD70868C5},
	}
	for _, tc := range table {
		if got := h2ioc(tc.nr, tc.size); got != tc.want {
			t.Errorf("%s: h2ioc(%d, %d) = %#x, want %#x", tc.name, tc.nr, tc.size, got, tc.want)
		}
	}

	named := []struct {
		name      string
		got, want uint32
	}{
		{"IocVersionGet", IocVersionGet, 0xC1006840},
		{"IocRecluster", IocRecluster, 0xC1006841},
		{"IocRemoteScan", IocRemoteScan, 0xC1306844},
		{"IocRemoteAdd", IocRemoteAdd, 0xC1306845},
		{"IocRemoteDel", IocRemoteDel, 0xC1306846},
		{"IocRemoteRep", IocRemoteRep, 0xC1306847},
		{"IocPFSGet", IocPFSGet, 0xC1406850},
		{"IocPFSCreate", IocPFSCreate, 0xC1406851},
		{"IocPFSDelete", IocPFSDelete, 0xC1406852},
		{"IocPFSLookup", IocPFSLookup, 0xC1406853},
	}
	for _, tc := range named {
		if tc.got != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
}

func TestIoctlIntRoundTrip(t *testing.T) {
	t.Parallel()
	for _, v := range []int32{0, 1, 2, -1, 7, 1 << 30} {
		b := MarshalIocInt(v)
		if got := int32(binary.LittleEndian.Uint32(b[0:])); got != v {
			t.Errorf("MarshalIocInt(%d): int@0 = %d", v, got)
		}
		for i, c := range b[4:] {
			if c != 0 {
				t.Fatalf("MarshalIocInt(%d): reserved byte %d = %#x", v, 4+i, c)
			}
		}
		if got := ParseIocInt(&b); got != v {
			t.Errorf("ParseIocInt(MarshalIocInt(%d)) = %d", v, got)
		}
	}
}

func ioctlTestVolconf(copyid uint8, path string) Volconf {
	return Volconf{
		CopyID: copyid, InProg: 1, ChainTo: 2, ChainFrom: 3,
		Flags: VolfEnabled | VolfInprog, Error: 4, Priority: 0x8F, RemotePfsType: PFSSlave,
		PfsClid: UUID{0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10},
		Label:   "lab",
		Path:    path,
	}
}

func TestIoctlRemoteRoundTrip(t *testing.T) {
	t.Parallel()
	r := IocRemote{
		CopyID: -1, NextID: 0x11223344, FD: 9,
		Copy1: ioctlTestVolconf(5, "span:alpha"),
		Copy2: ioctlTestVolconf(6, "span:beta"),
	}
	b := r.Marshal()
	le := binary.LittleEndian
	if got := int32(le.Uint32(b[0x00:])); got != -1 {
		t.Errorf("copyid@0 = %d", got)
	}
	if got := le.Uint32(b[0x04:]); got != 0x11223344 {
		t.Errorf("nextid@4 = %#x", got)
	}
	if got := le.Uint32(b[0x08:]); got != 9 {
		t.Errorf("fd@8 = %d", got)
	}
	for i, c := range b[0x0C:0x30] {
		if c != 0 {
			t.Errorf("reserved byte %#x = %#x", 0x0C+i, c)
		}
	}
	if b[0x30] != 5 || string(b[0x30+0x40:0x30+0x40+10]) != "span:alpha" {
		t.Errorf("copy1 not at 0x30: % x", b[0x30:0x40])
	}
	if b[0xB0] != 6 || string(b[0xB0+0x40:0xB0+0x40+9]) != "span:beta" {
		t.Errorf("copy2 not at 0xB0: % x", b[0xB0:0xC0])
	}
	if b[0x30+0x08] != PFSSlave || b[0x30+0x20] != 0x01 {
		t.Errorf("copy1 fields misplaced: % x", b[0x30:0x60])
	}
	if got := ParseIocRemote(&b); got != r {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, r)
	}
}

func TestIoctlPFSRoundTrip(t *testing.T) {
	t.Parallel()
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'a' + byte(i%26)
	}
	p := IocPFS{
		NameKey: IocPFSKeySelf, NameNext: 0x0102030405060708,
		PfsType: PFSMaster, PfsSubtype: 1, PfsFlags: 0x1,
		PfsFsid: NewUUID(), PfsClid: NewUUID(),
		Name: "ROOT",
	}
	b := p.Marshal()
	le := binary.LittleEndian
	switch {
	case le.Uint64(b[0x00:]) != IocPFSKeySelf:
		t.Errorf("name_key@0 = %#x", le.Uint64(b[0x00:]))
	case le.Uint64(b[0x08:]) != 0x0102030405060708:
		t.Errorf("name_next@8 = %#x", le.Uint64(b[0x08:]))
	case b[0x10] != PFSMaster || b[0x11] != 1:
		t.Errorf("type/subtype@0x10 = %d/%d", b[0x10], b[0x11])
	case le.Uint32(b[0x14:]) != 1:
		t.Errorf("flags@0x14 = %#x", le.Uint32(b[0x14:]))
	case UUID(b[0x20:0x30]) != p.PfsFsid:
		t.Errorf("fsid@0x20 = % x", b[0x20:0x30])
	case UUID(b[0x30:0x40]) != p.PfsClid:
		t.Errorf("clid@0x30 = % x", b[0x30:0x40])
	case string(b[0x40:0x45]) != "ROOT\x00":
		t.Errorf("name@0x40 = %q", b[0x40:0x45])
	}
	if got := ParseIocPFS(&b); got != p {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, p)
	}

	// The name field keeps NAME_MAX bytes and a NUL, whatever is given.
	p.Name = string(long)
	b = p.Marshal()
	if b[IocPFSSize-1] != 0 {
		t.Errorf("last name byte = %#x, want NUL", b[IocPFSSize-1])
	}
	if got := ParseIocPFS(&b).Name; got != string(long[:IocPFSNameMax]) {
		t.Errorf("long name read back as %d bytes, want %d", len(got), IocPFSNameMax)
	}
	// A kernel buffer without a NUL is cut at byte 255.
	copy(b[0x40:], long)
	if got := ParseIocPFS(&b).Name; len(got) != IocPFSNameMax {
		t.Errorf("unterminated name read back as %d bytes", len(got))
	}
}
