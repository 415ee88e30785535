//go:build !dragonfly

package main

// CLI sessions, as a person types them: testdata/script/*.txtar, run by
// github.com/rogpeppe/go-internal/testscript (the Go command's own script
// tests), with hammer2 and hammer2-leaf being this package's main. The
// scripts run leaves on the stand-in PFS.

import (
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

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
