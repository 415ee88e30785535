//go:build !dragonfly

package main

// A simulated DragonFly kernel for the leaf's kernel link, written from
// kernel-interface.md §7-8 ("Fake-kernel checklist") and independent of the
// link engine: it frames and parses dmsg by hand and uses the spec's literal
// command values. It dials the stub PFS's kernel.sock, which is what
// RECLUSTER handing the kernel a socket looks like off DragonFly, or a
// service's TCP port, as mount_hammer2 hands the kernel its link at mount
// (dialSimKernelTCP).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The kernel's command values, as the spec lists them.
const (
	kLnkConnCreate   uint32 = 0x80001106 // LNK_CONN|CREATE
	kLnkSpanCreate   uint32 = 0x80001207 // LNK_SPAN|CREATE
	kVolconf         uint32 = 0x00002008 // LNK_HAMMER2_VOLCONF, no flags
	kResultOpen      uint32 = 0xA80FFF01 // LNK_ERROR|CREATE|REPLY|REVTRANS
	kResultClose     uint32 = 0xE80FFF01 // LNK_ERROR|CREATE|DELETE|REPLY|REVTRANS
	kReplyDelete     uint32 = 0x680FFF01 // LNK_ERROR|REPLY|DELETE|REVTRANS
	kOwnDelete       uint32 = 0x400FFF01 // LNK_ERROR|DELETE
	kOneWayErrReply  uint32 = 0x200FFF01 // LNK_ERROR|REPLY, one-way
	kLnkError        uint32 = 0x000FFF01
	kLnkPing         uint32 = 0x00000101
	kDbgShell        uint32 = 0x00100101
	kErrNoSupp       uint32 = 0x20
	kFlagCreate      uint32 = 0x80000000
	kFlagDelete      uint32 = 0x40000000
	kFlagReply       uint32 = 0x20000000
	kFlagRevTrans    uint32 = 0x08000000
	kBaseMask        uint32 = 0x00FFFFFF
	kAuxMax                 = 65536
	kMsgIDBase       uint64 = 0xfffff80012340000 // kernel state addresses
	kMsgIDStride     uint64 = 0x200
	kPeerTypeHammer2        = 3
)

// simPFS is one PFS the simulated device holds (an inode under the
// super-root).
type simPFS struct {
	Label string
	Clid  UUID
	Fsid  UUID
	Type  uint8
}

// simRecv is a message the kernel received, with its arrival time.
type simRecv struct {
	Msg
	At time.Time
}

// simKernel is the kernel's end of one RECLUSTER link.
type simKernel struct {
	t    testing.TB
	name string
	c    net.Conn
	pfs  PFS // the REMOTE table on "media", or nil for an in-memory one

	wmu      sync.Mutex // serializes writes; guards txSeq and writeErr
	txSeq    uint32
	writeErr error

	mu        sync.Mutex
	connID    uint64
	connState bool // our LNK_CONN state exists: VOLCONFs may be sent
	dumped    bool // VOLDATA dump and spans sent
	table     [RemoteSlots]Volconf
	mediaID   UUID
	pfses     []simPFS
	spanIDs   []uint64          // our LNK_SPANs, in pfses order
	ours      map[uint64]string // open transactions we opened: "conn" or "span"
	everOurs  map[uint64]bool   // every msgid we ever used
	theirs    map[uint64]uint32 // open transactions the leaf opened: msgid -> command
	nextID    uint64
	rxSeq     uint32
	recv      []simRecv
	sent      []Msg
	viol      []string
	notes     []string
	changed   chan struct{}
	readErr   error
	done      chan struct{}

	// CAC_LOCK states: when each ended (the kernel released it on a
	// revoke, or the leaf closed it). A kernel releases at once when
	// asked, unless ignoreRevoke (a misbehaving kernel) is set.
	lockEnd      map[uint64]time.Time
	revokes      int
	ignoreRevoke bool
	// flushAll: a kernel that uses all of a revoke's time to flush. Its
	// state ends when that time is out (lockEnd is then in the future) or
	// when the leaf closes it, whichever comes first; the release is its
	// owner's to send.
	flushAll bool
	// closedEarly: the flushing states the leaf closed before their
	// revoke's time was out (the leaf's clock and the kernel's disagree
	// on when that is by a delivery: PROTOCOL §6.6's margin).
	closedEarly map[uint64]bool
	// downgrade: a revoke that lets the holder keep SHARED is answered by
	// asking for SHARED on the same transaction instead of releasing.
	downgrade bool
	lockMode  map[uint64]cacMode // the last grant on each held state
}

