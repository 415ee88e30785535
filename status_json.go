package main

// The documents `hammer2 status --json` prints (docs/STATUS.md): one
// schema for scripts, with its version at the top. Keys are snake_case,
// a list is [] when empty (a field that does not apply is left out, as a
// link's slots on the kernel link), a time never set is left out, and a
// duration is a number with its unit in the key (rtt_ms).

import "time"

// statusSchemaVersion is the schema's version: it changes when a field
// changes meaning or goes away; new fields may appear without it.
const statusSchemaVersion = 1

// leafStatusDoc is `hammer2 status --json` of leaves: one entry per PFS
// asked, in the order given. `status --watch --json` prints one a line,
// with its one PFS.
type leafStatusDoc struct {
	SchemaVersion int          `json:"schema_version"`
	PFS           []statusJSON `json:"pfs"`
}

// serviceStatusDoc is `hammer2 status --service --json`.
type serviceStatusDoc struct {
	SchemaVersion int            `json:"schema_version"`
	Health        Health         `json:"health"`
	Service       *ServiceStatus `json:"service,omitempty"`
}

// statusJSON is one PFS: its REMOTE slots (read from the PFS, whether a
// leaf runs or not), its health, and its leaf's status while one runs.
type statusJSON struct {
	Path    string       `json:"path"`
	Slots   []SlotStatus `json:"slots"`
	Health  Health       `json:"health"`
	Leaf    *LeafStatus  `json:"leaf,omitempty"`
	Running bool         `json:"leaf_running"`
	Error   string       `json:"leaf_error,omitempty"`
}

// SlotStatus is one used REMOTE slot, DragonFly's hammer2_volconf.
type SlotStatus struct {
	CopyID        uint8  `json:"copy_id"`
	Label         string `json:"label"`
	Path          string `json:"path"`
	Priority      uint8  `json:"priority"`
	PfsClid       UUID   `json:"pfs_clid"`
	RemotePfsType string `json:"remote_pfs_type"`
	InProg        uint8  `json:"in_prog"`
	ChainTo       uint8  `json:"chain_to"`
	ChainFrom     uint8  `json:"chain_from"`
	Flags         uint16 `json:"flags"`
	Error         uint8  `json:"error"`
}

func slotStatuses(vs []Volconf) []SlotStatus {
	out := make([]SlotStatus, 0, len(vs))
	for _, v := range vs {
		out = append(out, SlotStatus{CopyID: v.CopyID, Label: v.Label, Path: v.Path, Priority: v.Priority,
			PfsClid: v.PfsClid, RemotePfsType: pfsTypeName(v.RemotePfsType), InProg: v.InProg,
			ChainTo: v.ChainTo, ChainFrom: v.ChainFrom, Flags: v.Flags, Error: v.Error})
	}
	return out
}

// newStatusJSON is the entry of the PFS at path: slots as RemoteScan read
// them, st the leaf's status (nil: none answers, for lerr).
func newStatusJSON(path string, slots []Volconf, st *LeafStatus, lerr error) statusJSON {
	s := statusJSON{Path: path, Slots: slotStatuses(slots), Leaf: st, Running: st != nil}
	if lerr != nil {
		s.Error = lerr.Error()
	}
	s.Health = leafHealth(st, time.Now())
	return s
}
