package main

// Files and sockets other users must not change or reach: the config, the
// key directory and its remote/ trust directory are refused (or their
// entries ignored) when another non-root user could write them, as sshd
// refuses its keys; the daemons' Unix sockets get their mode explicitly,
// whatever the umask.

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// errWritableByOthers is a file or directory another user could change.
var errWritableByOthers = errors.New("writable by other users")

// checkNotWritableByOthers refuses a path that is group- or
// world-writable, or owned by a user other than root and us: whoever can
// write it could make us trust a key or change our config.
func checkNotWritableByOthers(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkFileInfoNotWritable(path, fi)
}

func checkFileInfoNotWritable(path string, fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() && !fi.IsDir() {
		return nil // a device such as /dev/null holds nothing to change
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s: mode %#o is group- or world-writable; refused (chmod go-w %s): %w", path, perm, path, errWritableByOthers)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if uid := int(st.Uid); uid != 0 && uid != os.Geteuid() {
			return fmt.Errorf("%s: owned by uid %d, neither root nor this daemon's user (%d); refused: %w", path, uid, os.Geteuid(), errWritableByOthers)
		}
	}
	return nil
}

// socketMode is the mode of a daemon's Unix socket: 0600, or 0660 with
// the configured group as its group.
func (p privilegePolicy) socketMode() (os.FileMode, int) {
	if p.group >= 0 {
		return 0o660, p.group
	}
	return 0o600, -1
}

// listenUnix binds a Unix socket at path with the policy's mode and group
// and only then listens, so that no one connects while the mode is still
// the umask's. A stale socket file is replaced; a live one (another daemon
// answers there) is an error.
func (p privilegePolicy) listenUnix(path string) (*net.UnixListener, error) {
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("listen %s: %w", path, errSocketInUse)
	}
	_ = os.Remove(path)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // FileListener dups it
	mode, gid := p.socketMode()
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	if err == nil {
		err = os.Chmod(path, mode)
	}
	if err == nil && gid >= 0 {
		err = os.Lchown(path, -1, gid)
	}
	if err == nil {
		err = unix.Listen(fd, unix.SOMAXCONN)
	}
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ln, err := net.FileListener(f)
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("listen %s: %w", path, err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// errSocketInUse means another process answers on a socket path.
var errSocketInUse = errors.New("another daemon answers there")
