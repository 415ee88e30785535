package main

// Test roles: this test binary re-run as a child process, usually under
// an unused uid, to play a hostile local user against a daemon under test.
// TestMain runs the role named by H2_TEST_ROLE instead of the tests. A
// role reports on stdout, one line per event, and holds what it opened
// until its stdin closes.

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// nobodyUID is a uid no account uses here: a child running as it is an
// unprivileged local user.
const nobodyUID = 4242

// requireRoot skips a test that must start children under another uid.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: it runs children under another uid to play an unprivileged user")
	}
}

// roleBinary is a copy of this test binary that any user may run (the
// one go test built lives in a directory only we may enter).
func roleBinary(t testing.TB) string {
	t.Helper()
	return roleBin.get(t, func(dir string) (string, error) {
		path := filepath.Join(dir, "role.test")
		return path, copySelf(path)
	})
}

// copyFile copies the executable from to to, with mode. It holds
// syscall.ForkLock for reading from open to close, so that no fork of
// this process happens while the copy is open for writing: a child
// forked then holds the descriptor until its exec, and any exec of the
// copy meanwhile fails with "text file busy" (golang/go#22315), as one
// of the tests' did, the role binary copied while a daemon was forked.
func copyFile(from, to string, mode os.FileMode) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// roleProc is a running role.
type roleProc struct {
	t     testing.TB
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
}

// startRole runs role as uid (-1: as the test itself) with env.
func startRole(t testing.TB, role string, uid int, env ...string) *roleProc {
	t.Helper()
	cmd := exec.Command(roleBinary(t))
	cmd.Env = append(os.Environ(), append([]string{"H2_TEST_ROLE=" + role}, env...)...)
	cmd.Dir = "/"
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	return runRoleCmd(t, role, cmd)
}

// runRoleCmd starts a role's command, made ready to run.
func runRoleCmd(t testing.TB, role string, cmd *exec.Cmd) *roleProc {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("role %s: %v", role, err)
	}
	r := &roleProc{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			r.lines <- sc.Text()
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(r.stop)
	return r
}

// line waits for the role's next line.
func (r *roleProc) line(d time.Duration) string {
	r.t.Helper()
	select {
	case l := <-r.lines:
		return l
	case <-r.done:
		select {
		case l := <-r.lines:
			return l
		default:
		}
		r.t.Fatalf("role %v exited without a line", r.cmd.Args)
	case <-time.After(d):
		r.t.Fatalf("role %v: no line in %v", r.cmd.Args, d)
	}
	return ""
}