// newSimKernel starts the kernel side on c: it sends its LNK_CONN at once,
// before reading anything, and then serves the link. pfs backs the REMOTE
// table (read now, as the volume header), or is nil for an empty table.
func newSimKernel(t testing.TB, name string, c net.Conn, pfs PFS, pfses []simPFS, slots ...Volconf) *simKernel {
	t.Helper()
	host, _ := os.Hostname()
	k := &simKernel{t: t, name: name, c: c, pfs: pfs, pfses: pfses, mediaID: NewUUID(),
		ours: map[uint64]string{}, everOurs: map[uint64]bool{}, theirs: map[uint64]uint32{}, lockEnd: map[uint64]time.Time{},
		lockMode: map[uint64]cacMode{}, closedEarly: map[uint64]bool{},
		changed: make(chan struct{}), done: make(chan struct{})}
	if pfs != nil {
		vs, err := pfs.RemoteScan()
		if err != nil {
			t.Fatalf("sim kernel %s: reading the REMOTE table: %v", name, err)
		}
		for _, v := range vs {
			k.table[v.CopyID] = v
		}
	}
	for _, v := range slots {
		k.table[v.CopyID] = v
	}
	k.connID = k.allocID()
	k.connState = true
	k.ours[k.connID] = "conn"
	conn := LnkConn{PeerMask: 1 << kPeerTypeHammer2, PeerType: kPeerTypeHammer2, ProtoVersion: 1,
		PeerLabel: host + "/hammer2-mount"}
	k.send(Msg{Header: Header{Cmd: kLnkConnCreate, MsgID: k.connID}, Ext: conn.Marshal()})
	go k.readLoop()
	t.Cleanup(func() { k.close() })
	return k
}

// dialSimKernel dials the stub PFS's kernel.sock (there once the leaf is
// ready) and starts a kernel on it that holds pfses.
func dialSimKernel(t testing.TB, name, pfsDir string, pfses []simPFS) *simKernel {
	t.Helper()
	sock := KernelSocketPath(pfsDir)
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("sim kernel %s: dialing %s: %v", name, sock, err)
	}
	pfs, err := OpenPFS(pfsDir)
	if err != nil {
		c.Close()
		t.Fatalf("sim kernel %s: %v", name, err)
	}
	t.Cleanup(func() { pfs.Close() })
	return newSimKernel(t, name, c, pfs, pfses)
}

// dialSimKernelTCP connects to a service's TCP port as mount_hammer2
// does on DragonFly (it then hands the socket to the kernel, which speaks
// on it from its first byte: no handshake, so the service needs
// remote/127.0.0.1.none) and starts a kernel on it holding pfses, with
// the REMOTE slots given.
func dialSimKernelTCP(t testing.TB, name, addr string, pfses []simPFS, slots ...Volconf) *simKernel {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("sim kernel %s: dialing %s: %v", name, addr, err)
	}
	return newSimKernel(t, name, c, nil, pfses, slots...)
}

// closeConn ends the kernel's LNK_CONN from its side: no VOLCONF is
// sent after it, and its spans stay open.
func (k *simKernel) closeConn() {
	k.mu.Lock()
	id := k.connID
	k.connState = false
	delete(k.ours, id)
	k.mu.Unlock()
	k.send(Msg{Header: Header{Cmd: kOwnDelete, MsgID: id}})
}

// Changed returns a channel closed when the kernel next receives a
// message or its link ends.
func (k *simKernel) Changed() <-chan struct{} {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.changed
}

func (k *simKernel) allocID() uint64 {
	id := kMsgIDBase + k.nextID*kMsgIDStride
	k.nextID++
	k.everOurs[id] = true
	return id
}

// isOurs reports whether msgid is one the kernel opened.
func (k *simKernel) isOurs(msgid uint64) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.everOurs[msgid]
}

func (k *simKernel) close() {
	k.c.Close()
	select {
	case <-k.done:
	case <-time.After(5 * time.Second):
	}
}

// send writes messages in order, with the kernel's salt: the per-link
// counter's low byte and nothing above it.
func (k *simKernel) send(ms ...Msg) {
	k.wmu.Lock()
	defer k.wmu.Unlock()
	var b []byte
	for _, m := range ms {
		b = m.AppendWire(b, k.txSeq&0xFF)
		k.txSeq++
	}
	_ = k.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if k.writeErr != nil {
		return
	}
	if _, err := k.c.Write(b); err != nil {
		// The writer stops; the reader still drains what the leaf sent
		// before it closed (a leaf that exits closes without waiting for
		// the kernel's answers to its DELETEs).
		k.writeErr = err
		k.note("write failed: %v", err)
		return
	}
	k.mu.Lock()
	k.sent = append(k.sent, ms...)
	k.mu.Unlock()
}

func (k *simKernel) violation(format string, args ...any) {
	k.mu.Lock()
	k.viol = append(k.viol, fmt.Sprintf(format, args...))
	k.mu.Unlock()
}

func (k *simKernel) note(format string, args ...any) {
	k.mu.Lock()
	k.notes = append(k.notes, fmt.Sprintf(format, args...))
	k.mu.Unlock()
}

