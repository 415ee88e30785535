//go:build !dragonfly

package main

// The fault campaign's network (faults_test.go): each node in a network
// namespace of its own, joined by a veth pair to a router namespace, in
// subnets of the ULA prefix fd00:13::/48 that exist only inside these
// namespaces (node i is fd00:13:0:<i>::2, its router side fd00:13:0:<i>::1).
// No namespace has a route out of that prefix. In the router every packet
// from a node is routed (a policy rule per node's link) into a TUN device
// held by a forwarder, this test binary re-run in the router namespace as
// the role fault-forwarder: it delays, jitters, duplicates and reorders
// datagrams by the nemesis's seeded schedule and writes them back, and the
// router forwards them to their node. (This machine's kernel has no netem;
// where a kernel has it the forwarder is still what runs, so that every
// machine runs the same faults; the log says so.) Partitions, one-way
// drops and loss are nftables rules in the router's forward hook.

import (
	"bufio"
	"container/heap"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// faultNet is the namespaces of one campaign. The test goroutine owns it.
type faultNet struct {
	t      *testing.T
	prefix string // the namespaces' names start with it
	router string
	nodes  []string
	fwd    *faultForwarder
	netem  string // whether this kernel has netem, for the log
}

// faultNetSeq tells apart the networks of one test process.
var faultNetSeq atomic.Int64

// faultNodeAddr is node i's (0-based) address.
func faultNodeAddr(i int) string { return fmt.Sprintf("fd00:13:0:%d::2", i+1) }

// faultNetCheck says why namespaces cannot be made here, "" if they can.
func faultNetCheck() string {
	if os.Geteuid() != 0 {
		return "needs root (CAP_NET_ADMIN) to make network namespaces"
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("needs %s (iproute2, nftables; .ci/run installs them)", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return "needs /dev/net/tun for the forwarder"
	}
	return ""
}

// faultRun runs a command, failing the test with its output.
func faultRun(t testing.TB, stdin string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// newFaultNet makes the router and n node namespaces, and starts the
// forwarder; the test's cleanup removes them all.
func newFaultNet(t *testing.T, n int, seed uint64) *faultNet {
	t.Helper()
	removeStaleFaultNets()
	f := &faultNet{t: t, prefix: fmt.Sprintf("h2f%d-%d-", os.Getpid(), faultNetSeq.Add(1))}
	f.router = f.prefix + "r"
	t.Cleanup(f.remove)
	ip := func(args ...string) { t.Helper(); faultRun(t, "", "ip", args...) }
	// No duplicate address detection: while a link-local address is
	// tentative, neighbour discovery fails and the first packets are lost.
	noDAD := func(ns string) {
		faultRun(t, "", "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	ip("netns", "add", f.router)
	noDAD(f.router)
	ip("-n", f.router, "link", "set", "lo", "up")
	faultRun(t, "", "ip", "netns", "exec", f.router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.forwarding=1")
	for i := range n {
		ns := fmt.Sprintf("%sn%d", f.prefix, i+1)
		f.nodes = append(f.nodes, ns)
		ip("netns", "add", ns)
		noDAD(ns)
		ip("-n", ns, "link", "set", "lo", "up")
		rl := fmt.Sprintf("n%d", i+1)
		ip("-n", f.router, "link", "add", rl, "type", "veth", "peer", "name", "eth0", "netns", ns)
		ip("-n", ns, "link", "set", "eth0", "up")
		ip("-n", ns, "-6", "addr", "add", faultNodeAddr(i)+"/64", "dev", "eth0", "nodad")
		ip("-n", ns, "-6", "route", "add", "fd00:13::/48", "via", fmt.Sprintf("fd00:13:0:%d::1", i+1))
		ip("-n", f.router, "link", "set", rl, "up")
		ip("-n", f.router, "-6", "addr", "add", fmt.Sprintf("fd00:13:0:%d::1/64", i+1), "dev", rl, "nodad")
	}
	f.netem = "netem missing"
	if out, err := exec.Command("ip", "netns", "exec", f.router, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms").CombinedOutput(); err == nil {
		f.netem = "netem present, not used: the forwarder runs everywhere, so that every machine runs the same faults"
		_ = exec.Command("ip", "netns", "exec", f.router, "tc", "qdisc", "del", "dev", "lo", "root").Run()
	} else if msg := strings.TrimSpace(string(out)); msg != "" {
		f.netem = "netem missing (tc: " + msg + ")"
	}
	f.fwd = startFaultForwarder(t, f.router, seed)
	ip("-n", f.router, "link", "set", "tun0", "up")
	for i := range n {
		ip("-n", f.router, "-6", "rule", "add", "iif", fmt.Sprintf("n%d", i+1), "lookup", "100", "pref", "100")
	}
	ip("-n", f.router, "-6", "route", "add", "fd00:13::/48", "dev", "tun0", "table", "100")
	f.rules(nil, 0)
	return f
}

// remove ends the forwarder and deletes the namespaces (the veths go
// with them).
func (f *faultNet) remove() {
	if f.fwd != nil {
		f.fwd.stop()
	}
	for _, ns := range append(f.nodes, f.router) {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
}

// removeStaleFaultNets deletes the namespaces of test processes that are
// gone (killed before their cleanup ran): h2f<pid>-<seq>..., that pid
// dead.
func removeStaleFaultNets() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "h2f")
		pidS, _, ok2 := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidS)
		if !ok || !ok2 || err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// exec is the command line that runs argv in node i's namespace.
func (f *faultNet) exec(i int) []string { return []string{"ip", "netns", "exec", f.nodes[i]} }

// faultDrop is one direction the router drops: from node a to node b.
type faultDrop struct{ from, to int }

// rules replaces the router's nftables rules: the dropped directions, and
// loss percent of every packet from a node.
func (f *faultNet) rules(drops []faultDrop, loss int) {
	f.t.Helper()
	var b strings.Builder
	// Making the table first lets the delete never fail; one nft run is
	// one transaction.
	b.WriteString("table inet h2faults\ndelete table inet h2faults\ntable inet h2faults {\n chain forwarded {\n  type filter hook forward priority 0; policy accept;\n")
	for _, d := range drops {
		// By address, so that datagrams the forwarder holds are dropped
		// too as they come out of it: a cut is a cut at once.
		fmt.Fprintf(&b, "  ip6 saddr fd00:13:0:%d::/64 ip6 daddr fd00:13:0:%d::/64 drop\n", d.from+1, d.to+1)
	}
	if loss > 0 {
		// Only as packets enter from a node: they pass the hook again on
		// their way out of the TUN device.
		fmt.Fprintf(&b, "  iifname \"n*\" numgen random mod 100 < %d drop\n", loss)
	}
	b.WriteString(" }\n}\n")
	faultRun(f.t, b.String(), "ip", "netns", "exec", f.router, "nft", "-f", "-")
}

// ---- the forwarder ----

// faultForwarder is the forwarder process, told its shape on stdin.
type faultForwarder struct{ *roleProc }

func startFaultForwarder(t testing.TB, router string, seed uint64) *faultForwarder {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", router, roleBinary(t))
	cmd.Env = append(os.Environ(), "H2_TEST_ROLE=fault-forwarder", fmt.Sprintf("H2_FAULT_SEED=%d", seed))
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	fw := &faultForwarder{runRoleCmd(t, "fault-forwarder", cmd)}
	if l := fw.line(10 * time.Second); l != "ready" {
		t.Fatalf("fault forwarder: %q, not ready", l)
	}
	return fw
}

// say sends one command and returns the forwarder's answer.
func (fw *faultForwarder) say(cmd string) string {
	fw.t.Helper()
	if _, err := io.WriteString(fw.stdin, cmd+"\n"); err != nil {
		fw.t.Fatalf("fault forwarder: %v", err)
	}
	return fw.line(10 * time.Second)
}

// faultShape is what the forwarder does to each datagram.
type faultShape struct {
	delay, jitter time.Duration
	dup, reorder  int // percent
}

func (s faultShape) command() string {
	return fmt.Sprintf("shape %d %d %d %d", s.delay.Microseconds(), s.jitter.Microseconds(), s.dup, s.reorder)
}

func (s faultShape) String() string {
	return fmt.Sprintf("delay %v±%v, dup %d%%, reorder %d%%", s.delay, s.jitter, s.dup, s.reorder)
}

// roleFaultForwarder is the forwarder, in the router namespace: it opens
// tun0 and, until stdin closes, writes back every packet read from it as
// the shape says. Commands: "shape <delay µs> <jitter µs> <dup %>
// <reorder %>", answered "ok"; "stats", answered with the counts.
func roleFaultForwarder() error {
	seed, _ := strconv.ParseUint(os.Getenv("H2_FAULT_SEED"), 10, 64)
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("fault forwarder: %w", err)
	}
	ifr, err := unix.NewIfreq("tun0")
	if err != nil {
		return err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return fmt.Errorf("fault forwarder: TUNSETIFF: %w", err)
	}
	// Non-blocking, so that the runtime's poller reads it and Close ends
	// a read in progress.
	if err := unix.SetNonblock(fd, true); err != nil {
		return err
	}
	tun := os.NewFile(uintptr(fd), "tun0")
	fw := &forwarder{tun: tun, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), wake: make(chan struct{}, 1), quit: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); fw.read() }()
	go func() { defer wg.Done(); fw.send() }()
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 5 && f[0] == "shape":
			var v [4]int64
			for i := range v {
				if v[i], err = strconv.ParseInt(f[i+1], 10, 64); err != nil {
					return fmt.Errorf("fault forwarder: %q: %w", sc.Text(), err)
				}
			}
			fw.mu.Lock()
			fw.shape = faultShape{delay: time.Duration(v[0]) * time.Microsecond, jitter: time.Duration(v[1]) * time.Microsecond,
				dup: int(v[2]), reorder: int(v[3])}
			fw.mu.Unlock()
			fmt.Println("ok")
		case len(f) == 1 && f[0] == "stats":
			fw.mu.Lock()
			fmt.Printf("packets %d held %d duplicated %d reordered %d dropped %d\n", fw.packets, fw.delayed, fw.duped, fw.reordered, fw.dropped)
			fw.mu.Unlock()
		default:
			return fmt.Errorf("fault forwarder: unknown command %q", sc.Text())
		}
	}
	close(fw.quit)
	tun.Close() // ends the reader
	wg.Wait()
	return nil
}

