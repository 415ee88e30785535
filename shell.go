package main

// DragonFly's debug shell: one-way DBG_SHELL messages carrying a
// NUL-terminated line of text; answers come back as one-way
// DBG_SHELL|REPLY text ending with the prompt. The service and the leaf
// answer it; `hammer2 shell` is the client.

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const shellPrompt = "debug> "

// shellCommands is what a daemon offers its shell. span is nil where
// linking to another node is not possible.
type shellCommands struct {
	tree func() string
	span func(host string) string
	// ping measures a round trip on the link the line came over and
	// calls reply with the answer, later, from a goroutine of the
	// daemon's.
	ping  func(reply func(string))
	extra string // more help lines
	// refuse, if set, is the answer to a command that is not read-only
	// (shellReadOnly): the link asking is unprivileged.
	refuse func(cmd string) string
	// notHere says why a command this node does not offer is missing
	// (the quorum commands, on a node without a quorum group).
	notHere map[string]string
}

// shellReadOnly reports whether a shell line only looks. Everything else
// (commit, lock, quorum add|remove, span <host>, and any command we do not
// know) needs a privileged link: an unknown word might mean something to
// the node it goes to.
func shellReadOnly(line string) bool {
	cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	switch cmd {
	case "", "help", "?", "tree", "ping", "locks":
		return true
	case "quorum":
		return strings.TrimSpace(arg) == ""
	}
	return false
}

// shellWord is a shell line's command word.
func shellWord(line string) string {
	w, _, _ := strings.Cut(strings.TrimSpace(line), " ")
	return w
}

// answer runs one line and sends the output and the prompt.
func (sc shellCommands) answer(root *Trans, line string) {
	sc.do(line, func(out string) {
		_ = root.Send(&Msg{Header: Header{Cmd: CmdDbgShell | FlagReply}, Aux: ShellAux(out + shellPrompt)})
	})
}

// do runs one line and calls reply with its output once: at once, or
// later for a ping.
func (sc shellCommands) do(line string, reply func(string)) {
	line = strings.TrimSpace(line)
	if shellWord(line) == "ping" && sc.ping != nil && (sc.refuse == nil || shellReadOnly(line)) {
		sc.ping(reply)
		return
	}
	reply(sc.run(line))
}

func (sc shellCommands) run(line string) string {
	if sc.refuse != nil && !shellReadOnly(line) {
		return sc.refuse(shellWord(line)) + "\n"
	}
	cmd, arg, _ := strings.Cut(line, " ")
	if why, ok := sc.notHere[cmd]; ok {
		return cmd + ": " + why + "\n"
	}
	arg = strings.TrimSpace(arg)
	switch cmd {
	case "":
		return ""
	case "help", "?":
		s := "help            Command help\n" +
			"tree            Dump the spanning tree\n" +
			"ping            Ping this daemon\n"
		if sc.span != nil {
			s += "span <host>     Link to another node (tcp:<host> or quic:<host> to choose)\n"
		}
		return s + sc.extra
	case "ping":
		return "ping reply\n" // a daemon that cannot measure one
	case "tree":
		return sc.tree()
	case "span":
		if sc.span == nil {
			return "span: not available here\n"
		}
		if arg == "" {
			return "span: needs a host\n"
		}
		return sc.span(arg)
	}
	return fmt.Sprintf("Unrecognized command: %s\n", cmd)
}

// ShellCmd is `hammer2 shell [host]`.
type ShellCmd struct {
	Target string `arg:"" optional:"" help:"host[:port] (dmsg over TCP by remote_dir's rule, as DragonFly's shell: default 127.0.0.1:987) or unix:<path> (a service's socket)."`
}

func (c *ShellCmd) Run(env *Env) error {
	if p, ok := strings.CutPrefix(c.Target, "unix:"); ok {
		conn, err := net.DialTimeout("unix", p, 5*time.Second)
		if err != nil {
			return fmt.Errorf("shell: %w", err)
		}
		return runShell(conn, envStdin(env), env.Stdout, env.logger(env.Stderr, "text"))
	}
	addr := c.Target
	if addr == "" {
		addr = fmt.Sprintf("127.0.0.1:%d", ListenPort)
	}
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	log := env.logger(env.Stderr, "text")
	policy, err := newPrivilegePolicy(cfg.Security.Group)
	if err != nil {
		return err
	}
	// As DragonFly's shell: the link to the service is a TCP peer like
	// any other, so remote_dir must name the service's address.
	sec := newTCPSecurity(cfg.TCPRemoteDir(), cfg.TCPKeyDir(), policy, rand.Reader, log)
	ctx, cancel := context.WithTimeout(context.Background(), dmsgHandshakeTimeout)
	defer cancel()
	conn, err := sec.dial(ctx, addr)
	if err != nil {
		return shellDialError(addr, sec.remoteDir, err)
	}
	return runShell(conn, envStdin(env), env.Stdout, log)
}