// readLoop reads as kern_dmsg.c does: header, magic exactly 0x4832, size
// from cmd within 64..2048, aux up to 64 KiB padded to 64; anything else
// kills the link. CRCs are not checked by the kernel, but a leaf must send
// valid ones, so a wrong one is recorded as a violation.
func (k *simKernel) readLoop() {
	defer close(k.done)
	le := binary.LittleEndian
	for {
		base := make([]byte, HdrSize)
		if _, err := io.ReadFull(k.c, base); err != nil {
			k.die(err)
			return
		}
		if m := le.Uint16(base[offMagic:]); m != MagicLE {
			k.violation("bad magic %#x: link killed", m)
			k.die(fmt.Errorf("bad magic %#x", m))
			return
		}
		cmd := le.Uint32(base[offCmd:])
		hs := int(cmd&0xFF) * 64
		if hs < HdrSize || hs > HdrMax {
			k.violation("cmd %#x: header size %d: link killed", cmd, hs)
			k.die(fmt.Errorf("bad header size %d", hs))
			return
		}
		ab := int(le.Uint32(base[offAuxBytes:]))
		if ab > kAuxMax {
			k.violation("aux_bytes %d over 64 KiB: link killed", ab)
			k.die(fmt.Errorf("aux_bytes %d", ab))
			return
		}
		hdr := make([]byte, hs)
		copy(hdr, base)
		if _, err := io.ReadFull(k.c, hdr[HdrSize:]); err != nil {
			k.die(err)
			return
		}
		aux := make([]byte, align64(ab))
		if _, err := io.ReadFull(k.c, aux); err != nil {
			k.die(err)
			return
		}
		var m Msg
		m.Header = Header{
			Salt: le.Uint32(hdr[offSalt:]), MsgID: le.Uint64(hdr[offMsgID:]), Circuit: le.Uint64(hdr[offCircuit:]),
			Cmd: cmd, AuxCRC: le.Uint32(hdr[offAuxCRC:]), AuxBytes: uint32(ab), Error: le.Uint32(hdr[offError:]),
			HdrCRC: le.Uint32(hdr[offHdrCRC:]),
		}
		m.Ext, m.Aux = hdr[HdrSize:], aux[:ab]
		if want := hdrCRC(hdr); m.HdrCRC != want {
			k.violation("%s msgid %#x: hdr_crc %#x, want %#x", CmdString(cmd), m.MsgID, m.HdrCRC, want)
		}
		if ab > 0 {
			if want := auxCRC(aux[:ab]); m.AuxCRC != want {
				k.violation("%s msgid %#x: aux_crc %#x, want %#x", CmdString(cmd), m.MsgID, m.AuxCRC, want)
			}
		}
		k.mu.Lock()
		if m.Salt&0xFF != k.rxSeq&0xFF {
			k.viol = append(k.viol, fmt.Sprintf("%s: salt sequence byte %#x, want %#x", CmdString(cmd), m.Salt&0xFF, k.rxSeq&0xFF))
		}
		k.rxSeq++
		k.recv = append(k.recv, simRecv{Msg: m, At: time.Now()})
		close(k.changed)
		k.changed = make(chan struct{})
		k.mu.Unlock()
		k.handle(m)
	}
}

func (k *simKernel) die(err error) {
	k.c.Close()
	k.mu.Lock()
	k.readErr = err
	// Link loss: every open state is failed locally; nothing is sent.
	k.connState = false
	close(k.changed)
	k.changed = make(chan struct{})
	k.mu.Unlock()
}

// handle answers as hammer2_iocom.c / kern_dmsg.c do.
func (k *simKernel) handle(m Msg) {
	cmd, id := m.Cmd, m.MsgID
	create, del := cmd&kFlagCreate != 0, cmd&kFlagDelete != 0
	reply, rev := cmd&kFlagReply != 0, cmd&kFlagRevTrans != 0
	base := cmd & kBaseMask

	k.mu.Lock()
	var out []Msg
	var dump bool
	defer func() {
		k.mu.Unlock()
		if dump {
			out = append(k.dumpMsgs(), out...)
		}
		if len(out) > 0 {
			k.send(out...)
		}
	}()

	// Every message about a transaction we opened must say so.
	if k.everOurs[id] && !rev {
		k.viol = append(k.viol, fmt.Sprintf("%s msgid %#x names a kernel-opened transaction without REVTRANS: the kernel drops it",
			CmdString(cmd), id))
		return
	}
	if rev {
		kind, ok := k.ours[id]
		if !ok {
			k.notes = append(k.notes, fmt.Sprintf("dropped %s for unknown own msgid %#x", CmdString(cmd), id))
			return
		}
		if kind == "conn" && create && reply && !k.dumped {
			k.dumped, dump = true, true // triggers the VOLDATA dump and the spans
		}
		if kind == "lock" && base == CmdCacLock&kBaseMask && !del {
			g, err := parseCacLock(m.Ext)
			if err == nil && g.Flags&cacFlagRevoke == 0 {
				k.lockMode[id] = g.Mode
			}
			if err == nil && g.Flags&cacFlagRevoke != 0 {
				k.revokes++
				if k.downgrade && g.Mode == cacShared {
					down := cacLock{Domain: g.Domain, Mode: cacShared, Lo: g.Lo, Hi: g.Hi}
					out = append(out, Msg{Header: Header{Cmd: CmdCacLock, MsgID: id}, Ext: down.marshal()})
				} else if k.flushAll {
					k.lockEnd[id] = time.Now().Add(time.Duration(g.LeaseMs) * time.Millisecond)
				} else if !k.ignoreRevoke { // flushed at once: release
					k.lockEnd[id] = time.Now()
					delete(k.ours, id)
					out = append(out, Msg{Header: Header{Cmd: kOwnDelete, MsgID: id}})
				}
			}
			return
		}
		if del {
			if kind == "lock" {
				if at, ok := k.lockEnd[id]; !ok || time.Now().Before(at) {
					k.closedEarly[id] = ok
					k.lockEnd[id] = time.Now()
				}
			}
			delete(k.ours, id)
			if kind == "conn" {
				k.connState = false // no more VOLCONFs; our spans stay open
			}
			out = append(out, Msg{Header: Header{Cmd: kOwnDelete, MsgID: id}})
		}
		return // results and streaming elements on our states are ignored
	}
	if create {
		if reply {
			k.notes = append(k.notes, fmt.Sprintf("dropped %s msgid %#x: reply to no state", CmdString(cmd), id))
			return
		}
		if _, dup := k.theirs[id]; dup {
			k.notes = append(k.notes, fmt.Sprintf("dropped duplicate CREATE %s msgid %#x", CmdString(cmd), id))
			return
		}
		switch base {
		case CmdLnkConn & kBaseMask:
			k.theirs[id] = base
			out = append(out, Msg{Header: Header{Cmd: kResultOpen, MsgID: id}})
		case CmdLnkSpan & kBaseMask:
			var sp LnkSpan
			if err := sp.Unmarshal(m.Ext); err != nil || sp.PeerType != kPeerTypeHammer2 || sp.ProtoVersion != 1 {
				out = append(out, Msg{Header: Header{Cmd: kResultClose, MsgID: id}})
				return
			}
			k.theirs[id] = base
			out = append(out, Msg{Header: Header{Cmd: kResultOpen, MsgID: id}})
		default:
			out = append(out, Msg{Header: Header{Cmd: kResultClose, MsgID: id, Error: kErrNoSupp}})
			return
		}
		if del { // opened and closed at once
			delete(k.theirs, id)
			out = append(out, Msg{Header: Header{Cmd: kReplyDelete, MsgID: id}})
		}
		return
	}
	if del {
		if _, ok := k.theirs[id]; ok {
			delete(k.theirs, id)
			out = append(out, Msg{Header: Header{Cmd: kReplyDelete, MsgID: id}})
		} else {
			k.notes = append(k.notes, fmt.Sprintf("dropped %s for unknown msgid %#x", CmdString(cmd), id))
		}
		return
	}
	if _, ok := k.theirs[id]; ok && id != 0 {
		return // a streaming element on the leaf's transaction: ignored
	}
	// One-way messages.
	switch {
	case base == kLnkPing:
		// Never answered.
	case base == kLnkError&kBaseMask:
		// Ignored.
	case base == kDbgShell && !reply:
		out = append(out, Msg{Header: Header{Cmd: kOneWayErrReply, Error: kErrNoSupp}})
	}
}

