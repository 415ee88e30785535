package main

// Peer credentials on Linux: SO_PEERCRED for Unix sockets, and for a
// loopback TCP peer the owner of its socket, which NETLINK_SOCK_DIAG
// reports to any user (as `ss -e` shows it).

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// unixPeerCred is the credentials the peer had when it connected.
func unixPeerCred(c *net.UnixConn) (uid, gid, pid int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, -1, -1, err
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, -1, -1, err
	}
	if serr != nil {
		return -1, -1, -1, serr
	}
	return int(cred.Uid), int(cred.Gid), int(cred.Pid), nil
}

// tcpPeerUID is the owner of the peer's end of a loopback TCP connection:
// the socket whose source is the peer's address and whose destination is
// ours, while a process still holds it open.
//
// sock_diag reports uid 0 for a socket no process holds any more: one in
// TIME_WAIT, or in FIN_WAIT2 after close(), which the kernel keeps as a
// timewait entry without an owner (inode 0). A peer that connects, writes
// and closes at once would so pass for root while its bytes wait in our
// receive buffer; such a socket's owner is unknown here, and the caller
// makes the link unprivileged. The library's lookup is a dump filtered by
// ports only and returns the first socket it gets: an answer for any
// other socket is refused the same way.
func tcpPeerUID(local, remote *net.TCPAddr) (int, string, error) {
	const via = "sock_diag"
	s, err := netlink.SocketGet(remote, local)
	if err != nil {
		return -1, via, err
	}
	if s == nil {
		return -1, via, errors.New("no such socket")
	}
	id := s.ID
	if int(id.SourcePort) != remote.Port || int(id.DestinationPort) != local.Port ||
		!id.Source.Equal(remote.IP) || !id.Destination.Equal(local.IP) {
		return -1, via, fmt.Errorf("answered for another socket (%s:%d to %s:%d)", id.Source, id.SourcePort, id.Destination, id.DestinationPort)
	}
	if s.INode == 0 {
		return -1, via, fmt.Errorf("the peer's socket is closed (TCP state %d): its owner is unknown", s.State)
	}
	return int(s.UID), via, nil
}
