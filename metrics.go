package main

// Prometheus metrics of a leaf or a service: a registry per daemon (no
// default registry, nothing global), filled mostly by collectors that read
// the daemon's existing state at scrape time (links, spans, the quorum
// group's status). The few things no state records (PING round trips,
// proposals and their commit latency, span updates, cache-state events)
// are counted by observer with an atomic add or a histogram observation,
// off the per-message path. Served read-only on the opt-in metrics_listen
// address (metrics_http.go) and through the control socket for `hammer2
// metrics`. README's operator section lists the names and labels.

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/expfmt"
)

// observer is one daemon's counters for health and metrics, and its
// registry. Owned by the Leaf or Service that made it; every method is
// safe for concurrent use, and a nil *observer counts nothing (tests build
// quorum drivers without a leaf).
type observer struct {
	limits limitHits

	rtt    *prometheus.HistogramVec // PING round trips, by peer class
	commit prometheus.Histogram     // proposal to applied, on this master

	proposals       atomic.Uint64
	proposalsFailed atomic.Uint64
	spanUpdates     atomic.Uint64 // the service's (the leaf's spanTable counts its own)
	cacGrants       atomic.Uint64
	cacConflicts    atomic.Uint64
	cacRevocations  atomic.Uint64
	cacExpiries     atomic.Uint64

	reg *prometheus.Registry // set by register, before the daemon runs
}

func newObserver() *observer {
	return &observer{
		rtt: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "hammer2_link_rtt_seconds",
			Help: "Round trip of the dmsg PINGs on the links, by the peer's class.",
			// 50µs (a local socket) to ~1.6s (a link about to be declared dead).
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}, []string{"class"}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "hammer2_quorum_commit_latency_seconds",
			Help: "Time from proposing an entry on this master to its being applied here.",
			// 0.5ms (a batched local group) to ~8s (past the commit timeout).
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 15),
		}),
	}
}

// register makes the daemon's registry: its own collector, the link RTT
// histogram, extra (a leaf's commit latency), and the Go runtime's and
// process's standard metrics.
func (o *observer) register(daemon prometheus.Collector, extra ...prometheus.Collector) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(extra...)
	reg.MustRegister(daemon, o.rtt,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hammer2_build_info",
			Help: "Always 1; the version label is the binary's.", ConstLabels: prometheus.Labels{"version": versionString()}},
			func() float64 { return 1 }))
	o.reg = reg
}

// text is every metric in Prometheus's text format, as `hammer2 metrics`
// prints it.
func (o *observer) text() (string, error) {
	mfs, err := o.reg.Gather()
	if err != nil {
		return "", fmt.Errorf("metrics: %w", err)
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return "", fmt.Errorf("metrics: %w", err)
		}
	}
	return b.String(), nil
}

// rttObserver is a link's OnRTT: one histogram child per class, looked up
// once per link.
func (o *observer) rttObserver(class string) func(time.Duration) {
	if o == nil {
		return nil
	}
	h := o.rtt.WithLabelValues(class)
	return func(d time.Duration) { h.Observe(d.Seconds()) }
}

// proposal counts a proposal and wraps its done to time its commit.
func (o *observer) proposal(done func(quorumResult, error)) func(quorumResult, error) {
	if o == nil {
		return done
	}
	o.proposals.Add(1)
	start := time.Now()
	return func(r quorumResult, err error) {
		if err != nil {
			o.proposalsFailed.Add(1)
		} else {
			o.commit.Observe(time.Since(start).Seconds())
		}
		done(r, err)
	}
}

func (o *observer) spanUpdated() {
	if o != nil {
		o.spanUpdates.Add(1)
	}
}

func (o *observer) cacGrant() {
	if o != nil {
		o.cacGrants.Add(1)
	}
}

func (o *observer) cacConflict() {
	if o != nil {
		o.cacConflicts.Add(1)
	}
}

func (o *observer) cacRevoke() {
	if o != nil {
		o.cacRevocations.Add(1)
	}
}