// forwarderMaxHeld bounds the packets held at once: past it a packet is
// dropped, as a full queue would.
const forwarderMaxHeld = 8192

type forwarder struct {
	tun  *os.File
	wake chan struct{}
	quit chan struct{}

	mu                                          sync.Mutex
	rng                                         *rand.Rand
	shape                                       faultShape
	held                                        heldPackets
	seq                                         uint64
	packets, delayed, duped, reordered, dropped int
}

type heldPacket struct {
	at  time.Time
	seq uint64
	b   []byte
}

type heldPackets []heldPacket

func (h heldPackets) Len() int { return len(h) }
func (h heldPackets) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].seq < h[j].seq
	}
	return h[i].at.Before(h[j].at)
}
func (h heldPackets) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *heldPackets) Push(x any)   { *h = append(*h, x.(heldPacket)) }
func (h *heldPackets) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// read takes each packet from the TUN device and holds it as the shape
// says (a packet with no delay is held for no time, in order).
func (fw *forwarder) read() {
	buf := make([]byte, 65536)
	for {
		n, err := fw.tun.Read(buf)
		if err != nil {
			return
		}
		now := time.Now()
		fw.mu.Lock()
		fw.packets++
		s := fw.shape
		at := now
		if s.delay > 0 || s.jitter > 0 {
			fw.delayed++
			d := s.delay
			if s.jitter > 0 {
				d += time.Duration(fw.rng.Int64N(int64(2*s.jitter))) - s.jitter
			}
			at = now.Add(max(d, 0))
		}
		if s.reorder > 0 && fw.rng.IntN(100) < s.reorder {
			fw.reordered++ // held back past those that come after it
			at = at.Add(s.delay + s.jitter + 5*time.Millisecond)
		}
		fw.hold(at, buf[:n])
		if s.dup > 0 && fw.rng.IntN(100) < s.dup {
			fw.duped++
			fw.hold(at.Add(time.Duration(fw.rng.Int64N(int64(s.delay+time.Millisecond)))), buf[:n])
		}
		fw.mu.Unlock()
		select {
		case fw.wake <- struct{}{}:
		default:
		}
	}
}

