package main

// The quorum driver: the one goroutine that runs a master's quorumNode,
// turning ticks, received raft messages and requests into node calls and
// the node's results into answers. What it needs from the leaf it runs in
// is quorumHost; how its raft messages travel is quorumTransport. Both,
// and its clock, are given at construction, so that the in-process CAC
// scripts (cac_test.go) drive the very same driver step by step.

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// quorumHost is what a quorumDriver needs from the leaf it runs in. The
// daemon's is the Leaf; the CAC scripts have their own. Every method is
// safe on any goroutine.
type quorumHost interface {
	// masterSpan is the transaction of the nearest LNK_SPAN of master id
	// of this leaf's cluster, nil if no span reaches it.
	masterSpan(id uint64) *Trans
	// masters are the ids of this cluster's masters whose spans the
	// cluster advertises.
	masters() map[uint64]bool
	// trusted names a trusted node key (TrustStore.Lookup).
	trusted(key ed25519.PublicKey) (string, bool)
	// changeMember is the operator's quorum-add or quorum-remove of the
	// master named in hex, as the control socket serves it. It waits for
	// the driver, so the driver calls it on a goroutine of its own.
	changeMember(op, master string) (voters, learners []uint64, err error)
	// spawn runs f on a goroutine the leaf waits for before it exits.
	spawn(f func())
}

// quorumDriverConfig is what a driver is built with besides its host and
// node. Every field is required.
type quorumDriverConfig struct {
	Clid, Fsid UUID               // this master's PFS
	Key        ed25519.PrivateKey // signs this master's join requests; nil: it never asks
	Log        *slog.Logger
	CAC        *cacAgent // the kernel's cache states, as this leaf records them
	Clock      clock
	Transport  quorumTransport
	// Tick paces raft; Lease and CommitTimeout are [quorum] lease and
	// commit_timeout.
	Tick, Lease, CommitTimeout time.Duration
	// Inbox bounds the work waiting for the driver (quorumInboxLimits).
	Inbox quorumInboxLimits
	// Changed, if set, is called after each pump: the group's status may
	// have changed (the leaf's status watchers).
	Changed func()
}

// quorumDriver owns one quorumNode: a single goroutine does all its work,
// since the node, like etcd's RawNode, is not safe for concurrent use.
// Other goroutines hand it work through its inbox and never wait for it
// there. Everything not marked otherwise belongs to that goroutine.
type quorumDriver struct {
	host       quorumHost
	node       *quorumNode
	self       uint64
	clid, fsid UUID
	key        ed25519.PrivateKey
	log        *slog.Logger
	cac        *cacAgent
	clock      clock
	net        quorumTransport
	tick       time.Duration
	changed    func() // after each pump, or nil

	inbox   *quorumInbox  // safe for any goroutine
	busyLog *logLimiter   // safe for any goroutine
	done    chan struct{} // closed when run returns

	waiters map[uint64]*quorumWaiter // by request id
	reach   map[uint64]bool          // masters whose span we saw at the last sweep
	// forwarded: the election clock was fast-forwarded, or a leader was
	// known, once this run (fastForwardElection).
	forwarded bool
	ticks     int
	sweeps    uint64

	// joining (quorum_join.go)
	joins   *quorumJoins      // member: the verified joiners
	joinOut map[uint64]*Trans // joiner: our QRM_JOIN to each master
	// strangers sent raft traffic that was refused as from outside the
	// configuration (and not removed): the next sweep asks them to admit
	// this master, which makes them sponsors if they are members.
	strangers map[uint64]bool
	// joinLog and stepLog keep repeated refusals out of the log; they are
	// safe for any goroutine.
	joinLog *keyedLogLimiter
	stepLog *keyedLogLimiter

	// cache states (cac.go)
	grants        map[string]*cacGrant // by holder: the states this master granted
	waits         []*cacWait
	leases        *cacLeases // how long those states may be held (cac_lease.go)
	lease         time.Duration
	commitTimeout time.Duration

	status atomic.Pointer[quorumStatus] // safe for any goroutine
	obs    *observer                    // the leaf's metrics counters, or nil (set before run)

	reads   map[uint64]*quorumRead // read barriers by id (quorum_snapshot.go)
	readSeq uint64

	// proposals taken since the last flush: they go to raft together.
	proposals []quorumProposal
}

