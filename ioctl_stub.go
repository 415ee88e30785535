//go:build !dragonfly

package main

// A userland, file-backed PFS so the leaf runs where there is no HAMMER2
// cluster kernel. The PFS is a directory holding its registration
// (pfs.json), the REMOTE table as a byte image of the volume header's
// copyinfo[] (copyinfo.img), a lock file, and kernel.sock, on which a
// simulated kernel dials in to play the RECLUSTER link.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

const (
	stubRegFile    = "pfs.json"
	stubRemoteFile = "copyinfo.img"
	stubLockFile   = "copyinfo.lock"
	stubSocketFile = "kernel.sock"

	stubImageSize = RemoteSlots * VolconfSize
)

// KernelSocketPath is where a simulated kernel dials the stub PFS in dir.
func KernelSocketPath(dir string) string { return filepath.Join(dir, stubSocketFile) }

type stubPFS struct {
	dir string

	remoteMu sync.Mutex // serializes this handle's table edits; flock covers other handles

	linkMu  sync.Mutex // guards the fields below
	closed  bool
	ln      *net.UnixListener
	lnStat  os.FileInfo   // the socket file ln created, so Close removes only that
	conn    net.Conn      // the link handed out last; a newer one replaces it
	pending net.Conn      // accepted, not yet handed out
	arrived chan struct{} // signalled when pending is set

	access privilegePolicy // who may dial kernel.sock (SetSocketAccess)
	log    *slog.Logger
	accept sync.WaitGroup // the accept goroutine, waited for by Close
}

// OpenPFS opens the stub PFS in dir ("." if empty). It never makes one: a
// mistyped path must not turn into a new MASTER (`hammer2 pfs-create`
// does that on purpose).
func OpenPFS(dir string) (PFS, error) {
	if dir == "" {
		dir = "."
	}
	if _, err := readStubReg(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, &noPFSError{path: dir}
		}
		return nil, fmt.Errorf("open pfs: %w", err)
	}
	return &stubPFS{dir: dir, access: privilegePolicy{self: os.Geteuid(), group: -1}, log: slog.Default()}, nil
}

// noPFSError is a path that holds no PFS, with how to make one.
type noPFSError struct{ path string }

func (e *noPFSError) Error() string {
	abs, err := filepath.Abs(e.path)
	if err != nil {
		abs = e.path
	}
	return fmt.Sprintf("%s holds no PFS; create one with: hammer2 -s %s pfs-create %s",
		e.path, filepath.Dir(abs), filepath.Base(abs))
}

func (e *noPFSError) Unwrap() error { return fs.ErrNotExist }

// SetSocketAccess sets kernel.sock's mode and who may dial it (only
// privileged peers: anyone else could replace the kernel's link), and
// where refusals are logged. Call it before the first Recluster.
func (p *stubPFS) SetSocketAccess(pol privilegePolicy, log *slog.Logger) {
	p.linkMu.Lock()
	defer p.linkMu.Unlock()
	p.access, p.log = pol, log
}

// CreatePFS registers a new stub PFS in dir, like pfs-create. Zero fields
// get defaults: label = the directory's name, random clid and fsid, type
// MASTER (NONE is not a type one creates). An existing registration is
// fs.ErrExist.
func CreatePFS(dir string, info PFSInfo) error {
	if dir == "" {
		dir = "."
	}
	if info.Label == "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("create pfs %s: %w", dir, err)
		}
		info.Label = filepath.Base(abs)
	}
	if len(info.Label) > IocPFSNameMax {
		return fmt.Errorf("create pfs %s: label longer than %d bytes", dir, IocPFSNameMax)
	}
	if info.Clid.IsNil() {
		info.Clid = NewUUID()
	}
	if info.Fsid.IsNil() {
		info.Fsid = NewUUID()
	}
	if info.Type == PFSNone {
		info.Type = PFSMaster
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pfs: %w", err)
	}
	if err := stubWriteAtomic(dir, stubRegFile, encodeStubReg(info), true); err != nil {
		return fmt.Errorf("create pfs: %w", err)
	}
	return nil
}

func (p *stubPFS) Path() string { return p.dir }

// KernelSocketPath is where a simulated kernel dials this PFS.
func (p *stubPFS) KernelSocketPath() string { return KernelSocketPath(p.dir) }

func (p *stubPFS) errClosed() error {
	p.linkMu.Lock()
	defer p.linkMu.Unlock()
	if p.closed {
		return fmt.Errorf("pfs %s: %w", p.dir, os.ErrClosed)
	}
	return nil
}

// Info re-reads the registration so that edits and removal show up.
func (p *stubPFS) Info() (PFSInfo, error) {
	if err := p.errClosed(); err != nil {
		return PFSInfo{}, err
	}
	return readStubReg(p.dir)
}

func (p *stubPFS) Mounted() bool {
	if p.errClosed() != nil {
		return false
	}
	st, err := os.Stat(p.dir)
	if err != nil || !st.IsDir() {
		return false
	}
	st, err = os.Stat(filepath.Join(p.dir, stubRegFile))
	return err == nil && st.Mode().IsRegular()
}

