package main

// Peer credentials on DragonFly: LOCAL_PEERCRED for Unix sockets, and for
// a loopback TCP peer (mount_hammer2 connects to 127.0.0.1:987 as root)
// the credential of its socket from the root-only sysctl
// net.inet.tcp.getcred. Compiled for DragonFly, not run there: the layouts
// are from sys/sys/ucred.h and netinet/tcp_subr.c.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	dflyLocalPeercred = 0x001 // LOCAL_PEERCRED, at socket level 0
	// struct xucred: cr_version u32, cr_uid u32, cr_ngroups i16 (+2),
	// cr_groups[16] u32, a pointer: 88 bytes on amd64.
	dflyXucredSize    = 88
	dflyXucredUID     = 4
	dflyXucredNGroups = 8
	dflyXucredGroups  = 12
	// struct ucred from net.inet.tcp.getcred: cr_ref u32, then cr_uid.
	dflyUcredUID = 4
)

func unixPeerCred(c *net.UnixConn) (uid, gid, pid int, err error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, -1, -1, err
	}
	var buf [dflyXucredSize]byte
	var serr error
	if err := rc.Control(func(fd uintptr) {
		n := uintptr(len(buf))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, 0, dflyLocalPeercred,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		if e != 0 {
			serr = e
		}
	}); err != nil {
		return -1, -1, -1, err
	}
	if serr != nil {
		return -1, -1, -1, fmt.Errorf("LOCAL_PEERCRED: %w", serr)
	}
	le := binary.LittleEndian
	uid, gid = int(le.Uint32(buf[dflyXucredUID:])), -1
	if int16(le.Uint16(buf[dflyXucredNGroups:])) > 0 {
		gid = int(le.Uint32(buf[dflyXucredGroups:]))
	}
	return uid, gid, -1, nil // no pid on DragonFly
}

// tcpPeerUID asks net.inet.tcp.getcred for the peer socket's credential:
// the pcb whose local address is the peer's and whose foreign one is ours.
// Only root may ask; a service not running as root gets EPERM, and its
// TCP peers are unprivileged.
func tcpPeerUID(local, remote *net.TCPAddr) (int, string, error) {
	const via = "tcp_getcred"
	l4, r4 := local.IP.To4(), remote.IP.To4()
	if l4 == nil || r4 == nil {
		return -1, via, errors.New("IPv6 peers are not looked up")
	}
	var addrs [32]byte
	putSockaddrIn(addrs[0:16], r4, remote.Port)
	putSockaddrIn(addrs[16:32], l4, local.Port)
	mib, err := sysctlMIB("net.inet.tcp.getcred")
	if err != nil {
		return -1, via, err
	}
	var cred [512]byte // larger than struct ucred
	n := uintptr(len(cred))
	if err := sysctlRW(mib, cred[:], &n, addrs[:]); err != nil {
		return -1, via, err
	}
	if n < dflyUcredUID+4 {
		return -1, via, fmt.Errorf("short ucred (%d bytes)", n)
	}
	return int(binary.LittleEndian.Uint32(cred[dflyUcredUID:])), via, nil
}

func putSockaddrIn(b []byte, ip net.IP, port int) {
	b[0], b[1] = 16, unix.AF_INET // sin_len, sin_family
	binary.BigEndian.PutUint16(b[2:], uint16(port))
	copy(b[4:8], ip)
}

// sysctlMIB resolves a sysctl name with the sysctl.name2oid node {0, 3}.
func sysctlMIB(name string) ([]int32, error) {
	var mib [16]int32
	n := uintptr(len(mib) * 4)
	nb := []byte(name)
	if err := sysctlRaw([]int32{0, 3}, unsafe.Pointer(&mib[0]), &n, nb); err != nil {
		return nil, fmt.Errorf("sysctl %s: %w", name, err)
	}
	return mib[:n/4], nil
}

func sysctlRW(mib []int32, out []byte, n *uintptr, in []byte) error {
	return sysctlRaw(mib, unsafe.Pointer(&out[0]), n, in)
}

func sysctlRaw(mib []int32, out unsafe.Pointer, n *uintptr, in []byte) error {
	_, _, e := unix.Syscall6(unix.SYS___SYSCTL, uintptr(unsafe.Pointer(&mib[0])), uintptr(len(mib)),
		uintptr(out), uintptr(unsafe.Pointer(n)), uintptr(unsafe.Pointer(&in[0])), uintptr(len(in)))
	if e != 0 {
		return e
	}
	return nil
}
