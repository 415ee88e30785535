//go:build dragonfly

package main

// The PFS behind a real HAMMER2 mount, driven through the ioctls of
// ioctl.go on a descriptor opened anywhere inside the mount.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

type dflyPFS struct {
	path string

	mu sync.Mutex // guards fd against use after Close
	fd int        // -1 once closed
}

// notHammer2Error keeps the hammer2 tool's wording while still letting
// callers test the errno.
type notHammer2Error struct {
	path string
	err  error
}

func (e *notHammer2Error) Error() string {
	return fmt.Sprintf("'%s' is not a hammer2 filesystem", e.path)
}
func (e *notHammer2Error) Unwrap() error { return e.err }

// OpenPFS opens the HAMMER2 PFS containing path ("." if empty).
func OpenPFS(path string) (PFS, error) {
	if path == "" {
		path = "."
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("unable to open %s: %w", path, err)
	}
	var v [IocIntSize]byte
	if err := h2ioctl(fd, IocVersionGet, unsafe.Pointer(&v)); err != nil {
		unix.Close(fd)
		return nil, &notHammer2Error{path, err}
	}
	return &dflyPFS{path: path, fd: fd}, nil
}

// h2ioctl issues req on fd with the fixed-size argument at arg.
func h2ioctl(fd int, req uint32, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

// do runs req on the handle's fd, unless the handle is closed.
func (p *dflyPFS) do(name string, req uint32, arg unsafe.Pointer) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 {
		return fmt.Errorf("%s on %s: %w", name, p.path, os.ErrClosed)
	}
	if err := h2ioctl(p.fd, req, arg); err != nil {
		return fmt.Errorf("%s on %s: %w", name, p.path, err)
	}
	return nil
}

func (p *dflyPFS) Path() string { return p.path }

// Info asks PFS_GET for the fd's own PFS (name_key -1).
func (p *dflyPFS) Info() (PFSInfo, error) {
	req := IocPFS{NameKey: IocPFSKeySelf}
	b := req.Marshal()
	if err := p.do("PFS_GET", IocPFSGet, unsafe.Pointer(&b)); err != nil {
		return PFSInfo{}, err
	}
	r := ParseIocPFS(&b)
	return PFSInfo{Label: r.Name, Clid: r.PfsClid, Fsid: r.PfsFsid, Type: r.PfsType}, nil
}

func (p *dflyPFS) RemoteScan() ([]Volconf, error) {
	var out []Volconf
	for id := int32(0); id >= 0; {
		req := IocRemote{CopyID: id}
		b := req.Marshal()
		if err := p.do("REMOTE_SCAN", IocRemoteScan, unsafe.Pointer(&b)); err != nil {
			return nil, fmt.Errorf("slot %d: %w", id, err)
		}
		r := ParseIocRemote(&b)
		if r.Copy1.CopyID != 0 {
			out = append(out, r.Copy1)
		}
		// The kernel only moves forward; anything else would loop forever.
		if r.NextID >= 0 && r.NextID <= id {
			return nil, fmt.Errorf("REMOTE_SCAN on %s: slot %d: nextid %d does not advance", p.path, id, r.NextID)
		}
		id = r.NextID
	}
	return out, nil
}

func (p *dflyPFS) RemoteAdd(slot int, v Volconf) (Volconf, error) {
	if err := checkRemotePath(v.Path); err != nil {
		return Volconf{}, err
	}
	if err := checkRemoteSlot("add", slot); err != nil {
		return Volconf{}, err
	}
	req := IocRemote{CopyID: int32(max(slot, -1)), Copy1: v}
	b := req.Marshal()
	if err := p.do("REMOTE_ADD", IocRemoteAdd, unsafe.Pointer(&b)); err != nil {
		return Volconf{}, fmt.Errorf("slot %d path %q: %w", slot, v.Path, err)
	}
	// The kernel reports the slot it chose in copy1.copyid.
	return ParseIocRemote(&b).Copy1, nil
}

func (p *dflyPFS) RemoteDel(slot int, path string) error {
	if err := checkRemotePath(path); err != nil {
		return err
	}
	if err := checkRemoteSlot("del", slot); err != nil {
		return err
	}
	req := IocRemote{CopyID: int32(max(slot, -1)), Copy1: Volconf{Path: path}}
	b := req.Marshal()
	if err := p.do("REMOTE_DEL", IocRemoteDel, unsafe.Pointer(&b)); err != nil {
		return fmt.Errorf("slot %d path %q: %w", slot, path, err)
	}
	return nil
}