// dumpMsgs is what the first reply to our LNK_CONN triggers: one VOLCONF
// per used slot inside our CONN, then one top-level LNK_SPAN per PFS.
func (k *simKernel) dumpMsgs() []Msg {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []Msg
	for i := range k.table {
		if k.table[i].CopyID != 0 {
			out = append(out, k.volconfMsg(i))
		}
	}
	for _, p := range k.pfses {
		id := k.allocID()
		k.ours[id] = "span"
		k.spanIDs = append(k.spanIDs, id)
		sp := LnkSpan{PeerID: p.Clid, PfsID: p.Fsid, PfsType: p.Type, PeerType: kPeerTypeHammer2, ProtoVersion: 1}
		sp.SetLabels(p.Label, "")
		out = append(out, Msg{Header: Header{Cmd: kLnkSpanCreate, MsgID: id}, Ext: sp.Marshal()})
	}
	return out
}

func (k *simKernel) volconfMsg(slot int) Msg {
	v := LnkVolconf{Copy: k.table[slot], Index: int32(slot), MediaID: k.mediaID}
	return Msg{Header: Header{Cmd: kVolconf, MsgID: k.connID}, Ext: v.Marshal()}
}

// remoteAdd is REMOTE_ADD on the given slot: the table (and media) is
// updated and one VOLCONF for the slot is pushed, if our CONN still exists.
func (k *simKernel) remoteAdd(slot int, v Volconf) {
	k.t.Helper()
	if k.pfs != nil {
		stored, err := k.pfs.RemoteAdd(slot, v)
		if err != nil {
			k.t.Fatalf("sim kernel %s: REMOTE_ADD: %v", k.name, err)
		}
		v = stored
	}
	v.CopyID = uint8(slot)
	k.update(slot, v)
}

// remoteDel is REMOTE_DEL on the given slot: only the copyid is zeroed,
// and the VOLCONF pushed carries the rest of the entry as it stays.
func (k *simKernel) remoteDel(slot int) {
	k.t.Helper()
	if k.pfs != nil {
		if err := k.pfs.RemoteDel(slot, ""); err != nil {
			k.t.Fatalf("sim kernel %s: REMOTE_DEL: %v", k.name, err)
		}
	}
	k.mu.Lock()
	v := k.table[slot]
	k.mu.Unlock()
	v.CopyID = 0
	k.update(slot, v)
}

func (k *simKernel) update(slot int, v Volconf) {
	k.mu.Lock()
	k.table[slot] = v
	if !k.connState {
		k.mu.Unlock()
		return // silently skipped, as hammer2_volconf_update does
	}
	m := k.volconfMsg(slot)
	k.mu.Unlock()
	k.send(m)
}

// waitFor waits up to d for a received message matching pred and returns
// the first one.
func (k *simKernel) waitFor(d time.Duration, what string, pred func(Msg) bool) Msg {
	k.t.Helper()
	deadline := time.After(d)
	for {
		// The predicate runs without the lock: it may use k's accessors.
		k.mu.Lock()
		recv := append([]simRecv(nil), k.recv...)
		ch, err := k.changed, k.readErr
		k.mu.Unlock()
		for _, r := range recv {
			if pred(r.Msg) {
				return r.Msg
			}
		}
		if err != nil {
			k.t.Fatalf("sim kernel %s: link gone (%v) while waiting for %s; received:\n%s", k.name, err, what, k.dump())
		}
		select {
		case <-ch:
		case <-deadline:
			k.t.Fatalf("sim kernel %s: no %s within %v; received:\n%s", k.name, what, d, k.dump())
		}
	}
}

