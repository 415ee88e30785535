//go:build !dragonfly

package main

// The stand-in PFS's REMOTE table: a device's copyinfo[] with the
// kernel's REMOTE_* rules, so that the stand-in behaves exactly as the
// kernel does (on DragonFly the kernel itself keeps the table).

import (
	"fmt"
	"strings"
	"syscall"
)

// remoteTable is a device's copyinfo[] with the kernel's REMOTE_* rules.
type remoteTable [RemoteSlots]Volconf

// scan returns slot copyid as stored (even if empty) and the next slot
// above it in use, or -1, as REMOTE_SCAN does.
func (t *remoteTable) scan(copyid int) (Volconf, int, error) {
	if copyid < 0 || copyid >= RemoteSlots {
		return Volconf{}, -1, fmt.Errorf("remote scan: slot %d outside 0..%d: %w", copyid, RemoteSlots-1, syscall.EINVAL)
	}
	next := -1
	for i := copyid + 1; i < RemoteSlots; i++ {
		if t[i].CopyID != 0 {
			next = i
			break
		}
	}
	return t[copyid], next, nil
}

// list walks the table the way `hammer2 status` does: from slot 0 along
// nextid, keeping the slots in use.
func (t *remoteTable) list() []Volconf {
	var out []Volconf
	for id := 0; id >= 0; {
		v, next, err := t.scan(id)
		if err != nil {
			break // unreachable: ids come from scan itself
		}
		if v.CopyID != 0 {
			out = append(out, v)
		}
		id = next
	}
	return out
}

// add stores v as REMOTE_ADD does and returns the stored entry.
func (t *remoteTable) add(slot int, v Volconf) (Volconf, error) {
	if err := checkRemoteSlot("add", slot); err != nil {
		return Volconf{}, err
	}
	if slot < 0 {
		// Slot 255 ("local media") is deliberately not skipped: the
		// kernel's search does not skip it either.
		slot = -1
		for i := 1; i < RemoteSlots; i++ {
			if t[i].CopyID == 0 {
				slot = i
				break
			}
		}
		if slot < 0 {
			return Volconf{}, fmt.Errorf("remote add %q: no free slot in 1..%d: %w", v.Path, RemoteSlots-1, syscall.ENOSPC)
		}
	}
	// Slot 0 included: the entry then reads as empty, like the kernel's.
	v.CopyID = uint8(slot)
	v.Label = volconfField(v.Label, VolconfLabMax)
	v.Path = volconfField(v.Path, VolconfPathMax)
	t[slot] = v
	return v, nil
}

// del empties a slot as REMOTE_DEL does.
func (t *remoteTable) del(slot int, path string) error {
	if err := checkRemoteSlot("del", slot); err != nil {
		return err
	}
	if slot < 0 {
		path = volconfField(path, VolconfPathMax)
		for i := 1; i < RemoteSlots; i++ {
			if t[i].CopyID != 0 && volconfField(t[i].Path, VolconfPathMax) == path {
				slot = i
				break
			}
		}
		if slot < 0 {
			return fmt.Errorf("remote del: no slot in use with path %q: %w", path, syscall.ENOENT)
		}
	}
	// The rest of the entry stays on media, as the kernel leaves it.
	t[slot].CopyID = 0
	return nil
}

// volconfField is s as a NUL-terminated field of n+1 bytes reads back:
// cut at n bytes (the kernel forces NUL there) and at the first NUL, as
// the stand-in keeps what DragonFly's ioctl would.
func volconfField(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return s
}
