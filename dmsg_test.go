package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
)

func TestCRCVectors(t *testing.T) {
	t.Parallel()
	if got := crc32.Checksum([]byte("123456789"), crcTable); got != 0xE3069283 {
		t.Errorf("crc32c(123456789) = %#x, want 0xe3069283", got)
	}
	if got := crc32.Checksum(make([]byte, 64), crcTable); got != 0x03C8EB67 {
		t.Errorf("crc32c(64 zero bytes) = %#x, want 0x03c8eb67", got)
	}
	if got := auxCRC([]byte("hello\x00")); got != 0xFCD72279 {
		t.Errorf("aux crc of hello = %#x, want 0xfcd72279", got)
	}
}

// mkcmd builds a command value as the reference states the rule:
// proto | code<<8 | the struct size rounded up to 64-byte units.
func mkcmd(proto, code uint32, structBytes int) uint32 {
	return proto | code<<8 | uint32((structBytes+Align-1)/Align)
}

// The command values are pinned twice: by the rule from each struct's
// size, and by the literal value the reference README lists (checked
// against a build of the C headers) or PROTOCOL §6 gives ours.
func TestCommandValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		got         uint32
		proto, code uint32
		structBytes int
		want        uint32
	}{
		{"LNK_PAD", CmdLnkPad, ProtoLNK, 0x000, 64, 0x00000001},
		{"LNK_PING", CmdLnkPing, ProtoLNK, 0x001, 64, 0x00000101},
		{"LNK_AUTH", CmdLnkAuth, ProtoLNK, 0x010, 128, 0x00001002},
		{"LNK_CONN", CmdLnkConn, ProtoLNK, 0x011, 328, 0x00001106},
		{"LNK_SPAN", CmdLnkSpan, ProtoLNK, 0x012, 432, 0x00001207},
		{"LNK_HAMMER2_VOLCONF", CmdLnkVolconf, ProtoLNK, 0x020, 472, 0x00002008},
		{"LNK_ERROR", CmdLnkError, ProtoLNK, 0xFFF, 64, 0x000FFF01},
		{"DBG_SHELL", CmdDbgShell, ProtoDBG, 0x001, 64, 0x00100101},
		{"CAC_LOCK", CmdCacLock, ProtoCAC, 0x001, 0x78, 0x00300102},
		{"QRM_COMMIT", CmdQrmCommit, ProtoQRM, 0x001, 0x58, 0x00400102},
		{"QRM_RAFT", CmdQrmRaft, ProtoQRM, 0x002, 0x60, 0x00400202},
		{"QRM_JOIN", CmdQrmJoin, ProtoQRM, 0x003, 0x79, 0x00400302},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %#08x, want %#08x", tc.name, tc.got, tc.want)
		}
		if rule := mkcmd(tc.proto, tc.code, tc.structBytes); rule != tc.want {
			t.Errorf("%s: the rule gives %#08x for a %d-byte struct, want %#08x", tc.name, rule, tc.structBytes, tc.want)
		}
		if got := CmdString(tc.got); got != tc.name {
			t.Errorf("CmdString(%#08x) = %q, want %q", tc.got, got, tc.name)
		}
	}
}

func TestCmdString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmd  uint32
		want string
	}{
		{CmdLnkSpan | FlagCreate | FlagReply, "LNK_SPAN|CREATE|REPLY"},
		{CmdQrmCommit | FlagDelete, "QRM_COMMIT|DELETE"},
		{CmdLnkError | FlagCreate | FlagDelete | FlagReply | FlagRevTrans, "LNK_ERROR|CREATE|DELETE|REPLY|REVTRANS"},
		{mkcmd(ProtoBLK, 0x003, 96), "BLK_READ"},
		{mkcmd(ProtoBLK, 0xFFF, 144), "BLK_ERROR"},
		// Every family names itself, so a log says what a peer spoke.
		{mkcmd(ProtoQRM, 0x005, 128), "QRM_0x005(128B)"},
		{mkcmd(ProtoCAC, 0x001, 64), "CAC_0x001(64B)"}, // CAC_LOCK's code with the wrong size is not CAC_LOCK
		{mkcmd(ProtoHM2, 0x001, 64) | FlagCreate, "HM2_0x001(64B)|CREATE"},
		{mkcmd(ProtoVOP, 0x010, 192), "VOP_0x010(192B)"},
		{mkcmd(ProtoLNK, 0x013, 80), "LNK_0x013(128B)"},
		{0x00F00101, "0x00f00101"},
	} {
		if got := CmdString(tc.cmd); got != tc.want {
			t.Errorf("CmdString(%#08x) = %q, want %q", tc.cmd, got, tc.want)
		}
	}
}

