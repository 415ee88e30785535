package main

// What `hammer2 status` shows: DragonFly's REMOTE table, extended with each
// link's live state, and the spans the cluster advertises to the leaf.

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// LeafStatus is a running leaf's state, as the control socket returns it
// and `status --json` prints it: the schema of docs/STATUS.md (snake_case
// keys, lists always present, absent times left out, durations in
// numbers with the unit in the key). A change to it that is not an
// addition bumps statusSchemaVersion.
type LeafStatus struct {
	Label    string       `json:"label"`
	Clid     UUID         `json:"pfs_clid"`
	Fsid     UUID         `json:"pfs_fsid"`
	Type     string       `json:"pfs_type"`
	Pid      int          `json:"pid"`
	Started  time.Time    `json:"started,omitzero"`
	Listen   string       `json:"listen"`
	NodeKey  string       `json:"node_key"`
	Kernel   LinkStatus   `json:"kernel"`
	Backbone *LinkStatus  `json:"backbone,omitempty"`
	Remotes  []LinkStatus `json:"remotes"`
	Inbound  []LinkStatus `json:"inbound"`
	Spans    []SpanStatus `json:"spans"`
	Quorum   *QuorumJSON  `json:"quorum,omitempty"`
	// Kernel cache states: what this leaf's kernel holds, as the leaf
	// records it (cache.db), master or not.
	KernelStates []LockJSON `json:"kernel_states"`
	// LimitHits are the limits that closed a link or refused a peer, how
	// often and when last (health.go).
	LimitHits []LimitHitStatus `json:"limit_hits"`
}

// QuorumJSON is the quorum group as this master sees it.
type QuorumJSON struct {
	ID        string   `json:"id"`
	Members   []string `json:"members"`  // voters
	Learners  []string `json:"learners"` // joined, catching up: no vote until promoted
	Leader    string   `json:"leader"`
	Term      uint64   `json:"term"`
	State     string   `json:"state"`
	LastTxid  uint64   `json:"last_txid"`
	Pending   int      `json:"pending"`
	HasQuorum bool     `json:"has_quorum"`
	// Locks are the cache states held through this leaf.
	Locks []LockJSON `json:"locks"`
}

// LockJSON is one cache state.
type LockJSON struct {
	Mode   string `json:"mode"`
	Domain string `json:"domain"`
	Lo     uint64 `json:"lo"`
	Hi     uint64 `json:"hi"`
	Txid   uint64 `json:"txid"`
	Holder string `json:"holder,omitempty"`
}

// LinkStatus is one link's live state.
type LinkStatus struct {
	Target     string     `json:"target,omitempty"`
	Slots      []int      `json:"slots,omitempty"` // REMOTE targets only
	FromConfig bool       `json:"from_config,omitempty"`
	State      string     `json:"state"`
	Class      string     `json:"class,omitempty"` // who is behind it (peer.go), while up
	PeerUID    *int       `json:"peer_uid,omitempty"`
	PeerPID    *int       `json:"peer_pid,omitempty"`
	Since      time.Time  `json:"since,omitzero"`
	NextTry    *time.Time `json:"next_try,omitempty"`
	LastErr    string     `json:"last_error,omitempty"`
	// RTTMs is the round trip in milliseconds, while measured.
	RTTMs    float64 `json:"rtt_ms,omitempty"`
	PeerName string  `json:"peer_name,omitempty"`
	PeerKey  string  `json:"peer_key,omitempty"`
	// Transport is what the link runs on while up: "quic", "tcp"
	// (plaintext, remote/<ip>.none) or "tcp+rsa".
	Transport string `json:"transport,omitempty"`
	BytesIn   uint64 `json:"bytes_in"`
	BytesOut  uint64 `json:"bytes_out"`
}

// SpanStatus is one span advertised to the leaf.
type SpanStatus struct {
	Label    string `json:"label"`
	PeerID   UUID   `json:"peer_id"`
	PfsID    UUID   `json:"pfs_id"`
	PfsType  string `json:"pfs_type"`
	PeerType uint8  `json:"peer_type"`
	Dist     uint32 `json:"dist"`
	Via      string `json:"via"`
}