func (fw *forwarder) hold(at time.Time, b []byte) {
	if fw.held.Len() >= forwarderMaxHeld {
		fw.dropped++
		return
	}
	fw.seq++
	heap.Push(&fw.held, heldPacket{at: at, seq: fw.seq, b: append([]byte(nil), b...)})
}

// send writes the held packets back as their time comes.
func (fw *forwarder) send() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		fw.mu.Lock()
		var due [][]byte
		now := time.Now()
		for fw.held.Len() > 0 && !fw.held[0].at.After(now) {
			due = append(due, heap.Pop(&fw.held).(heldPacket).b)
		}
		next := time.Hour
		if fw.held.Len() > 0 {
			next = fw.held[0].at.Sub(now)
		}
		fw.mu.Unlock()
		for _, b := range due {
			if _, err := fw.tun.Write(b); err != nil && !errors.Is(err, unix.EINVAL) {
				// A packet the kernel refuses is lost, as on a wire.
				continue
			}
		}
		timer.Reset(next)
		select {
		case <-fw.quit:
			return
		case <-fw.wake:
		case <-timer.C:
		}
	}
}

// ---- probes of the network itself ----

// roleFaultEcho answers every datagram to H2_ADDR with itself, until
// stdin closes.
func roleFaultEcho() error {
	c, err := net.ListenPacket("udp", os.Getenv("H2_ADDR"))
	if err != nil {
		return err
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		c.Close()
	}()
	fmt.Println("ready")
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return nil
		}
		_, _ = c.WriteTo(buf[:n], from)
	}
}