// waitHandshake waits for the leaf's answers: the result to our CONN, its
// own CONN, and a result carrying REVTRANS for each of our spans.
func (k *simKernel) waitHandshake(d time.Duration) {
	k.t.Helper()
	k.waitFor(d, "result to the kernel's LNK_CONN", func(m Msg) bool { return m.MsgID == k.connID && m.Cmd == kResultOpen })
	k.waitFor(d, "the leaf's LNK_CONN", func(m Msg) bool { return m.Cmd == kLnkConnCreate })
	for i := range k.pfses {
		k.mu.Lock()
		id := uint64(0)
		if i < len(k.spanIDs) {
			id = k.spanIDs[i]
		}
		k.mu.Unlock()
		k.waitFor(d, fmt.Sprintf("result to the kernel's LNK_SPAN %d", i), func(m Msg) bool {
			if id == 0 {
				k.mu.Lock()
				if i < len(k.spanIDs) {
					id = k.spanIDs[i]
				}
				k.mu.Unlock()
			}
			return id != 0 && m.MsgID == id && m.Cmd&kFlagReply != 0
		})
	}
}

// waitEOF waits up to d for the link to end and returns why.
func (k *simKernel) waitEOF(d time.Duration) (error, bool) {
	select {
	case <-k.done:
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.readErr, true
	case <-time.After(d):
		return nil, false
	}
}

func (k *simKernel) received() []Msg {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Msg, len(k.recv))
	for i, r := range k.recv {
		out[i] = r.Msg
	}
	return out
}

func (k *simKernel) violations() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.viol...)
}

// checkClean fails the test for every protocol violation recorded.
func (k *simKernel) checkClean() {
	k.t.Helper()
	for _, v := range k.violations() {
		k.t.Errorf("sim kernel %s: %s", k.name, v)
	}
}

// dump describes the link for failure messages.
func (k *simKernel) dump() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "  kernel CONN msgid %#x, spans %#x\n", k.connID, k.spanIDs)
	for _, r := range k.recv {
		fmt.Fprintf(&b, "  <- %-40s %#08x msgid %#x circuit %#x error %#x\n", CmdString(r.Cmd), r.Cmd, r.MsgID, r.Circuit, r.Error)
	}
	for _, m := range k.sent {
		fmt.Fprintf(&b, "  -> %-40s %#08x msgid %#x error %#x\n", CmdString(m.Cmd), m.Cmd, m.MsgID, m.Error)
	}
	for _, n := range k.notes {
		fmt.Fprintf(&b, "  note: %s\n", n)
	}
	for _, v := range k.viol {
		fmt.Fprintf(&b, "  VIOLATION: %s\n", v)
	}
	if k.readErr != nil {
		fmt.Fprintf(&b, "  link ended: %v\n", k.readErr)
	}
	return b.String()
}

// devicePFSes is what the simulated device holds: the leaf's PFS and one
// other, as a device with a snapshot would.
func devicePFSes(n *leafNode) []simPFS {
	return []simPFS{
		{Label: n.info.Label, Clid: n.info.Clid, Fsid: n.info.Fsid, Type: n.info.Type},
		{Label: n.info.Label + ".snap", Clid: NewUUID(), Fsid: NewUUID(), Type: PFSMaster | 1<<4},
	}
}

// kernelStatusLine is the kernel line of `hammer2 status`.
func (n *leafNode) kernelStatusLine() string {
	n.t.Helper()
	out, errOut, code := n.h2("status", n.pfs)
	if code != 0 {
		n.t.Fatalf("%s: status exit %d: %s", n.name, code, errOut)
	}
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "  kernel ") {
			return strings.TrimRight(line, "\n")
		}
	}
	return "(no kernel line in:\n" + out + ")"
}

// waitKernel waits until the leaf's status shows its kernel link in
// state ("up" or "waiting"), then checks that `hammer2 status` says so.
func (n *leafNode) waitKernel(d time.Duration, state string) {
	n.t.Helper()
	n.waitStatus(d, "kernel link "+state, func(s procStatus) bool { return s.Leaf != nil && s.Leaf.Kernel.State == state })
	if line, want := n.kernelStatusLine(), "  kernel    "+state; !strings.HasPrefix(line, want) {
		n.t.Errorf("%s: status kernel line %q, want %q", n.name, line, want)
	}
}

