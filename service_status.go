package main

// What `hammer2 status --service` shows of a running service: its links,
// with who is behind each (class, uid and pid, or key), the nodes it keeps
// links to, and how many spans it holds.

import (
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
	Started  time.Time           `json:"started"`
	TCP      string              `json:"tcp,omitempty"`
	Unix     string              `json:"unix,omitempty"`
	Listen   string              `json:"listen"`
	Links    []ServiceLinkStatus `json:"links"`
	Autoconn []LinkStatus        `json:"autoconn"`
	Spans    int                 `json:"spans"`  // received and relayed
	Relays   int                 `json:"relays"` // spans we opened on links
}

// ServiceLinkStatus is one of the service's links.
type ServiceLinkStatus struct {
	Name     string    `json:"name"`
	Since    time.Time `json:"since"`
	Class    string    `json:"class"`
	PeerUID  *int      `json:"peer_uid,omitempty"`
	PeerPID  *int      `json:"peer_pid,omitempty"`
	PeerKey  string    `json:"peer_key,omitempty"`
	Spans    int       `json:"spans"`         // relayed from this link
	Ignored  int       `json:"ignored_spans"` // an unprivileged link's, never relayed
	Relays   int       `json:"relays"`        // sent on it
	Circuits int       `json:"circuits"`
	BytesIn  uint64    `json:"bytes_in"`
	BytesOut uint64    `json:"bytes_out"`
}

// control answers one request to the service.
func (s *Service) control(req controlRequest) controlResponse {
	if req.Op != "status" {
		return controlResponse{Error: fmt.Sprintf("unknown op %q (a service answers status)", req.Op)}
	}
	st := s.Status()
	return controlResponse{Service: &st}
}

// Status snapshots the service.
func (s *Service) Status() ServiceStatus {
	st := ServiceStatus{Pid: os.Getpid(), Started: s.started, TCP: s.cfg.TCP, Unix: s.cfg.Unix, Listen: s.quicAddr(),
		Links: []ServiceLinkStatus{}, Autoconn: []LinkStatus{}}
	s.mu.Lock()
	for _, sl := range s.links {
		ls := ServiceLinkStatus{Name: sl.name, Since: sl.since, Class: sl.peer.Class.String(), PeerKey: sl.peer.Fingerprint,
			Spans: len(sl.spans), Ignored: sl.ignored, Relays: len(sl.relays), Circuits: sl.circuits,
			BytesIn: sl.link.BytesIn.Load(), BytesOut: sl.link.BytesOut.Load()}
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
	s.mu.Unlock()
	slices.SortFunc(st.Links, func(a, b ServiceLinkStatus) int { return a.Since.Compare(b.Since) })
	for _, d := range s.autoconn {
		st.Autoconn = append(st.Autoconn, dialStatus(d.State()))
	}
	return st
}

// printServiceStatus writes a service's status for people.
func printServiceStatus(w io.Writer, st *ServiceStatus) {
	fmt.Fprintf(w, "service: pid %d, up %s, tcp %s, unix %s, quic %s; %d spans, %d relays\n",
		st.Pid, time.Since(st.Started).Round(time.Second), svcOrNone(st.TCP), svcOrNone(st.Unix), st.Listen, st.Spans, st.Relays)
	for _, l := range st.Links {
		who := l.Class
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
}

func svcOrNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "none"
	}
	return s
}