// quorumProposal is one request propose took, until flush hands it over.
type quorumProposal struct {
	op       quorumOp
	durable  func(uint64)
	done     func(quorumResult, error)
	proposed time.Time // clock.Now when taken: no later than raft has it, so a safe lease renewal (cac_lease.go)
}

func newQuorumDriver(host quorumHost, node *quorumNode, cfg quorumDriverConfig) *quorumDriver {
	d := &quorumDriver{host: host, node: node, self: node.ID(), clid: cfg.Clid, fsid: cfg.Fsid, key: cfg.Key,
		log: cfg.Log, cac: cfg.CAC, clock: cfg.Clock, net: cfg.Transport, tick: cfg.Tick, changed: cfg.Changed,
		inbox: newQuorumInbox(cfg.Inbox), busyLog: newLogLimiter(1), done: make(chan struct{}),
		waiters: map[uint64]*quorumWaiter{}, reach: map[uint64]bool{},
		joins: newQuorumJoins(), joinOut: map[uint64]*Trans{}, strangers: map[uint64]bool{},
		joinLog: &keyedLogLimiter{perMinute: quorumLogPerMinute}, stepLog: &keyedLogLimiter{every: time.Minute, perMinute: quorumLogPerMinute},
		grants: map[string]*cacGrant{}, leases: newCacLeases(), lease: cfg.Lease, commitTimeout: cfg.CommitTimeout,
		reads: map[uint64]*quorumRead{}}
	st := node.Status()
	d.status.Store(&st)
	return d
}

// run is the driver's goroutine, until ctx ends.
func (d *quorumDriver) run(ctx context.Context) {
	defer close(d.done)
	t := time.NewTicker(d.tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			d.net.close()
			for _, tr := range d.joinOut {
				_ = tr.Close(ErrOK)
			}
			return
		case <-t.C:
			d.onTick()
		case <-d.inbox.wake:
			d.drain()
		}
		d.pump()
	}
}

// onTick is one tick of raft and of the lease rules, and every
// quorumSweepTicks a sweep of the masters' spans.
func (d *quorumDriver) onTick() {
	d.node.Tick()
	d.fastForwardElection()
	d.cacTick(d.clock.Now())
	if d.ticks++; d.ticks%quorumSweepTicks == 0 {
		d.sweepMasters()
	}
}

// fastForwardElection fast-forwards the node's election clock once per
// run (quorumNode.FastForwardElection), as soon as this master is a
// voter that knows no leader and sees the spans of a majority of the
// voters, itself counted: a group forming, or a master restarting, then
// elects about a second sooner (ticks of 100 ms), and a master that saw a
// leader first never does.
func (d *quorumDriver) fastForwardElection() {
	if d.forwarded {
		return
	}
	st := d.node.Status()
	if st.Leader != 0 {
		d.forwarded = true
		return
	}
	if !slices.Contains(st.Members, d.self) {
		return
	}
	seen := d.host.masters()
	reached := 0
	for _, id := range st.Members {
		if id == d.self || seen[id] {
			reached++
		}
	}
	if reached > len(st.Members)/2 {
		d.forwarded = true
		d.node.FastForwardElection()
	}
}

// drain runs everything the inbox holds. It takes it all before one
// pump, so that concurrent requests share a raft Ready and its fsync.
// Requests' news come after the new work taken with them, which holds
// their openings.
func (d *quorumDriver) drain() {
	work, news := d.inbox.take()
	for _, f := range work {
		f()
	}
	for _, n := range news {
		d.lockNews(n.r, n.mail)
	}
	d.flush()
}

