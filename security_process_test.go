//go:build !dragonfly

package main

// The attacks of issue 9, played against real daemons by a child process
// running as an unused uid: an unprivileged local user on the machine of
// a service with a quorum group's masters on it.

import (
	"bytes"
	"encoding/json"
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

	"golang.org/x/sys/unix"
)

// appendConfig adds TOML to the service's config file.
func (s *svcNode) appendConfig(text string) {
	s.t.Helper()
	f, err := os.OpenFile(s.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		s.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n" + text + "\n"); err != nil {
		s.t.Fatal(err)
	}
}

// serviceStatus is `hammer2 status --service --json`.
func (s *svcNode) serviceStatus() ServiceStatus {
	s.t.Helper()
	out, errOut, code := runH2(s.t, s.bin, "-c", s.cfgPath, "status", "--service", "--unix", s.sock, "--json")
	if code != 0 {
		s.t.Fatalf("service %s: status --service: exit %d: %s", s.name, code, errOut)
	}
	var doc serviceStatusDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil || doc.Service == nil || doc.SchemaVersion != statusSchemaVersion {
		s.t.Fatalf("service %s: status --service: %v\n%s", s.name, err, out)
	}
	return *doc.Service
}

// linkOf finds the service's link whose peer has uid.
func (st ServiceStatus) linkOf(uid int) *ServiceLinkStatus {
	for i, l := range st.Links {
		if l.PeerUID != nil && *l.PeerUID == uid {
			return &st.Links[i]
		}
	}
	return nil
}

// shellAs runs `hammer2 shell target` as uid with the given input lines,
// with a config any user can read whose remote_dir lets it reach 127.0.0.1
// in plaintext (DragonFly's rule, which the shell applies as a TCP peer).
func shellAs(t testing.TB, uid int, bin, target string, lines ...string) string {
	t.Helper()
	dir := shortTempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeRemoteNone(t, filepath.Join(dir, remoteDirName), "127.0.0.1")
	cfg := filepath.Join(dir, "shell.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("key_dir = %q\n", dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-c", cfg, "shell", target)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	cmd.Dir = "/"
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("hammer2 shell %s as uid %d: %v\n%s%s", target, uid, err, o.String(), e.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("hammer2 shell %s as uid %d: still running after 20s", target, uid)
	}
	return o.String()
}

var spanIDRe = regexp.MustCompile(`SLink span (\d+) dist=0`)

