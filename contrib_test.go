package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
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
