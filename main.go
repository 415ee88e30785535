// Command hammer2 is the cluster side of DragonFly BSD's HAMMER2: the leaf
// daemon that serves one mounted PFS, and the one-shot commands operators
// use on it. Installed as /sbin/hammer2-leaf (a link to this binary) it is
// the leaf command alone, as the mount helper starts it.
package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"

	"github.com/alecthomas/kong"
)

// version, if set at build time with -ldflags "-X main.version=...",
// overrides what the build info says.
var version = ""

// versionString is the module version and the VCS revision the binary was
// built from, as the Go toolchain records them.
func versionString() string {
	v, rev, dirty, when := version, "", false, ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version // "(devel)" for a build in a checkout
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			case "vcs.time":
				when = s.Value
			}
		}
	}
	out := "hammer2-leaf " + cmpOr(v, "(unknown version)")
	if rev != "" {
		out += " " + rev[:min(12, len(rev))]
		if dirty {
			out += "+modified"
		}
		if when != "" {
			out += " " + when
		}
	}
	return out
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Globals are DragonFly's hammer2 flags that make sense here.
type Globals struct {
	Debug   int              `short:"d" type:"counter" help:"Run in the foreground and log more; repeat for debug logs."`
	Quiet   bool             `short:"q" help:"Log and print only warnings and errors."`
	Path    string           `short:"s" placeholder:"PATH" predictor:"file" help:"The mounted PFS (or, off DragonFly, the PFS directory) to act on; default \".\"."`
	Config  string           `short:"c" placeholder:"FILE" predictor:"file" help:"Config file (default ${defaultConfig} if it exists)."`
	Type    string           `short:"t" placeholder:"TYPE" predictor:"pfstype" help:"pfs-create: the PFS type (CACHE, DUMMY, SLAVE, SOFT_SLAVE, SOFT_MASTER, MASTER)."`
	UUID    string           `short:"u" placeholder:"UUID" help:"pfs-create: the cluster (pfs_clid) to join; the PFS is then a SLAVE unless -t says otherwise."`
	Version kong.VersionFlag `help:"Print the version and exit."`
}

// CLI is `hammer2 [flags] <command>`.
type CLI struct {
	Globals
	Leaf       LeafCmd       `cmd:"" help:"Run the cluster leaf daemon for a mounted PFS."`
	Dev        DevCmd        `cmd:"" help:"Run a development cluster on this machine: a service and MASTER (and SLAVE) PFSs of one cluster, until Ctrl-C."`
	Status     StatusCmd     `cmd:"" help:"Show the PFS's REMOTE linkages and, if a leaf runs, each link's live state."`
	Connect    ConnectCmd    `cmd:"" help:"Add a REMOTE linkage (span:<host>[:port]) and have the leaf dial it."`
	Disconnect DisconnectCmd `cmd:"" help:"Remove a REMOTE linkage and have the leaf drop it."`
	Keygen     KeygenCmd     `cmd:"" help:"Make this node's Ed25519 key and print its public key."`
	Rsainit    RsainitCmd    `cmd:"" help:"Make the RSA key pair (rsa.prv, rsa.pub) of DragonFly's encrypted TCP links."`
	Service    ServiceCmd    `cmd:"" help:"Run the node's service daemon: the backbone that relays spans between links."`
	Shell      ShellCmd      `cmd:"" help:"DragonFly's debug shell, on a service (host[:port] or unix:<path>)."`
	Quorum     QuorumCmd     `cmd:"" help:"The PFS's quorum group: membership (through its running leaf), recovery, backup and restore."`
	PfsCreate  PfsCreateCmd  `cmd:"" name:"pfs-create" help:"Create a PFS on the -s device (off DragonFly: a PFS directory under the -s directory)."`
	PfsList    PfsListCmd    `cmd:"" name:"pfs-list" help:"List the PFSs of a device."`
	PfsClid    PfsClidCmd    `cmd:"" name:"pfs-clid" help:"Print a PFS's cluster id (pfs_clid)."`
	PfsFsid    PfsFsidCmd    `cmd:"" name:"pfs-fsid" help:"Print a PFS's own id (pfs_fsid)."`
	PfsDelete  PfsDeleteCmd  `cmd:"" name:"pfs-delete" help:"Destroy PFSs of the -s device, with everything they hold."`
	Completion CompletionCmd `cmd:"" help:"Print the shell completion script for bash, zsh or fish."`
	Metrics    MetricsCmd    `cmd:"" help:"Print a running leaf's (or --service: the service's) Prometheus metrics once."`
}

// LeafCLI is the grammar when the binary runs as hammer2-leaf.
type LeafCLI struct {
	Globals
	LeafCmd `embed:""`
}

func kongVars() kong.Vars {
	return kong.Vars{"version": versionString(), "defaultConfig": DefaultConfigPath}
}