// The error codes are pinned: DragonFly's from the reference README,
// ours from PROTOCOL §6 (and SECURITY.md for NOPERM).
func TestErrorCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code uint32
		want uint32
		name string
	}{
		{ErrOK, 0x00, "0x00 OK"},
		{ErrNoSupp, 0x20, "0x20 NOSUPP"},
		{ErrLostLink, 0x21, "0x21 LOSTLINK"},
		{ErrIO, 0x22, "0x22 IO"},
		{ErrParam, 0x23, "0x23 PARAM"},
		{ErrCantCirc, 0x24, "0x24 CANTCIRC"},
		{ErrQuorumTimeout, 0x25, "0x25 QUORUM_TIMEOUT"},
		{ErrQuorumUnknown, 0x26, "0x26 QUORUM_UNKNOWN"},
		{ErrNoQuorum, 0x27, "0x27 NO_QUORUM"},
		{ErrCacConflict, 0x28, "0x28 CAC_CONFLICT"},
		{ErrCacExpired, 0x29, "0x29 CAC_EXPIRED"},
		{ErrNoPerm, 0x2A, "0x2a NOPERM"},
		{ErrQuorumBusy, 0x2B, "0x2b QUORUM_BUSY"},
	} {
		if tc.code != tc.want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.code, tc.want)
		}
		if got := ErrString(tc.code); got != tc.name {
			t.Errorf("ErrString(%#x) = %q, want %q", tc.code, got, tc.name)
		}
	}
	if got := ErrString(0x05); got != "0x05" {
		t.Errorf("ErrString(5) = %q, want the bare number", got)
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGoldenMessages(t *testing.T) {
	t.Parallel()
	ping := mustHex(t, "3248000000000000000000000000000000000000000000000000000000000000"+
		"0101000000000000000000000000000000000000000000000000000041a426f4")
	for _, tc := range []struct {
		name    string
		msg     Msg
		salt    uint32
		hdrCRC  uint32
		wantHex []byte
	}{
		{"ping", Msg{Header: Header{Cmd: CmdLnkPing}}, 0, 0xF426A441, ping},
		{"ping-reply", Msg{Header: Header{Cmd: CmdLnkPing | FlagReply}}, 1, 0x17298A04, nil},
		{"shell", Msg{Header: Header{Cmd: CmdDbgShell}, Aux: []byte("hello\x00")}, 3, 0x8B7963D2, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wire := tc.msg.AppendWire(nil, tc.salt)
			if got := binary.LittleEndian.Uint32(wire[offHdrCRC:]); got != tc.hdrCRC {
				t.Errorf("hdr_crc = %#x, want %#x", got, tc.hdrCRC)
			}
			if tc.wantHex != nil && !bytes.Equal(wire, tc.wantHex) {
				t.Errorf("wire =\n%x\nwant\n%x", wire, tc.wantHex)
			}
			if len(wire)%Align != 0 {
				t.Errorf("wire length %d not 64-aligned", len(wire))
			}
			var m Msg
			n, err := Decode(wire, &m)
			if err != nil || n != len(wire) {
				t.Fatalf("Decode = %d, %v", n, err)
			}
			if m.Cmd != tc.msg.Cmd || m.Salt != tc.salt || !bytes.Equal(m.Aux, tc.msg.Aux) {
				t.Errorf("round trip: got %+v aux %q", m.Header, m.Aux)
			}
		})
	}
}

