package main

// The test binary's harness: TestMain, the hammer2 binary the process
// tests run (this test binary, copied, or a kept build), scratch
// directories with short paths, and running a hammer2 command. It builds
// on every system the daemon does; the tests that run leaves on the
// stand-in PFS (ioctl_stub.go) build where it does, everywhere but
// DragonFly, with their own harness in harness_daemons_test.go.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"go.uber.org/goleak"
)

// The executables the tests run, each made once, on first use: the
// hammer2 binary (h2Binary), the fault-clock build (h2FaultBinary,
// harness_daemons_test.go) and the roles' copy (roleBinary,
// testrole_test.go). TestMain removes them at the end.
var (
	h2Bin      = madeBinary{what: "making the hammer2 binary", dirPrefix: "h2bin"}
	h2FaultBin = madeBinary{what: "building the fault-clock binary", dirPrefix: "h2fbin"}
	roleBin    = madeBinary{what: "copying the test binary for a role", dirPrefix: "h2role"}
)

// madeBinary is one executable the tests make once, in a temporary
// directory of its own that any user may enter: children playing an
// unprivileged user run them too.
type madeBinary struct {
	what, dirPrefix string

	once sync.Once
	dir  string
	path string
	err  error
}

// get returns the executable's path, making it on first use with mk,
// which puts it in dir; a failure fails the test, every time it is asked.
func (b *madeBinary) get(t testing.TB, mk func(dir string) (path string, err error)) string {
	t.Helper()
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", b.dirPrefix); b.err != nil {
			return
		}
		if b.err = os.Chmod(b.dir, 0o755); b.err == nil {
			b.path, b.err = mk(b.dir)
		}
	})
	if b.err != nil {
		t.Fatalf("%s: %v", b.what, b.err)
	}
	return b.path
}

// remove deletes what get made.
func (b *madeBinary) remove() {
	if b.dir != "" {
		os.RemoveAll(b.dir)
	}
}

func TestMain(m *testing.M) {
	if role := os.Getenv("H2_TEST_ROLE"); role != "" {
		os.Exit(runTestRole(role)) // testrole_test.go
	}
	// testscript runs this binary as the hammer2 commands of the CLI
	// scripts (script_test.go), and the tests otherwise; it exits itself.
	cmds := map[string]func(){}
	for name, f := range scriptCommands() {
		cmds[name] = func() { os.Exit(f()) }
	}
	testscript.Main(testRun{m}, cmds)
}

// testRun is the tests' run, as testscript.RunMain calls it once it knows
// this is not one of its commands.
type testRun struct{ m *testing.M }

func (r testRun) Run() int {
	flag.Parse()
	setupSchedule() // schedule_test.go
	raceQuickExit()
	restoreTmpdir := scratchOnTmpfs() // scratch_linux_test.go
	code := r.m.Run()
	for _, b := range []*madeBinary{&h2Bin, &h2FaultBin, &roleBin} {
		b.remove()
	}
	restoreTmpdir()
	// Every goroutine a test started is owned by something the test shut
	// down: none may outlive the tests.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines left behind by the tests:\n%v\n", err)
			code = 1
		}
	}
	return code
}

// raceQuickExit tells the race runtime of every race-built child (the
// roles, testscript's commands, race-built daemons) not to sleep a second
// before it exits, which is its default (GORACE atexit_sleep_ms=1000,
// time for other threads to finish a report): the suite waits for
// hundreds of children to exit, and each such wait cost that second.
// 10 ms still lets a report in flight finish. A GORACE that already says
// otherwise wins; testscript passes GORACE on to its commands.
func raceQuickExit() {
	if !raceEnabled || strings.Contains(os.Getenv("GORACE"), "atexit_sleep_ms") {
		return
	}
	_ = os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=10"))
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// h2Binary returns the path of the hammer2 binary (with a hammer2-leaf
// symlink beside it), made on first use. A failed build fails the test:
// the binary is what is being tested. With H2_TEST_RACE_BINARY set the
// binary is race-built, and a race it reports fails the test.
//
// The binary is this test binary when it is built as the daemons should
// be: it runs the same main (TestMain dispatches on the name it is run
// as, through testscript), and copying it costs nothing next to
// compiling the package again. A -race test binary is not, unless
// H2_TEST_RACE_BINARY asks for race-built daemons: the suite's dozens of
// daemons would then run several times slower.
func h2Binary(t testing.TB) string {
	t.Helper()
	return h2Bin.get(t, func(dir string) (string, error) {
		path := filepath.Join(dir, "hammer2")
		var err error
		if race := os.Getenv("H2_TEST_RACE_BINARY") != ""; race == raceEnabled {
			err = copySelf(path)
		} else {
			err = goBuild(path, race)
		}
		if err != nil {
			return "", err
		}
		return path, os.Symlink("hammer2", filepath.Join(dir, "hammer2-leaf"))
	})
}

// copySelf copies this test binary to path, mode 0755: run as hammer2 or
// hammer2-leaf it is the daemon (scriptCommands), run under another name
// it is the tests (or a role, testrole_test.go).
func copySelf(path string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	return copyFile(self, path, 0o755)
}

// goBuild builds this package's binary at out, with the build tags given.
// It builds into a copy kept for this checkout and this kind of build in
// the user's cache directory, then copies that to out: go build relinks
// only when the copy is out of date, so every run after the first, and
// after each change, saves the link (1.5 s of CPU, on the way of every
// test that starts a daemon). Without a cache directory it builds at out.
func goBuild(out string, race bool, tags ...string) error {
	kept, unlock, err := keptBuild(race, tags)
	if err != nil {
		return goBuildAt(out, race, tags...)
	}
	defer unlock()
	if err := goBuildAt(kept, race, tags...); err != nil {
		return err
	}
	return copyFile(kept, out, 0o755)
}

// keptBuild is where goBuild keeps a build of this checkout (its
// directory's hash names it) with these options, locked against another
// run of the tests building it at the same time until unlock is called.
func keptBuild(race bool, tags []string) (path string, unlock func(), err error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", nil, err
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", nil, err
	}
	sum := sha256.Sum256([]byte(wd))
	dir := filepath.Join(cache, "hammer2-leaf-tests", hex.EncodeToString(sum[:6]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	name := "hammer2"
	if race {
		name += "-race"
	}
	for _, tag := range tags {
		name += "-" + tag
	}
	lock, err := os.OpenFile(filepath.Join(dir, name+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return "", nil, err
	}
	return filepath.Join(dir, name), func() { lock.Close() }, nil
}

// goBuildAt runs go build for this package with output at out.
func goBuildAt(out string, race bool, tags ...string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go") // go test sets GOROOT
	}
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	if msg, err := exec.Command(goTool, append(args, ".")...).CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, msg)
	}
	return nil
}

// shortTempDir is a t.TempDir with a short path: control and kernel
// sockets live in the PFS directory, and AF_UNIX paths are limited to 107
// bytes, which t.TempDir's long names can exceed.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "h2t")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func runH2(t testing.TB, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runH2In(t, bin, "", args...)
}

// runH2In is runH2 with stdin as the command's standard input ("":
// /dev/null).
func runH2In(t testing.TB, bin, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("hammer2 %s: still running after 20s", strings.Join(args, " "))
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// procAlive reports whether pid runs. Where /proc tells, a zombie counts
// as gone (the test container's init may not reap the daemon); elsewhere
// kill(pid, 0) says, and a zombie still counts.
func procAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat("/proc/self/stat"); serr != nil {
			return syscall.Kill(pid, 0) == nil
		}
	}
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && len(s) > i+2 {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}