// TestSecurityUnprivilegedUser plays a local user without privilege
// against a service that relays a 3-master quorum group: fake MASTER spans
// on the plaintext TCP port, and every way a shell line or a quorum request
// can travel through the service. None may change the group, and the
// group keeps its quorum and its commits.
func TestSecurityUnprivilegedUser(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	c := newQPCluster(t, 3, false, 3*time.Second)
	leader := c.waitLeader(20 * time.Second)
	svc := c.svcs[0]

	t.Run("fake master spans", func(t *testing.T) {
		// The attack that took the group to 6 voters with 3 alive.
		att := startRole(t, "dmsg-spans", nobodyUID, "H2_ADDR=tcp:"+svc.tcp, "H2_CLID="+c.clid.String(),
			"H2_SPANS=3", "H2_TYPE="+strconv.Itoa(PFSMaster))
		if got := att.line(20 * time.Second); got != "links 1 closed 0 answered 3 noperm 3" {
			t.Fatalf("the attacker's spans were answered %q, want each refused with ErrNoPerm and kept open", got)
		}
		st := svc.serviceStatus()
		l := st.linkOf(nobodyUID)
		if l == nil || l.Class != "unprivileged" || l.Ignored != 3 || l.Spans != 0 {
			t.Fatalf("the attacker's link in status: %+v (all links %+v)", l, st.Links)
		}
		if st.Spans != 3 {
			t.Errorf("the service holds %d spans, want the 3 masters' only", st.Spans)
		}
		op := c.commitUntil(leader, 15*time.Second)
		if op == nil {
			t.Fatalf("the group lost its quorum: %s", qpFmtStatuses(c.statuses()))
		}
		for i, q := range c.statusesNow() {
			if q == nil || len(q.Members) != 3 {
				t.Errorf("m%d: members %v, want the 3 founders", i+1, q)
			}
		}
		for _, m := range c.masters {
			for _, sp := range svcView(m).Spans {
				if sp.Label == "fake" {
					t.Errorf("%s sees the attacker's span %+v", m.name, sp)
				}
			}
		}
	})

	tree := svc.tree()
	ids := spanIDRe.FindStringSubmatch(tree)
	if ids == nil {
		t.Fatalf("no master span in the service's tree:\n%s", tree)
	}
	at := "@" + ids[1]

	t.Run("shell", func(t *testing.T) {
		out := shellAs(t, nobodyUID, svc.bin, svc.tcp, "help", "tree", "span 127.0.0.1:9", "commit evil",
			at+" commit evil", at+" quorum remove "+c.ids[1], at+" lock EXCLUSIVE INUM 1", at+" frobnicate", at+" quorum")
		for _, cmd := range []string{"span", "commit", "lock", "frobnicate"} {
			if !strings.Contains(out, cmd+": refused: needs a privileged link") {
				t.Errorf("%q was not refused:\n%s", cmd, out)
			}
		}
		if n := strings.Count(out, "quorum: refused: needs a privileged link"); n != 1 {
			t.Errorf("quorum remove refused %d times, want once:\n%s", n, out)
		}
		if !strings.Contains(out, "Cluster HAMMER2") || !strings.Contains(out, "span <host>") {
			t.Errorf("help and tree, which only look, were not answered:\n%s", out)
		}
		if !regexp.MustCompile(`master [0-9a-f]+ State\w+, leader`).MatchString(out) {
			t.Errorf("@span quorum (read-only) did not reach the master:\n%s", out)
		}
		// The same line from root goes through: the test can fail.
		if out := shellAs(t, -1, svc.bin, svc.tcp, at+" commit fine"); !strings.Contains(out, "committed at txid") {
			t.Errorf("root's @span commit did not commit:\n%s", out)
		}
		for i, q := range c.statusesNow() {
			if q == nil || len(q.Members) != 3 {
				t.Errorf("m%d: members %v after the refused quorum remove", i+1, q)
			}
		}
	})

	t.Run("relayed span and circuits", func(t *testing.T) {
		att := startRole(t, "dmsg-shell", nobodyUID, "H2_ADDR=tcp:"+svc.tcp, "H2_CLID="+c.clid.String())
		got := map[string]string{}
		for range 5 {
			tag, text, _ := strings.Cut(att.line(20*time.Second), ": ")
			got[tag] = text
		}
		want := map[string]string{
			"relay":   "commit: refused: needs a privileged link",
			"circuit": "quorum: refused: needs a privileged link",
			"qrm":     fmt.Sprintf("error %#x", ErrNoPerm),
			"cac":     fmt.Sprintf("error %#x", ErrNoPerm),
		}
		for tag, w := range want {
			if !strings.HasPrefix(got[tag], w) {
				t.Errorf("%s: got %q, want %q", tag, got[tag], w)
			}
		}
		if !strings.HasPrefix(got["circuit-ro"], "master ") {
			t.Errorf("a read-only shell circuit was not answered by the master: %q", got["circuit-ro"])
		}
	})
}

// TestSecurityListenerSurvivesFDExhaustion floods a service whose file
// descriptors are few with connections: its listener must accept again
// once the flood ends, where it used to stop for good.
func TestSecurityListenerSurvivesFDExhaustion(t *testing.T) {
	t.Parallel()
	s := newSvcNode(t, "fds", daemonOpts{})
	s.start()
	const nofile = 64
	if err := unix.Prlimit(s.pid(), unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: nofile, Max: nofile}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	flood := startRole(t, "hold", -1, "H2_ADDR=tcp:"+s.tcp, "H2_N=150")
	if got := flood.line(20 * time.Second); !strings.HasPrefix(got, "held 150 ") {
		t.Fatalf("flood: %s", got)
	}
	s.waitLog(15*time.Second, "accept failing; retrying with backoff", "too many open files")
	flood.stop()
	s.waitLog(15*time.Second, `msg="accepting again"`)
	if out := shellAs(t, -1, s.bin, s.tcp, "help"); !strings.Contains(out, "tree ") {
		t.Fatalf("the service does not answer a shell after the flood:\n%s", out)
	}
}