// pump persists, sends and answers what the node produced.
func (d *quorumDriver) pump() {
	d.flush()
	rd, err := quorumPump(d.node, d.net)
	if err != nil {
		d.log.Error("quorum store failed; the group needs a restart of this leaf", "err", err)
		return
	}
	d.leaseReads(rd.ReadStates)
	for _, id := range rd.Durable {
		if w := d.waiters[id]; w != nil && w.durable != nil {
			w.durable(id)
		}
	}
	for _, r := range rd.Applied {
		if r.Origin != d.self {
			continue
		}
		if w := d.waiters[r.ReqID]; w != nil {
			delete(d.waiters, r.ReqID)
			if !w.proposed.IsZero() && r.Txid > 0 {
				// Everything committed before we proposed it lies below it.
				d.leases.add(cacRenewal{at: w.proposed, upTo: r.Txid - 1})
			}
			w.done(r, nil)
		}
	}
	d.cacApplied(rd.Applied)
	d.leases.prune(d.node.Applied())
	d.serveReads(rd.ReadStates)
	for _, f := range rd.Failed {
		if w := d.waiters[f.ReqID]; w != nil {
			delete(d.waiters, f.ReqID)
			d.log.Warn("quorum request failed", "req", fmtReqID(f.ReqID), "err", f.Err)
			w.done(quorumResult{ReqID: f.ReqID}, f.Err)
		}
	}
	d.flush() // what the answers proposed (a grant's Expire): raft holds it, as its next Ready will
	st := d.node.Status()
	d.status.Store(&st)
	if d.changed != nil {
		d.changed() // status watchers: the status may have changed
	}
}

// ---- the inbox ----

// quorumInboxLimits bound the work waiting for the driver, by kind.
type quorumInboxLimits struct {
	// Raft is for received raft messages. Dropping one is always safe
	// (raft sends again what matters), so a driver that falls behind
	// sheds them first.
	Raft int
	// Requests is for everything else that starts work: QRM_COMMIT,
	// CAC_LOCK and QRM_JOIN transactions, join answers, shell and control
	// requests. One past it is answered QUORUM_BUSY (or dropped, for what
	// is repeated anyway: a join answer, a QRM_RAFT transaction's end).
	Requests int
}

// Raft messages and requests queued for the driver at most (the
// daemon's quorumInboxLimits). A request costs a closure and its
// transaction; 4096 is 64 times the concurrency the benchmarks run at,
// yet bounds what a burst can make a master hold. A raft message may
// carry up to AuxMax/4 of entries, and 256 of them (64 MiB at worst) are
// far more than one Ready sends a master.
const (
	quorumInboxRaft     = 256
	quorumInboxRequests = 4096
)

type inboxKind int

const (
	inboxRaft inboxKind = iota
	inboxRequest
	inboxKinds
)

// quorumInbox is how other goroutines hand work to the driver without
// ever waiting for it: a link's reader must keep reading whatever the
// driver does. New work is bounded by kind and refused past the bound.
// News on a request the driver already owns (the kernel released a state
// or changed its mode) is never refused, since losing a release would
// hold the keys until their lease ran out: it is kept on the request
// (cacMail), and the request is queued at most once, so it is bounded by
// the requests the driver holds. Safe for concurrent use.
type quorumInbox struct {
	max  [inboxKinds]int
	wake chan struct{} // capacity 1: there is something to take

	mu   sync.Mutex
	work []inboxItem
	n    [inboxKinds]int
	news []*cacRequest
}

type inboxItem struct {
	kind inboxKind
	f    func()
}

// cacNews is one request's news as the driver takes it.
type cacNews struct {
	r    *cacRequest
	mail cacMail
}

func newQuorumInbox(lim quorumInboxLimits) *quorumInbox {
	return &quorumInbox{max: [inboxKinds]int{inboxRaft: lim.Raft, inboxRequest: lim.Requests}, wake: make(chan struct{}, 1)}
}

// put queues f to run on the driver's goroutine, or reports false if as
// many of its kind are waiting as may.
func (q *quorumInbox) put(kind inboxKind, f func()) bool {
	q.mu.Lock()
	if q.n[kind] >= q.max[kind] {
		q.mu.Unlock()
		return false
	}
	q.n[kind]++
	q.work = append(q.work, inboxItem{kind, f})
	q.mu.Unlock()
	q.kick()
	return true
}

// post updates r's mailbox and queues r if it is not queued yet.
func (q *quorumInbox) post(r *cacRequest, update func(*cacMail)) {
	q.mu.Lock()
	update(&r.mail)
	if !r.queued {
		r.queued = true
		q.news = append(q.news, r)
	}
	q.mu.Unlock()
	q.kick()
}

