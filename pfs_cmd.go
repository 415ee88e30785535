package main

// PFS management as DragonFly's hammer2 names it: pfs-create, pfs-list,
// pfs-clid, pfs-fsid, pfs-delete, with its output. They act on the device
// of the -s path (a mounted PFS on DragonFly; off DragonFly a directory of
// PFS directories, or a PFS directory standing for the one above it).

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// pfsTypeByName are the types pfs-create takes with -t, as DragonFly's.
var pfsTypeByName = map[string]uint8{
	"CACHE": PFSCache, "DUMMY": PFSDummy, "SLAVE": PFSSlave, "SOFT_SLAVE": PFSSoftSlave,
	"SOFT_MASTER": PFSSoftMaster, "MASTER": PFSMaster,
}

// PfsCreateCmd is `hammer2 [-t type] [-u pfs_clid] pfs-create <label>`.
type PfsCreateCmd struct {
	Label string `arg:"" help:"The new PFS's name (off DragonFly, also its directory under the -s path)."`
}

func (c *PfsCreateCmd) Run(env *Env) error {
	typ := uint8(PFSNone)
	if env.Type != "" {
		t, ok := pfsTypeByName[strings.ToUpper(env.Type)]
		if !ok {
			return fmt.Errorf("pfs-create: -t %s: not one of CACHE, DUMMY, SLAVE, SOFT_SLAVE, SOFT_MASTER, MASTER", env.Type)
		}
		typ = t
	}
	e := PFSEntry{Name: c.Label, Type: typ, Fsid: NewUUID()}
	if env.UUID != "" {
		u, err := ParseUUID(env.UUID)
		if err != nil {
			return fmt.Errorf("pfs_create: badly formed uuid: %w", err)
		}
		e.Clid = u
	} else {
		e.Clid = NewUUID()
	}
	// As DragonFly: a new cluster's first PFS is its MASTER; a PFS
	// joining a cluster (-u) is a SLAVE unless told otherwise, since a new
	// master must be added as a slave and upgraded once in sync.
	if e.Type == PFSNone {
		e.Type = PFSMaster
		if env.UUID != "" {
			e.Type = PFSSlave
		}
	}
	dev, err := OpenPFSDevice(env.pfsPath())
	if err != nil {
		return err
	}
	defer dev.Close()
	if err := dev.Create(e); err != nil {
		if errors.Is(err, fs.ErrExist) {
			fmt.Fprintf(env.Stderr, "NOTE: Typically the same name is used for cluster elements on different mounts,\n"+
				"      but cluster elements on the same mount require unique names.\n")
			return fmt.Errorf("pfs-create %s: already present", c.Label)
		}
		return fmt.Errorf("pfs-create %s: %w", c.Label, err)
	}
	return nil
}

// PfsListCmd is `hammer2 pfs-list [path...]`.
type PfsListCmd struct {
	Paths []string `arg:"" optional:"" name:"path" help:"Devices (mounted PFSs, or directories of PFSs) to list; default -s or \".\"."`
}

func (c *PfsListCmd) Run(env *Env) error {
	paths := c.Paths
	if len(paths) == 0 {
		paths = []string{env.pfsPath()}
	}
	var firstErr error
	for i, p := range paths {
		dev, err := OpenPFSDevice(p)
		if err != nil {
			firstErr = cmp0(firstErr, err)
			continue
		}
		es, err := dev.List()
		dev.Close()
		if i > 0 {
			fmt.Fprintln(env.Stdout)
		}
		for j, e := range es {
			if j == 0 {
				fmt.Fprintf(env.Stdout, "Type        ClusterId (pfs_clid)                 Labels on %s\n", p)
			}
			fmt.Fprintf(env.Stdout, "%s%s %s\n", pfsListType(e), e.Clid, e.Name)
		}
		if err != nil {
			firstErr = cmp0(firstErr, fmt.Errorf("pfs-list %s: %w", p, err))
		}
	}
	return firstErr
}

// pfsListType is pfs-list's 12-column type field.
func pfsListType(e PFSEntry) string {
	name := ""
	switch e.Type {
	case PFSNone:
		name = "NONE"
	case PFSCache:
		name = "CACHE"
	case PFSSlave:
		name = "SLAVE"
	case PFSSoftSlave:
		name = "SOFT_SLAVE"
	case PFSSoftMaster:
		name = "SOFT_MASTER"
	case PFSMaster:
		switch e.Subtype {
		case 0:
			name = "MASTER"
		case 1:
			name = "SNAPSHOT"
		case 2:
			name = "AUTOSNAP"
		default:
			return "MASTER(sub?)"
		}
	default:
		name = fmt.Sprintf("%02x", e.Type)
	}
	return fmt.Sprintf("%-12s", name)
}

func cmp0(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// PfsClidCmd is `hammer2 pfs-clid <label>`: the PFS's cluster id.
type PfsClidCmd struct {
	Label string `arg:"" help:"The PFS's name."`
}

func (c *PfsClidCmd) Run(env *Env) error { return printPFSID(env, c.Label, false) }

// PfsFsidCmd is `hammer2 pfs-fsid <label>`: the PFS's own id.
type PfsFsidCmd struct {
	Label string `arg:"" help:"The PFS's name."`
}

func (c *PfsFsidCmd) Run(env *Env) error { return printPFSID(env, c.Label, true) }

func printPFSID(env *Env, label string, fsid bool) error {
	dev, err := OpenPFSDevice(env.pfsPath())
	if err != nil {
		return err
	}
	defer dev.Close()
	e, err := dev.Lookup(label)
	if err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	id := e.Clid
	if fsid {
		id = e.Fsid
	}
	fmt.Fprintln(env.Stdout, id)
	return nil
}

// PfsDeleteCmd is `hammer2 pfs-delete <label>...`.
type PfsDeleteCmd struct {
	Labels []string `arg:"" name:"label" help:"The PFSs to destroy, with everything they hold."`
}

func (c *PfsDeleteCmd) Run(env *Env) error {
	dev, err := OpenPFSDevice(env.pfsPath())
	if err != nil {
		return err
	}
	defer dev.Close()
	failed := 0
	for _, l := range c.Labels {
		if err := dev.Delete(l); err != nil {
			fmt.Fprintf(env.Stdout, "hammer2: pfs_delete(%s): %v\n", l, err)
			failed++
			continue
		}
		fmt.Fprintf(env.Stdout, "hammer2: pfs_delete(%s): SUCCESS\n", l)
	}
	if failed > 0 {
		return fmt.Errorf("pfs-delete: %d of %d failed", failed, len(c.Labels))
	}
	return nil
}
