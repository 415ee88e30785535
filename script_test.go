package main

// CLI sessions, as a person types them: testdata/script/*.txtar, run by
// github.com/rogpeppe/go-internal/testscript (the Go command's own script
// tests), with hammer2 and hammer2-leaf being this package's main.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

func scriptCommands() map[string]func() int {
	main := func() int { return run(os.Args, os.Stdout, os.Stderr) }
	return map[string]func() int{"hammer2": main, "hammer2-leaf": main,
		"stoppid": stopPid}
}

// stopPid sends SIGTERM to the daemon whose pid file is argv[1] and waits
// (10 s at most) until it is gone.
func stopPid() int {
	b, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for range 1000 { // 10 ms apiece: a clean shutdown takes well under a second
		if syscall.Kill(pid, 0) != nil {
			return 0
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "pid %d still running after 10s\n", pid)
	return 1
}

func TestScripts(t *testing.T) {
	t.Parallel()
	bin := h2Binary(t)
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(e *testscript.Env) error {
			// hammer2 and hammer2-leaf are the built binary (h2Binary),
			// ahead of this test binary's copies: the scripts run what a
			// person runs, without the race detector's start-up cost.
			e.Setenv("PATH", filepath.Dir(bin)+string(filepath.ListSeparator)+e.Getenv("PATH"))
			// No config of the machine's: every script says what it uses.
			e.Setenv("HOME", e.WorkDir)
			e.Setenv("TCPPORT", strconv.Itoa(freePort(t, "tcp")))
			// A port another program holds for the whole script: it
			// listens and says nothing.
			held, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			e.Defer(func() { held.Close() })
			e.Setenv("HELDPORT", strconv.Itoa(held.Addr().(*net.TCPAddr).Port))
			return nil
		},
	})
}
