//go:build !linux && !dragonfly

package main

// Elsewhere the daemon learns nothing about local peers: every local link
// is unprivileged, except the kernel's (which is ours by construction).

import (
	"errors"
	"net"
	"runtime"
)

var errNoPeerCred = errors.New("peer credentials are not supported on " + runtime.GOOS)

func unixPeerCred(*net.UnixConn) (uid, gid, pid int, err error) { return -1, -1, -1, errNoPeerCred }

func tcpPeerUID(_, _ *net.TCPAddr) (int, string, error) { return -1, "none", errNoPeerCred }
