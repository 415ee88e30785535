package main

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"io"
	"testing"
	"time"
)

// seedMessages are valid messages of every typed payload, for the corpora.
func seedMessages() [][]byte {
	var span LnkSpan
	span.PeerType, span.ProtoVersion, span.PfsType = PeerHammer2, 1, PFSMaster
	span.SetLabels("pfs", "")
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: 1, PeerLabel: "h/hammer2-mount"}
	vc := LnkVolconf{Index: 1, Copy: Volconf{CopyID: 1, Path: "span:127.0.0.1"}}
	join := fuzzJoinSeed()
	msgs := []Msg{
		{Header: Header{Cmd: CmdLnkPing}},
		{Header: Header{Cmd: CmdLnkPing | FlagReply}},
		{Header: Header{Cmd: CmdLnkConn | FlagCreate, MsgID: 1}, Ext: conn.Marshal()},
		{Header: Header{Cmd: CmdLnkSpan | FlagCreate, MsgID: 2}, Ext: span.Marshal()},
		{Header: Header{Cmd: CmdLnkVolconf, MsgID: 1}, Ext: vc.Marshal()},
		{Header: Header{Cmd: CmdLnkError | FlagCreate | FlagReply | FlagRevTrans, MsgID: 1}},
		{Header: Header{Cmd: CmdLnkError | FlagDelete, MsgID: 2}},
		{Header: Header{Cmd: CmdDbgShell}, Aux: ShellAux("tree")},
		{Header: Header{Cmd: CmdDbgShell | FlagCreate | FlagRevCirc, MsgID: 3, Circuit: 2}, Aux: make([]byte, 100)},
		{Header: Header{Cmd: CmdCacLock | FlagCreate, MsgID: 4}, Ext: (&cacLock{Domain: cacInum, Mode: cacExclusive,
			Flags: cacFlagRevalidate, Lo: 16, Hi: 31, Txid: 9, Holder: NewUUID(), Boot: 2, Seq: 7}).marshal()},
		{Header: Header{Cmd: CmdQrmCommit | FlagCreate, MsgID: 5}, Ext: (&qrmCommit{Phase: 2, Txid: 10, ReqID: 3}).marshal(),
			Aux: []byte("op")},
		{Header: Header{Cmd: CmdQrmRaft | FlagCreate | FlagRevCirc, MsgID: 6, Circuit: 2}, Ext: (&qrmRaft{From: 1, To: 2}).marshal()},
		{Header: Header{Cmd: CmdQrmJoin | FlagCreate | FlagRevCirc, MsgID: 7, Circuit: 2}, Ext: join.marshal(), Aux: join.aux()},
	}
	var out [][]byte
	var stream []byte
	for i, m := range msgs {
		out = append(out, m.AppendWire(nil, 0))
		stream = m.AppendWire(stream, uint32(i))
	}
	return append(out, stream)
}

// FuzzDecode: no input panics the decoder or the payload parsers, and
// whatever decodes re-encodes to the same bytes.
func FuzzDecode(f *testing.F) {
	for _, s := range seedMessages() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Msg
		n, err := Decode(b, &m)
		if err != nil {
			return
		}
		var span LnkSpan
		_ = span.Unmarshal(m.Ext)
		_, _ = ParseLnkConn(m.Ext)
		_, _ = ParseLnkVolconf(m.Ext)
		_ = ShellText(m.Aux)
		_ = CmdString(m.Cmd)
		if c, err := parseCacLock(m.Ext); err == nil {
			if again, err := parseCacLock(c.marshal()); err != nil || again != c {
				t.Fatalf("CAC_LOCK %+v re-parses as %+v, %v", c, again, err)
			}
		}
		_, _ = parseQrmCommit(m.Ext)
		_, _ = parseQrmRaft(m.Ext)
		_, _ = parseQrmJoin(m.Ext, m.Aux, true)
		_, _ = parseQrmJoin(m.Ext, m.Aux, false)
		if binary.LittleEndian.Uint16(b) != MagicLE {
			return // swapped input re-encodes little-endian
		}
		again := m.AppendWire(nil, m.Salt)
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encode differs:\n in %x\nout %x", b[:n], again)
		}
	})
}