// A peer of the other byte order: only the 64-byte base header is swapped,
// and its CRC is over the bytes as sent.
func TestDecodeSwapped(t *testing.T) {
	t.Parallel()
	hdr := make([]byte, 128) // a 2-unit header with a payload that must stay as sent
	be := binary.BigEndian
	be.PutUint16(hdr[offMagic:], MagicLE)
	be.PutUint32(hdr[offSalt:], 0xABCDEF05)
	be.PutUint64(hdr[offMsgID:], 0x1122334455667788)
	be.PutUint32(hdr[offCmd:], FlagCreate|mkcmd(ProtoDBG, 0x7, 128))
	be.PutUint32(hdr[offError:], ErrParam)
	copy(hdr[64:], "payload-bytes")
	be.PutUint32(hdr[offHdrCRC:], hdrCRC(hdr))
	var m Msg
	if _, err := Decode(hdr, &m); err != nil {
		t.Fatal(err)
	}
	if m.Salt != 0xABCDEF05 || m.MsgID != 0x1122334455667788 || m.Error != ErrParam ||
		m.Cmd != FlagCreate|mkcmd(ProtoDBG, 0x7, 128) || !bytes.HasPrefix(m.Ext, []byte("payload-bytes")) {
		t.Errorf("swapped decode: %+v ext %q", m.Header, m.Ext[:13])
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	good := (&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: []byte("hi\x00")}).AppendWire(nil, 0)
	mutate := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	le := binary.LittleEndian
	for _, tc := range []struct {
		name  string
		in    []byte
		field string
	}{
		{"magic", mutate(func(b []byte) { b[0] = 0x99 }), "magic"},
		{"size-zero", mutate(func(b []byte) { b[offCmd] = 0 }), "cmd"},
		{"size-too-big", mutate(func(b []byte) { b[offCmd] = 33 }), "cmd"},
		{"aux-too-big", mutate(func(b []byte) { le.PutUint32(b[offAuxBytes:], AuxMax+1) }), "aux_bytes"},
		{"hdr-crc", mutate(func(b []byte) { b[offMsgID] ^= 1 }), "hdr_crc"},
		{"aux-crc", mutate(func(b []byte) { b[HdrSize] ^= 1 }), "aux_crc"},
		{"aux-pad-crc", mutate(func(b []byte) { b[len(b)-1] = 1 }), "aux_crc"},
		{"truncated", good[:70], "length"},
		{"short", good[:10], "length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m Msg
			_, err := Decode(tc.in, &m)
			var we *WireError
			if !errors.As(err, &we) || we.Field != tc.field {
				t.Fatalf("Decode error = %v, want field %q", err, tc.field)
			}
		})
	}
}

// LNK_SPAN offsets pinned by the reference README.
func TestLnkSpanLayout(t *testing.T) {
	t.Parallel()
	var s LnkSpan
	s.PeerID = UUID{1: 0xAA}
	s.PfsID = UUID{2: 0xBB}
	s.PfsType, s.PeerType, s.ProtoVersion, s.Status = 6, 3, 1, 0x01020304
	s.Dist, s.RNSS = 5, 0xDEADBEEF
	s.SetLabels("peer-label", "pfs-label")
	m := Msg{Header: Header{Cmd: CmdLnkSpan | FlagCreate, MsgID: 9}, Ext: s.Marshal()}
	wire := m.AppendWire(nil, 0)
	if len(wire) != 448 {
		t.Fatalf("LNK_SPAN wire size %d, want 448", len(wire))
	}
	le := binary.LittleEndian
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"peer_id@64", uint64(wire[64+1]), 0xAA},
		{"pfs_id@80", uint64(wire[80+2]), 0xBB},
		{"pfs_type@96", uint64(wire[96]), 6},
		{"peer_type@97", uint64(wire[97]), 3},
		{"proto_version@98", uint64(le.Uint16(wire[98:])), 1},
		{"status@100", uint64(le.Uint32(wire[100:])), 0x01020304},
		{"dist@112", uint64(le.Uint32(wire[112:])), 5},
		{"rnss@116", uint64(le.Uint32(wire[116:])), 0xDEADBEEF},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
	if got := string(wire[176 : 176+10]); got != "peer-label" {
		t.Errorf("peer_label@176 = %q", got)
	}
	if got := string(wire[304 : 304+9]); got != "pfs-label" {
		t.Errorf("pfs_label@304 = %q", got)
	}
	var d Msg
	if _, err := Decode(wire, &d); err != nil {
		t.Fatal(err)
	}
	var back LnkSpan
	if err := back.Unmarshal(d.Ext); err != nil {
		t.Fatal(err)
	}
	if back != s {
		t.Errorf("span round trip:\n got %+v\nwant %+v", back, s)
	}
}