// Status snapshots the leaf.
func (l *Leaf) Status() LeafStatus {
	st := LeafStatus{Label: l.info.Label, Clid: l.info.Clid, Fsid: l.info.Fsid, Type: pfsTypeName(l.info.Type),
		Pid: os.Getpid(), Started: l.started, Listen: l.cfg.Listen, NodeKey: l.node.Fingerprint(),
		Remotes: []LinkStatus{}, Inbound: []LinkStatus{}, Spans: []SpanStatus{}, KernelStates: []LockJSON{},
		LimitHits: l.obs.hits().list()}
	if st.Listen != "none" {
		st.Listen = l.node.Addr().String()
	}
	l.mu.Lock()
	k, kup, bb := l.kernel, l.kernelUp, l.backbone
	inbound := make([]*clusterLink, 0, len(l.inbound))
	for c := range l.inbound {
		inbound = append(inbound, c)
	}
	l.mu.Unlock()
	st.Kernel = LinkStatus{State: "waiting"}
	if k != nil {
		st.Kernel = LinkStatus{State: DialUp, Since: kup}
		fillLink(&st.Kernel, k, nil)
	}
	if bb != nil {
		ds := bb.snapshot()
		ls := dialStatus(ds)
		if c := bb.current(); c != nil {
			fillLink(&ls, c.link, nil)
		}
		st.Backbone = &ls
	}
	for _, t := range l.snapshotTargets() {
		ls := dialStatus(t.dialer.State())
		ls.Slots, ls.FromConfig = t.slots, t.fromConfig
		if t.link != nil {
			fillLink(&ls, t.link.link, t.link.quic)
			select {
			case <-t.link.link.Heard():
			default:
				// Dialed, but the peer has said nothing yet: not up.
				ls.State = DialConnecting
			}
		}
		st.Remotes = append(st.Remotes, ls)
	}
	for _, c := range inbound {
		ls := LinkStatus{Target: c.quic.RemoteAddr().String(), State: DialUp, Since: c.quic.Since()}
		fillLink(&ls, c.link, c.quic)
		st.Inbound = append(st.Inbound, ls)
	}
	if l.quorum != nil {
		q := l.quorum.Status()
		qj := &QuorumJSON{ID: fmt.Sprintf("%x", q.ID), Leader: fmt.Sprintf("%x", q.Leader), Term: q.Term,
			State: q.State, LastTxid: q.LastTxid, Pending: q.Pending, HasQuorum: q.HasQuorum,
			Members: []string{}, Learners: []string{}, Locks: []LockJSON{}}
		for _, m := range q.Members {
			qj.Members = append(qj.Members, fmt.Sprintf("%x", m))
		}
		for _, m := range q.Learners {
			qj.Learners = append(qj.Learners, fmt.Sprintf("%x", m))
		}
		for _, h := range l.quorum.Holdings() {
			qj.Locks = append(qj.Locks, LockJSON{Mode: h.Mode.String(), Domain: h.Domain.String(), Lo: h.Lo, Hi: h.Hi, Txid: h.Txid})
		}
		st.Quorum = qj
	}
	if hs, err := l.cstore.list(); err == nil {
		for _, h := range hs {
			st.KernelStates = append(st.KernelStates, LockJSON{Mode: h.Mode.String(), Domain: h.Domain.String(),
				Lo: h.Lo, Hi: h.Hi, Txid: h.Txid, Holder: h.Holder})
		}
	}
	for _, e := range l.spans.list() {
		st.Spans = append(st.Spans, SpanStatus{Label: e.Span.PeerLabelString(), PeerID: e.Span.PeerID,
			PfsID: e.Span.PfsID, PfsType: pfsTypeName(e.Span.PfsType), PeerType: e.Span.PeerType,
			Dist: e.Span.Dist, Via: e.Link})
	}
	return st
}

// withoutCounters is st with the fields that change on every message
// (bytes, RTT) cleared, for telling whether anything else changed.
func (st LeafStatus) withoutCounters() LeafStatus {
	clear := func(ls *LinkStatus) {
		ls.BytesIn, ls.BytesOut, ls.RTTMs = 0, 0, 0
	}
	clear(&st.Kernel)
	if st.Backbone != nil {
		b := *st.Backbone
		clear(&b)
		st.Backbone = &b
	}
	st.Remotes, st.Inbound = slices.Clone(st.Remotes), slices.Clone(st.Inbound)
	for i := range st.Remotes {
		clear(&st.Remotes[i])
	}
	for i := range st.Inbound {
		clear(&st.Inbound[i])
	}
	return st
}

