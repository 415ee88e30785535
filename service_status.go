package main

// What `hammer2 status --service` shows of a running service: its links,
// with who is behind each (class, uid and pid, or key) and what each runs
// on, the kernel's links and the links its REMOTE slots asked for, the
// nodes it keeps links to, and how many spans it holds.

import (
	"cmp"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// ServiceStatus is a running service's state, as its control socket
// returns it.
type ServiceStatus struct {
	Pid      int                 `json:"pid"`
	Started  time.Time           `json:"started,omitzero"`
	TCP      string              `json:"tcp,omitempty"`
	Unix     string              `json:"unix,omitempty"`
	Listen   string              `json:"listen"`
	Links    []ServiceLinkStatus `json:"links"`
	Autoconn []LinkStatus        `json:"autoconn"`
	// Volconf are the links the kernels' REMOTE slots asked for.
	Volconf []ServiceVolconfStatus `json:"volconf"`
	// RemoteDir and RSAKey are DragonFly's rule for TCP links: where the
	// peers' <ip>.pub and <ip>.none are, and this node's RSA key ("" for
	// none).
	RemoteDir string `json:"remote_dir,omitempty"`
	RSAKey    string `json:"rsa_key,omitempty"`
	Spans     int    `json:"spans"`  // received and relayed
	Relays    int    `json:"relays"` // spans we opened on links
	// Nodes are the router's view: each PFS it knows, with the spans it
	// received of it and the relays it opened for it, as the shell's
	// `tree` shows them.
	Nodes []ServiceNodeStatus `json:"nodes"`
	// LimitHits are the limits that closed a link or refused a peer, how
	// often and when last (health.go).
	LimitHits []LimitHitStatus `json:"limit_hits"`
}

// ServiceVolconfStatus is one REMOTE slot a kernel link sent: the entry,
// and the state of the link the service keeps for it.
type ServiceVolconfStatus struct {
	Kernel  string     `json:"kernel"` // the kernel link's name, as in links
	MediaID UUID       `json:"media_id"`
	Slot    int        `json:"slot"`
	Path    string     `json:"path"`
	Label   string     `json:"label,omitempty"`
	Link    LinkStatus `json:"link"`
}

// ServiceNodeStatus is one node (PFS) the service's router knows.
type ServiceNodeStatus struct {
	PeerType  uint8  `json:"peer_type"` // its cluster: peer_type, peer_id (pfs_clid), peer_label
	PeerID    UUID   `json:"peer_id"`
	PeerLabel string `json:"peer_label"`
	PfsType   string `json:"pfs_type"`
	PfsID     UUID   `json:"pfs_id"`
	PfsLabel  string `json:"pfs_label"`
	// Active: withdrawn everywhere, waiting for the answers.
	Active bool               `json:"active,omitempty"`
	Links  []ServiceNodeLink  `json:"links"`  // received spans, best first
	Relays []ServiceNodeRelay `json:"relays"` // spans opened for it
}

// ServiceNodeLink is a span the service received of a node.
type ServiceNodeLink struct {
	Span uint64 `json:"span"`
	Dist uint32 `json:"dist"`
	Via  string `json:"via"` // the link's name, as in links
}

// ServiceNodeRelay is a span the service opened for a node on a link.
type ServiceNodeRelay struct {
	Relay uint64 `json:"relay"`
	Via   string `json:"via"`
}

// ServiceLinkStatus is one of the service's links.
type ServiceLinkStatus struct {
	Name    string    `json:"name"`
	Since   time.Time `json:"since,omitzero"`
	Class   string    `json:"class"`
	PeerUID *int      `json:"peer_uid,omitempty"`
	PeerPID *int      `json:"peer_pid,omitempty"`
	PeerKey string    `json:"peer_key,omitempty"`
	// Transport is "unix", "tcp" (plaintext, remote/<ip>.none),
	// "tcp+rsa" (DragonFly's RSA handshake and AES-256-GCM) or "quic".
	Transport string `json:"transport"`
	// Label is the peer's LNK_CONN label; Kernel says the peer is
	// DragonFly's kernel (no silence check on its link).
	Label    string `json:"label,omitempty"`
	Kernel   bool   `json:"kernel,omitempty"`
	Spans    int    `json:"spans"`         // relayed from this link
	Ignored  int    `json:"ignored_spans"` // an unprivileged link's, never relayed
	Relays   int    `json:"relays"`        // sent on it
	Circuits int    `json:"circuits"`
	BytesIn  uint64 `json:"bytes_in"`
	BytesOut uint64 `json:"bytes_out"`
}

// control answers one request to the service.
func (s *Service) control(req controlRequest) controlResponse {
	if req.Op == "metrics" {
		var resp controlResponse
		resp.Metrics, resp.Error = s.obs.textOrError()
		return resp
	}
	if req.Op != "status" {
		return controlResponse{Error: fmt.Sprintf("unknown op %q (a service answers status and metrics)", req.Op)}
	}
	st := s.Status()
	return controlResponse{Service: &st}
}

// Status snapshots the service.
func (s *Service) Status() ServiceStatus {
	st := ServiceStatus{Pid: os.Getpid(), Started: s.started, TCP: s.cfg.TCP, Unix: s.cfg.Unix, Listen: s.quicAddr(),
		Links: []ServiceLinkStatus{}, Autoconn: []LinkStatus{}, Volconf: []ServiceVolconfStatus{},
		RemoteDir: s.sec.remoteDir, RSAKey: s.sec.Fingerprint(), LimitHits: s.obs.hits().list()}
	type volconfRef struct {
		kernel string
		w      *volconfWorker
	}
	var vcs []volconfRef
	s.mu.Lock()
	for _, sl := range s.links {
		ls := ServiceLinkStatus{Name: sl.name, Since: sl.since, Class: sl.peer.Class.String(), PeerKey: sl.peer.Fingerprint,
			Transport: sl.transport, Label: sl.label, Kernel: sl.kernel,
			Spans: len(sl.spans), Ignored: sl.ignored, Relays: len(sl.relays), Circuits: sl.circuits,
			BytesIn: sl.link.BytesIn.Load(), BytesOut: sl.link.BytesOut.Load()}
		for _, w := range sl.volconf {
			vcs = append(vcs, volconfRef{sl.name, w})
		}
		if sl.peer.UID >= 0 {
			ls.PeerUID = new(sl.peer.UID)
		}
		if sl.peer.PID >= 0 {
			ls.PeerPID = new(sl.peer.PID)
		}
		st.Links = append(st.Links, ls)
		st.Relays += len(sl.relays)
	}
	st.Spans = len(s.spanTx)
	st.Nodes = s.nodesLocked()
	s.mu.Unlock()
	slices.SortFunc(st.Links, func(a, b ServiceLinkStatus) int { return a.Since.Compare(b.Since) })
	for _, d := range s.autoconn {
		st.Autoconn = append(st.Autoconn, dialStatus(d.State()))
	}
	for _, v := range vcs {
		st.Volconf = append(st.Volconf, ServiceVolconfStatus{Kernel: v.kernel, MediaID: v.w.key.media, Slot: int(v.w.key.index),
			Path: v.w.entry.Path, Label: v.w.entry.Label, Link: dialStatus(v.w.dialer.State())})
	}
	slices.SortFunc(st.Volconf, func(a, b ServiceVolconfStatus) int {
		return cmp.Or(strings.Compare(a.Kernel, b.Kernel), cmp.Compare(a.Slot, b.Slot))
	})
	return st
}

// nodesLocked is the router's view for status; s.mu is held.
func (s *Service) nodesLocked() []ServiceNodeStatus {
	nodes := []ServiceNodeStatus{}
	name := func(c connID) string {
		if sl := s.links[c]; sl != nil {
			return sl.name
		}
		return fmt.Sprintf("#%d (gone)", c)
	}
	s.router.Walk(func(n NodeView) {
		ns := ServiceNodeStatus{PeerType: n.PeerType, PeerID: n.PeerID, PeerLabel: n.PeerLabel, PfsType: pfsTypeName(n.PfsType),
			PfsID: n.PfsID, PfsLabel: n.PfsLabel, Active: n.Active, Links: []ServiceNodeLink{}, Relays: []ServiceNodeRelay{}}
		for _, l := range n.Links {
			ns.Links = append(ns.Links, ServiceNodeLink{Span: uint64(l.Span), Dist: l.Dist, Via: name(l.Conn)})
		}
		for _, r := range n.Relays {
			ns.Relays = append(ns.Relays, ServiceNodeRelay{Relay: uint64(r.Relay), Via: name(r.Conn)})
		}
		nodes = append(nodes, ns)
	})
	return nodes
}

// withoutCounters is st with the byte counters cleared, for telling
// whether anything else changed.
func (st ServiceStatus) withoutCounters() ServiceStatus {
	st.Links = slices.Clone(st.Links)
	for i := range st.Links {
		st.Links[i].BytesIn, st.Links[i].BytesOut = 0, 0
	}
	st.Volconf = slices.Clone(st.Volconf)
	for i := range st.Volconf {
		st.Volconf[i].Link.BytesIn, st.Volconf[i].Link.BytesOut = 0, 0
	}
	return st
}

// printServiceStatus writes a service's status for people.
func printServiceStatus(w io.Writer, st *ServiceStatus) {
	fmt.Fprintf(w, "service: pid %d, up %s, tcp %s, unix %s, quic %s; %d spans, %d relays\n",
		st.Pid, time.Since(st.Started).Round(time.Second), svcOrNone(st.TCP), svcOrNone(st.Unix), st.Listen, st.Spans, st.Relays)
	if st.TCP != "" {
		fmt.Fprintf(w, "tcp rule: remote_dir %s, rsa key %s\n", st.RemoteDir, svcOrNone(st.RSAKey))
	}
	for _, l := range st.Links {
		who := l.Transport + " " + l.Class
		if l.Kernel {
			who = "kernel (" + l.Label + ") " + who
		}
		switch {
		case l.PeerKey != "":
			who += " key " + l.PeerKey
		case l.PeerUID != nil:
			who += fmt.Sprintf(" uid %d", *l.PeerUID)
			if l.PeerPID != nil {
				who += fmt.Sprintf(" pid %d", *l.PeerPID)
			}
		}
		extra := ""
		if l.Ignored > 0 {
			extra = fmt.Sprintf(", %d spans not relayed", l.Ignored)
		}
		fmt.Fprintf(w, "  link %-28s %s: %d spans, %d relays, %d circuits%s, in %s out %s\n", l.Name, who,
			l.Spans, l.Relays, l.Circuits, extra, byteCount(l.BytesIn), byteCount(l.BytesOut))
	}
	for _, a := range st.Autoconn {
		fmt.Fprintf(w, "  autoconn  %s %s\n", a.Target, linkSummary(a))
	}
	for _, v := range st.Volconf {
		fmt.Fprintf(w, "  volconf   slot %d %s (from %s) %s\n", v.Slot, v.Path, v.Kernel, linkSummary(v.Link))
	}
	if len(st.Nodes) > 0 {
		fmt.Fprintln(w, "nodes:")
	}
	for _, n := range st.Nodes {
		fmt.Fprintf(w, "  node %-20s %-11s pfs_id %s cluster %s pfs_clid %s\n", n.PfsLabel, n.PfsType, n.PfsID,
			peerTypeName(n.PeerType), n.PeerID)
		for _, l := range n.Links {
			fmt.Fprintf(w, "    span %d dist %d via %s\n", l.Span, l.Dist, l.Via)
		}
		for _, r := range n.Relays {
			fmt.Fprintf(w, "    relay %d via %s\n", r.Relay, r.Via)
		}
	}
}

func svcOrNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "none"
	}
	return s
}
