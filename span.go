package main

// LNK_CONN / LNK_SPAN as a leaf runs them: on every cluster link we send
// one LNK_CONN, and once it is acknowledged one top-level LNK_SPAN for our
// PFS (dist 0, rnss 0). We answer the peer's LNK_CONN and keep a table of
// the spans the cluster advertises to us. A leaf never relays between its
// links and never changes dist or rnss.

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// spanEntry is one span a peer advertises to us.
type spanEntry struct {
	Link  string
	Span  LnkSpan
	Since time.Time
}

// spanTable is what the cluster advertises, over all links.
type spanTable struct {
	mu      sync.Mutex
	entries map[*Trans]*spanEntry
}

func newSpanTable() *spanTable { return &spanTable{entries: map[*Trans]*spanEntry{}} }

func (s *spanTable) add(t *Trans, link string, sp LnkSpan) {
	s.mu.Lock()
	s.entries[t] = &spanEntry{Link: link, Span: sp, Since: time.Now()}
	s.mu.Unlock()
}

func (s *spanTable) remove(t *Trans) {
	s.mu.Lock()
	delete(s.entries, t)
	s.mu.Unlock()
}

// list returns the spans ordered by cluster, node, then (dist, rnss).
func (s *spanTable) list() []spanEntry {
	s.mu.Lock()
	out := make([]spanEntry, 0, len(s.entries))
	for _, e := range s.entries {
		out = append(out, *e)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b spanEntry) int {
		return cmp.Or(
			cmp.Compare(a.Span.PeerID.String(), b.Span.PeerID.String()),
			cmp.Compare(a.Span.PeerLabelString(), b.Span.PeerLabelString()),
			cmp.Compare(a.Span.PfsID.String(), b.Span.PfsID.String()),
			cmp.Compare(a.Span.Dist, b.Span.Dist),
			cmp.Compare(a.Span.RNSS, b.Span.RNSS),
			cmp.Compare(a.Link, b.Link))
	})
	return out
}

// clusterLink is the leaf's side of one link to the cluster (a remote node
// or the backbone).
type clusterLink struct {
	leaf *Leaf
	link *Link
	name string
	quic *QuicLink // nil for the backbone

	mu       sync.Mutex
	conn     *Trans // our LNK_CONN
	span     *Trans // our LNK_SPAN
	peerConn *LnkConn
}

// runClusterLink starts the dmsg link over rw and opens our LNK_CONN.
func (l *Leaf) runClusterLink(rw io.ReadWriteCloser, name string, q *QuicLink) *clusterLink {
	c := &clusterLink{leaf: l, name: name, quic: q}
	l.mu.Lock()
	cfg := LinkConfig{Name: name, PingInterval: l.cfg.PingInterval.Duration, DeadAfter: l.cfg.DeadAfter.Duration,
		Handler: c.handle, Logger: l.log}
	l.mu.Unlock()
	c.link = NewLink(rw, cfg)
	conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1,
		PeerLabel: l.hostname + "/hammer2-leaf"}
	t, err := c.link.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: conn.Marshal()}, c.onOurConn)
	if err != nil {
		l.log.Warn("sending LNK_CONN", "link", name, "err", err)
		return c
	}
	c.mu.Lock()
	c.conn = t
	c.mu.Unlock()
	l.log.Info("cluster link up", "link", name)
	return c
}

// onOurConn sees the answers to our LNK_CONN: the first one lets us
// advertise; the peer closing it withdraws our span.
func (c *clusterLink) onOurConn(t *Trans, m *Msg) {
	if m.Cmd&FlagDelete != 0 {
		c.withdraw()
		return
	}
	if m.Cmd&FlagCreate == 0 || m.Error != ErrOK {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.span != nil {
		return
	}
	sp := c.leaf.ourSpan()
	st, err := c.link.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(*Trans, *Msg) {})
	if err != nil {
		c.leaf.log.Warn("advertising the PFS", "link", c.name, "err", err)
		return
	}
	c.span = st
}

func (c *clusterLink) withdraw() {
	c.mu.Lock()
	st := c.span
	c.span = nil
	c.mu.Unlock()
	if st != nil {
		_ = st.Close(ErrOK)
	}
}

// ourSpan is the LNK_SPAN advertising the PFS, as the kernel would send it.
func (l *Leaf) ourSpan() LnkSpan {
	sp := LnkSpan{PeerID: l.info.Clid, PfsID: l.info.Fsid, PfsType: l.info.Type,
		PeerType: PeerHammer2, ProtoVersion: SpanProto1}
	sp.SetLabels(l.info.Label, "")
	return sp
}

// handle takes the transactions the peer opens and its one-way messages.
func (c *clusterLink) handle(t *Trans, m *Msg) {
	if t.IsRoot() || m.Cmd&FlagCreate == 0 {
		return
	}
	switch t.Cmd() {
	case CmdLnkConn:
		pc, err := ParseLnkConn(m.Ext)
		if err != nil {
			c.leaf.log.Warn("bad LNK_CONN", "link", c.name, "err", err)
			_ = t.Close(ErrParam)
			return
		}
		c.mu.Lock()
		c.peerConn = &pc
		c.mu.Unlock()
		t.SetHandler(func(t *Trans, m *Msg) {
			if m.Cmd&FlagDelete != 0 {
				_ = t.Close(ErrOK)
			}
		})
		_ = t.Reply(ErrOK)
	case CmdLnkSpan:
		var sp LnkSpan
		if err := sp.Unmarshal(m.Ext); err != nil {
			c.leaf.log.Warn("bad LNK_SPAN", "link", c.name, "err", err)
			_ = t.Close(ErrParam)
			return
		}
		c.leaf.spans.add(t, c.name, sp)
		c.leaf.log.Debug("span received", "link", c.name, "label", sp.PeerLabelString(), "dist", sp.Dist)
		t.SetHandler(func(t *Trans, m *Msg) {
			if m.Cmd&FlagDelete != 0 {
				c.leaf.spans.remove(t)
				c.leaf.log.Debug("span withdrawn", "link", c.name, "label", sp.PeerLabelString())
				_ = t.Close(ErrOK)
			}
		})
		if m.Cmd&FlagDelete != 0 { // CREATE|DELETE: opened and withdrawn at once
			c.leaf.spans.remove(t)
			_ = t.Close(ErrOK)
			return
		}
		_ = t.Reply(ErrOK)
	}
	// Anything else is refused with NOSUPP by the link.
}

func (c *clusterLink) String() string { return fmt.Sprintf("cluster link %s", c.name) }