func TestLnkConnLayout(t *testing.T) {
	t.Parallel()
	c := LnkConn{PeerMask: 1 << PeerHammer2, PeerType: PeerHammer2, ProtoVersion: 1,
		RNSS: 7, PeerLabel: "host/hammer2-mount", PeerID: UUID{0: 1}, MediaID: UUID{15: 2}}
	ext := c.Marshal()
	if len(ext)+HdrSize != 384 {
		t.Fatalf("LNK_CONN on the wire = %d bytes, want 384", len(ext)+HdrSize)
	}
	if ext[0x78-HdrSize] != PeerHammer2 || string(ext[0xC4-HdrSize:0xC4-HdrSize+18]) != "host/hammer2-mount" {
		t.Errorf("LNK_CONN layout wrong: % x", ext[0x70-HdrSize:0xD0-HdrSize])
	}
	back, err := ParseLnkConn(ext)
	if err != nil || back != c {
		t.Errorf("conn round trip = %+v, %v", back, err)
	}
	if _, err := ParseLnkConn(ext[:100]); err == nil {
		t.Error("short LNK_CONN accepted")
	}
}

func TestVolconfLayout(t *testing.T) {
	t.Parallel()
	v := LnkVolconf{Index: 3, MediaID: UUID{0: 9}, Copy: Volconf{CopyID: 3, Flags: VolfEnabled,
		Priority: 0x0F, PfsClid: UUID{4: 4}, Label: "lab", Path: "span:10.0.0.1"}}
	ext := v.Marshal()
	if len(ext)+HdrSize != 512 {
		t.Fatalf("VOLCONF on the wire = %d, want 512", len(ext)+HdrSize)
	}
	if ext[0x40-HdrSize] != 3 || string(ext[0x80-HdrSize:0x80-HdrSize+13]) != "span:10.0.0.1" ||
		binary.LittleEndian.Uint32(ext[0xC0-HdrSize:]) != 3 || ext[0xC8-HdrSize] != 9 {
		t.Error("VOLCONF layout wrong")
	}
	back, err := ParseLnkVolconf(ext)
	if err != nil || back != v {
		t.Errorf("volconf round trip = %+v, %v", back, err)
	}
	binary.LittleEndian.PutUint32(ext[0xC0-HdrSize:], 256)
	if _, err := ParseLnkVolconf(ext); err == nil {
		t.Error("VOLCONF index 256 accepted")
	}
}

func TestUUIDLayout(t *testing.T) {
	t.Parallel()
	u, err := ParseUUID("00112233-4455-6677-8899-aabbccddeeff")
	if err != nil {
		t.Fatal(err)
	}
	want := UUID{0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	if u != want {
		t.Errorf("wire layout % x, want % x", u[:], want[:])
	}
	if u.String() != "00112233-4455-6677-8899-aabbccddeeff" {
		t.Errorf("String = %s", u)
	}
	if _, err := ParseUUID("nope"); err == nil {
		t.Error("bad uuid accepted")
	}
	n := NewUUID()
	if n.IsNil() || n.rfc()[6]>>4 != 4 {
		t.Errorf("NewUUID %s not a v4 uuid", n)
	}
}

func TestLabelsNULForced(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 200)
	var s LnkSpan
	s.SetLabels(long, long)
	if got := s.PeerLabelString(); len(got) != 127 {
		t.Errorf("label kept %d bytes, want 127", len(got))
	}
	if got := ShellText([]byte("abc")); got != "ab" {
		t.Errorf("ShellText forces the last byte to NUL: got %q", got)
	}
}
