package main

// The collectors of a leaf and of a service: what they read at scrape
// time (metrics.go has the names).

import (
	"github.com/prometheus/client_golang/prometheus"
)

// leafCollector reads a leaf's state for a scrape.
type leafCollector struct {
	l *Leaf
	d *metricDescs
}

func newLeafCollector(l *Leaf) leafCollector { return leafCollector{l: l, d: newMetricDescs()} }

func (c leafCollector) Describe(ch chan<- *prometheus.Desc) { c.d.describe(ch) }

func (c leafCollector) Collect(ch chan<- prometheus.Metric) {
	l, d := c.l, c.d
	c.d.emitLinks(ch, l.metricLinks())
	l.mu.Lock()
	kernelUp := l.kernel != nil
	l.mu.Unlock()
	ch <- gauge(d.kernelUp, b2f(kernelUp))
	l.spans.mu.Lock()
	nspans := len(l.spans.entries)
	l.spans.mu.Unlock()
	ch <- gauge(d.spans, float64(nspans))
	ch <- counter(d.spanUpdates, l.spans.updates.Load())
	d.emitLimits(ch, l.obs)
	if hs, err := l.cstore.list(); err == nil {
		ch <- gauge(d.cacHeld, float64(len(hs)), "kernel")
	}
	if l.quorum == nil {
		return
	}
	q := l.quorum.Status()
	ch <- gauge(d.qLeader, b2f(q.ID != 0 && q.Leader == q.ID))
	ch <- gauge(d.qHasLeader, b2f(q.Leader != 0))
	ch <- gauge(d.qHasQuorum, b2f(q.HasQuorum))
	ch <- gauge(d.qTerm, float64(q.Term))
	ch <- gauge(d.qCommit, float64(q.Commit))
	ch <- gauge(d.qApplied, float64(q.LastTxid))
	ch <- gauge(d.qPending, float64(q.Pending))
	ch <- gauge(d.qMembers, float64(len(q.Members)))
	ch <- gauge(d.qLearners, float64(len(q.Learners)))
	ch <- counter(d.qProposals, l.obs.proposals.Load())
	ch <- counter(d.qProposalsFailed, l.obs.proposalsFailed.Load())
	if l.qstore != nil {
		ch <- gauge(d.qSnapshot, float64(l.qstore.marks().snap.index))
	}
	ch <- counter(d.cacGrants, l.obs.cacGrants.Load())
	ch <- counter(d.cacConflicts, l.obs.cacConflicts.Load())
	ch <- counter(d.cacRevocations, l.obs.cacRevocations.Load())
	ch <- counter(d.cacExpiries, l.obs.cacExpiries.Load())
	ch <- gauge(d.cacHeld, float64(len(l.quorum.Holdings())), "group")
}

// metricLinks are the leaf's links as status shows them: the kernel's,
// the backbone, the REMOTE and configured targets, the inbound links.
func (l *Leaf) metricLinks() []metricLink {
	l.mu.Lock()
	k, bb := l.kernel, l.backbone
	inbound := make([]*clusterLink, 0, len(l.inbound))
	for c := range l.inbound {
		inbound = append(inbound, c)
	}
	l.mu.Unlock()
	var out []metricLink
	if k != nil {
		out = append(out, metricLink{name: "kernel", kind: "kernel", class: k.Peer().Class.String(), state: DialUp,
			transport: "unix", link: k})
	} else {
		out = append(out, metricLink{name: "kernel", kind: "kernel", state: "waiting"})
	}
	if bb != nil {
		ds := bb.snapshot()
		ml := metricLink{name: ds.Addr, kind: "backbone", state: ds.State, transport: ds.Transport, dialed: true, ups: ds.Ups}
		if c := bb.current(); c != nil && ds.State == DialUp {
			ml.link, ml.class = c.link, c.link.Peer().Class.String()
		}
		out = append(out, ml)
	}
	for _, t := range l.snapshotTargets() {
		ds := t.dialer.State()
		ml := metricLink{name: t.addr, kind: "remote", state: ds.State, transport: ds.Transport, dialed: true, ups: ds.Ups}
		if t.link != nil {
			ml.link, ml.class = t.link.link, t.link.link.Peer().Class.String()
			select {
			case <-t.link.link.Heard():
			default:
				ml.state = DialConnecting // as status says it
			}
		}
		out = append(out, ml)
	}
	for _, c := range inbound {
		transport := "tcp"
		if c.quic != nil {
			transport = "quic"
		}
		out = append(out, metricLink{name: c.name, kind: "inbound", class: c.link.Peer().Class.String(), state: DialUp,
			transport: transport, link: c.link})
	}
	return out
}

// serviceCollector reads a service's state for a scrape.
type serviceCollector struct {
	s *Service
	d *metricDescs
}

func newServiceCollector(s *Service) serviceCollector {
	return serviceCollector{s: s, d: newMetricDescs()}
}

func (c serviceCollector) Describe(ch chan<- *prometheus.Desc) { c.d.describe(ch) }

func (c serviceCollector) Collect(ch chan<- prometheus.Metric) {
	s, d := c.s, c.d
	var links []metricLink
	var vws []*volconfWorker
	kernels, relays := 0, 0
	s.mu.Lock()
	for _, sl := range s.links {
		kind := "link"
		if sl.kernel {
			kind, kernels = "kernel", kernels+1
		}
		relays += len(sl.relays)
		links = append(links, metricLink{name: sl.name, kind: kind, class: sl.peer.Class.String(), state: DialUp,
			transport: sl.transport, link: sl.link})
		for _, w := range sl.volconf {
			vws = append(vws, w)
		}
	}
	nspans := len(s.spanTx)
	s.mu.Unlock()
	// The dialers' targets: their links are among the above while up.
	for _, a := range s.autoconn {
		ds := a.State()
		links = append(links, metricLink{name: ds.Addr, kind: "autoconn", state: ds.State, transport: ds.Transport,
			dialed: true, ups: ds.Ups})
	}
	for _, w := range vws {
		ds := w.dialer.State()
		links = append(links, metricLink{name: ds.Addr, kind: "volconf", state: ds.State, transport: ds.Transport,
			dialed: true, ups: ds.Ups})
	}
	d.emitLinks(ch, links)
	ch <- gauge(d.kernelLinks, float64(kernels))
	ch <- gauge(d.spans, float64(nspans))
	ch <- gauge(d.relays, float64(relays))
	ch <- counter(d.spanUpdates, s.obs.spanUpdates.Load())
	d.emitLimits(ch, s.obs)
}