func (q *quorumInbox) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take empties the inbox: the work in the order it came, then each
// request's news.
func (q *quorumInbox) take() ([]func(), []cacNews) {
	q.mu.Lock()
	defer q.mu.Unlock()
	work := make([]func(), len(q.work))
	for i, it := range q.work {
		work[i] = it.f
	}
	news := make([]cacNews, len(q.news))
	for i, r := range q.news {
		news[i] = cacNews{r, r.mail}
		r.mail, r.queued = cacMail{}, false
	}
	q.work, q.news, q.n = nil, nil, [inboxKinds]int{}
	return work, news
}

// errQuorumBusy refuses a request the driver has no room for.
var errQuorumBusy = errors.New("quorum: this master's driver is overloaded; the request was not proposed, try again")

// busy logs, at most once a second, what the full inbox refused.
func (d *quorumDriver) busy(what string, args ...any) {
	d.busyLog.Warn(d.log, "quorum: driver overloaded; refused "+what,
		append(args, "raft_max", d.inbox.max[inboxRaft], "requests_max", d.inbox.max[inboxRequest])...)
}

// hand queues f for the transaction t opened. With no room it closes t
// with QUORUM_BUSY and reports false.
func (d *quorumDriver) hand(t *Trans, f func()) bool {
	if d.inbox.put(inboxRequest, f) {
		return true
	}
	d.busy(CmdString(t.Cmd()), "link", t.Link().Name(), "answer", ErrString(ErrQuorumBusy))
	_ = t.Close(ErrQuorumBusy)
	return false
}

// ---- requests ----

// quorumWaiter follows one request of this master. Both callbacks run on
// the driver's goroutine.
type quorumWaiter struct {
	durable  func(reqID uint64)              // phase 1, optional
	done     func(r quorumResult, err error) // phase 2, or the failure
	proposed time.Time                       // clock.Now when proposed: a lease renewal once applied (cac_lease.go)
}

// submit proposes op from any goroutine but the driver's. done gets the
// applied result, or the error that refused or failed the request
// (errQuorumBusy at once, on the caller's goroutine, if the inbox is
// full).
func (d *quorumDriver) submit(op quorumOp, durable func(uint64), done func(quorumResult, error)) {
	if !d.inbox.put(inboxRequest, func() { d.propose(op, durable, done) }) {
		d.busy(op.Kind.String())
		done(quorumResult{}, errQuorumBusy)
	}
}

// propose is submit on the driver's own goroutine. The request goes to
// raft at the next flush, together with every other one taken since the
// last (quorumNode.ProposeAll); both come before the next Advance.
func (d *quorumDriver) propose(op quorumOp, durable func(uint64), done func(quorumResult, error)) {
	op.At = d.clock.Wall().UnixNano() // for operators reading the table; never compared with a clock
	done = d.obs.proposal(done)
	d.proposals = append(d.proposals, quorumProposal{op, durable, done, d.clock.Now()})
}

// quorumFlushRounds bounds how often one flush takes the requests that
// the failure callbacks of the previous round proposed; the rest wait for
// the next flush.
const quorumFlushRounds = 4

// flush hands raft the requests propose took, as one proposal.
func (d *quorumDriver) flush() {
	for range quorumFlushRounds {
		if len(d.proposals) == 0 {
			return
		}
		ps := d.proposals
		d.proposals = nil
		ops := make([]quorumOp, len(ps))
		for i, p := range ps {
			ops[i] = p.op
		}
		ids, errs := d.node.ProposeAll(ops)
		for i, p := range ps {
			if errs[i] != nil {
				p.done(quorumResult{}, errs[i])
				continue
			}
			d.waiters[ids[i]] = &quorumWaiter{durable: p.durable, done: p.done, proposed: p.proposed}
		}
	}
}

// Holdings lists the cache states held through this leaf. It asks the
// driver's goroutine, waiting at most a second.
func (d *quorumDriver) Holdings() []cacHolding {
	ch := make(chan []cacHolding, 1)
	if !d.inbox.put(inboxRequest, func() { ch <- d.holdings() }) {
		d.busy("a status request")
		return nil
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case h := <-ch:
		return h
	case <-t.C:
	case <-d.done:
	}
	return nil
}

