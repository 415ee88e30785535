package main

// The PFS a leaf serves, independent of whether a real HAMMER2 mount
// (ioctl_dragonfly.go) or a file-backed stand-in (ioctl_stub.go) is behind
// it, plus the kernel's REMOTE slot rules so the stand-in behaves exactly
// like the kernel.

import (
	"context"
	"fmt"
	"net"
	"syscall"
)

// PFSInfo is the mounted PFS's registration.
type PFSInfo struct {
	Label string
	Clid  UUID // the cluster the PFS belongs to
	Fsid  UUID // this PFS instance
	Type  uint8
}

// PFS is the PFS a leaf serves; ioctl_dragonfly.go and ioctl_stub.go
// implement it with OpenPFS(path string) (PFS, error).
type PFS interface {
	Path() string
	Info() (PFSInfo, error)
	// RemoteScan returns the non-empty REMOTE slots (copyid != 0) in slot
	// order.
	RemoteScan() ([]Volconf, error)
	// RemoteAdd stores v. slot < 0 takes the first free slot 1..255
	// (ENOSPC if none), 0..255 that slot unconditionally, >= 256 is EINVAL.
	// It returns the stored entry, whose CopyID is the slot.
	RemoteAdd(slot int, v Volconf) (Volconf, error)
	// RemoteDel empties a slot: slot < 0 the first slot 1..255 in use
	// whose path equals path (ENOENT if none), 0..255 that slot. Only the
	// copyid is zeroed.
	RemoteDel(slot int, path string) error
	// Recluster returns the leaf's end of a fresh kernel link, replacing
	// whatever link the kernel had.
	Recluster(ctx context.Context) (net.Conn, error)
	// Mounted reports whether the PFS is still mounted.
	Mounted() bool
	Close() error
}

// PFSEntry is one PFS of a device, as PFS_GET and PFS_LOOKUP return it.
type PFSEntry struct {
	Name    string
	Type    uint8 // low nibble the type, high nibble a transition target
	Subtype uint8 // NONE 0, SNAPSHOT 1, AUTOSNAP 2
	Clid    UUID  // the cluster it belongs to
	Fsid    UUID  // this PFS
}

// PFSDevice is where PFSs are made and listed, as `hammer2 pfs-*` do: on
// DragonFly the device of a HAMMER2 mount (any mounted PFS of it
// reaches every PFS of the device); elsewhere a directory holding PFS
// directories, named by their labels. OpenPFSDevice(path) opens it.
type PFSDevice interface {
	// List returns the device's PFSs in key order.
	List() ([]PFSEntry, error)
	// Lookup finds a PFS by name; fs.ErrNotExist if there is none.
	Lookup(name string) (PFSEntry, error)
	// Create makes a PFS; fs.ErrExist if the name is taken.
	Create(e PFSEntry) error
	// Delete destroys a PFS and what it holds.
	Delete(name string) error
	Close() error
}

// RemoteSlots is the size of the volume header's copyinfo[] table.
const RemoteSlots = 256

// checkRemotePath refuses paths the 64-byte path field cannot hold, which
// the kernel would otherwise truncate silently.
func checkRemotePath(path string) error {
	if len(path) > VolconfPathMax {
		return fmt.Errorf("remote path %q: path too long (%d bytes, max %d): %w",
			path, len(path), VolconfPathMax, syscall.EINVAL)
	}
	return nil
}

func checkRemoteSlot(op string, slot int) error {
	if slot >= RemoteSlots {
		return fmt.Errorf("remote %s: slot %d outside 0..%d: %w", op, slot, RemoteSlots-1, syscall.EINVAL)
	}
	return nil
}
