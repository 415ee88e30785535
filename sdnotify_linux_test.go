package main

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sdMsg is one notification a daemon sent to the test's NOTIFY_SOCKET,
// with the pid the kernel says sent it.
type sdMsg struct {
	state string
	pid   int32
}

// sdSocket is a NOTIFY_SOCKET the test owns: a datagram socket passing
// the sender's credentials, as systemd's is (NotifyAccess=main checks
// them). Its reader goroutine ends when the test's cleanup closes it.
func sdSocket(t *testing.T) (path string, msgs <-chan sdMsg) {
	t.Helper()
	path = filepath.Join(shortTempDir(t), "notify.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) }); err != nil || serr != nil {
		t.Fatalf("SO_PASSCRED: %v %v", err, serr)
	}
	ch := make(chan sdMsg, 1024)
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		defer close(ch)
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			m := sdMsg{state: string(buf[:n]), pid: -1}
			if scms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, scm := range scms {
					if cred, err := unix.ParseUnixCredentials(&scm); err == nil {
						m.pid = cred.Pid
					}
				}
			}
			select {
			case ch <- m:
			default: // a test that stopped reading; never block the socket
			}
		}
	}()
	return path, ch
}

// sdNext waits up to d for the next notification that contains want.
func sdNext(t *testing.T, msgs <-chan sdMsg, d time.Duration, want string) sdMsg {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				t.Fatalf("notify socket closed waiting for %q", want)
			}
			if strings.Contains(m.state, want) {
				return m
			}
		case <-timer.C:
			t.Fatalf("no %q on the notify socket within %v", want, d)
		}
	}
}

// TestProcessSystemdNotify runs each daemon as systemd runs a Type=notify
// unit with WatchdogSec: NOTIFY_SOCKET and WATCHDOG_USEC set, no -d. It
// must stay in the foreground (the harness sees its exit otherwise), send
// READY=1 from its own pid once its control socket answers, ping the
// watchdog at half the interval, and send STOPPING=1 on SIGTERM before it
// exits 0.
func TestProcessSystemdNotify(t *testing.T) {
	t.Parallel()
	const watchdog = 400 * time.Millisecond
	for _, kind := range []string{"leaf", "service"} {
		// One after the other, in this test's slot: parallel subtests
		// would start only after the whole suite (schedule_test.go).
		t.Run(kind, func(t *testing.T) {
			sock, msgs := sdSocket(t)
			env := []string{"NOTIFY_SOCKET=" + sock, fmt.Sprintf("WATCHDOG_USEC=%d", watchdog.Microseconds())}
			var d *daemonProc
			var control string
			switch kind {
			case "leaf":
				n := newLeafNode(t, "sd", daemonOpts{})
				// A quorum master of one: its pings wait for its quorum
				// driver too.
				n.writeConfig(fmt.Sprintf("\n[quorum]\nmasters = [%q]\ntick = \"50ms\"\n", n.info.Fsid.String()))
				n.env = env
				n.startArgs("systemd", "leaf", "--listen", n.addr, n.pfs) // no -d
				d, control = n.daemonProc, n.controlPath()
			default:
				s := newSvcNode(t, "sd", daemonOpts{})
				s.env = env
				s.daemonProc.start(s.args(false, false), "systemd", "service running", serviceControlPath(s.sock))
				d, control = s.daemonProc, serviceControlPath(s.sock)
			}
			ready := sdNext(t, msgs, 10*time.Second, "READY=1")
			if ready.pid != int32(d.pid()) || !strings.Contains(ready.state, fmt.Sprintf("MAINPID=%d", d.pid())) {
				t.Errorf("READY=1 from pid %d, saying %q; the daemon is pid %d", ready.pid, ready.state, d.pid())
			}
			if _, err := controlCall(control, controlRequest{Op: "status"}); err != nil {
				t.Errorf("after READY=1 the control socket does not answer: %v", err)
			}
			// Pings at half the interval: 4 within 3 intervals is what a
			// loaded machine still manages; a daemon without a watchdog
			// sends none.
			start := time.Now()
			for i := range 4 {
				m := sdNext(t, msgs, 3*watchdog, "WATCHDOG=1")
				if m.pid != int32(d.pid()) {
					t.Errorf("ping %d from pid %d, not the daemon's %d", i, m.pid, d.pid())
				}
			}
			t.Logf("4 watchdog pings in %v (interval %v)", time.Since(start).Round(time.Millisecond), watchdog)
			d.signal(syscall.SIGTERM)
			sdNext(t, msgs, 10*time.Second, "STOPPING=1")
			if code, ok := d.waitExit(15 * time.Second); !ok || code != 0 {
				t.Errorf("after SIGTERM: exit %d (exited %v), want 0", code, ok)
			}
		})
	}
}