func TestSimKernelHandshake(t *testing.T) {
	t.Parallel()
	// dead_after 400ms, ping_interval 100ms: the silence below outlasts
	// them, so a leaf that timed out a silent kernel link would drop this
	// one.
	a := newLeafNode(t, "a", daemonOpts{DeadAfter: "400ms", PingInterval: "100ms"})
	a.start()
	k := dialSimKernel(t, "k", a.pfs, devicePFSes(a))
	k.waitHandshake(5 * time.Second)
	a.waitKernel(5*time.Second, DialUp)

	// The leaf's own LNK_CONN opens a transaction of its own.
	lc := k.waitFor(time.Second, "the leaf's LNK_CONN", func(m Msg) bool { return m.Cmd == kLnkConnCreate })
	if lc.MsgID == 0 || k.isOurs(lc.MsgID) || lc.Circuit != 0 {
		t.Errorf("the leaf's LNK_CONN has msgid %#x circuit %#x", lc.MsgID, lc.Circuit)
	}
	if c, err := ParseLnkConn(lc.Ext); err != nil || c.PeerLabel == "" {
		t.Errorf("the leaf's LNK_CONN payload: %+v, %v", c, err)
	}
	// Its answer to our CONN and spans: results carrying REVTRANS, error 0,
	// kept open.
	for _, m := range k.received() {
		if !k.isOurs(m.MsgID) {
			continue
		}
		if m.Cmd != kResultOpen || m.Error != 0 || m.Circuit != 0 {
			t.Errorf("answer to kernel transaction %#x: %s (%#08x) error %#x circuit %#x, want %#08x error 0",
				m.MsgID, CmdString(m.Cmd), m.Cmd, m.Error, m.Circuit, kResultOpen)
		}
	}
	// The kernel never PINGs and answers none: the link must stay up on
	// silence, and the leaf must not expect PING answers from it. Nothing
	// happening is the point, so this is a window, not a wait for an
	// event: dead_after (400ms) passes in it twice over, and eight ping
	// intervals (100ms).
	time.Sleep(800 * time.Millisecond)
	if err, gone := k.waitEOF(0); gone {
		t.Fatalf("the leaf dropped a silent kernel link: %v\n%s", err, k.dump())
	}
	for _, m := range k.received() {
		if m.Cmd&kBaseMask == kLnkPing {
			t.Errorf("the leaf sent %s to the kernel, which never answers PINGs", CmdString(m.Cmd))
		}
	}
	a.waitKernel(time.Second, DialUp)
	if !strings.Contains(a.logText(), "/hammer2-mount") {
		t.Error("the leaf's log does not name the kernel's peer label")
	}
	k.checkClean()
	if t.Failed() {
		t.Logf("kernel link:\n%s", k.dump())
	}
}

func TestSimKernelVolconfDrivesLinks(t *testing.T) {
	t.Parallel()
	a, b := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "b", daemonOpts{})
	a.trust(b)
	b.trust(a)
	b.start()
	a.start()
	k := dialSimKernel(t, "k", a.pfs, devicePFSes(a))
	k.waitHandshake(5 * time.Second)

	const slot = 5
	k.remoteAdd(slot, Volconf{Path: "span:" + b.addr, Label: "to-b"})
	st := a.waitStatus(10*time.Second, "link to b, from the pushed VOLCONF", func(s procStatus) bool {
		return s.remoteUp(b.addr) && s.spansOf(b) == 1
	})
	if r := st.remote(b.addr); len(r.Slots) != 1 || r.Slots[0] != slot {
		t.Errorf("a's link to b has slots %v, want [%d]", r.Slots, slot)
	}
	b.waitStatus(10*time.Second, "inbound link from a with its span", func(s procStatus) bool {
		return s.inboundUp() == 1 && s.spansOf(a) == 1
	})

	k.remoteDel(slot) // VOLCONF with copyid 0 for the slot
	a.waitStatus(5*time.Second, "link to b dropped on copyid 0", func(s procStatus) bool {
		return s.remote(b.addr) == nil && s.spansOf(b) == 0
	})
	b.waitStatus(5*time.Second, "a's link and span gone from b", func(s procStatus) bool {
		return s.inboundUp() == 0 && s.spansOf(a) == 0
	})
	k.checkClean()
	if t.Failed() {
		t.Logf("kernel link:\n%s", k.dump())
	}
}

func TestSimKernelVoldataDump(t *testing.T) {
	t.Parallel()
	a, b := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "b", daemonOpts{})
	a.trust(b)
	b.trust(a)
	b.start()
	a.start()
	// The slot reaches the media behind the running leaf's back (no
	// rescan): only the kernel's VOLDATA dump can tell the leaf.
	pfs, err := OpenPFS(a.pfs)
	if err != nil {
		t.Fatal(err)
	}
	defer pfs.Close()
	if _, err := pfs.RemoteAdd(7, Volconf{Path: "span:" + b.addr}); err != nil {
		t.Fatal(err)
	}
	if _, err := pfs.RemoteAdd(8, Volconf{Path: "nfs:not-a-span"}); err != nil {
		t.Fatal(err)
	}
	k := dialSimKernel(t, "k", a.pfs, devicePFSes(a))
	k.waitHandshake(5 * time.Second)
	st := a.waitStatus(10*time.Second, "link to b from the VOLDATA dump", func(s procStatus) bool {
		return s.remoteUp(b.addr) && s.spansOf(b) == 1
	})
	if len(st.Leaf.Remotes) != 1 {
		t.Errorf("a keeps %d remote links, want 1 (slot 8 is not a span: target)", len(st.Leaf.Remotes))
	}
	// The dump went in order: VOLCONFs inside the CONN, then the spans.
	k.mu.Lock()
	var order []uint32
	for _, m := range k.sent {
		order = append(order, m.Cmd)
	}
	k.mu.Unlock()
	want := []uint32{kLnkConnCreate, kResultOpen, kVolconf, kVolconf, kLnkSpanCreate, kLnkSpanCreate}
	if !equalPrefixOrder(order, want) {
		t.Errorf("kernel sent %#08x, want %#08x first", order, want)
	}
	k.checkClean()
	if t.Failed() {
		t.Logf("kernel link:\n%s", k.dump())
	}
}