// roleFaultProbe sends H2_COUNT numbered datagrams to H2_ADDR, 20 ms
// apart, and reports once the last one's answer had 300 ms to come:
// "sent S got G dups D median-rtt R" (R in ms, -1 with none). With
// H2_UNTIL=all it reports as soon as every datagram has been answered,
// with H2_UNTIL=dup once, besides, one answer has come twice: the wait is
// for what may still come only when something is missing.
func roleFaultProbe() error {
	count, _ := strconv.Atoi(os.Getenv("H2_COUNT"))
	until := os.Getenv("H2_UNTIL")
	c, err := net.Dial("udp", os.Getenv("H2_ADDR"))
	if err != nil {
		return err
	}
	defer c.Close()
	sent := make([]time.Time, count)
	seen := map[int]bool{}
	var rtts []time.Duration
	dups := 0
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			_ = c.SetReadDeadline(time.Now().Add(time.Duration(count)*20*time.Millisecond + 300*time.Millisecond))
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			i, err := strconv.Atoi(string(buf[:n]))
			mu.Lock()
			if err == nil && i >= 0 && i < count {
				if seen[i] {
					dups++
				} else {
					seen[i] = true
					rtts = append(rtts, time.Since(sent[i]))
				}
			}
			enough := len(seen) == count && (until == "all" || until == "dup" && dups > 0)
			mu.Unlock()
			if enough {
				return
			}
		}
	}()
	for i := range count {
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		_, _ = c.Write([]byte(strconv.Itoa(i)))
		time.Sleep(20 * time.Millisecond)
	}
	<-done
	slices.Sort(rtts)
	med := time.Duration(-1)
	if len(rtts) > 0 {
		med = rtts[len(rtts)/2]
	}
	fmt.Printf("sent %d got %d dups %d median-rtt %d\n", count, len(seen), dups, med.Milliseconds())
	return nil
}

