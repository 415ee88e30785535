//go:build !dragonfly

package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

// DragonFly's `hammer2 shell` sends `@<span> <cmd>` as a DBG_SHELL with
// REVTRANS and without REPLY on the span transaction the service relayed
// to it (found in the interop run against DragonFly's C tools). libdmsg's
// state machine takes it, picking the transaction by REVTRANS alone; the
// link must not drop the peer for it.
func TestLinkStreamingRevTransWithoutReply(t *testing.T) {
	t.Parallel()
	ca, cb := socketPair(t)
	got := newRecorder()
	a := startLink(ca, quietConfig("a", nil))
	defer a.Close()
	p := &rawPeer{tb: t, c: cb}
	tr, err := a.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: (&LnkSpan{}).Marshal()}, got.handle)
	if err != nil {
		t.Fatal(err)
	}
	create, err := p.read()
	if err != nil || create.Cmd&FlagCreate == 0 {
		t.Fatalf("peer read %s: %v", CmdString(create.Cmd), err)
	}
	p.send(Msg{Header: Header{Cmd: CmdLnkError | FlagCreate | FlagReply | FlagRevTrans, MsgID: tr.MsgID()}})
	p.send(Msg{Header: Header{Cmd: CmdDbgShell | FlagRevTrans, MsgID: tr.MsgID()}, Aux: ShellAux("tree")})
	got.next(t) // the result
	if m := got.next(t); m.Cmd&maskBaseCmd != CmdDbgShell || ShellText(m.Aux) != "tree" {
		t.Fatalf("span's handler got %s %q, want the DBG_SHELL", CmdString(m.Cmd), m.Aux)
	}
	if err := a.Err(); err != nil {
		t.Fatalf("link dropped: %v", err)
	}
}

// TestServiceShellAtSpan plays DragonFly's C `hammer2 shell` against our
// service: it sends LNK_CONN, takes the LNK_SPAN the service relays, and
// sends `@<msgid> tree` as that shell does, a DBG_SHELL|REVTRANS inside the
// span transaction. The leaf that advertised the span answers, and the
// answer comes back as a one-way DBG_SHELL|REPLY, which is what the C
// shell prints.
func TestServiceShellAtSpan(t *testing.T) {
	t.Parallel()
	s := newSvcNode(t, "s1", daemonOpts{})
	s.start()
	leaf := newSvcLeaf(t, "a", PFSInfo{})
	startLeafOn(leaf, s)
	c, err := net.DialTimeout("tcp", s.tcp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := &rawPeer{tb: t, c: c}
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: ^uint64(0), ProtoVersion: 1, PeerLabel: "debug"}
	p.send(Msg{Header: Header{Cmd: CmdLnkConn | FlagCreate, MsgID: 1}, Ext: conn.Marshal()})
	var span uint64
	asked := false
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		m, err := p.read()
		if err != nil {
			t.Fatalf("reading from the service: %v", err)
		}
		switch {
		case m.Cmd&maskBaseCmd == CmdLnkSpan && m.Cmd&FlagCreate != 0 && span == 0:
			var sp LnkSpan
			if err := sp.Unmarshal(m.Ext); err != nil || sp.PfsID != leaf.info.Fsid {
				continue
			}
			span = m.MsgID
			p.send(Msg{Header: Header{Cmd: CmdLnkError | FlagCreate | FlagReply | FlagRevTrans, MsgID: span}})
			p.send(Msg{Header: Header{Cmd: CmdDbgShell | FlagRevTrans, MsgID: span}, Aux: ShellAux("tree")})
			asked = true
		case asked && m.Cmd == CmdDbgShell|FlagReply && m.MsgID == 0:
			if out := ShellText(m.Aux); !strings.Contains(out, "Leaf MASTER "+leaf.info.Fsid.String()) {
				t.Fatalf("@%d tree answered %q, want the leaf's tree", span, out)
			}
			return
		}
	}
	t.Fatalf("no answer to @<span> tree within 15 s (span msgid %#x)", span)
}