// equalPrefixOrder reports whether got starts with want, ignoring where
// the result to the leaf's CONN (which races with the dump) falls.
func equalPrefixOrder(got, want []uint32) bool {
	var g []uint32
	seenResult := false
	for _, c := range got {
		if c == kResultOpen && !seenResult {
			seenResult = true
			continue
		}
		g = append(g, c)
	}
	var w []uint32
	for _, c := range want {
		if c != kResultOpen {
			w = append(w, c)
		}
	}
	return len(g) >= len(w) && slices.Equal(g[:len(w)], w)
}

func TestSimKernelReplacedBySecond(t *testing.T) {
	t.Parallel()
	a := newLeafNode(t, "a", daemonOpts{})
	a.start()
	k1 := dialSimKernel(t, "k1", a.pfs, devicePFSes(a))
	k1.waitHandshake(5 * time.Second)
	a.waitKernel(5*time.Second, DialUp)

	k2 := dialSimKernel(t, "k2", a.pfs, devicePFSes(a))
	err, gone := k1.waitEOF(5 * time.Second)
	if !gone {
		t.Fatalf("the first kernel link is still up 5s after a second kernel connected: a new RECLUSTER link must replace the old one\nk1:\n%sk2:\n%s",
			k1.dump(), k2.dump())
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("the first kernel link ended with %v, want EOF", err)
	}
	k2.waitHandshake(5 * time.Second)
	a.waitKernel(5*time.Second, DialUp)
	k1.checkClean()
	k2.checkClean()
}

func TestSimKernelReconnect(t *testing.T) {
	t.Parallel()
	a := newLeafNode(t, "a", daemonOpts{})
	a.start()
	k1 := dialSimKernel(t, "k1", a.pfs, devicePFSes(a))
	k1.waitHandshake(5 * time.Second)
	a.waitKernel(5*time.Second, DialUp)
	k1.close()
	a.waitKernel(5*time.Second, "waiting")
	k2 := dialSimKernel(t, "k2", a.pfs, devicePFSes(a))
	k2.waitHandshake(5 * time.Second)
	a.waitKernel(5*time.Second, DialUp)
	// The same process took the new link: it did not exit when the first
	// one dropped with its PFS still there.
	if code, ok := a.waitExit(0); ok || a.now().Leaf.Pid != a.pid() {
		t.Fatalf("the leaf exited (%v, code %d) when the kernel link dropped with its PFS still there", ok, code)
	}
	k1.checkClean()
	k2.checkClean()
}

func TestSimKernelLeafShutdown(t *testing.T) {
	t.Parallel()
	a := newLeafNode(t, "a", daemonOpts{})
	a.start()
	k := dialSimKernel(t, "k", a.pfs, devicePFSes(a))
	k.waitHandshake(5 * time.Second)
	lc := k.waitFor(time.Second, "the leaf's LNK_CONN", func(m Msg) bool { return m.Cmd == kLnkConnCreate })
	a.signal(syscall.SIGTERM)
	if code, ok := a.waitExit(8 * time.Second); !ok || code != 0 {
		t.Errorf("leaf after SIGTERM: exited %v, code %d; want exit 0", ok, code)
	}
	if _, gone := k.waitEOF(5 * time.Second); !gone {
		t.Fatal("the kernel link is still up after the leaf exited")
	}
	// A clean exit closes every transaction: ours with a DELETE carrying
	// REVTRANS (the kernel drops it otherwise), the leaf's own CONN without.
	k.mu.Lock()
	ids := append([]uint64{k.connID}, k.spanIDs...)
	k.mu.Unlock()
	deleted := map[uint64]uint32{}
	for _, m := range k.received() {
		if m.Cmd&kFlagDelete != 0 {
			deleted[m.MsgID] = m.Cmd
		}
	}
	for _, id := range ids {
		if c, ok := deleted[id]; !ok || c != kReplyDelete {
			t.Errorf("kernel transaction %#x: closed with %#08x (present %v), want %#08x", id, c, ok, kReplyDelete)
		}
	}
	if c, ok := deleted[lc.MsgID]; !ok || c != kOwnDelete {
		t.Errorf("the leaf's LNK_CONN %#x: closed with %#08x (present %v), want %#08x", lc.MsgID, c, ok, kOwnDelete)
	}
	k.checkClean()
	if t.Failed() {
		t.Logf("kernel link:\n%s", k.dump())
	}
}