// stop closes the role's stdin (it lets go of what it holds) and waits.
func (r *roleProc) stop() {
	r.stdin.Close()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// runTestRole plays a role; its exit code is the process's.
func runTestRole(role string) int {
	roles := map[string]func() error{
		"dmsg-spans":     roleSpans,
		"hold":           roleHold,
		"listen-unix":    roleListenUnix,
		"dmsg-shell":     roleShellPaths,
		"config-default": roleConfigDefault,
	}
	maps.Copy(roles, standInRoles()) // the roles of the tests that need the stand-in PFS
	f, ok := roles[role]
	if !ok {
		fmt.Println("error: unknown role", role)
		return 1
	}
	if err := f(); err != nil {
		fmt.Println("error:", err)
		return 1
	}
	return 0
}

// roleConfigDefault prints what loading the machine's config at H2_PATH
// gave, as a user who may not read it.
func roleConfigDefault() error {
	c, err := loadConfigAt("", os.Getenv("H2_PATH"))
	fmt.Printf("err %v\nnote %s\nkey_dir %s\n", err, c.LoadNote(), c.KeyDir)
	return nil
}

func roleDial(addr string) (net.Conn, error) {
	network, a, _ := strings.Cut(addr, ":")
	return net.DialTimeout(network, a, 5*time.Second)
}

// roleSpans opens H2_LINKS links (default 1) to H2_ADDR ("tcp:host:port"
// or "unix:path"); on each it sends its LNK_CONN and H2_SPANS spans of
// pfs_type H2_TYPE claiming cluster H2_CLID, all in one write, as an
// attacker would. It reports how they fared once every link has all its
// answers or is closed: "links L closed C answered A noperm P", and holds
// the links until stdin closes.
//
// It speaks dmsg by hand (floodLink), not through a Link: the role runs
// race-built in -race runs, and a Link's transaction table, encoding and
// loss handling for 45,000 spans took it 1.5 s of CPU there.
func roleSpans() error {
	clid, err := ParseUUID(os.Getenv("H2_CLID"))
	if err != nil {
		return err
	}
	n, _ := strconv.Atoi(os.Getenv("H2_SPANS"))
	typ, _ := strconv.Atoi(os.Getenv("H2_TYPE"))
	nlinks, _ := strconv.Atoi(os.Getenv("H2_LINKS"))
	nlinks = max(nlinks, 1)
	changed := make(chan struct{}, 1)
	var links []*floodLink
	for range nlinks {
		conn, err := roleDial(os.Getenv("H2_ADDR"))
		if err != nil {
			return err
		}
		l := &floodLink{conn: conn, first: 2, n: n, done: make(chan struct{}), changed: changed}
		c := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1, PeerLabel: "attacker/hammer2-leaf"}
		b := l.appendMsg(nil, &Msg{Header: Header{MsgID: 1, Cmd: CmdLnkConn | FlagCreate}, Ext: c.Marshal()})
		for i := range n {
			sp := LnkSpan{PeerID: clid, PfsID: NewUUID(), PfsType: uint8(typ), PeerType: PeerHammer2, ProtoVersion: SpanProto1}
			sp.SetLabels("fake", "")
			m := &Msg{Header: Header{MsgID: l.first + uint64(i), Cmd: CmdLnkSpan | FlagCreate}, Ext: sp.Marshal()}
			if i == 0 { // every span encodes to the same size
				b = slices.Grow(b, n*len(m.AppendWire(nil, 0)))
			}
			b = l.appendMsg(b, m)
		}
		links = append(links, l)
		go l.read()
		go l.write(b)
	}
	settled := func() (bool, string) {
		closed, open, answered, noperm := 0, 0, 0, 0
		for _, l := range links {
			select {
			case <-l.done:
				closed++
			default:
				open++
			}
			a, p := l.counts()
			answered, noperm = answered+a, noperm+p
		}
		return answered >= open*n, fmt.Sprintf("links %d closed %d answered %d noperm %d", len(links), closed, answered, noperm)
	}
	deadline := time.After(60 * time.Second)
	for {
		ok, report := settled()
		if ok {
			fmt.Println(report)
			break
		}
		select {
		case <-changed:
			continue
		case <-deadline:
			fmt.Println("timeout: " + report)
		}
		break
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, l := range links {
		l.conn.Close()
	}
	return nil
}

// floodLink is one of roleSpans' links: a connection it writes by hand,
// answering the service's PINGs, and counting the answers to its spans
// (message ids first to first+n-1).
type floodLink struct {
	conn     net.Conn
	first    uint64
	n        int
	done     chan struct{} // closed when the connection is
	changed  chan<- struct{}
	mu       sync.Mutex // serializes writes and the salt sequence
	seq      uint32
	countsMu sync.Mutex
	answered int
	noperm   int
}

// appendMsg appends m with the link's next salt.
func (l *floodLink) appendMsg(b []byte, m *Msg) []byte {
	b = m.AppendWire(b, l.seq)
	l.seq++
	return b
}

func (l *floodLink) write(b []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.conn.Write(b)
}

func (l *floodLink) counts() (answered, noperm int) {
	l.countsMu.Lock()
	defer l.countsMu.Unlock()
	return l.answered, l.noperm
}

func (l *floodLink) signal() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

// read counts the first answer to each span until the connection ends.
func (l *floodLink) read() {
	defer l.signal()
	defer close(l.done)
	r := bufio.NewReader(l.conn)
	hdr := make([]byte, HdrMax)
	for {
		if _, err := io.ReadFull(r, hdr[:HdrSize]); err != nil {
			return
		}
		hs, ap, err := PeekSizes(hdr[:HdrSize])
		if err != nil {
			return
		}
		buf := make([]byte, hs+ap)
		copy(buf, hdr[:HdrSize])
		if _, err := io.ReadFull(r, buf[HdrSize:]); err != nil {
			return
		}
		var m Msg
		if _, err := Decode(buf, &m); err != nil {
			return
		}
		switch {
		case m.Cmd&(maskBaseCmd|FlagReply) == CmdLnkPing:
			l.mu.Lock()
			_, err := l.conn.Write(l.appendMsg(nil, &Msg{Header: Header{Cmd: CmdLnkPing | FlagReply}}))
			l.mu.Unlock()
			if err != nil {
				return
			}
		case m.Cmd&FlagReply != 0 && m.Cmd&FlagCreate != 0 && m.MsgID >= l.first && m.MsgID < l.first+uint64(l.n):
			l.countsMu.Lock()
			l.answered++
			if m.Error == ErrNoPerm {
				l.noperm++
			}
			l.countsMu.Unlock()
			l.signal()
		}
	}
}

// roleHold opens H2_N connections to H2_ADDR, reports "held K err E" and
// holds them until stdin closes.
func roleHold() error {
	n, _ := strconv.Atoi(os.Getenv("H2_N"))
	var conns []net.Conn
	var firstErr error
	for range n {
		c, err := roleDial(os.Getenv("H2_ADDR"))
		if err != nil {
			firstErr = err
			break
		}
		conns = append(conns, c)
	}
	fmt.Printf("held %d err %v\n", len(conns), firstErr)
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// roleListenUnix plays a service that is not privileged: it listens on
// H2_PATH and accepts, saying nothing.
func roleListenUnix() error {
	ln, err := net.Listen("unix", os.Getenv("H2_PATH"))
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	fmt.Println("listening")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// roleShellPaths asks for spans on H2_ADDR and, on the first one relayed
// to it of cluster H2_CLID, tries every way a shell line or a quorum
// request can travel through a service to a node: the C shell's DBG_SHELL
// inside the relayed span ("relay: <answer>"), a DBG_SHELL circuit opened
// under it, read-only ("circuit-ro: ...") and state-changing
// ("circuit: ..."), and QRM_COMMIT and CAC_LOCK circuits ("qrm: error
// E", "cac: error E"). One line per answer, in any order.
func roleShellPaths() error {
	clid, err := ParseUUID(os.Getenv("H2_CLID"))
	if err != nil {
		return err
	}
	conn, err := roleDial(os.Getenv("H2_ADDR"))
	if err != nil {
		return err
	}
	out := make(chan string, 16)
	found := make(chan *Trans, 1)
	l := NewLink(conn, LinkConfig{Name: "attacker", PingInterval: -1, DeadAfter: -1, Logger: discardLogger(),
		Handler: func(t *Trans, m *Msg) {
			switch {
			case t.IsRoot() && m.Cmd&(maskBaseCmd|FlagReply) == CmdDbgShell|FlagReply:
				out <- "relay: " + strings.TrimSpace(strings.ReplaceAll(ShellText(m.Aux), shellPrompt, ""))
			case !t.IsRoot() && t.Cmd() == CmdLnkSpan && m.Cmd&FlagCreate != 0:
				var sp LnkSpan
				if sp.Unmarshal(m.Ext) == nil && sp.PeerID == clid {
					select {
					case found <- t:
					default:
					}
				}
				t.SetHandler(func(*Trans, *Msg) {})
				_ = t.Reply(ErrOK)
			case !t.IsRoot() && t.Cmd() == CmdLnkConn && m.Cmd&FlagCreate != 0:
				t.SetHandler(func(*Trans, *Msg) {})
				_ = t.Reply(ErrOK)
			}
		}})
	c := LnkConn{PeerType: PeerHammer2, PeerMask: ^uint64(0), ProtoVersion: SpanProto1, PeerLabel: "attacker/shell"}
	if _, err := l.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: c.Marshal()}, func(*Trans, *Msg) {}); err != nil {
		return err
	}
	l.Start()
	var span *Trans
	select {
	case span = <-found:
	case <-time.After(20 * time.Second):
		return fmt.Errorf("no span of cluster %s relayed to us", clid)
	case <-l.Done():
		return fmt.Errorf("link closed: %v", l.Err())
	}
	answer := func(tag string) Handler {
		return func(t *Trans, m *Msg) {
			if m.Cmd&maskBaseCmd == CmdDbgShell {
				out <- tag + ": " + strings.TrimSpace(ShellText(m.Aux))
			} else if m.Cmd&FlagDelete != 0 {
				out <- fmt.Sprintf("%s: error %#x", tag, m.Error)
			}
			if m.Cmd&FlagDelete != 0 && !t.TxDone() {
				_ = t.Close(ErrOK)
			}
		}
	}
	_ = span.Send(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: ShellAux("commit evil")})
	if _, err := span.Open(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: ShellAux("quorum")}, answer("circuit-ro")); err != nil {
		return err
	}
	if _, err := span.Open(&Msg{Header: Header{Cmd: CmdDbgShell}, Aux: ShellAux("quorum remove 1234")}, answer("circuit")); err != nil {
		return err
	}
	if _, err := span.Open(&Msg{Header: Header{Cmd: CmdQrmCommit}, Ext: (&qrmCommit{}).marshal(), Aux: []byte("evil")}, answer("qrm")); err != nil {
		return err
	}
	lock := cacLock{Domain: cacInum, Mode: cacExclusive, Lo: 1, Hi: 1}
	if _, err := span.Open(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: lock.marshal()}, answer("cac")); err != nil {
		return err
	}
	go func() {
		for l := range out {
			fmt.Println(l)
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin)
	l.Close()
	return nil
}
