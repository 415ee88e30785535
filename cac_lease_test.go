package main

import (
	"testing"
	"time"
)

// TestCacLeases: the renewals a master keeps, and what they say about a
// conflict at a txid.
func TestCacLeases(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type add struct {
		ms   int
		upTo uint64
	}
	cases := []struct {
		name    string
		adds    []add
		prune   uint64         // 0: no prune
		before  map[uint64]int // conflict txid -> latest renewal that precedes it (ms), -1: none
		fresh   int
		renewed int // renewals kept
	}{
		{name: "none", before: map[uint64]int{5: -1}, fresh: -1},
		{name: "one", adds: []add{{100, 4}}, before: map[uint64]int{4: -1, 5: 100, 9: 100}, fresh: 100, renewed: 1},
		{name: "dominated: earlier and covering less", adds: []add{{200, 4}, {100, 6}},
			before: map[uint64]int{5: 200, 7: 200}, fresh: 200, renewed: 1},
		{name: "a later one covering less keeps both", adds: []add{{100, 4}, {200, 8}},
			before: map[uint64]int{5: 100, 9: 200, 4: -1}, fresh: 200, renewed: 2},
		{name: "the same twice", adds: []add{{100, 4}, {100, 4}}, before: map[uint64]int{5: 100}, fresh: 100, renewed: 1},
		{name: "prune keeps the latest at or below applied", adds: []add{{100, 4}, {200, 8}, {300, 12}}, prune: 10,
			before: map[uint64]int{11: 200, 13: 300}, fresh: 300, renewed: 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := newCacLeases()
			for _, a := range c.adds {
				l.add(cacRenewal{at: at(a.ms), upTo: a.upTo})
			}
			if c.prune != 0 {
				l.prune(c.prune)
			}
			for txid, want := range c.before {
				got := l.before(txid)
				if want < 0 && !got.IsZero() || want >= 0 && !got.Equal(at(want)) {
					t.Errorf("before(%d) = %v, want %d ms", txid, got.Sub(t0), want)
				}
			}
			if f := l.fresh(); c.fresh < 0 && !f.IsZero() || c.fresh >= 0 && !f.Equal(at(c.fresh)) {
				t.Errorf("fresh = %v, want %d ms", f.Sub(t0), c.fresh)
			}
			if len(l.renewals) != c.renewed {
				t.Errorf("%d renewals kept, want %d: %v", len(l.renewals), c.renewed, l.renewals)
			}
		})
	}
}
