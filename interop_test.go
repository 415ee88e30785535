package main

import "testing"

// DragonFly's `hammer2 shell` sends `@<span> <cmd>` as a DBG_SHELL with
// REVTRANS and without REPLY on the span transaction the service relayed
// to it (found in the interop run against DragonFly's C tools). libdmsg's
// state machine takes it, picking the transaction by REVTRANS alone; the
// link must not drop the peer for it.
func TestLinkStreamingRevTransWithoutReply(t *testing.T) {
	ca, cb := socketPair(t)
	got := newRecorder()
	a := NewLink(ca, quietConfig("a", nil))
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
