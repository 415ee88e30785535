package main

// CLI sessions, as a person types them: testdata/script/*.txtar, run by
// github.com/rogpeppe/go-internal/testscript (the Go command's own script
// tests), with hammer2 and hammer2-leaf being this package's main.

import (
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

func scriptCommands() map[string]func() int {
	main := func() int { return run(os.Args, os.Stdout, os.Stderr) }
	return map[string]func() int{"hammer2": main, "hammer2-leaf": main}
}

func TestScripts(t *testing.T) {
	t.Parallel()
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(e *testscript.Env) error {
			// No config of the machine's: every script says what it uses.
			e.Setenv("HOME", e.WorkDir)
			return nil
		},
	})
}