// FuzzTransTable drives the state machine with arbitrary received headers
// and local sends, checking its invariants after every step and that a lost
// link closes everything.
func FuzzTransTable(f *testing.F) {
	f.Add([]byte{0, 0x80, 1, 0, 1, 0, 2, 0x20, 1, 1, 3, 0x40, 1, 0})
	f.Add([]byte{1, 0x80, 0, 0, 1, 0x40, 0, 0, 0, 0xA8, 1, 0, 0, 0x48, 1, 0})
	f.Add([]byte{0, 0x80, 5, 0, 0, 0x84, 6, 5, 2, 0x20, 6, 0, 3, 0x40, 5, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		tt := newTransTable(nil, -1)
		var mine []*Trans
		for i := 0; i+3 < len(ops) && i < 4*256; i += 4 {
			op, flags, id, circ := ops[i], ops[i+1], uint64(ops[i+2]), uint64(ops[i+3])
			switch op % 4 {
			case 0: // receive
				h := Header{Cmd: uint32(flags)&0xFC<<24 | CmdDbgShell, MsgID: id, Circuit: circ}
				_, _ = tt.recv(&h)
			case 1: // open a transaction, maybe under another
				var parent *Trans
				if len(mine) > 0 && circ%2 == 1 {
					parent = mine[int(circ)%len(mine)]
				}
				if parent == nil || !parent.removed {
					n := tt.open(parent, CmdDbgShell)
					if flags%8 != 0 { // as Link.Open does; rarely not, to test the state alone
						m := Msg{Header: Header{Cmd: CmdDbgShell}}
						_ = tt.prepSend(n, &m)
					}
					mine = append(mine, n)
				}
			case 2, 3: // send on one of ours or one of theirs
				var t0 *Trans
				if op%4 == 2 && len(mine) > 0 {
					t0 = mine[int(id)%len(mine)]
				} else if r := sortedTrans(tt.setOf(tt.rd)); len(r) > 0 {
					t0 = r[int(id)%len(r)]
				}
				if t0 != nil {
					m := Msg{Header: Header{Cmd: CmdLnkError | uint32(flags)&0x50<<24}}
					_ = tt.prepSend(t0, &m)
				}
			}
			checkTransInvariants(t, tt)
		}
		// A lost link must close every receive side without a protocol error.
		for _, m := range tt.lostLink() {
			r, err := tt.recv(&m.Header)
			if err != nil {
				t.Fatalf("simulated %s msgid %#x rejected: %v", CmdString(m.Cmd), m.MsgID, err)
			}
			if r.t == nil || !r.t.rxDone() {
				t.Fatalf("simulated DELETE did not close msgid %#x", m.MsgID)
			}
		}
		for _, tr := range tt.lostLinkOrder() {
			if !tr.rxDone() && !(tr.mine && tr.tx&FlagCreate == 0) {
				t.Fatalf("%v still open for receive after link loss", tr)
			}
		}
	})
}

func checkTransInvariants(t *testing.T, tt *transTable) {
	t.Helper()
	for _, tbl := range []map[uint64]*Trans{tt.wr, tt.rd} {
		for id, tr := range tbl {
			if tr.msgid != id || tr.removed || (tr.rxDone() && tr.txDone()) {
				t.Fatalf("table holds %v (removed %v, rx %#x tx %#x) under %#x", tr, tr.removed, tr.rx, tr.tx, id)
			}
			if (tbl[id] == tt.wr[id]) != tr.mine {
				t.Fatalf("%v in the wrong table", tr)
			}
			if tr.mine && tr.tx&FlagCreate == 0 && tr.rx != 0 {
				t.Fatalf("%v received an answer before we sent CREATE", tr)
			}
			for c := range tr.children {
				if c.parent != tr || c.removed {
					t.Fatalf("child %v of %v inconsistent", c, tr)
				}
			}
		}
	}
}

// streamConn feeds fuzz input to a link as its peer's byte stream.
type streamConn struct {
	io.Reader
	closed chan struct{}
}

func (s *streamConn) Write(p []byte) (int, error) { return len(p), nil }
func (s *streamConn) Close() error {
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	return nil
}

// FuzzLinkInput runs arbitrary bytes through a whole link, handlers
// included: it must go down cleanly, never panic or hang.
func FuzzLinkInput(f *testing.F) {
	for _, s := range seedMessages() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &streamConn{Reader: bytes.NewReader(b), closed: make(chan struct{})}
		cfg := quietConfig("fuzz", func(tr *Trans, m *Msg) {
			if m.Cmd&FlagCreate != 0 && m.Cmd&FlagReply == 0 {
				_ = tr.Reply(ErrOK)
				_, _ = tr.Open(&Msg{Header: Header{Cmd: CmdDbgShell}}, nil)
			}
		})
		cfg.NoSeqCheck = len(b)%2 == 0 // exercise both
		l := startLink(c, cfg)
		select {
		case <-l.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("link did not finish its input")
		}
	})
}