// rssKiB is a process's resident set.
func rssKiB(t testing.TB, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestSecuritySpanFlood is the memory attack: 50 connections of an
// unprivileged user sending 3,200 spans each took a service from 280 to 956
// MB. Now only limits.unprivileged_links are let in, their spans are never
// relayed, and a privileged link going over its span limit is closed.
func TestSecuritySpanFlood(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	s := newSvcNode(t, "flood", daemonOpts{})
	s.appendConfig("[limits]\nunprivileged_links = 8\nspans_per_link = 1000\nspans = 4000\n" +
		"transactions_per_link = 5000\ncircuits_per_link = 100")
	s.start()
	before := rssKiB(t, s.pid())
	clid := NewUUID()
	att := startRole(t, "dmsg-spans", nobodyUID, "H2_ADDR=tcp:"+s.tcp, "H2_CLID="+clid.String(),
		"H2_LINKS=50", "H2_SPANS=900", "H2_TYPE="+strconv.Itoa(PFSMaster))
	got := att.line(60 * time.Second)
	if got != "links 50 closed 42 answered 7200 noperm 7200" {
		t.Fatalf("unprivileged flood: %s; want 8 links let in, every span refused", got)
	}
	s.waitLog(5*time.Second, `limit=unprivileged_links value=9 max=8`)
	st := s.serviceStatus()
	if st.Spans != 0 || st.Relays != 0 {
		t.Errorf("the service relays the unprivileged flood: %d spans, %d relays", st.Spans, st.Relays)
	}
	grew := rssKiB(t, s.pid()) - before
	t.Logf("service RSS grew by %d KiB holding 7200 refused spans on 8 links", grew)
	if grew > 100<<10 {
		t.Errorf("service RSS grew by %d KiB", grew)
	}
	att.stop()

	// A privileged peer is held to its span limits too.
	root := startRole(t, "dmsg-spans", -1, "H2_ADDR=tcp:"+s.tcp, "H2_CLID="+clid.String(),
		"H2_LINKS=1", "H2_SPANS=1001", "H2_TYPE="+strconv.Itoa(PFSMaster))
	if got := root.line(30 * time.Second); !strings.HasPrefix(got, "links 1 closed 1 ") {
		t.Fatalf("privileged flood over spans_per_link: %s", got)
	}
	s.waitLog(5*time.Second, `limit=spans_per_link value=1001 max=1000`)
}

// TestSecuritySocketModes starts a service and a leaf under umask 000:
// their sockets must still be 0600, and a user of another uid must not
// get in; with security.group they are 0660 and that group's.
func TestSecuritySocketModes(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	s := newSvcNode(t, "modes", daemonOpts{})
	s.umask = new(0)
	s.start()
	n := newLeafNode(t, "modes", daemonOpts{})
	n.umask = new(0)
	n.start()
	for _, p := range []string{s.sock, serviceControlPath(s.sock), KernelSocketPath(n.pfs), filepath.Join(n.pfs, "leaf-"+n.info.Fsid.String()+".sock")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %#o under umask 000, want 0600", p, fi.Mode().Perm())
		}
	}
	// Let the other user reach the socket, so that its mode alone stops it.
	if err := os.Chmod(s.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	probe := startRole(t, "hold", nobodyUID, "H2_ADDR=unix:"+s.sock, "H2_N=1")
	if got := probe.line(10 * time.Second); !strings.Contains(got, "permission denied") {
		t.Errorf("uid %d dialing service.sock: %s", nobodyUID, got)
	}

	g := newSvcNode(t, "group", daemonOpts{})
	g.appendConfig(fmt.Sprintf("[security]\ngroup = \"%d\"", nobodyUID))
	g.start()
	if err := os.Chmod(g.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(g.sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o660 || int(st.Gid) != nobodyUID {
		t.Errorf("with security.group: mode %#o group %d, want 0660 group %d", fi.Mode().Perm(), st.Gid, nobodyUID)
	}
	// A member of the group (here, by its primary gid) is privileged.
	member := startRole(t, "dmsg-spans", nobodyUID, "H2_ADDR=unix:"+g.sock, "H2_CLID="+NewUUID().String(),
		"H2_SPANS=1", "H2_TYPE="+strconv.Itoa(PFSMaster))
	if got := member.line(10 * time.Second); got != "links 1 closed 0 answered 1 noperm 0" {
		t.Errorf("a member of security.group: %s, want its span taken", got)
	}
}

// TestSecurityBackboneMustBePrivileged has an unprivileged user listen
// where a leaf looks for its service: the leaf must not link to it.
func TestSecurityBackboneMustBePrivileged(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	dir := shortTempDir(t)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "fake.sock")
	fake := startRole(t, "listen-unix", nobodyUID, "H2_PATH="+sock)
	if got := fake.line(10 * time.Second); got != "listening" {
		t.Fatalf("fake service: %s", got)
	}
	n := newLeafNode(t, "bb", daemonOpts{})
	n.writeConfig(fmt.Sprintf("backbone = %q\n", "unix:"+sock))
	n.start()
	st := n.waitStatus(10*time.Second, "the backbone refused", func(s procStatus) bool {
		return s.Leaf != nil && s.Leaf.Backbone != nil && strings.Contains(s.Leaf.Backbone.LastErr, "not privileged")
	})
	if b := st.Leaf.Backbone; b.State == DialUp {
		t.Errorf("backbone to an unprivileged listener: %+v", b)
	}
}