func (p *stubPFS) RemoteScan() ([]Volconf, error) {
	var out []Volconf
	err := p.withRemote(false, func(t *remoteTable) error {
		out = t.list()
		return nil
	})
	return out, err
}

func (p *stubPFS) RemoteAdd(slot int, v Volconf) (Volconf, error) {
	if err := checkRemotePath(v.Path); err != nil {
		return Volconf{}, err
	}
	var stored Volconf
	err := p.withRemote(true, func(t *remoteTable) error {
		var err error
		stored, err = t.add(slot, v)
		return err
	})
	return stored, err
}

func (p *stubPFS) RemoteDel(slot int, path string) error {
	if err := checkRemotePath(path); err != nil {
		return err
	}
	return p.withRemote(true, func(t *remoteTable) error { return t.del(slot, path) })
}

// withRemote runs fn on the REMOTE table under the lock file (exclusive if
// write), and saves the table afterwards if write and fn succeeded.
func (p *stubPFS) withRemote(write bool, fn func(*remoteTable) error) error {
	if err := p.errClosed(); err != nil {
		return err
	}
	p.remoteMu.Lock()
	defer p.remoteMu.Unlock()
	unlock, err := stubFlock(filepath.Join(p.dir, stubLockFile), write)
	if err != nil {
		return err
	}
	defer unlock()
	t, err := stubReadImage(filepath.Join(p.dir, stubRemoteFile))
	if err != nil {
		return err
	}
	if err := fn(t); err != nil || !write {
		return err
	}
	return stubWriteAtomic(p.dir, stubRemoteFile, stubEncodeImage(t), false)
}

// stubReadImage loads copyinfo[]; a missing image is an empty table, as
// on a fresh volume.
func stubReadImage(path string) (*remoteTable, error) {
	var t remoteTable
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &t, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read remote table: %w", err)
	}
	if len(b) != stubImageSize {
		return nil, fmt.Errorf("%s: %d bytes, want %d (%d slots of %d)", path, len(b), stubImageSize, RemoteSlots, VolconfSize)
	}
	for i := range t {
		t[i], err = ParseVolconf(b[i*VolconfSize:])
		if err != nil {
			return nil, fmt.Errorf("%s: slot %d: %w", path, i, err)
		}
	}
	return &t, nil
}

func stubEncodeImage(t *remoteTable) []byte {
	b := make([]byte, stubImageSize)
	for i := range t {
		t[i].MarshalTo(b[i*VolconfSize:])
	}
	return b
}

// Recluster returns the next simulated kernel to dial KernelSocketPath.
// Kernels are accepted in the background, so that one dialing while the
// leaf serves another replaces it at once, as RECLUSTER replaces the
// kernel's link: the served connection is closed (the leaf sees the link
// end) and the new one is handed out by the next Recluster.
func (p *stubPFS) Recluster(ctx context.Context) (net.Conn, error) {
	if _, err := p.listener(); err != nil {
		return nil, err
	}
	for {
		p.linkMu.Lock()
		if p.closed {
			p.linkMu.Unlock()
			return nil, fmt.Errorf("recluster %s: %w", p.dir, os.ErrClosed)
		}
		if c := p.pending; c != nil {
			p.pending, p.conn = nil, c
			p.linkMu.Unlock()
			return c, nil
		}
		arrived := p.arrived
		p.linkMu.Unlock()
		select {
		case <-arrived:
		case <-ctx.Done():
			return nil, fmt.Errorf("recluster %s: %w", p.dir, context.Cause(ctx))
		}
	}
}

// acceptKernels runs while the listener is open. Only a privileged peer
// may play the kernel: anyone else dialing would replace the kernel's link.
func (p *stubPFS) acceptKernels(ln *net.UnixListener) {
	defer p.accept.Done()
	p.linkMu.Lock()
	pol, log := p.access, p.log
	p.linkMu.Unlock()
	refused := newLogLimiter(defaultLimits().RefusedLogsPerSecond)
	_ = acceptLoop(context.Background(), ln, log, "kernel.sock "+p.dir, func(c net.Conn) {
		if peer := pol.identify(c); !peer.Class.Privileged() {
			refused.Warn(log, "kernel.sock: refused an unprivileged peer", append([]any{"path", KernelSocketPath(p.dir)}, peer.attrs()...)...)
			c.Close()
			return
		}
		p.linkMu.Lock()
		if p.closed {
			p.linkMu.Unlock()
			c.Close()
			return
		}
		stale, served := p.pending, p.conn
		p.pending, p.conn = c, nil
		close(p.arrived)
		p.arrived = make(chan struct{})
		p.linkMu.Unlock()
		for _, old := range []net.Conn{stale, served} {
			if old != nil {
				old.Close()
			}
		}
	})
}