// holdings is Holdings on the driver's goroutine.
func (d *quorumDriver) holdings() []cacHolding {
	var mine []cacHolding
	for _, h := range d.node.Holdings() {
		if d.grants[h.Holder] != nil {
			mine = append(mine, h)
		}
	}
	return mine
}

// Status is the group as this master sees it.
func (d *quorumDriver) Status() quorumStatus { return *d.status.Load() }

// ---- membership ----

// quorumSweepTicks is how often the driver compares the group with the
// MASTER spans the cluster advertises.
const quorumSweepTicks = 5

// sweepMasters follows the masters the spans show. A member whose span
// went away is reported down to raft at once (a leader that vanished is
// forgotten, so its successor is elected without waiting out its lease,
// and requests forwarded to it are handed again). A span never adds a
// member by itself: a master outside the group asks to join
// (requestJoins), and on the leader the next membership change is taken
// from the verified joiners and the caught-up learners, one at a time
// (quorumJoins.next). Only an operator removes a member (quorum remove),
// and the leader never adds back one that was removed.
func (d *quorumDriver) sweepMasters() {
	d.sweeps++
	seen := d.host.masters()
	st := d.node.Status()
	for _, id := range append(slices.Clone(st.Members), st.Learners...) {
		if id == d.self {
			continue
		}
		if d.reach[id] && !seen[id] {
			d.log.Info("quorum: master's span withdrawn", "master", fmt.Sprintf("%x", id))
			d.node.LinkDown(id)
		}
		d.reach[id] = seen[id]
	}
	// A master outside the group asks every master it sees to admit it;
	// a member asks those whose traffic it refused (it may be behind).
	ask := seen
	if d.node.InGroup() {
		ask = map[uint64]bool{}
		for id := range d.strangers {
			if seen[id] && !d.node.Removed(id) {
				ask[id] = true
			}
		}
		clear(d.strangers)
	}
	if len(ask) > 0 {
		d.requestJoins(ask)
	}
	change, id, key := d.joins.next(d.node, d.sweeps)
	if change == 0 {
		return
	}
	args := []any{"master", fmt.Sprintf("%x", id), "change", change.String()}
	if key != nil {
		args = append(args, "key", key.String())
	}
	d.log.Info("quorum: changing the group's membership", args...)
	d.member(change, id, key, func(r quorumResult, err error) {
		if err == nil && r.Err != "" {
			err = errors.New(r.Err)
		}
		if err != nil {
			d.log.Warn("quorum: membership change failed", append(args, "err", err)...)
		}
	})
}

// member proposes a membership change on the driver's goroutine.
func (d *quorumDriver) member(change quorumMemberChange, id uint64, key *quorumKeyFP, done func(quorumResult, error)) {
	reqID, err := d.node.ProposeConfChange(change, id, key)
	if err != nil {
		done(quorumResult{}, err)
		return
	}
	d.waiters[reqID] = &quorumWaiter{done: done}
}

// Member is the operator's add or remove from any goroutine: it waits for
// the change to be applied (or to fail) and returns the voters and the
// learners after it. An added master is a learner until the leader has
// caught it up and promoted it.
func (d *quorumDriver) Member(ctx context.Context, change quorumMemberChange, id uint64) (voters, learners []uint64, err error) {
	ch := make(chan quorumResult, 1)
	errc := make(chan error, 1)
	ok := d.inbox.put(inboxRequest, func() {
		if change == quorumAddLearner && id == d.self {
			errc <- errors.New("this master is already a member")
			return
		}
		d.member(change, id, nil, func(r quorumResult, err error) {
			if err == nil && r.Err != "" {
				err = errors.New(r.Err)
			}
			if err != nil {
				errc <- err
				return
			}
			ch <- r
		})
	})
	if !ok {
		d.busy("a membership change")
		return nil, nil, fmt.Errorf("quorum: membership change of %x: %w", id, errQuorumBusy)
	}
	select {
	case r := <-ch:
		return r.Members, r.Learners, nil
	case err := <-errc:
		return nil, nil, err
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("quorum: membership change of %x: %w", id, ctx.Err())
	}
}