// shellDialError says why the shell could not link to addr; a refusal by
// DragonFly's rule says which files would have let it.
func shellDialError(addr, remoteDir string, err error) error {
	if !errors.Is(err, errIOQNoRemoteKey) {
		return fmt.Errorf("shell: %w", err)
	}
	name := addr
	if ap, rerr := resolveTCP(context.Background(), addr); rerr == nil {
		if n, nerr := dmsgPeerName(ap.Addr()); nerr == nil {
			name = n
		}
	}
	files, dir := name+".pub or .none", remoteDir
	if filepath.Base(remoteDir) == remoteDirName {
		files, dir = remoteDirName+"/"+files, filepath.Dir(remoteDir)
	}
	return fmt.Errorf("shell: no %s in %s: DragonFly's rule refuses a TCP peer without one "+
		"(an empty %s makes a plaintext link, as a service on this machine needs)", files, dir,
		filepath.Join(remoteDir, name+".none"))
}

// runShell drives one session: lines from in, answers to out. Each line
// (and the prompt request) gets one answer; at the end of input it waits
// for the answers still owed.
func runShell(conn io.ReadWriteCloser, in io.Reader, out io.Writer, log interface {
	Info(string, ...any)
}) error {
	var mu sync.Mutex
	asked, answered := 0, 0
	changed := make(chan struct{}, 1)
	ask := func(l *Link, text string) error {
		mu.Lock()
		asked++
		mu.Unlock()
		return l.Root().Send(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: ShellAux(text)})
	}
	l := NewLink(conn, LinkConfig{Name: "shell", PingInterval: -1, DeadAfter: -1,
		Handler: func(t *Trans, m *Msg) {
			switch {
			case t.IsRoot() && m.Cmd&(maskBaseCmd|FlagReply) == CmdDbgShell|FlagReply:
				fmt.Fprint(out, ShellText(m.Aux))
				mu.Lock()
				answered++
				mu.Unlock()
				select {
				case changed <- struct{}{}:
				default:
				}
			case !t.IsRoot() && t.Cmd() == CmdLnkConn && m.Cmd&FlagCreate != 0:
				// As DragonFly's shell: note it, ask for a prompt, and refuse
				// the CONN so that no spans are sent to a shell.
				fmt.Fprintln(out, "Debug Shell received LNK_CONN")
				_ = ask(t.Link(), "")
				_ = t.Close(ErrNoSupp)
			}
		}})
	l.Start()
	owed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return answered < asked
	}
	wait := func() error {
		deadline := time.After(10 * time.Second)
		for owed() {
			select {
			case <-changed:
			case <-l.Done():
				return fmt.Errorf("shell: link lost: %v", l.Err())
			case <-deadline:
				return errors.New("shell: no answer in 10s")
			}
		}
		return nil
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if err := ask(l, sc.Text()); err != nil {
			return fmt.Errorf("shell: %w", err)
		}
		// Answer before the next line, so output follows input as typed.
		if err := wait(); err != nil {
			return err
		}
	}
	werr := wait()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = l.Shutdown(ctx)
	return werr
}

// shellPing is a shellCommands.ping that measures a PING round trip on l
// from a goroutine spawn owns, giving up with the link or after pingWait.
func shellPing(ctx context.Context, spawn func(func()), l *Link) func(reply func(string)) {
	return func(reply func(string)) {
		spawn(func() {
			ctx, cancel := context.WithTimeout(ctx, pingWait)
			defer cancel()
			rtt, err := l.Ping(ctx)
			if err != nil {
				reply(fmt.Sprintf("ping failed: %v\n", err))
				return
			}
			reply(fmt.Sprintf("ping reply: round trip %v\n", rtt.Round(time.Microsecond)))
		})
	}
}

// pingWait bounds a shell's ping: a link that does not answer in this
// long is dead by the silence rule anyway.
const pingWait = 5 * time.Second

// quorumNotHere is why the quorum commands are missing on node.
func quorumNotHere(why string) map[string]string {
	m := map[string]string{}
	for _, c := range []string{"commit", "lock", "locks", "quorum"} {
		m[c] = why
	}
	return m
}
