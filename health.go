package main

// Health: what `hammer2 status --check` decides from a daemon's status,
// for an init system or a monitor. A pure function of the status (and the
// time, for how recent a limit hit is), so the JSON and the check agree
// and the rules are tested without daemons.

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Health states, and the exit codes of `status --check`.
const (
	HealthOK         = "ok"          // exit 0
	HealthDegraded   = "degraded"    // exit 1, a line per reason
	HealthNotRunning = "not_running" // exit 2
)

// Health is a daemon's health: its state and, when degraded, one reason
// per line of `status --check`.
type Health struct {
	State   string   `json:"state"`
	Reasons []string `json:"reasons"`
}

// healthLimitWindow is how long a limit hit keeps a daemon degraded: long
// enough for a monitor polling each minute to see it, short enough that a
// daemon is healthy again once the offending peer is gone.
const healthLimitWindow = 5 * time.Minute

// checkCode is the exit code of `status --check` for h.
func (h Health) checkCode() int {
	switch h.State {
	case HealthOK:
		return 0
	case HealthDegraded:
		return 1
	}
	return 2
}

func newHealth(reasons []string) Health {
	if len(reasons) == 0 {
		return Health{State: HealthOK, Reasons: []string{}}
	}
	return Health{State: HealthDegraded, Reasons: reasons}
}

// leafHealth judges a leaf's status; nil: no leaf runs.
func leafHealth(st *LeafStatus, now time.Time) Health {
	if st == nil {
		return Health{State: HealthNotRunning, Reasons: []string{"leaf not running"}}
	}
	var rs []string
	if st.Kernel.State != DialUp {
		rs = append(rs, fmt.Sprintf("kernel not connected (%s)", st.Kernel.State))
	}
	if b := st.Backbone; b != nil && b.State != DialUp {
		rs = append(rs, "backbone "+b.Target+" down: "+downWhy(*b))
	}
	for _, r := range st.Remotes {
		switch {
		case r.State == DialUp:
		case len(r.Slots) > 0:
			rs = append(rs, fmt.Sprintf("REMOTE slot %s %s down: %s", joinInts(r.Slots), r.Target, downWhy(r)))
		case r.FromConfig:
			rs = append(rs, fmt.Sprintf("config target %s down: %s", r.Target, downWhy(r)))
		}
	}
	if q := st.Quorum; q != nil && !q.HasQuorum {
		rs = append(rs, fmt.Sprintf("no quorum: master %s is %s, leader %s, %d members", q.ID, q.State, q.Leader, len(q.Members)))
	}
	rs = append(rs, limitReasons(st.LimitHits, now)...)
	return newHealth(rs)
}

// serviceHealth judges a service's status; nil: no service runs.
func serviceHealth(st *ServiceStatus, now time.Time) Health {
	if st == nil {
		return Health{State: HealthNotRunning, Reasons: []string{"service not running"}}
	}
	var rs []string
	for _, a := range st.Autoconn {
		if a.State != DialUp {
			rs = append(rs, "autoconn target "+a.Target+" down: "+downWhy(a))
		}
	}
	for _, v := range st.Volconf {
		if v.Link.State != DialUp {
			rs = append(rs, fmt.Sprintf("REMOTE slot %d %s (from %s) down: %s", v.Slot, v.Path, v.Kernel, downWhy(v.Link)))
		}
	}
	rs = append(rs, limitReasons(st.LimitHits, now)...)
	return newHealth(rs)
}

func downWhy(ls LinkStatus) string {
	if ls.LastErr != "" {
		return ls.State + ": " + ls.LastErr
	}
	return ls.State
}

func joinInts(v []int) string {
	s := ""
	for i, n := range v {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprint(n)
	}
	return s
}

func limitReasons(hits []LimitHitStatus, now time.Time) []string {
	var rs []string
	for _, h := range hits {
		if now.Sub(h.Last) < healthLimitWindow {
			rs = append(rs, fmt.Sprintf("limit %s hit %d times, last %s ago", h.Limit, h.Count,
				now.Sub(h.Last).Round(time.Second)))
		}
	}
	return rs
}

// printHealth writes the reasons of a degraded or stopped daemon, one a
// line, prefixed with what was checked when more than one was.
func printHealth(w io.Writer, prefix string, h Health) {
	for _, r := range h.Reasons {
		fmt.Fprintln(w, prefix+r)
	}
}

// ---- limit hits ----

// LimitHitStatus is how often one limit closed a link or refused a peer,
// and when last.
type LimitHitStatus struct {
	Limit string    `json:"limit"` // the [limits] key
	Count uint64    `json:"count"`
	Last  time.Time `json:"last,omitzero"`
}

// limitHits counts limit hits by [limits] key. Owned by one daemon; safe
// for concurrent use (a link's reader records, status and metrics read).
// A nil *limitHits records nothing.
type limitHits struct {
	mu   sync.Mutex
	hits map[string]*LimitHitStatus // keys: the fixed [limits] names
}

func (lh *limitHits) hit(limit string, now time.Time) {
	if lh == nil {
		return
	}
	lh.mu.Lock()
	defer lh.mu.Unlock()
	if lh.hits == nil {
		lh.hits = map[string]*LimitHitStatus{}
	}
	h := lh.hits[limit]
	if h == nil {
		h = &LimitHitStatus{Limit: limit}
		lh.hits[limit] = h
	}
	h.Count++
	h.Last = now
}

// list is every limit hit so far, by name.
func (lh *limitHits) list() []LimitHitStatus {
	out := []LimitHitStatus{}
	if lh == nil {
		return out
	}
	lh.mu.Lock()
	for _, h := range lh.hits {
		out = append(out, *h)
	}
	lh.mu.Unlock()
	slices.SortFunc(out, func(a, b LimitHitStatus) int {
		switch {
		case a.Limit < b.Limit:
			return -1
		case a.Limit > b.Limit:
			return 1
		}
		return 0
	})
	return out
}