// TestSimKernelSelfCheck runs the simulated kernel against the link
// engine in-process, to pin down the kernel behaviours the leaf relies on
// (and the simulation itself).
func TestSimKernelSelfCheck(t *testing.T) {
	t.Parallel()
	lc, kc := socketPair(t)
	rec := newRecorder()
	var mu sync.Mutex
	var kernelTrans []*Trans
	peer := startLink(lc, LinkConfig{Name: "leaf", PingInterval: -1, DeadAfter: -1, NoSeqCheck: true,
		Logger: (&logBuf{}).logger(),
		Handler: func(tr *Trans, m *Msg) {
			rec.handle(tr, m)
			if !tr.IsRoot() && m.Cmd&FlagCreate != 0 {
				mu.Lock()
				kernelTrans = append(kernelTrans, tr)
				mu.Unlock()
				tr.SetHandler(rec.handle)
				_ = tr.Reply(ErrOK)
			}
		}})
	defer peer.Close()
	pfses := []simPFS{{Label: "one", Clid: NewUUID(), Fsid: NewUUID(), Type: PFSMaster}}
	k := newSimKernel(t, "k", kc, nil, pfses, Volconf{CopyID: 3, Path: "span:127.0.0.1:1"})

	// The kernel's CONN arrives first, unprompted.
	if m := rec.next(t); m.Cmd != kLnkConnCreate || m.MsgID != k.connID {
		t.Fatalf("first message %s msgid %#x, want the kernel's LNK_CONN", CmdString(m.Cmd), m.MsgID)
	}
	// Our result triggered the VOLCONF (inside the CONN) and the span.
	vc := rec.next(t)
	v, err := ParseLnkVolconf(vc.Ext)
	if vc.Cmd != kVolconf || vc.MsgID != k.connID || err != nil || v.Index != 3 || v.Copy.Path != "span:127.0.0.1:1" {
		t.Fatalf("VOLCONF: %s msgid %#x %+v %v", CmdString(vc.Cmd), vc.MsgID, v, err)
	}
	if m := rec.next(t); m.Cmd != kLnkSpanCreate || m.Circuit != 0 {
		t.Fatalf("span: %s", CmdString(m.Cmd))
	}

	open := func(cmd uint32, ext []byte) (*Trans, *recorder) {
		r := newRecorder()
		tr, err := peer.Root().Open(&Msg{Header: Header{Cmd: cmd}, Ext: ext}, r.handle)
		if err != nil {
			t.Fatal(err)
		}
		return tr, r
	}
	// An unknown CREATE is refused with NOSUPP.
	_, r := open(CmdDbgShell, nil)
	if m := r.next(t); m.Cmd != kResultClose || m.Error != kErrNoSupp {
		t.Errorf("unknown CREATE answered %#08x error %#x, want %#08x NOSUPP", m.Cmd, m.Error, kResultClose)
	}
	// A span of another peer type is closed at once; a HAMMER2 one is kept.
	bad := LnkSpan{PeerType: PeerCluster, ProtoVersion: 1}
	_, r = open(CmdLnkSpan, bad.Marshal())
	if m := r.next(t); m.Cmd != kResultClose || m.Error != 0 {
		t.Errorf("non-HAMMER2 span answered %#08x, want %#08x", m.Cmd, kResultClose)
	}
	good := LnkSpan{PeerType: PeerHammer2, ProtoVersion: 1}
	st, r := open(CmdLnkSpan, good.Marshal())
	if m := r.next(t); m.Cmd != kResultOpen {
		t.Errorf("HAMMER2 span answered %#08x, want %#08x", m.Cmd, kResultOpen)
	}
	_ = st.Close(ErrOK)
	if m := r.next(t); m.Cmd != kReplyDelete {
		t.Errorf("DELETE of our span answered %#08x, want %#08x", m.Cmd, kReplyDelete)
	}
	// One-way PING and LNK_ERROR get nothing; a pushed VOLCONF still flows.
	_ = peer.Root().Send(&Msg{Header: Header{Cmd: CmdLnkPing}})
	_ = peer.Root().Send(&Msg{Header: Header{Cmd: CmdLnkError}})
	k.remoteAdd(9, Volconf{Path: "span:127.0.0.1:2"})
	if m := rec.next(t); m.Cmd != kVolconf {
		t.Errorf("after PING, LNK_ERROR and REMOTE_ADD the kernel sent %s, want only the VOLCONF", CmdString(m.Cmd))
	}
	// Closing the kernel's CONN: it answers with its own DELETE and sends
	// no more VOLCONFs.
	mu.Lock()
	conn := kernelTrans[0]
	mu.Unlock()
	_ = conn.Close(ErrOK)
	if m := rec.next(t); m.Cmd != kOwnDelete || m.MsgID != k.connID {
		t.Errorf("DELETE of the kernel's CONN answered %s msgid %#x, want %#08x", CmdString(m.Cmd), m.MsgID, kOwnDelete)
	}
	k.remoteDel(9)
	select {
	case m := <-rec.ch:
		t.Errorf("a VOLCONF after the CONN closed: %s", CmdString(m.Cmd))
	case <-time.After(200 * time.Millisecond):
	}
	k.checkClean()
	if t.Failed() {
		t.Logf("kernel link:\n%s", k.dump())
	}
}

// lockEnded reports when CAC_LOCK msgid's state ended without the test
// releasing it (revoked and released, or closed by the leaf).
// setFlushAll makes the kernel use all of each revoke's time (flushAll).
func (k *simKernel) setFlushAll() {
	k.mu.Lock()
	k.flushAll = true
	k.mu.Unlock()
}

// lockClosedEarly reports whether the leaf closed the flushing state
// msgid before its revoke's time was out.
func (k *simKernel) lockClosedEarly(msgid uint64) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.closedEarly[msgid]
}

func (k *simKernel) lockEnded(msgid uint64) (time.Time, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	at, ok := k.lockEnd[msgid]
	return at, ok
}
