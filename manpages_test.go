package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// TestManPages: docs/man cannot drift from the grammar. hammer2-cluster(8)
// has an entry (.It Cm <words>) for every command and names every flag of
// each, hammer2-leaf(8) every flag of the leaf; both name the global
// flags. With mandoc installed (CI installs it), they lint clean at
// -W warning.
func TestManPages(t *testing.T) {
	t.Parallel()
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join("docs", "man", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	cluster, leafPage := read("hammer2-cluster.8"), read("hammer2-leaf.8")
	parser, err := kong.New(&CLI{}, kong.Vars(kongVars()), kong.Exit(func(int) {}))
	if err != nil {
		t.Fatal(err)
	}
	hasFlag := func(page string, f *kong.Flag) bool {
		return strings.Contains(page, "Fl -"+f.Name+" ") || strings.Contains(page, "Fl -"+f.Name+"\n") ||
			strings.Contains(page, "Fl -"+f.Name+" ,")
	}
	for _, f := range parser.Model.Flags {
		if f.Name == "help" {
			continue
		}
		for name, page := range map[string]string{"hammer2-cluster(8)": cluster, "hammer2-leaf(8)": leafPage} {
			if !hasFlag(page, f) {
				t.Errorf("%s does not name the global flag --%s", name, f.Name)
			}
		}
	}
	var walk func(path string, n *kong.Node)
	walk = func(path string, n *kong.Node) {
		for _, c := range n.Children {
			if c.Type != kong.CommandNode || c.Hidden {
				continue
			}
			p := strings.TrimSpace(path + " " + c.Name)
			if !strings.Contains(cluster, ".It Cm "+p+" ") && !strings.Contains(cluster, ".It Cm "+p+"\n") {
				t.Errorf("hammer2-cluster(8) has no entry for %q (.It Cm %s)", p, p)
			}
			page, name := cluster, "hammer2-cluster(8)"
			if p == "leaf" {
				page, name = leafPage, "hammer2-leaf(8)"
			}
			for _, f := range c.Flags {
				if !hasFlag(page, f) {
					t.Errorf("%s does not name %s's flag --%s", name, p, f.Name)
				}
			}
			walk(p, c)
		}
	}
	walk("", parser.Model.Node)

	mandoc, err := exec.LookPath("mandoc")
	if err != nil {
		t.Log("mandoc not installed: the pages are not linted here (.ci/run installs it)")
		return
	}
	pages, _ := filepath.Glob(filepath.Join("docs", "man", "*.8"))
	out, err := exec.Command(mandoc, append([]string{"-T", "lint", "-W", "warning"}, pages...)...).CombinedOutput()
	if err != nil {
		t.Errorf("mandoc -T lint -W warning: %v\n%s", err, out)
	}
}