func (o *observer) cacExpire(n int) {
	if o != nil {
		o.cacExpiries.Add(uint64(n))
	}
}

// ---- what collectors emit ----

// metricDescs are the descriptors both daemons' collectors use.
type metricDescs struct {
	linkUp, linkInfo, linkRxBytes, linkTxBytes, linkRxMsgs, linkTxMsgs *prometheus.Desc
	linkQueued, linkLastRTT, linkReconnects                            *prometheus.Desc
	spans, spanUpdates, kernelUp, kernelLinks, relays, limitHits       *prometheus.Desc
	qLeader, qHasLeader, qHasQuorum, qTerm, qCommit, qApplied          *prometheus.Desc
	qPending, qMembers, qLearners, qProposals, qProposalsFailed        *prometheus.Desc
	qSnapshot                                                          *prometheus.Desc
	cacGrants, cacConflicts, cacRevocations, cacExpiries, cacHeld      *prometheus.Desc
}

func newMetricDescs() *metricDescs {
	link := []string{"link", "kind"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return &metricDescs{
		linkUp:         d("hammer2_link_up", "1 while the link is up, 0 while it is being dialed or in backoff.", link...),
		linkInfo:       d("hammer2_link_info", "Always 1: the link's peer class, state and transport as labels.", "link", "kind", "class", "state", "transport"),
		linkRxBytes:    d("hammer2_link_received_bytes_total", "Bytes read on the link since it came up.", link...),
		linkTxBytes:    d("hammer2_link_sent_bytes_total", "Bytes written on the link since it came up.", link...),
		linkRxMsgs:     d("hammer2_link_received_messages_total", "dmsg messages read on the link since it came up.", link...),
		linkTxMsgs:     d("hammer2_link_sent_messages_total", "dmsg messages written on the link since it came up.", link...),
		linkQueued:     d("hammer2_link_queued_bytes", "Bytes queued for the link's writers: what the peer has not taken yet.", link...),
		linkLastRTT:    d("hammer2_link_last_rtt_seconds", "The link's last measured round trip.", link...),
		linkReconnects: d("hammer2_link_reconnects_total", "Times a dialed link was established again after its first.", link...),
		spans:          d("hammer2_spans", "Spans the daemon holds: advertised to the leaf, or received by the service."),
		spanUpdates:    d("hammer2_span_updates_total", "Spans added and removed since the daemon started."),
		kernelUp:       d("hammer2_kernel_link_up", "1 while the kernel's link to the leaf is up."),
		kernelLinks:    d("hammer2_kernel_links", "Links of DragonFly kernels to the service."),
		relays:         d("hammer2_span_relays", "Spans the service opened on its links (relayed)."),
		limitHits:      d("hammer2_limit_hits_total", "Times a [limits] bound closed a link or refused a peer.", "limit"),
		qLeader:        d("hammer2_quorum_is_leader", "1 while this master leads its quorum group."),
		qHasLeader:     d("hammer2_quorum_has_leader", "1 while this master knows a leader."),
		qHasQuorum:     d("hammer2_quorum_has_quorum", "1 while the leader is in contact with a majority, as this master sees it."),
		qTerm:          d("hammer2_quorum_term", "The raft term this master is in."),
		qCommit:        d("hammer2_quorum_commit_index", "The highest log index this master knows committed."),
		qApplied:       d("hammer2_quorum_applied_index", "The highest log index applied here (the last txid)."),
		qPending:       d("hammer2_quorum_pending_proposals", "Proposals of this master not yet applied."),
		qMembers:       d("hammer2_quorum_members", "Voting members of the group."),
		qLearners:      d("hammer2_quorum_learners", "Learners of the group (catching up, no vote)."),
		qProposals:     d("hammer2_quorum_proposals_total", "Entries this master proposed."),
		qProposalsFailed: d("hammer2_quorum_proposals_failed_total",
			"Proposals of this master refused or failed (no leader within the commit timeout, busy, ...)."),
		qSnapshot:      d("hammer2_quorum_snapshot_index", "The log index of this master's latest raft snapshot (0: none yet)."),
		cacGrants:      d("hammer2_cac_grants_total", "Cache states this master granted."),
		cacConflicts:   d("hammer2_cac_conflicts_total", "Cache-state requests that met a conflicting holder here."),
		cacRevocations: d("hammer2_cac_revocations_total", "Revokes this master sent to holders in the way of a request."),
		cacExpiries:    d("hammer2_cac_expiries_total", "Cache states expired (not released within the lease), as applied here."),
		cacHeld:        d("hammer2_cac_held_states", "Cache states held: through this master (group) or by this leaf's kernel (kernel).", "holder"),
	}
}

func (d *metricDescs) describe(ch chan<- *prometheus.Desc) {
	for _, x := range []*prometheus.Desc{d.linkUp, d.linkInfo, d.linkRxBytes, d.linkTxBytes, d.linkRxMsgs, d.linkTxMsgs,
		d.linkQueued, d.linkLastRTT, d.linkReconnects, d.spans, d.spanUpdates, d.kernelUp, d.kernelLinks, d.relays,
		d.limitHits, d.qLeader, d.qHasLeader, d.qHasQuorum, d.qTerm, d.qCommit, d.qApplied, d.qPending, d.qMembers,
		d.qLearners, d.qProposals, d.qProposalsFailed, d.qSnapshot, d.cacGrants, d.cacConflicts, d.cacRevocations,
		d.cacExpiries, d.cacHeld} {
		ch <- x
	}
}

// metricLink is one link as the collectors see it: one the daemon keeps
// dialed (dialed) or one that is there (link set while up).
type metricLink struct {
	name, kind, class, state, transport string
	link                                *Link  // nil while down
	dialed                              bool   // a dialer keeps it: reconnects apply
	ups                                 uint64 // the dialer's links established
}

func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(d *prometheus.Desc, v uint64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// emitLinks sends the per-link metrics, each link once (a name seen twice
// keeps its first: a registry refuses duplicate series).
func (d *metricDescs) emitLinks(ch chan<- prometheus.Metric, links []metricLink) {
	seen := map[[2]string]bool{}
	for _, ml := range links {
		key := [2]string{ml.name, ml.kind}
		if seen[key] {
			continue
		}
		seen[key] = true
		up := ml.link != nil && ml.state == DialUp
		ch <- gauge(d.linkUp, b2f(up), ml.name, ml.kind)
		ch <- gauge(d.linkInfo, 1, ml.name, ml.kind, ml.class, ml.state, ml.transport)
		if ml.dialed {
			ch <- counter(d.linkReconnects, max(ml.ups, 1)-1, ml.name, ml.kind)
		}
		if k := ml.link; k != nil {
			ch <- counter(d.linkRxBytes, k.BytesIn.Load(), ml.name, ml.kind)
			ch <- counter(d.linkTxBytes, k.BytesOut.Load(), ml.name, ml.kind)
			ch <- counter(d.linkRxMsgs, k.MsgsIn.Load(), ml.name, ml.kind)
			ch <- counter(d.linkTxMsgs, k.MsgsOut.Load(), ml.name, ml.kind)
			ch <- gauge(d.linkQueued, float64(k.queuedBytes()), ml.name, ml.kind)
			if rtt := k.RTT(); rtt > 0 {
				ch <- gauge(d.linkLastRTT, rtt.Seconds(), ml.name, ml.kind)
			}
		}
	}
}

func (d *metricDescs) emitLimits(ch chan<- prometheus.Metric, o *observer) {
	for _, h := range o.limits.list() {
		ch <- counter(d.limitHits, h.Count, h.Limit)
	}
}

// queuedBytes is what waits in the link's queues.
func (l *Link) queuedBytes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.queued
}

// hits is the limit-hit counts, nil for a nil observer (which counts
// none).
func (o *observer) hits() *limitHits {
	if o == nil {
		return nil
	}
	return &o.limits
}
