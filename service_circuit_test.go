package main

// Circuits through the service find their relay by the relay's own
// transaction (svcLink.relayOf): a transaction opened under a relay goes
// to the span's origin; one opened under anything else of ours is refused
// CANTCIRC at once, as before the index.

import (
	"context"
	"testing"
	"time"
)

func TestServiceCircuitRelayLookup(t *testing.T) {
	svc := scaleService(t, defaultLimits())
	origin := attach(t, svc, "origin", func(tr *Trans, m *Msg) {
		if !tr.IsRoot() && tr.Parent() != nil && m.Cmd&FlagCreate != 0 {
			_ = tr.Close(0x77) // an answer only the origin gives
		}
	})
	relays := make(chan *Trans, 8)
	cli := attach(t, svc, "client", func(tr *Trans, m *Msg) {
		if !tr.IsRoot() && tr.Parent() == nil && tr.Cmd() == CmdLnkSpan && m.Cmd&FlagCreate != 0 {
			tr.SetHandler(func(*Trans, *Msg) {})
			_ = tr.Reply(ErrOK)
			relays <- tr
		}
	})
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1}
	ourConn, err := cli.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: conn.Marshal()}, func(*Trans, *Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	clid := NewUUID()
	for i := range 3 {
		sp := benchSpan(clid, i)
		if _, err := origin.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(*Trans, *Msg) {}); err != nil {
			t.Fatal(err)
		}
	}
	var got []*Trans
	for range 3 {
		select {
		case r := <-relays:
			got = append(got, r)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of 3 spans relayed after 10 s", len(got))
		}
	}
	for _, c := range []struct {
		name   string
		parent *Trans
		want   uint32
	}{
		{"first relay", got[0], 0x77},
		{"last relay", got[2], 0x77},
		{"our LNK_CONN, not a relay", ourConn, ErrCantCirc},
	} {
		t.Run(c.name, func(t *testing.T) {
			answer := make(chan uint32, 1)
			_, err := c.parent.Open(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}, Aux: ShellAux("x")}, func(_ *Trans, m *Msg) {
				if m.Cmd&FlagDelete != 0 {
					answer <- m.Error
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			select {
			case e := <-answer:
				if e != c.want {
					t.Fatalf("answered %#x, want %#x", e, c.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no answer after 10 s")
			}
		})
	}
}

// TestServiceAppliesInSlices: a batch larger than applySlice (one link
// advertising that many spans at once) is applied in slices, all of it,
// and the spans are relayed in the order they were advertised.
func TestServiceAppliesInSlices(t *testing.T) {
	// Not parallel: CPU-bound, in the sequential phase (schedule_test.go).
	n := applySlice + applySlice/2
	lim := defaultLimits()
	lim.SpansPerLink, lim.Spans, lim.TransPerLink = n+10, n+10, 2*n+100
	svc := scaleService(t, lim)
	origin := attach(t, svc, "origin", func(*Trans, *Msg) {})
	got := make(chan string, n)
	cli := attach(t, svc, "client", func(tr *Trans, m *Msg) {
		if !tr.IsRoot() && tr.Parent() == nil && tr.Cmd() == CmdLnkSpan && m.Cmd&FlagCreate != 0 {
			var sp LnkSpan
			if err := sp.Unmarshal(m.Ext); err != nil {
				t.Error(err)
			}
			tr.SetHandler(func(*Trans, *Msg) {})
			_ = tr.Reply(ErrOK)
			got <- sp.PfsLabelString()
		}
	})
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1}
	if _, err := cli.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: conn.Marshal()}, func(*Trans, *Msg) {}); err != nil {
		t.Fatal(err)
	}
	// The client's LNK_CONN taken first (the service answers a PING only
	// after handling what came before it), so that every span is relayed
	// as it arrives; the origin sends them in one burst.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(30 * time.Second)
	clid := NewUUID()
	for i := range n {
		sp := benchSpan(clid, i)
		if _, err := origin.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(*Trans, *Msg) {}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		select {
		case l := <-got:
			want := benchSpan(clid, i)
			if l != want.PfsLabelString() {
				t.Fatalf("relay %d carries %s, want %s", i, l, want.PfsLabelString())
			}
		case <-deadline:
			t.Fatalf("%d of %d spans relayed after 30 s", i, n)
		}
	}
}
