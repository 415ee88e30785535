//go:build !dragonfly

package main

// The harness (harness_test.go) of the tests that start daemons on the
// stand-in PFS: free ports for them, the fault-clock build, and node keys
// for leaves run in process.

import (
	"crypto/ed25519"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

// h2FaultBinary is the binary built with the h2faultclock tag, whose
// quorum clock the fault campaign moves (clock_fault.go).
func h2FaultBinary(t testing.TB) string {
	t.Helper()
	return h2FaultBin.get(t, func(dir string) (string, error) {
		path := filepath.Join(dir, "hammer2")
		return path, goBuild(path, os.Getenv("H2_TEST_RACE_BINARY") != "", "h2faultclock")
	})
}

var (
	portsMu   sync.Mutex
	portsOK   = map[string]bool{} // "udp/port", "tcp/port"
	portsNext int                 // where freePort looks next, below the ephemeral range
)

// freeUDPPort picks a free UDP port on 127.0.0.1, never the same one twice
// in a test run, so that parallel tests do not collide.
func freeUDPPort(t testing.TB) int { return freePort(t, "udp") }

// Daemons are given ports below the kernel's ephemeral range, which it
// never hands out on its own. A port it had handed out (a listener on
// port 0, closed again) could be taken by any outgoing connection or QUIC
// socket of the parallel tests before the daemon bound it: a service
// then failed to start, its port "held by another program" (twice in
// some fifty runs of -short). The range's start comes from
// net.ipv4.ip_local_port_range; the pick starts at a place of this
// process's own so that two runs at once seldom meet, and binding checks
// that the port is free.
const (
	portsLow       = 10000 // above the well-known and registered services that a test machine may run
	ephemeralFirst = 32768 // Linux's default start of the ephemeral range
)

// freePort is freeUDPPort for network "udp" or "tcp".
func freePort(t testing.TB, network string) int {
	t.Helper()
	hi := ephemeralStart()
	if hi-portsLow < 1000 {
		return freeEphemeralPort(t, network)
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	if portsNext == 0 {
		portsNext = portsLow + os.Getpid()%(hi-portsLow)
	}
	for range hi - portsLow {
		port := portsNext
		if portsNext++; portsNext >= hi {
			portsNext = portsLow
		}
		key := fmt.Sprintf("%s/%d", network, port)
		if portsOK[key] {
			continue
		}
		if _, err := bindPort(network, port); err != nil {
			continue
		}
		portsOK[key] = true
		return port
	}
	t.Fatalf("no free %s port in %d-%d", network, portsLow, hi-1)
	return 0
}

// ephemeralStart is the first port of the kernel's ephemeral range.
func ephemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return ephemeralFirst
	}
	var lo, hi int
	if _, err := fmt.Sscan(string(b), &lo, &hi); err != nil || lo <= 0 {
		return ephemeralFirst
	}
	return lo
}

// bindPort binds port on 127.0.0.1 (0: one the kernel picks), closes it
// again, and returns the port it had.
func bindPort(network string, port int) (int, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if network == "udp" {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return 0, err
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).Port, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// freeEphemeralPort is a port the kernel picks, for a machine whose
// ephemeral range leaves little below it.
func freeEphemeralPort(t testing.TB, network string) int {
	t.Helper()
	for range 50 {
		port, err := bindPort(network, 0)
		if err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("%s/%d", network, port)
		portsMu.Lock()
		used := portsOK[key]
		portsOK[key] = true
		portsMu.Unlock()
		if !used {
			return port
		}
	}
	t.Fatalf("no free %s port", network)
	return 0
}

// newTestNodeKey makes a node key in keyDir, as `hammer2 keygen` does,
// for a leaf run in process, and returns it with its (empty) trust store.
func newTestNodeKey(tb testing.TB, keyDir string) (ed25519.PrivateKey, *TrustStore) {
	tb.Helper()
	if _, err := GenerateKey(keyDir, false); err != nil {
		tb.Fatal(err)
	}
	key, err := LoadNodeKey(keyDir)
	if err != nil {
		tb.Fatal(err)
	}
	trust, err := LoadTrustStore(keyDir)
	if err != nil {
		tb.Fatal(err)
	}
	return key, trust
}