func dialStatus(ds DialState) LinkStatus {
	ls := LinkStatus{Target: ds.Addr, State: ds.State, Since: ds.Since, LastErr: ds.LastErr, PeerName: ds.Peer,
		Transport: ds.Transport}
	if !ds.NextTry.IsZero() {
		nt := ds.NextTry
		ls.NextTry = &nt
	}
	return ls
}

func fillLink(ls *LinkStatus, k *Link, q *QuicLink) {
	ls.BytesIn, ls.BytesOut = k.BytesIn.Load(), k.BytesOut.Load()
	p := k.Peer()
	ls.Class = p.Class.String()
	if p.UID >= 0 {
		ls.PeerUID = new(p.UID)
	}
	if p.PID >= 0 {
		ls.PeerPID = new(p.PID)
	}
	if rtt := k.RTT(); rtt > 0 {
		ls.RTTMs = durationMs(rtt)
	}
	if p.Fingerprint != "" {
		ls.PeerKey = p.Fingerprint // a TCP peer's RSA key (QUIC's is set below)
	}
	if q != nil {
		ls.PeerName, ls.PeerKey = q.PeerName(), q.PeerFingerprint()
		if s := q.Stats(); s.RTT > 0 {
			ls.RTTMs = durationMs(s.RTT)
		}
	}
}

// printStatus writes DragonFly's REMOTE table (`%5d %-15s ---.%02x %s`),
// each row followed by its link's state when a leaf runs, then the other
// links and the spans.
func printStatus(w io.Writer, slots []Volconf, st *LeafStatus, notRunning error) {
	bySlot := map[int]LinkStatus{}
	if st != nil {
		for _, r := range st.Remotes {
			for _, s := range r.Slots {
				bySlot[s] = r
			}
		}
	}
	if len(slots) == 0 {
		fmt.Fprintln(w, "No linkages found")
	} else {
		fmt.Fprintln(w, "CPYID LABEL           STATUS PATH")
		for _, v := range slots {
			line := fmt.Sprintf("%5d %-15s ---.%02x %s", v.CopyID, v.Label, v.Priority, v.Path)
			if ls, ok := bySlot[int(v.CopyID)]; ok {
				line += "  " + linkSummary(ls)
			} else if st != nil {
				line += "  (not a span: target)"
			}
			fmt.Fprintln(w, line)
		}
	}
	if st == nil {
		fmt.Fprintf(w, "leaf: not running (%v)\n", notRunning)
		return
	}
	fmt.Fprintf(w, "leaf: pid %d, PFS %s (%s) pfs_clid %s pfs_fsid %s, listen %s, key %s\n",
		st.Pid, st.Label, st.Type, st.Clid, st.Fsid, st.Listen, st.NodeKey)
	fmt.Fprintf(w, "  kernel    %s\n", linkSummary(st.Kernel))
	if st.Backbone != nil {
		fmt.Fprintf(w, "  backbone  %s %s\n", st.Backbone.Target, linkSummary(*st.Backbone))
	}
	for _, r := range st.Remotes {
		if r.FromConfig && len(r.Slots) == 0 {
			fmt.Fprintf(w, "  config    %s %s\n", r.Target, linkSummary(r))
		}
	}
	for _, r := range st.Inbound {
		fmt.Fprintf(w, "  inbound   %s %s\n", r.Target, linkSummary(r))
	}
	if q := st.Quorum; q != nil {
		learners := ""
		if len(q.Learners) > 0 {
			learners = ", learners " + strings.Join(q.Learners, " ")
		}
		fmt.Fprintf(w, "quorum: master %s (%s), leader %s, term %d, last txid %d, members %s%s, quorum %v\n",
			q.ID, q.State, q.Leader, q.Term, q.LastTxid, strings.Join(q.Members, " "), learners, q.HasQuorum)
		for _, h := range q.Locks {
			fmt.Fprintf(w, "  lock %-9s %-6s %d-%d txid %d\n", h.Mode, h.Domain, h.Lo, h.Hi, h.Txid)
		}
	}
	if st.Quorum == nil {
		for _, h := range st.KernelStates {
			fmt.Fprintf(w, "  cache %-9s %-6s %d-%d txid %d (through a master)\n", h.Mode, h.Domain, h.Lo, h.Hi, h.Txid)
		}
	}
	printSpans(w, st.Spans)
}

