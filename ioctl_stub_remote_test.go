//go:build !dragonfly

package main

import (
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// remoteStep is one REMOTE_ADD or REMOTE_DEL against a remoteTable.
type remoteStep struct {
	del      bool
	slot     int
	path     string
	wantSlot int   // add: the slot chosen
	wantErr  error // errno the step must wrap, nil for success
}

func remoteFullTable(from, to int) *remoteTable {
	var t remoteTable
	for i := from; i <= to; i++ {
		t[i] = Volconf{CopyID: uint8(i), Path: "span:full"}
	}
	return &t
}

func TestRemoteTableRules(t *testing.T) {
	t.Parallel()
	path63 := "span:" + strings.Repeat("x", VolconfPathMax-5)
	cases := []struct {
		name     string
		table    func() *remoteTable
		steps    []remoteStep
		wantList []int // copyids listed afterwards
	}{
		{
			name:     "auto add starts at slot 1",
			steps:    []remoteStep{{slot: -1, path: "span:a", wantSlot: 1}, {slot: -1, path: "span:b", wantSlot: 2}},
			wantList: []int{1, 2},
		},
		{
			name:     "auto add uses slot 255",
			table:    func() *remoteTable { return remoteFullTable(1, 254) },
			steps:    []remoteStep{{slot: -1, path: "span:last", wantSlot: 255}},
			wantList: remoteSeq(1, 255),
		},
		{
			name:     "auto add ENOSPC when 1..255 full even with slot 0 free",
			table:    func() *remoteTable { return remoteFullTable(1, 255) },
			steps:    []remoteStep{{slot: -1, path: "span:x", wantErr: syscall.ENOSPC}},
			wantList: remoteSeq(1, 255),
		},
		{
			name: "auto add fills a hole",
			steps: []remoteStep{
				{slot: -1, path: "span:a", wantSlot: 1}, {slot: -1, path: "span:b", wantSlot: 2},
				{del: true, slot: 1}, {slot: -1, path: "span:c", wantSlot: 1},
			},
			wantList: []int{1, 2},
		},
		{
			name: "explicit slot overwrites unconditionally",
			steps: []remoteStep{
				{slot: 7, path: "span:a", wantSlot: 7}, {slot: 7, path: "span:b", wantSlot: 7},
			},
			wantList: []int{7},
		},
		{
			name: "explicit slot 0 stores an empty entry",
			steps: []remoteStep{
				{slot: 0, path: "span:zero", wantSlot: 0}, {slot: -1, path: "span:a", wantSlot: 1},
			},
			wantList: []int{1},
		},
		{
			name: "add slot >= 256 is EINVAL",
			steps: []remoteStep{
				{slot: 256, path: "span:a", wantErr: syscall.EINVAL},
				{slot: 1 << 20, path: "span:a", wantErr: syscall.EINVAL},
			},
		},
		{
			name: "any negative slot searches",
			steps: []remoteStep{
				{slot: -5, path: "span:a", wantSlot: 1}, {del: true, slot: -9, path: "span:a"},
			},
		},
		{
			name: "del by path takes the lowest match",
			steps: []remoteStep{
				{slot: 3, path: "span:dup", wantSlot: 3}, {slot: 9, path: "span:dup", wantSlot: 9},
				{del: true, slot: -1, path: "span:dup"},
			},
			wantList: []int{9},
		},
		{
			name:     "del by path not found is ENOENT",
			steps:    []remoteStep{{slot: -1, path: "span:a", wantSlot: 1}, {del: true, slot: -1, path: "span:b", wantErr: syscall.ENOENT}},
			wantList: []int{1},
		},
		{
			name: "del by path skips deleted entries",
			steps: []remoteStep{
				{slot: -1, path: "span:a", wantSlot: 1}, {del: true, slot: -1, path: "span:a"},
				{del: true, slot: -1, path: "span:a", wantErr: syscall.ENOENT},
			},
		},
		{
			name: "del by path never looks at slot 0",
			table: func() *remoteTable {
				var t remoteTable
				t[0] = Volconf{CopyID: 9, Path: "span:zero"} // only a foreign image can hold this
				return &t
			},
			steps:    []remoteStep{{del: true, slot: -1, path: "span:zero", wantErr: syscall.ENOENT}},
			wantList: []int{9}, // listed with the copyid it holds
		},
		{
			name: "del path compared after NUL at byte 63",
			steps: []remoteStep{
				{slot: -1, path: path63, wantSlot: 1},
				{del: true, slot: -1, path: path63 + "-ignored-tail"},
			},
		},
		{
			name: "del explicit slot ignores path and empty slots",
			steps: []remoteStep{
				{slot: 4, path: "span:a", wantSlot: 4}, {del: true, slot: 4, path: "span:other"},
				{del: true, slot: 200}, {del: true, slot: 0},
			},
		},
		{
			name:  "del slot >= 256 is EINVAL",
			steps: []remoteStep{{del: true, slot: 256, wantErr: syscall.EINVAL}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tab := &remoteTable{}
			if tc.table != nil {
				tab = tc.table()
			}
			for i, s := range tc.steps {
				var err error
				if s.del {
					err = tab.del(s.slot, s.path)
				} else {
					var got Volconf
					got, err = tab.add(s.slot, Volconf{CopyID: 77, Path: s.path, Label: "l"})
					if err == nil && (int(got.CopyID) != s.wantSlot || got != tab[s.wantSlot]) {
						t.Errorf("step %d: add(%d) stored %+v in slot %d, want slot %d", i, s.slot, got, got.CopyID, s.wantSlot)
					}
				}
				if !errors.Is(err, s.wantErr) || (s.wantErr == nil) != (err == nil) {
					t.Fatalf("step %d: err = %v, want %v", i, err, s.wantErr)
				}
			}
			var slots []int
			for _, v := range tab.list() {
				slots = append(slots, int(v.CopyID))
			}
			if !slices.Equal(slots, tc.wantList) {
				t.Errorf("listed slots %v, want %v", slots, tc.wantList)
			}
		})
	}
}

func remoteSeq(from, to int) []int {
	var s []int
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func TestRemoteTableDelKeepsEntry(t *testing.T) {
	t.Parallel()
	var tab remoteTable
	v := Volconf{Path: "span:keep", Label: "lab", Flags: VolfEnabled, PfsClid: NewUUID()}
	if _, err := tab.add(-1, v); err != nil {
		t.Fatal(err)
	}
	if err := tab.del(-1, "span:keep"); err != nil {
		t.Fatal(err)
	}
	want := v
	want.CopyID = 0
	if tab[1] != want {
		t.Errorf("after del slot 1 = %+v, want %+v (only copyid zeroed)", tab[1], want)
	}
	// SCAN returns the raw slot, deleted or not.
	got, next, err := tab.scan(1)
	if err != nil || got != want || next != -1 {
		t.Errorf("scan(1) = %+v, %d, %v", got, next, err)
	}
}

func TestRemoteTableScan(t *testing.T) {
	t.Parallel()
	var tab remoteTable
	for _, s := range []int{2, 5, 255} {
		if _, err := tab.add(s, Volconf{Path: "span:s"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ id, next int }{{0, 2}, {1, 2}, {2, 5}, {5, 255}, {254, 255}, {255, -1}} {
		_, next, err := tab.scan(tc.id)
		if err != nil || next != tc.next {
			t.Errorf("scan(%d): nextid %d, err %v; want %d", tc.id, next, err, tc.next)
		}
	}
	for _, id := range []int{-1, 256} {
		if _, _, err := tab.scan(id); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("scan(%d): err %v, want EINVAL", id, err)
		}
	}
}

func TestRemoteErrorsNameSlotAndPath(t *testing.T) {
	t.Parallel()
	var tab remoteTable
	if _, err := tab.add(300, Volconf{}); err == nil || !strings.Contains(err.Error(), "300") {
		t.Errorf("add(300): %v does not name the slot", err)
	}
	if err := tab.del(-1, "span:nowhere"); err == nil || !strings.Contains(err.Error(), "span:nowhere") {
		t.Errorf("del: %v does not name the path", err)
	}
	long := strings.Repeat("p", VolconfPathMax+1)
	if err := checkRemotePath(long); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "path too long") {
		t.Errorf("checkRemotePath(64 bytes) = %v", err)
	}
	if err := checkRemotePath(long[:VolconfPathMax]); err != nil {
		t.Errorf("checkRemotePath(63 bytes) = %v", err)
	}
}
