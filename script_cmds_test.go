package main

// The commands the CLI scripts (script_test.go) run besides the shell's
// own: hammer2 and hammer2-leaf, which are this package's main, and the
// waits on a daemon. TestMain (harness_test.go) hands them to testscript,
// which runs this test binary as each of them.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func scriptCommands() map[string]func() int {
	main := func() int { return run(os.Args, os.Stdout, os.Stderr) }
	return map[string]func() int{"hammer2": main, "hammer2-leaf": main,
		"stoppid": stopPid, "watchfor": watchFor}
}

// watchFor runs the command after its first argument (a regexp), e.g.
// `watchfor '"state":"up"' hammer2 status --watch --json pfs`, and exits 0
// at the first line of its output that matches: a wait on the daemon's
// own status events. A command that ends first (the daemon is still
// starting: no config or socket yet) is run again, every 50 ms; after 20 s
// watchFor gives up with 1.
func watchFor() int {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: watchfor <regexp> <command> [args...]")
		return 2
	}
	re, err := regexp.Compile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var last []byte
	for ctx.Err() == nil {
		if line, stderr := watchOnce(ctx, re); line != "" {
			fmt.Println(line)
			return 0
		} else if stderr != nil {
			last = stderr
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
	fmt.Fprintf(os.Stderr, "watchfor: no line matched %q in 20s; the command said: %s\n", os.Args[1], last)
	return 1
}

// watchOnce runs the command once: the matching line, or its stderr.
func watchOnce(ctx context.Context, re *regexp.Regexp) (string, []byte) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[2], os.Args[3:]...)
	var errb strings.Builder
	cmd.Stderr = &errb
	out, err := cmd.StdoutPipe()
	if err != nil || cmd.Start() != nil {
		return "", []byte(fmt.Sprint(err))
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if re.MatchString(sc.Text()) {
			return sc.Text(), nil
		}
	}
	cancel()
	_ = cmd.Wait()
	return "", []byte(errb.String())
}

// stopPid sends SIGTERM to the daemon whose pid file is argv[1] (a glob
// naming one file) and waits (10 s at most) until it is gone.
func stopPid() int {
	files, err := filepath.Glob(os.Args[1])
	if err != nil || len(files) != 1 {
		fmt.Fprintf(os.Stderr, "stoppid: %s names %d files (%v)\n", os.Args[1], len(files), err)
		return 1
	}
	b, err := os.ReadFile(files[0])
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
		// procAlive, not kill(pid, 0): a daemon's parent is init, which in
		// some sandboxes reaps its zombies only every second or so.
		if !procAlive(pid) {
			return 0
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "pid %d still running after 10s\n", pid)
	return 1
}
