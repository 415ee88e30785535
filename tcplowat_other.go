//go:build !linux

package main

import "net"

// setNotSentLowat does nothing where TCP_NOTSENT_LOWAT is missing (the
// BSDs, DragonFly among them): bulk then also queues in the socket buffer,
// and the link's bulk window alone keeps control ahead of it.
func setNotSentLowat(*net.TCPConn, int) {}