// printSpans writes the spans as a tree: per cluster, per node (PFS), per
// link. A cluster is its pfs_clid, whatever each copy is named: for the
// leaf, PFSs sharing a pfs_clid are one cluster. (Relays group by label as
// well, as libdmsg does; that only decides what is relayed.)
func printSpans(w io.Writer, spans []SpanStatus) {
	if len(spans) == 0 {
		return
	}
	spans = slices.Clone(spans)
	slices.SortStableFunc(spans, func(a, b SpanStatus) int {
		return cmp.Or(cmp.Compare(a.PeerType, b.PeerType), bytes.Compare(a.PeerID[:], b.PeerID[:]),
			bytes.Compare(a.PfsID[:], b.PfsID[:]), cmp.Compare(a.Dist, b.Dist))
	})
	fmt.Fprintln(w, "spans:")
	var cluster, node string
	for _, s := range spans {
		if c := fmt.Sprintf("%d %s", s.PeerType, s.PeerID); c != cluster {
			cluster, node = c, ""
			fmt.Fprintf(w, "  cluster %s pfs_clid %s\n", peerTypeName(s.PeerType), s.PeerID)
		}
		if n := s.PfsID.String(); n != node {
			node = n
			fmt.Fprintf(w, "    node %-20s %-11s pfs_id %s\n", s.Label, s.PfsType, s.PfsID)
		}
		fmt.Fprintf(w, "      dist %d via %s\n", s.Dist, s.Via)
	}
}

func peerTypeName(t uint8) string {
	switch t {
	case PeerNone:
		return "NONE"
	case PeerCluster:
		return "CLUSTER"
	case PeerBlock:
		return "BLOCK"
	case PeerHammer2:
		return "HAMMER2"
	case PeerClient:
		return "CLIENT"
	}
	return "?PEERTYPE?"
}

func linkSummary(ls LinkStatus) string {
	var b strings.Builder
	b.WriteString(ls.State)
	switch ls.State {
	case DialUp:
		if ls.Transport != "" {
			fmt.Fprintf(&b, " %s", ls.Transport)
		}
		if ls.Class != "" {
			fmt.Fprintf(&b, " %s", ls.Class)
			if ls.PeerUID != nil {
				fmt.Fprintf(&b, " uid %d", *ls.PeerUID)
			}
			if ls.PeerPID != nil {
				fmt.Fprintf(&b, " pid %d", *ls.PeerPID)
			}
		}
		if ls.RTTMs > 0 {
			fmt.Fprintf(&b, " rtt %s", msDuration(ls.RTTMs))
		}
		if ls.PeerKey != "" {
			fmt.Fprintf(&b, " key %s", ls.PeerKey)
			if ls.PeerName != "" {
				fmt.Fprintf(&b, " (%s)", ls.PeerName)
			}
		}
		fmt.Fprintf(&b, " in %s out %s", byteCount(ls.BytesIn), byteCount(ls.BytesOut))
	case DialBackoff, DialRefused:
		if ls.NextTry != nil {
			fmt.Fprintf(&b, " next try in %s", time.Until(*ls.NextTry).Round(100*time.Millisecond))
		}
		if ls.LastErr != "" {
			fmt.Fprintf(&b, ": %s", ls.LastErr)
		}
	}
	return b.String()
}

// durationMs is d in milliseconds to the microsecond, as status --json
// gives durations (a number, the unit in the key).
func durationMs(d time.Duration) float64 {
	return float64(d.Round(time.Microsecond).Microseconds()) / 1000
}

// msDuration is durationMs undone, for people.
func msDuration(ms float64) time.Duration {
	return (time.Duration(ms*1000) * time.Microsecond).Round(time.Microsecond)
}

func byteCount(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