func main() {
	quietQuicBufferWarning()
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// quietQuicBufferWarning: quic-go cannot inspect socket buffers on
// DragonFly and so always warns that they are too small; the warning
// carries no information there. It reads the environment, so this is set
// once, here, before anything starts. An operator's own setting wins.
func quietQuicBufferWarning() {
	const bufWarn = "QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING"
	if runtime.GOOS == "dragonfly" && os.Getenv(bufWarn) == "" {
		os.Setenv(bufWarn, "true")
	}
}

// run dispatches on argv[0] and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	var (
		parser *kong.Kong
		err    error
		g      *Globals
	)
	opts := []kong.Option{kong.Vars(kongVars()), kong.Writers(stdout, stderr), kong.UsageOnError(),
		kong.Exit(func(code int) { panic(exitCode(code)) })}
	if completionRequest(args) {
		return completeLine(opts)
	}
	if filepath.Base(args[0]) == "hammer2-leaf" && !isCommand(firstWord(args[1:]), opts) {
		var c LeafCLI
		g = &c.Globals
		parser, err = kong.New(&c, append(opts, kong.Name("hammer2-leaf"),
			kong.Description("The HAMMER2 cluster leaf daemon for one mounted PFS."))...)
	} else {
		var c CLI
		g = &c.Globals
		parser, err = kong.New(&c, append(opts, kong.Name("hammer2"),
			kong.Description("HAMMER2 cluster commands: the leaf daemon and its one-shot tools."))...)
	}
	if err != nil {
		fmt.Fprintln(stderr, "hammer2:", err)
		return 2
	}
	code := func() (code int) {
		defer func() {
			if r := recover(); r != nil {
				c, ok := r.(exitCode)
				if !ok {
					panic(r)
				}
				code = int(c)
			}
		}()
		ctx, err := parser.Parse(args[1:])
		if err != nil {
			parser.Errorf("%s", err)
			return 2
		}
		env := &Env{Globals: g, Stdout: stdout, Stderr: stderr, Args: args}
		if err := ctx.Run(env); err != nil {
			var es exitStatus
			if errors.As(err, &es) {
				return int(es) // the command said what it had to
			}
			fmt.Fprintf(stderr, "%s: %v\n", parser.Model.Name, err)
			return 1
		}
		return 0
	}()
	return code
}

type exitCode int

// exitStatus is a command's exit status when it is not 0 and there is no
// error to print: `status --check` saying degraded (1) or not running (2).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// firstWord is the first argument that is neither a flag nor a global
// flag's value: where a command word stands.
func firstWord(args []string) string {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return ""
		case a == "-s" || a == "-c" || a == "-t" || a == "-u" || a == "--path" || a == "--config" || a == "--type" || a == "--uuid":
			i++ // its value
		case strings.HasPrefix(a, "-"):
		default:
			return a
		}
	}
	return ""
}

// isCommand reports whether arg names a hammer2 command, as the full
// CLI's kong model has them. Run as hammer2-leaf with one (as `go run .`
// does, naming the binary after the module) the binary falls back to the
// full CLI, as u-root's multi-call binaries try argv[1] when argv[0] does
// not decide.
func isCommand(arg string, opts []kong.Option) bool {
	if arg == "" {
		return false
	}
	parser, err := kong.New(&CLI{}, opts...)
	if err != nil {
		return false
	}
	for _, n := range parser.Model.Children {
		if n.Type == kong.CommandNode && (n.Name == arg || slices.Contains(n.Aliases, arg)) {
			return true
		}
	}
	return false
}

// Env is what every command gets.
type Env struct {
	*Globals
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Args           []string
}

func envStdin(e *Env) io.Reader {
	if e.Stdin != nil {
		return e.Stdin
	}
	return os.Stdin
}

// logger builds the daemon's logger for the flags and config.
func (e *Env) logger(w io.Writer, format string) *slog.Logger {
	level := slog.LevelInfo
	switch {
	case e.Quiet:
		level = slog.LevelWarn
	case e.Debug > 1:
		level = slog.LevelDebug
	}
	o := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, o))
	}
	return slog.New(slog.NewTextHandler(w, o))
}

// pfsPath is the PFS a one-shot command acts on: -s, default ".".
func (e *Env) pfsPath() string {
	if e.Path != "" {
		return e.Path
	}
	return "."
}

// loadConfig is LoadConfig for -c, saying with -d why the machine's file
// was not read, if it was not.
func (e *Env) loadConfig() (Config, error) {
	c, err := LoadConfig(e.Config)
	if note := c.LoadNote(); note != "" && e.Debug > 0 {
		fmt.Fprintf(e.Stderr, "hammer2: config: %s\n", note)
	}
	return c, err
}