// faultRole runs a role of this test binary in node i's namespace.
func (f *faultNet) role(i int, role string, env ...string) *roleProc {
	f.t.Helper()
	cmd := exec.Command("ip", append(f.exec(i)[1:], roleBinary(f.t))...)
	cmd.Env = append(os.Environ(), append([]string{"H2_TEST_ROLE=" + role}, env...)...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return runRoleCmd(f.t, role, cmd)
}

// TestFaultNet checks the campaign's network: node 1 reaches node 2
// through the router; a drop rule cuts one direction; the forwarder
// delays and duplicates; and no namespace has a route out of fd00:13::/48.
func TestFaultNet(t *testing.T) {
	t.Parallel() // its one timing bound is a lower one
	if why := faultNetCheck(); why != "" {
		t.Skip(why)
	}
	f := newFaultNet(t, 2, 1)
	for _, ns := range append(slices.Clone(f.nodes), f.router) {
		for _, dst := range []string{"2001:db8::1", "8.8.8.8", "127.0.0.2"} {
			out, err := exec.Command("ip", "-n", ns, "route", "get", dst).CombinedOutput()
			if err == nil && !strings.Contains(string(out), " lo ") && !strings.HasPrefix(dst, "127.") {
				t.Errorf("namespace %s has a route to %s: %s", ns, dst, out)
			}
		}
	}
	addr := "[" + faultNodeAddr(1) + "]:9000"
	echo := f.role(1, "fault-echo", "H2_ADDR="+addr)
	if l := echo.line(10 * time.Second); l != "ready" {
		t.Fatalf("echo: %q", l)
	}
	// until: "all" or "dup" when every answer is expected (and a
	// duplicate), "" when some are not, which the probe then waits out.
	probe := func(until string) (got, dups int, rtt time.Duration) {
		t.Helper()
		p := f.role(0, "fault-probe", "H2_ADDR="+addr, "H2_COUNT=10", "H2_UNTIL="+until)
		line := p.line(20 * time.Second)
		var sent, ms int
		if _, err := fmt.Sscanf(line, "sent %d got %d dups %d median-rtt %d", &sent, &got, &dups, &ms); err != nil {
			t.Fatalf("probe: %q: %v", line, err)
		}
		return got, dups, time.Duration(ms) * time.Millisecond
	}
	if got, _, _ := probe("all"); got != 10 {
		t.Fatalf("plain: %d of 10 answered", got)
	}
	f.rules([]faultDrop{{from: 1, to: 0}}, 0) // the answers only
	if got, _, _ := probe(""); got != 0 {
		t.Errorf("answers dropped: %d of 10 answered", got)
	}
	f.rules(nil, 0)
	if r := f.fwd.say(faultShape{delay: 50 * time.Millisecond}.command()); r != "ok" {
		t.Fatalf("shape: %q", r)
	}
	if got, _, rtt := probe("all"); got != 10 || rtt < 100*time.Millisecond {
		t.Errorf("delay 50ms each way: %d of 10 answered, median round trip %v", got, rtt)
	}
	f.fwd.say(faultShape{delay: time.Millisecond, dup: 100}.command())
	if got, dups, _ := probe("dup"); got != 10 || dups == 0 {
		t.Errorf("everything duplicated: %d of 10 answered, %d duplicates", got, dups)
	}
	f.fwd.say(faultShape{}.command())
	t.Logf("forwarder: %s", f.fwd.say("stats"))
}
