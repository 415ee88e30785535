//go:build !dragonfly

package main

// The stand-in's device: a directory whose subdirectories are PFSs, each
// named by its label and holding its registration (pfs.json). A path that
// is a PFS directory stands for its device, the directory above it, as a
// mounted PFS stands for its device on DragonFly.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

type stubDevice struct{ dir string }

// OpenPFSDevice opens the PFS directory holding path: path itself, or
// the directory above it if path is a PFS.
func OpenPFSDevice(path string) (PFSDevice, error) {
	if path == "" {
		path = "."
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return stubDevice{dir: path}, nil // Create makes it
	case err != nil:
		return nil, fmt.Errorf("pfs device: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("pfs device %s: not a directory", path)
	}
	if _, err := os.Stat(filepath.Join(path, stubRegFile)); err == nil {
		path = filepath.Dir(filepath.Clean(path))
	}
	return stubDevice{dir: path}, nil
}

func (d stubDevice) Close() error { return nil }

// pfsDir is where the PFS named name lives. Names that are not one path
// element cannot be PFS directories.
func (d stubDevice) pfsDir(name string) (string, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") || len(name) > IocPFSNameMax {
		return "", fmt.Errorf("pfs name %q: %w", name, syscall.EINVAL)
	}
	return filepath.Join(d.dir, name), nil
}

func (d stubDevice) List() ([]PFSEntry, error) {
	ents, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("pfs device %s: %w", d.dir, err)
	}
	var out []PFSEntry
	for _, e := range ents { // sorted by name: our key order
		if !e.IsDir() {
			continue
		}
		info, err := readStubReg(filepath.Join(d.dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // not a PFS
		}
		if err != nil {
			return out, err
		}
		out = append(out, PFSEntry{Name: e.Name(), Type: info.Type, Clid: info.Clid, Fsid: info.Fsid})
	}
	return out, nil
}

func (d stubDevice) Lookup(name string) (PFSEntry, error) {
	dir, err := d.pfsDir(name)
	if err != nil {
		return PFSEntry{}, err
	}
	info, err := readStubReg(dir)
	if err != nil {
		return PFSEntry{}, err
	}
	return PFSEntry{Name: name, Type: info.Type, Clid: info.Clid, Fsid: info.Fsid}, nil
}

// Create makes the PFS's directory and registration. The directory is
// the PFS's label; its registration says so.
func (d stubDevice) Create(e PFSEntry) error {
	dir, err := d.pfsDir(e.Name)
	if err != nil {
		return err
	}
	if _, err := readStubReg(dir); err == nil {
		return fmt.Errorf("pfs %s: %w", e.Name, fs.ErrExist)
	}
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return fmt.Errorf("pfs device: %w", err)
	}
	return CreatePFS(dir, PFSInfo{Label: e.Name, Clid: e.Clid, Fsid: e.Fsid, Type: e.Type})
}

// Delete removes the PFS's directory and everything in it, as PFS_DELETE
// destroys a PFS; not while a leaf serves it.
func (d stubDevice) Delete(name string) error {
	dir, err := d.pfsDir(name)
	if err != nil {
		return err
	}
	info, err := readStubReg(dir)
	if err != nil {
		return err
	}
	pid, err := lockPidFile(filepath.Join(dir, "leaf-"+info.Fsid.String()+".pid"))
	if err != nil {
		return fmt.Errorf("pfs %s: %w (%v)", name, syscall.EBUSY, err)
	}
	pid.release()
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("pfs %s: %w", name, err)
	}
	return nil
}
