package main

import (
	"net"

	"golang.org/x/sys/unix"
)

// setNotSentLowat bounds the bytes c's kernel holds unsent (TCP_NOTSENT_LOWAT):
// past it a write waits, so bulk queues in the link's own queues, where
// control messages go ahead of it, instead of in the socket, where nothing
// can (docs/PROTOCOL.md §3, "Control ahead of bulk"). Bytes in flight on
// the path are not limited, so a long path keeps its rate. Best effort: a
// kernel without the option leaves the link as it was.
func setNotSentLowat(c *net.TCPConn, n int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n)
	})
}
