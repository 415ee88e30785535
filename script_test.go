package main

// CLI sessions, as a person types them: testdata/script/*.txtar, run by
// github.com/rogpeppe/go-internal/testscript (the Go command's own script
// tests), with hammer2 and hammer2-leaf being this package's main.

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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
		"stoppid": stopPid, "watchfor": watchFor}
}

// killPidFiles kills the daemons whose pid files are under dir.
func killPidFiles(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".pid") {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		return nil
	})
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

// One test per script, each parallel, each running its script inside its
// own slot (scriptT): testscript.Run would make every script a parallel
// subtest, and go test starts those only after every top-level test
// waiting for a slot (schedule_test.go), so the scripts ran last, behind
// the whole suite. TestScriptFilesEachRun keeps the list whole.
func TestScriptCli(t *testing.T)      { runScript(t, "cli") }
func TestScriptDefaults(t *testing.T) { runScript(t, "defaults") }
func TestScriptDev(t *testing.T)      { runScript(t, "dev") }
func TestScriptHealth(t *testing.T)   { runScript(t, "health") }
func TestScriptPfs(t *testing.T)      { runScript(t, "pfs") }
func TestScriptService(t *testing.T)  { runScript(t, "service") }
func TestScriptShell(t *testing.T)    { runScript(t, "shell") }

// runScript runs testdata/script/<name>.txtar as a parallel test.
func runScript(t *testing.T, name string) {
	t.Parallel()
	bin := h2Binary(t)
	p := testscript.Params{
		Files: []string{filepath.Join("testdata", "script", name+".txtar")},
		Setup: func(e *testscript.Env) error {
			// hammer2 and hammer2-leaf are the built binary (h2Binary),
			// ahead of this test binary's copies: the scripts run what a
			// person runs, without the race detector's start-up cost.
			e.Setenv("PATH", filepath.Dir(bin)+string(filepath.ListSeparator)+e.Getenv("PATH"))
			// No config of the machine's: every script says what it uses.
			e.Setenv("HOME", e.WorkDir)
			// Daemons a script backgrounded outlive it unless stopped: kill
			// whatever a pid file in the script's directory names.
			e.Defer(func() { killPidFiles(e.WorkDir) })
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
	}
	if d, ok := t.Deadline(); ok {
		p.Deadline = d
	}
	testscript.RunT(scriptT{t}, p)
}

// scriptT is testscript's view of a *testing.T whose script subtest runs
// at once, in the slot of the parallel test that holds it, rather than
// as a parallel subtest queued behind the suite.
type scriptT struct{ *testing.T }

func (t scriptT) Parallel() {} // the test holding the script already is

func (t scriptT) Run(name string, f func(testscript.T)) {
	t.T.Run(name, func(t *testing.T) { f(scriptT{t}) })
}

func (t scriptT) Verbose() bool { return testing.Verbose() }

// TestScriptFilesEachRun: every testdata/script/*.txtar has its
// TestScript<Name> above, calling runScript with its name.
func TestScriptFilesEachRun(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("testdata", "script", "*.txtar"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts in testdata/script (%v)", err)
	}
	src, err := os.ReadFile("script_test.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".txtar")
		fn := "TestScript" + strings.ToUpper(name[:1]) + name[1:]
		call := fmt.Sprintf(`func %s(t *testing.T) { runScript(t, %q) }`, fn, name)
		if !regexp.MustCompile(regexp.QuoteMeta(fn) + `\(t \*testing\.T\) +\{ runScript\(t, "` + regexp.QuoteMeta(name) + `"\) \}`).Match(src) {
			t.Errorf("%s is not run: script_test.go needs\n\t%s", f, call)
		}
	}
}
