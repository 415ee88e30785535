package main

// Shell completion. The scripts `hammer2 completion bash|zsh|fish` print
// hand every completion request back to the binary itself (bash's
// `complete -C`, and the same protocol in zsh's bashcompinit and fish):
// the shell runs it with COMP_LINE set, and kongplete answers from the
// kong grammar the binary parses with. So completion cannot drift from the
// commands, and a new command completes without a new script.
// github.com/willabides/kongplete was chosen over jotaen/kong-completion
// (a fork of it, older, with pkg/errors besides): both answer COMP_LINE
// through posener/complete; the scripts are ours, naming both of the
// binary's names (hammer2 and hammer2-leaf).

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/alecthomas/kong"
	"github.com/posener/complete"
	"github.com/willabides/kongplete"
)

// CompletionCmd is `hammer2 completion bash|zsh|fish`.
type CompletionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"The shell: bash, zsh or fish."`
}

func (c *CompletionCmd) Help() string {
	return `Prints the script that makes the shell complete hammer2 and hammer2-leaf
commands, flags and arguments. Load it in the shell's startup file:

  bash:  source <(hammer2 completion bash)        (~/.bashrc)
  zsh:   source <(hammer2 completion zsh)         (~/.zshrc)
  fish:  hammer2 completion fish | source         (~/.config/fish/config.fish)

or install it where the shell looks for completions, e.g.
hammer2 completion bash > /usr/share/bash-completion/completions/hammer2.`
}

func (c *CompletionCmd) Run(env *Env) error {
	bin, err := os.Executable()
	if err == nil {
		bin, err = filepath.Abs(bin)
	}
	if err != nil {
		return fmt.Errorf("completion: the binary's path: %w", err)
	}
	fmt.Fprint(env.Stdout, completionScript(c.Shell, bin))
	return nil
}

// completionNames are the names the binary answers to.
var completionNames = []string{"hammer2", "hammer2-leaf"}

// completionScript registers bin as the completer of each of the binary's
// names in shell.
func completionScript(shell, bin string) string {
	var b strings.Builder
	q := shellQuote(bin)
	fmt.Fprintf(&b, "# %s completion for %s (hammer2 completion %s)\n", shell, strings.Join(completionNames, " and "), shell)
	switch shell {
	case "zsh":
		b.WriteString("autoload -U +X bashcompinit && bashcompinit\n")
		fallthrough
	case "bash":
		// -o default: where the grammar has nothing to offer (a PFS
		// path), the shell completes file names.
		for _, n := range completionNames {
			fmt.Fprintf(&b, "complete -o default -o bashdefault -C %s %s\n", q, n)
		}
	case "fish":
		for _, n := range completionNames {
			fn := "__hammer2_complete_" + strings.ReplaceAll(n, "-", "_")
			fmt.Fprintf(&b, `function %s
    set -lx COMP_LINE (commandline -cp)
    test -z (commandline -ct)
    and set COMP_LINE "$COMP_LINE "
    %s
end
complete -c %s -f -a "(%s)"
`, fn, q, n, fn)
		}
	}
	return b.String()
}

// shellQuote quotes s for sh, zsh and fish alike.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// completionRequest reports whether the shell runs us to complete a
// line: COMP_LINE is set, and the arguments are what bash and zsh pass
// (the command, the word, the word before) or what fish passes (none).
// A daemon started from an environment that happens to export COMP_LINE
// has other arguments.
func completionRequest(args []string) bool {
	return os.Getenv("COMP_LINE") != "" && (len(args) == 1 || len(args) == 4)
}

// completionPredictors name what tagged flags and arguments complete to.
var completionPredictors = map[string]complete.Predictor{
	"file": complete.PredictFiles("*"),
	"dir":  complete.PredictDirs("*"),
	"pfstype": complete.PredictSet("CACHE", "DUMMY", "SLAVE", "SOFT_SLAVE", "SOFT_MASTER", "MASTER",
		"cache", "dummy", "slave", "soft_slave", "soft_master", "master"),
}

// completeLine answers the shell's request with the grammar of the name
// the line starts with, as run dispatches on argv[0].
func completeLine(opts []kong.Option) int {
	fields := strings.Fields(os.Getenv("COMP_LINE"))
	name := "hammer2"
	var grammar any = &CLI{}
	if len(fields) > 0 && filepath.Base(fields[0]) == "hammer2-leaf" && !isCommand(firstWord(fields[1:]), opts) {
		name, grammar = "hammer2-leaf", &LeafCLI{}
	}
	parser, err := kong.New(grammar, append(opts, kong.Name(name))...)
	if err != nil {
		return 1
	}
	cmd, err := kongplete.Command(parser, kongplete.WithPredictors(completionPredictors))
	if err != nil {
		fmt.Fprintln(parser.Stderr, "hammer2: completion:", err)
		return 1
	}
	c := complete.New(name, cmd)
	c.Out = parser.Stdout
	c.Complete()
	return 0
}
