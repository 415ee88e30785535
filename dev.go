//go:build !dragonfly

package main

// `hammer2 dev`: a development cluster in one command, as `consul agent
// -dev` or a bare `etcd` gives one. A service and N MASTER (and M SLAVE)
// PFSs of one cluster, each served by its own leaf process, in a
// temporary directory on this machine; the masters form their quorum
// group through the service. It prints how to reach each, carries on when
// one is killed, and removes everything on Ctrl-C.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// devProc is one process of the dev cluster.
type devProc struct {
	name, kind string // e.g. "master1", "leaf"
	pfs        string // its PFS directory (leaves)
	log        string
	cmd        *exec.Cmd
	done       chan struct{} // closed when it has exited
}

// devReadyWait bounds the wait for the group to form: three leaves and a
// service start in well under a second; the first election takes about
// one election timeout (10 ticks of 100 ms).
const devReadyWait = 30 * time.Second

func (c *DevCmd) Run(env *Env) (err error) {
	if c.Masters < 1 || c.Masters > 9 || c.Slaves < 0 || c.Slaves > 9 {
		return errors.New("dev: --masters 1..9 and --slaves 0..9")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	dir := c.Dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "hammer2-dev-"); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if !c.Keep {
		defer os.RemoveAll(dir)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	sock := filepath.Join(dir, "service.sock")
	clid := NewUUID()
	type pfsSpec struct {
		name string
		info PFSInfo
	}
	var specs []pfsSpec
	var masters []string
	for i := 1; i <= c.Masters; i++ {
		info := PFSInfo{Label: "dev", Clid: clid, Fsid: NewUUID(), Type: PFSMaster}
		specs = append(specs, pfsSpec{fmt.Sprintf("master%d", i), info})
		masters = append(masters, strconv.Quote(info.Fsid.String()))
	}
	for i := 1; i <= c.Slaves; i++ {
		specs = append(specs, pfsSpec{fmt.Sprintf("slave%d", i), PFSInfo{Label: "dev", Clid: clid, Fsid: NewUUID(), Type: PFSSlave}})
	}
	// One node key for the machine, as the PFSs of one machine share it.
	keys := filepath.Join(dir, "keys")
	cfg := filepath.Join(dir, "hammer2.toml")
	text := fmt.Sprintf("# hammer2 dev: %d masters, %d slaves of cluster %s\n"+
		"key_dir = %q\nlisten = \"none\"\nbackbone = %q\n[quorum]\nmasters = [%s]\n[service]\nunix = %q\ntcp = \"none\"\nlisten = \"none\"\n",
		c.Masters, c.Slaves, clid, keys, "unix:"+sock, strings.Join(masters, ", "), sock)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if _, err := loadOrCreateKey(keys, discardInfo{}); err != nil {
		return fmt.Errorf("dev: %w", err)
	}

	var procs []*devProc
	var wg sync.WaitGroup
	var notify *net.UnixConn // the service's READY=1 comes here
	defer func() {
		// Ctrl-C reaches the children too (one process group); SIGTERM
		// whatever is left, and wait for all of them.
		for _, p := range procs {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
		wg.Wait()
		// Open until the service is gone: it says STOPPING=1 there too.
		if notify != nil {
			notify.Close()
		}
		if !c.Keep {
			fmt.Fprintf(env.Stdout, "hammer2 dev: stopped; removed %s\n", dir)
		}
	}()
	start := func(name, kind, pfs string, extraEnv []string, args ...string) (*devProc, error) {
		p := &devProc{name: name, kind: kind, pfs: pfs, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
		lf, err := os.Create(p.log)
		if err != nil {
			return nil, err
		}
		p.cmd = exec.Command(self, append([]string{"-c", cfg, "-d"}, args...)...)
		p.cmd.Args[0] = "hammer2"
		if extraEnv != nil {
			p.cmd.Env = append(os.Environ(), extraEnv...)
		}
		p.cmd.Stdout, p.cmd.Stderr = lf, lf
		if err := p.cmd.Start(); err != nil {
			lf.Close()
			return nil, err
		}
		procs = append(procs, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.cmd.Wait()
			lf.Close()
			close(p.done)
			if ctx.Err() == nil {
				fmt.Fprintf(env.Stdout, "hammer2 dev: %s (pid %d) exited: %v; the others carry on\n", p.name, p.cmd.Process.Pid, err)
			}
		}()
		return p, nil
	}
	// The service says when it serves, as it tells systemd (READY=1 on
	// NOTIFY_SOCKET), and the leaves start then: a leaf started first
	// finds no socket and waits out a redial backoff, a second or so.
	if notify, err = devListenNotify(filepath.Join(dir, "notify.sock")); err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	svc, err := start("service", "service", "", []string{"NOTIFY_SOCKET=" + notify.LocalAddr().String()}, "service")
	if err != nil {
		return fmt.Errorf("dev: %w", err)
	}
	if err := devWaitNotify(ctx, notify, svc); err != nil {
		return fmt.Errorf("dev: %w (logs in %s)", err, dir)
	}
	dev := filepath.Join(dir, "pfs")
	for _, s := range specs {
		pdir := filepath.Join(dev, s.name)
		if err := CreatePFS(pdir, s.info); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
		if _, err := start(s.name, "leaf", pdir, nil, "leaf", pdir); err != nil {
			return fmt.Errorf("dev: %w", err)
		}
	}
	if err := devWaitReady(ctx, procs, cfg); err != nil {
		return fmt.Errorf("dev: %w (logs in %s)", err, dir)
	}
	devBanner(env.Stdout, c, dir, cfg, sock, svc, procs)
	<-ctx.Done()
	return nil
}

// devListenNotify is the datagram socket the service reports READY=1 on.
func devListenNotify(path string) (*net.UnixConn, error) {
	return net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
}

// devWaitNotify waits for the service's READY=1, or its exit. Its reader
// ends when Run closes the socket.
func devWaitNotify(ctx context.Context, notify *net.UnixConn, svc *devProc) error {
	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := notify.Read(buf)
			if err != nil {
				ready <- err
				return
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == "READY=1" {
					ready <- nil
					return
				}
			}
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, devReadyWait)
	defer cancel()
	select {
	case err := <-ready:
		return err
	case <-svc.done:
		return fmt.Errorf("the service exited while starting; see %s", svc.log)
	case <-ctx.Done():
		return fmt.Errorf("the service not ready in %v: %w", devReadyWait, ctx.Err())
	}
}

// devWaitReady waits on the leaves' status streams until every leaf has
// its backbone up and the group a leader.
func devWaitReady(ctx context.Context, procs []*devProc, cfg string) error {
	ctx, cancel := context.WithTimeout(ctx, devReadyWait)
	defer cancel()
	c, err := LoadConfig(cfg)
	if err != nil {
		return err
	}
	errc := make(chan error, len(procs))
	n := 0
	for _, p := range procs {
		if p.kind != "leaf" {
			continue
		}
		n++
		pfs, err := OpenPFS(p.pfs)
		if err != nil {
			return err
		}
		info, err := pfs.Info()
		control := leafPaths(c, pfs, info).control
		pfs.Close()
		if err != nil {
			return err
		}
		go func() {
			errc <- devWaitLeaf(ctx, p, control)
		}()
	}
	for range n {
		if err := <-errc; err != nil {
			return err
		}
	}
	return nil
}

var errDevReady = errors.New("ready")

func devWaitLeaf(ctx context.Context, p *devProc, control string) error {
	// The control socket appears once the leaf is ready.
	for ctx.Err() == nil {
		err := controlWatch(ctx, control, func(r *controlResponse) error {
			st := r.Status
			if st == nil || st.Backbone == nil || st.Backbone.State != DialUp {
				return nil
			}
			if st.Quorum != nil && (st.Quorum.Leader == "0" || !st.Quorum.HasQuorum) {
				return nil
			}
			return errDevReady
		})
		if errors.Is(err, errDevReady) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited while starting; see %s", p.name, p.log)
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // not listening yet: the leaf is still starting
		}
	}
	return fmt.Errorf("%s not ready in %v: %w", p.name, devReadyWait, ctx.Err())
}

func devBanner(w io.Writer, c *DevCmd, dir, cfg, sock string, svc *devProc, procs []*devProc) {
	fmt.Fprintf(w, "hammer2 dev: %d masters and %d slaves of one cluster in %s; Ctrl-C stops and removes it\n\n",
		c.Masters, c.Slaves, dir)
	fmt.Fprintf(w, "  service  pid %-7d hammer2 -c %s status --service\n", svc.cmd.Process.Pid, cfg)
	fmt.Fprintf(w, "                         hammer2 shell unix:%s\n", sock)
	for _, p := range procs {
		if p.kind == "leaf" {
			fmt.Fprintf(w, "  %-8s pid %-7d hammer2 -c %s status %s\n", p.name, p.cmd.Process.Pid, cfg, p.pfs)
		}
	}
	fmt.Fprintf(w, "\nIn the shell: tree lists the PFSs (SLink span N); @N commit <text> and @N lock EXCLUSIVE INUM 5\n"+
		"go through that PFS's leaf. Kill a master (kill <pid>) and commit again: the group carries on.\n"+
		"Logs: %s/*.log\n", dir)
}

// discardInfo is a logger that drops its lines.
type discardInfo struct{}

func (discardInfo) Info(string, ...any) {}
