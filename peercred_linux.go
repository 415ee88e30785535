package main

// Peer credentials on Linux: SO_PEERCRED for Unix sockets, and for a
// loopback TCP peer the owner of its socket, which NETLINK_SOCK_DIAG
// reports to any user (as `ss -e` shows it).

import (
	"errors"
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
// ours.
func tcpPeerUID(local, remote *net.TCPAddr) (int, string, error) {
	s, err := netlink.SocketGet(remote, local)
	if err != nil {
		return -1, "sock_diag", err
	}
	if s == nil {
		return -1, "sock_diag", errors.New("no such socket")
	}
	return int(s.UID), "sock_diag", nil
}
