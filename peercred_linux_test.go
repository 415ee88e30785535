package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestTCPPeerClosedIsUnprivileged: a loopback TCP peer is the owner of its
// socket only while a process holds that socket. An unprivileged user's
// connection gets its uid; once the user has closed it (its bytes may
// still wait unread on our side), sock_diag says uid 0 for what is left,
// and that must not make the link root's: it is unprivileged.
func TestTCPPeerClosedIsUnprivileged(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	user := startRole(t, "hold", nobodyUID, "H2_ADDR=tcp:"+ln.Addr().String(), "H2_N=1")
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := user.line(10 * time.Second); !strings.HasPrefix(got, "held 1 ") {
		t.Fatalf("the user's connection: %s", got)
	}
	la, ra := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	if uid, _, err := tcpPeerUID(la, ra); err != nil || uid != nobodyUID {
		t.Fatalf("the open connection's owner: uid %d, %v; want %d", uid, err, nobodyUID)
	}
	policy := privilegePolicy{self: 0, group: -1}
	user.stop() // closes the connection, and exits
	if uid, _, err := tcpPeerUID(la, ra); err == nil {
		t.Errorf("the closed connection's owner: uid %d; want unknown", uid)
	}
	if id := policy.identify(c); id.Class != ClassUnprivileged || !strings.Contains(id.Via, "closed") {
		t.Errorf("a connection its unprivileged user has closed is %v (via %s); want unprivileged, its owner unknown", id.Class, id.Via)
	}
}