// listener starts listening on kernel.sock on first use.
func (p *stubPFS) listener() (*net.UnixListener, error) {
	p.linkMu.Lock()
	defer p.linkMu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("recluster %s: %w", p.dir, os.ErrClosed)
	}
	if p.ln != nil {
		return p.ln, nil
	}
	sock := KernelSocketPath(p.dir)
	// A socket file left by a dead daemon would make bind fail.
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("recluster: remove stale socket: %w", err)
	}
	ln, err := p.access.listenUnix(sock)
	if err != nil {
		return nil, fmt.Errorf("recluster: %w", err)
	}
	st, err := os.Stat(sock)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("recluster: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	p.ln, p.lnStat = ln, st
	p.arrived = make(chan struct{})
	p.accept.Add(1)
	go p.acceptKernels(ln)
	return ln, nil
}

// Close stops listening. The link already handed out belongs to the
// caller and stays up, as closing the ioctl fd leaves the kernel's link.
func (p *stubPFS) Close() error {
	defer p.accept.Wait() // after the lock: the goroutine takes it
	p.linkMu.Lock()
	defer p.linkMu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.pending != nil {
		p.pending.Close()
		p.pending = nil
	}
	if p.arrived != nil {
		close(p.arrived) // wake a waiting Recluster to see closed
	}
	if p.ln == nil {
		return nil
	}
	err := p.ln.Close()
	// Another handle may have replaced the socket file since; leave its.
	sock := KernelSocketPath(p.dir)
	if st, serr := os.Stat(sock); serr == nil && os.SameFile(st, p.lnStat) {
		if rerr := os.Remove(sock); rerr != nil && err == nil {
			err = rerr
		}
	}
	p.ln = nil
	if err != nil {
		return fmt.Errorf("close pfs %s: %w", p.dir, err)
	}
	return nil
}

// stubReg is pfs.json. Fields are decoded one by one so that an error can
// name the field.
type stubReg struct {
	Label string `json:"label"`
	Clid  UUID   `json:"clid"`
	Fsid  UUID   `json:"fsid"`
	Type  uint8  `json:"type"`
}

func encodeStubReg(info PFSInfo) []byte {
	b, err := json.MarshalIndent(stubReg(info), "", "\t")
	if err != nil {
		panic(fmt.Sprintf("encode pfs registration: %v", err)) // plain strings and numbers always encode
	}
	return append(b, '\n')
}

// readStubReg reads and validates dir's registration. A missing file is
// reported as fs.ErrNotExist.
func readStubReg(dir string) (PFSInfo, error) {
	path := filepath.Join(dir, stubRegFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return PFSInfo{}, fmt.Errorf("pfs registration: %w", err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return PFSInfo{}, fmt.Errorf("%s: not a JSON object: %w", path, err)
	}
	var info PFSInfo
	field := func(name string, dst any) error {
		raw, ok := fields[name]
		if !ok {
			return fmt.Errorf("%s: field %q missing", path, name)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			return fmt.Errorf("%s: field %q: %w", path, name, err)
		}
		return nil
	}
	var typ int
	for _, f := range []struct {
		name string
		dst  any
	}{{"label", &info.Label}, {"clid", &info.Clid}, {"fsid", &info.Fsid}, {"type", &typ}} {
		if err := field(f.name, f.dst); err != nil {
			return PFSInfo{}, err
		}
	}
	switch {
	case info.Label == "" || len(info.Label) > IocPFSNameMax:
		return PFSInfo{}, fmt.Errorf("%s: field \"label\": must be 1..%d bytes", path, IocPFSNameMax)
	case info.Clid.IsNil():
		return PFSInfo{}, fmt.Errorf("%s: field \"clid\": nil uuid", path)
	case info.Fsid.IsNil():
		return PFSInfo{}, fmt.Errorf("%s: field \"fsid\": nil uuid", path)
	case typ < 0 || typ > 0xFF:
		return PFSInfo{}, fmt.Errorf("%s: field \"type\": %d outside 0..255", path, typ)
	}
	info.Type = uint8(typ)
	return info, nil
}

// stubFlock flocks path (created if missing), shared or exclusive. The lock
// lives in its own file because the data files are replaced by rename,
// which would leave a lock on the old inode guarding nothing.
func stubFlock(path string, exclusive bool) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing drops the flock
}

// stubWriteAtomic replaces dir/name with data so that readers see the old
// or the new content, never a mix, even across a crash. With exclusive it
// fails with fs.ErrExist instead of replacing an existing file.
func stubWriteAtomic(dir, name string, data []byte, exclusive bool) (err error) {
	final := filepath.Join(dir, name)
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", final, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", final, err)
	}
	if exclusive {
		// link(2) publishes the complete file but refuses to replace one.
		if err = os.Link(tmp, final); err != nil {
			return fmt.Errorf("write %s: %w", final, err)
		}
		os.Remove(tmp)
	} else if err = os.Rename(tmp, final); err != nil {
		return fmt.Errorf("write %s: %w", final, err)
	}
	if err = stubSyncDir(dir); err != nil {
		return fmt.Errorf("write %s: %w", final, err)
	}
	return nil
}

// stubSyncDir makes a rename or link in dir durable.
func stubSyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
