package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// completeWith runs the binary as bash's `complete -C` does for line:
// COMP_LINE and COMP_POINT set, the command name, the word being
// completed and the word before it as arguments. It returns the offered
// words, sorted.
func completeWith(t *testing.T, bin, line string) []string {
	t.Helper()
	fields := strings.Fields(line)
	word, prev := "", fields[len(fields)-1]
	if !strings.HasSuffix(line, " ") {
		word = fields[len(fields)-1]
		prev = fields[max(0, len(fields)-2)]
	}
	cmd := exec.Command(bin, fields[0], word, prev)
	cmd.Env = append(os.Environ(), "COMP_LINE="+line, "COMP_POINT="+strconv.Itoa(len(line)))
	cmd.Dir = t.TempDir()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("completing %q: %v", line, err)
	}
	words := strings.Fields(string(out))
	slices.Sort(words)
	return words
}

// commandPaths lists every command of the kong grammar as the words
// that reach it ("quorum snapshot save"), with its subcommands' names.
func commandPaths(t *testing.T) map[string][]string {
	t.Helper()
	parser, err := kong.New(&CLI{}, kong.Vars(kongVars()), kong.Exit(func(int) {}))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	var walk func(prefix string, n *kong.Node)
	walk = func(prefix string, n *kong.Node) {
		var subs []string
		for _, c := range n.Children {
			if c.Type != kong.CommandNode || c.Hidden {
				continue
			}
			subs = append(subs, c.Name)
			walk(strings.TrimSpace(prefix+" "+c.Name), c)
		}
		slices.Sort(subs)
		out[prefix] = subs
	}
	walk("", parser.Model.Node)
	return out
}

// TestCompletion: `hammer2 completion bash|zsh|fish` from the built binary
// registers the binary for both its names, bash takes the script, and the
// binary answers COMP_LINE requests from its grammar: every command's
// subcommands, flags, enums and the hammer2-leaf form.
func TestCompletion(t *testing.T) {
	t.Parallel()
	bin := h2Binary(t)
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, errOut, code := runH2(t, bin, "completion", sh)
		if code != 0 {
			t.Fatalf("completion %s: exit %d: %s", sh, code, errOut)
		}
		for _, name := range []string{"hammer2", "hammer2-leaf"} {
			if !strings.Contains(out, " "+name+"\n") && !strings.Contains(out, "-c "+name+" ") {
				t.Errorf("completion %s does not register %s:\n%s", sh, name, out)
			}
		}
		if !strings.Contains(out, bin) {
			t.Errorf("completion %s does not run %s:\n%s", sh, bin, out)
		}
		if shell, err := exec.LookPath(sh); err == nil {
			script := filepath.Join(t.TempDir(), "c."+sh)
			if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
			check := exec.Command(shell, "-n", script)
			if sh == "bash" {
				// Loaded for real: bash knows the completer of both names.
				check = exec.Command(shell, "-c", `source "$0" && complete -p hammer2 hammer2-leaf`, script)
			}
			got, err := check.CombinedOutput()
			if err != nil || sh == "bash" && strings.Count(string(got), bin) != 2 {
				t.Errorf("%s on the script: %v\n%s", sh, err, got)
			}
		}
	}
	if _, _, code := runH2(t, bin, "completion", "tcsh"); code == 0 {
		t.Error("completion tcsh: exit 0, want a refusal")
	}

	for prefix, subs := range commandPaths(t) {
		if len(subs) == 0 {
			continue
		}
		line := strings.TrimSpace("hammer2 "+prefix) + " "
		if got := completeWith(t, bin, line); !slices.Equal(got, subs) {
			t.Errorf("completing %q: %q, want the commands %q", line, got, subs)
		}
	}
	for _, tc := range []struct{ line, want string }{
		{"hammer2 qu", "quorum"},
		{"hammer2 quorum snapshot re", "restore"},
		{"hammer2 completion ", "bash fish zsh"},
		{"hammer2 status --wa", "--watch"},
		{"hammer2 -t SOFT_", "SOFT_MASTER SOFT_SLAVE"},
		{"hammer2-leaf --lo", "--log-json"},
		{"hammer2-leaf status --j", "--json"}, // a command word: the full grammar
	} {
		if got := strings.Join(completeWith(t, bin, tc.line), " "); got != tc.want {
			t.Errorf("completing %q: %q, want %q", tc.line, got, tc.want)
		}
	}
}