// FuzzQuorumEntry: a raft entry from a buggy or hostile master never
// panics a master, and whatever it asks, the lock table keeps its
// invariants (no incompatible holders on overlapping keys) and two
// masters applying it end identical.
func FuzzQuorumEntry(f *testing.F) {
	for _, op := range []quorumOp{
		{Kind: quorumOpCommit, Payload: []byte("x")},
		{Kind: quorumOpLock, Holder: "a/1.1", Domain: cacInum, Mode: cacExclusive, Lo: 3, Hi: 9},
		{Kind: quorumOpLock, Holder: "b/1.1", Domain: cacInum, Mode: cacShared, Lo: 0, Hi: 40},
		{Kind: quorumOpRelease, Holder: "a/1.1", Domain: cacInum, Lo: 4, Hi: 5},
		{Kind: quorumOpExpire, Holder: "b/1.1", UpTo: 3},
		{Kind: quorumOpRevalidate, Holder: "a/1.1", Domain: cacInum, Mode: cacExclusive, Lo: 0, Hi: 15, UpTo: 2},
	} {
		b, err := encodeQuorumEntry(1, 5, op)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, b)
	}
	f.Fuzz(func(t *testing.T, e1, e2 []byte) {
		var fsms [2]*quorumFSM
		for i := range fsms {
			fsm := newQuorumFSM()
			fsm.put(cacHolding{Holder: "a/1.1", Domain: cacInum, Mode: cacShared, Lo: 0, Hi: 15, Txid: 1})
			fsm.applied = 1
			for j, e := range [][]byte{e1, e2} {
				if _, _, op, err := decodeQuorumEntry(e); err == nil {
					fsm.apply(uint64(2+j), op)
				}
				if err := fsm.checkInvariants(); err != nil {
					t.Fatalf("after entry %d: %v", j, err)
				}
			}
			fsms[i] = fsm
		}
		a, err := fsms[0].encode()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := fsms[1].encode()
		if !bytes.Equal(a, b) {
			t.Fatalf("two masters diverged:\n%s\n%s", a, b)
		}
	})
}

// fuzzJoinKey signs the seed join request; fuzzJoinClid and fuzzJoinNow
// are the member's view it is checked against.
var (
	fuzzJoinKey  = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{0x4a}, ed25519.SeedSize))
	fuzzJoinClid = UUID{0xc1, 0xd0}
	fuzzJoinFsid = UUID{0x0f, 0x51, 0xd0}
	fuzzJoinNow  = time.Unix(1700000000, 0)
)

func fuzzJoinSeed() qrmJoin {
	return newQrmJoin(fuzzJoinKey, fuzzJoinClid, fuzzJoinFsid, 5, fuzzJoinNow)
}

// FuzzQuorumJoin: no QRM_JOIN a peer sends panics a member; a request
// that parses re-encodes to itself; and a member that trusts the seed's
// key accepts only exactly the statement that key signed, whatever else
// the bytes say (the signature binds cluster, fsid, key and time).
func FuzzQuorumJoin(f *testing.F) {
	seed := fuzzJoinSeed()
	f.Add(seed.marshal(), seed.aux())
	ans := seed
	ans.Result = joinAccepted
	f.Add(ans.marshal(), []byte{})
	f.Add(seed.marshal()[:0x30], seed.aux()[:40])
	pub := fuzzJoinKey.Public().(ed25519.PublicKey)
	trusted := func(k ed25519.PublicKey) (string, bool) { return "seed", k.Equal(pub) }
	f.Fuzz(func(t *testing.T, ext, aux []byte) {
		if a, err := parseQrmJoin(ext, aux, false); err == nil && a.Key != nil {
			t.Fatalf("an answer parsed with a key: %+v", a)
		}
		j, err := parseQrmJoin(ext, aux, true)
		if err != nil {
			return
		}
		again, err := parseQrmJoin(j.marshal(), j.aux(), true)
		if err != nil || again.From != j.From || again.To != j.To || again.Clid != j.Clid || again.Fsid != j.Fsid ||
			again.Time != j.Time || !bytes.Equal(again.Key, j.Key) || !bytes.Equal(again.Sig, j.Sig) {
			t.Fatalf("request %+v re-parses as %+v, %v", j, again, err)
		}
		res, fp, _ := verifyJoin(j, fuzzJoinClid, j.To, trusted, fuzzJoinNow)
		if fp != keyFP(j.Key) {
			t.Fatalf("fingerprint %s of key %x", fp, j.Key)
		}
		if res == joinAccepted && (!j.Key.Equal(pub) || j.Clid != fuzzJoinClid || j.Fsid != fuzzJoinFsid || j.Time != seed.Time) {
			t.Fatalf("accepted a statement the key did not sign: %+v", j)
		}
	})
}
