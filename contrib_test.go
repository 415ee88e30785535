//go:build !dragonfly

package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/alecthomas/kong"
	"golang.org/x/sys/unix"
)

// unitDirectives reads a systemd unit file's key=value lines.
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("%s: not key=value: %q", path, line)
			continue
		}
		out[k] = append(out[k], v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// parsesAsCLI parses a command line (without the binary) with the real
// kong grammar, without running it.
func parsesAsCLI(t *testing.T, args []string) error {
	t.Helper()
	var c CLI
	parser, err := kong.New(&c, kong.Vars(kongVars()), kong.Exit(func(int) {}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = parser.Parse(args)
	return err
}

// TestSystemdUnits: the shipped units are Type=notify with a watchdog,
// run commands the binary parses, and pass systemd's own checks:
// `systemd-analyze verify`, and `systemd-analyze security` at an exposure
// of at most 3 ("OK") — hardening that a later edit drops fails here.
func TestSystemdUnits(t *testing.T) {
	t.Parallel()
	bin := h2Binary(t)
	analyze, _ := exec.LookPath("systemd-analyze")
	dir := t.TempDir()
	for _, tc := range []struct{ file, instance string }{
		{"hammer2-service.service", "hammer2-service.service"},
		{"hammer2-leaf@.service", "hammer2-leaf@srv-pfs-master1.service"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			src := filepath.Join("contrib", "systemd", tc.file)
			d := unitDirectives(t, src)
			if got := d["Type"]; len(got) != 1 || got[0] != "notify" {
				t.Errorf("Type=%v, want notify", got)
			}
			if len(d["WatchdogSec"]) != 1 {
				t.Errorf("WatchdogSec=%v, want one", d["WatchdogSec"])
			}
			exec := strings.Fields(strings.ReplaceAll(d["ExecStart"][0], "%f", "/srv/pfs/master1"))
			if exec[0] != "/usr/local/sbin/hammer2" {
				t.Errorf("ExecStart runs %s", exec[0])
			}
			if err := parsesAsCLI(t, exec[1:]); err != nil {
				t.Errorf("ExecStart %q: %v", exec, err)
			}
			if analyze == "" {
				t.Log("systemd-analyze not installed: verify and security not checked")
				return
			}
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			unit := filepath.Join(dir, tc.instance)
			if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/local/sbin/hammer2", bin)), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec2(analyze, "verify", "--man=no", unit); err != nil {
				t.Errorf("systemd-analyze verify: %v\n%s", err, out)
			}
			if out, err := exec2(analyze, "security", "--offline=yes", "--threshold=30", unit); err != nil {
				t.Errorf("systemd-analyze security: exposure above 3.0: %v\n%s", err, out)
			}
		})
	}
}

func exec2(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// rcSubrStandIn is the part of rc.subr(8) the contrib/rc.d scripts use:
// checkyesno, load_rc_config (the variables come from the environment
// here) and run_rc_command dispatching to ${cmd}_cmd, with the fast,
// force, one and quiet prefixes and the rcvar check. DragonFly's rc.subr
// is not on Linux; the scripts' own logic runs against the real binary.
const rcSubrStandIn = `
checkyesno() {
	eval _v=\$$1
	case "$_v" in
	[Yy][Ee][Ss]|[Tt][Rr][Uu][Ee]|[Oo][Nn]|1) return 0 ;;
	*) return 1 ;;
	esac
}
load_rc_config() { :; }
run_rc_command() {
	_arg="$1"
	_force=""
	case "$_arg" in
	fast*) _arg=${_arg#fast} ;;
	force*) _arg=${_arg#force}; _force=1 ;;
	one*) _arg=${_arg#one}; _force=1 ;;
	quiet*) _arg=${_arg#quiet} ;;
	esac
	if [ -z "$_force" ] && ! checkyesno "$rcvar"; then
		echo "\$${rcvar} is not enabled"
		return 0
	fi
	eval _cmd=\$${_arg}_cmd
	if [ -z "$_cmd" ]; then
		echo "unknown command $_arg"
		return 1
	fi
	$_cmd
}
`

// rcHost runs the contrib/rc.d scripts of one test as DragonFly's rc
// would, under an init that reaps: its scripts run under an rc-init role
// (roleRCInit), which the daemons they start in the background are
// reparented to, and which reaps each the moment it exits. A script's
// stop waits with kill -0 until its daemon is gone; under this sandbox's
// PID 1, which reaps about once a second, that took up to a second a
// daemon, and under a container's `go test` as PID 1, which never reaps,
// it would run into the script's 20 s bound.
type rcHost struct {
	t    *testing.T
	init *roleProc
	dir  string // the test's directory: the config, PFSs and sockets
	cfg  string
	pids []int // every daemon a script reported, killed at the end
}

// newRCHost starts a test's rc-init and writes a config for the daemons
// its scripts start (no QUIC listener, no backbone).
func newRCHost(t *testing.T) *rcHost {
	t.Helper()
	h := &rcHost{t: t, dir: shortTempDir(t)}
	h.cfg = filepath.Join(h.dir, "h2.toml")
	if err := os.WriteFile(h.cfg, []byte(fmt.Sprintf("key_dir = %q\nlisten = \"none\"\nbackbone = \"none\"\n", filepath.Join(h.dir, "keys"))), 0o600); err != nil {
		t.Fatal(err)
	}
	h.init = startRole(t, "rc-init", -1)
	t.Cleanup(func() {
		h.init.stop()
		for _, p := range h.pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	return h
}

// script runs contrib/rc.d/<name> with sh (dash on Debian: POSIX sh
// only) against the rc.subr stand-in, with env as its rc.conf, and
// returns its output and exit status.
func (h *rcHost) script(name string, env []string, args ...string) (string, int) {
	t := h.t
	t.Helper()
	dir := t.TempDir()
	subr := filepath.Join(dir, "rc.subr")
	if err := os.WriteFile(subr, []byte(rcSubrStandIn), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join("contrib", "rc.d", name))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "\n. /etc/rc.subr\n") {
		t.Fatalf("%s does not source /etc/rc.subr", name)
	}
	script := filepath.Join(dir, name)
	if err := os.WriteFile(script, []byte(strings.Replace(string(b), "/etc/rc.subr", subr, 1)), 0o755); err != nil {
		t.Fatal(err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	req, err := json.Marshal(rcRun{Args: append([]string{"sh", script}, args...), Env: append(os.Environ(), env...), Dir: wd, Out: filepath.Join(dir, "out")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Fprintf(h.init.stdin, "%s\n", req); err != nil {
		t.Fatalf("rc-init: %v", err)
	}
	var done rcDone
	if line := h.init.line(60 * time.Second); json.Unmarshal([]byte(line), &done) != nil || done.Err != "" {
		t.Fatalf("rc-init running %s %v: %s", name, args, line)
	}
	return done.Out, done.Code
}

// pidsIn is the pids of the "running as pid N" lines of a script's
// output, which the cleanup kills should the test fail before stopping
// them.
func (h *rcHost) pidsIn(out string) []int {
	var ps []int
	for _, m := range regexp.MustCompile(`running as pid (\d+)`).FindAllStringSubmatch(out, -1) {
		p, _ := strconv.Atoi(m[1])
		ps = append(ps, p)
	}
	h.pids = append(h.pids, ps...)
	return ps
}

// rcRun is one script for rc-init to run: argv, environment, working
// directory, and the file its output goes to (a file, not a pipe, which a
// daemon started in the background might keep open).
type rcRun struct {
	Args, Env []string
	Dir, Out  string
}

// rcDone is how it went: the output and exit status, or why it could not
// run.
type rcDone struct {
	Out  string
	Code int
	Err  string
}

// roleRCInit is the rc-init role: a subreaper that runs each rcRun line
// of its stdin and answers it with an rcDone line, reaping every child
// while it waits, its own script's and the adopted daemons' alike.
func roleRCInit() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_CHILD_SUBREAPER: %w", err)
	}
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(nil, 1<<20)
	enc := json.NewEncoder(os.Stdout)
	for sc.Scan() {
		var r rcRun
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return err
		}
		out, code, err := rcInitRun(r)
		done := rcDone{Out: out, Code: code}
		if err != nil {
			done.Err = err.Error()
		}
		if err := enc.Encode(done); err != nil {
			return err
		}
	}
	return sc.Err()
}

// rcInitRun runs r and reaps children until r's own process has exited.
func rcInitRun(r rcRun) (string, int, error) {
	out, err := os.Create(r.Out)
	if err != nil {
		return "", -1, err
	}
	defer out.Close()
	path, err := exec.LookPath(r.Args[0])
	if err != nil {
		return "", -1, err
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		return "", -1, err
	}
	defer null.Close()
	p, err := os.StartProcess(path, r.Args, &os.ProcAttr{Dir: r.Dir, Env: r.Env, Files: []*os.File{null, out, out}})
	if err != nil {
		return "", -1, err
	}
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return "", -1, fmt.Errorf("wait: %w", err)
		}
		if pid == p.Pid {
			b, err := os.ReadFile(r.Out)
			return string(b), ws.ExitStatus(), err
		}
	}
}

// TestRcdService: the DragonFly rc.d script starts the real service in
// the background, reports it, starts it again idempotently (as
// mount_hammer2's `hammer2 -q service` expects), stops it with SIGTERM,
// and does nothing unless enabled.
func TestRcdService(t *testing.T) {
	t.Parallel()
	bin := h2Binary(t)
	rc := newRCHost(t)
	dir, cfg := rc.dir, rc.cfg
	sock := filepath.Join(dir, "svc.sock")
	env := []string{"hammer2_service_enable=YES", "hammer2_service_program=" + bin, "hammer2_service_config=" + cfg,
		"hammer2_service_flags=--unix " + sock + " --tcp none --listen none", "hammer2_service_pidfile=" + filepath.Join(dir, "svc.pid")}
	if out, code := rc.script("hammer2_service", env, "start"); code != 0 || !strings.Contains(out, "running in the background") {
		t.Fatalf("start: exit %d:\n%s", code, out)
	}
	out, code := rc.script("hammer2_service", env, "status")
	ps := rc.pidsIn(out)
	if code != 0 || len(ps) != 1 {
		t.Fatalf("status: exit %d:\n%s", code, out)
	}
	if out, code := rc.script("hammer2_service", env, "start"); code != 0 || !strings.Contains(out, "already running") {
		t.Errorf("a second start: exit %d, want 0 saying it runs:\n%s", code, out)
	}
	if out, code := rc.script("hammer2_service", env, "stop"); code != 0 || procAlive(ps[0]) {
		t.Errorf("stop: exit %d, pid %d alive %v:\n%s", code, ps[0], procAlive(ps[0]), out)
	}
	if out, code := rc.script("hammer2_service", env, "status"); code == 0 {
		t.Errorf("status after stop: exit 0:\n%s", out)
	}
	if out, _ := rc.script("hammer2_service", []string{"hammer2_service_enable=NO", "hammer2_service_program=" + bin}, "start"); !strings.Contains(out, "not enabled") {
		t.Errorf("start when not enabled:\n%s", out)
	}
}

// TestRcdLeaf: the DragonFly rc.d script starts a leaf per PFS of
// hammer2_leaf_pfs in the background, finds each again by its status,
// refuses to start one twice, and stops the PFSs named or all of them
// with SIGTERM.
func TestRcdLeaf(t *testing.T) {
	t.Parallel()
	bin := h2Binary(t)
	rc := newRCHost(t)
	dir, cfg := rc.dir, rc.cfg
	var pfss []string
	for i := range 2 {
		p := filepath.Join(dir, fmt.Sprintf("pfs%d", i+1))
		if err := CreatePFS(p, PFSInfo{Label: fmt.Sprintf("rc%d", i+1), Clid: testClusterID, Fsid: NewUUID(), Type: PFSMaster}); err != nil {
			t.Fatal(err)
		}
		pfss = append(pfss, p)
	}
	env := []string{"hammer2_leaf_enable=YES", "hammer2_leaf_program=" + bin, "hammer2_leaf_config=" + cfg,
		"hammer2_leaf_pfs=" + strings.Join(pfss, " ")}
	if out, code := rc.script("hammer2_leaf", env, "faststart"); code != 0 || strings.Count(out, "running in the background") != 2 {
		t.Fatalf("start: exit %d:\n%s", code, out)
	}
	out, code := rc.script("hammer2_leaf", env, "status")
	ps := rc.pidsIn(out)
	if code != 0 || len(ps) != 2 || ps[0] == ps[1] {
		t.Fatalf("status: exit %d, pids %v:\n%s", code, ps, out)
	}
	// A second start refuses each running leaf (the pid file), exit 1.
	if out, code := rc.script("hammer2_leaf", env, "start"); code == 0 || strings.Count(out, "already running") != 2 {
		t.Errorf("a second start: exit %d:\n%s", code, out)
	}
	// One PFS named after the command: only it stops.
	if out, code := rc.script("hammer2_leaf", env, "stop", pfss[0]); code != 0 || procAlive(ps[0]) || !procAlive(ps[1]) {
		t.Errorf("stop %s: exit %d, alive %v %v:\n%s", pfss[0], code, procAlive(ps[0]), procAlive(ps[1]), out)
	}
	if out, code := rc.script("hammer2_leaf", env, "status"); code == 0 || !strings.Contains(out, pfss[0]+" is not running") {
		t.Errorf("status with one stopped: exit %d:\n%s", code, out)
	}
	if out, code := rc.script("hammer2_leaf", env, "stop"); code != 0 || procAlive(ps[1]) {
		t.Errorf("stop: exit %d:\n%s", code, out)
	}
}