// Recluster hands the kernel one end of a fresh socket pair; the kernel
// drops its previous link and speaks dmsg on the new one at once.
func (p *dflyPFS) Recluster(ctx context.Context) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("recluster %s: %w", p.path, err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("recluster %s: socketpair: %w", p.path, err)
	}
	b := MarshalIocInt(int32(fds[1]))
	err = p.do("RECLUSTER", IocRecluster, unsafe.Pointer(&b))
	// The kernel holds its own reference to its end.
	unix.Close(fds[1])
	if err != nil {
		unix.Close(fds[0])
		return nil, err
	}
	f := os.NewFile(uintptr(fds[0]), "hammer2-kernel-link")
	c, err := net.FileConn(f)
	f.Close() // FileConn dups the descriptor
	if err != nil {
		return nil, fmt.Errorf("recluster %s: %w", p.path, err)
	}
	return c, nil
}

// Mounted reports whether VERSION_GET still works: once the PFS is
// unmounted the descriptor's vnode is dead and the ioctl fails.
func (p *dflyPFS) Mounted() bool {
	var v [IocIntSize]byte
	return p.do("VERSION_GET", IocVersionGet, unsafe.Pointer(&v)) == nil
}

func (p *dflyPFS) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 {
		return nil
	}
	err := unix.Close(p.fd)
	p.fd = -1
	if err != nil {
		return fmt.Errorf("close %s: %w", p.path, err)
	}
	return nil
}

// dflyDevice is the device of a HAMMER2 mount, through one of its PFSs.
type dflyDevice struct{ *dflyPFS }

// OpenPFSDevice opens the device of the HAMMER2 mount containing path.
func OpenPFSDevice(path string) (PFSDevice, error) {
	p, err := OpenPFS(path)
	if err != nil {
		return nil, err
	}
	return dflyDevice{p.(*dflyPFS)}, nil
}

func pfsEntry(r IocPFS) PFSEntry {
	return PFSEntry{Name: r.Name, Type: r.PfsType, Subtype: r.PfsSubtype, Clid: r.PfsClid, Fsid: r.PfsFsid}
}

// List iterates PFS_GET from key 0 along name_next until it is -1.
func (d dflyDevice) List() ([]PFSEntry, error) {
	var out []PFSEntry
	for key := uint64(0); key != IocPFSKeySelf; {
		req := IocPFS{NameKey: key}
		b := req.Marshal()
		if err := d.do("PFS_GET", IocPFSGet, unsafe.Pointer(&b)); err != nil {
			if len(out) == 0 && errors.Is(err, unix.ENOENT) {
				return nil, nil // a device without PFSs
			}
			return out, err
		}
		r := ParseIocPFS(&b)
		out = append(out, pfsEntry(r))
		if r.NameNext != IocPFSKeySelf && r.NameNext <= key {
			return out, fmt.Errorf("PFS_GET on %s: name_next %#x does not advance past %#x", d.path, r.NameNext, key)
		}
		key = r.NameNext
	}
	return out, nil
}

func (d dflyDevice) Lookup(name string) (PFSEntry, error) {
	req := IocPFS{Name: name}
	b := req.Marshal()
	if err := d.do("PFS_LOOKUP", IocPFSLookup, unsafe.Pointer(&b)); err != nil {
		return PFSEntry{}, err
	}
	return pfsEntry(ParseIocPFS(&b)), nil
}

func (d dflyDevice) Create(e PFSEntry) error {
	req := IocPFS{Name: e.Name, PfsType: e.Type, PfsSubtype: e.Subtype, PfsClid: e.Clid, PfsFsid: e.Fsid}
	b := req.Marshal()
	return d.do("PFS_CREATE", IocPFSCreate, unsafe.Pointer(&b))
}

func (d dflyDevice) Delete(name string) error {
	req := IocPFS{Name: name}
	b := req.Marshal()
	return d.do("PFS_DELETE", IocPFSDelete, unsafe.Pointer(&b))
}
