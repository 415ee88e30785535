package main

// How long a master may let its kernels hold cache states, measured on its
// own monotonic clock alone (docs/PROTOCOL.md §6.6).
//
// The group takes a state back (Expire) a lease after a conflicting
// request was applied on the requester's master, so never before a lease
// after that conflict was committed, by the requester's clock. A holder's
// master cannot read that clock, and need not: what it can know on its own
// clock is a renewal, a time at before which every committed entry has a
// txid of at most upTo. A conflict with a higher txid was committed after
// at, so the group cannot expire it before at plus a lease. Renewals come
// from two places:
//
//   - Each of this master's own proposals, once applied at txid g: every
//     entry committed before it was proposed is in the leader's log ahead of
//     it (a proposal appended after them by a deposed leader is never
//     committed), so (proposed, g-1).
//   - A read index (raft's ReadIndex, the leader confirming its commit
//     index with a heartbeat round) sent at at and answered with index X,
//     once this master has applied X: (at, X). The driver sends one every
//     cacRenewEvery while it has kernels holding states, so that an idle
//     holder stays renewed.
//
// From them the driver keeps its holders within half a lease of a renewal:
// it hands out a grant only while its freshest renewal is younger than
// that, takes every state back once it is older (a master cut off, or far
// behind), and gives a revoked holder until the renewal before the
// conflict plus half a lease. The other half is the margin for the clocks'
// drift (the requester's clock may run fast and the holder's slow: safe
// while the two differ in rate by less than a third) and for a tick of
// lateness on either side. The time for the revoke and close to reach the
// kernel comes out of the holder's half instead (cacDeliveryShare, cac.go):
// the kernel is told that much less than the master allows. Nothing is compared with another master's clock, so a wall clock
// step on any master changes nothing.

import (
	"cmp"
	"encoding/binary"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
)

// cacRenewal: every entry committed before at (this master's clock.Now) has
// a txid of at most upTo.
type cacRenewal struct {
	at   time.Time
	upTo uint64
}

// cacRenewReadsMax bounds the renewal reads in flight: one whose leader
// vanished is never answered, and is forgotten once this many newer ones
// were sent.
const cacRenewReadsMax = 8

// cacLeases is a master's renewals. The driver's goroutine owns it.
type cacLeases struct {
	// renewals hold no renewal dominated by another (an earlier time and
	// a higher txid), so sorted by upTo they are sorted by at too. After
	// each pump at most one is at or below the applied txid.
	renewals []cacRenewal
	// reads are the renewal reads sent: by id, when; answered ones move to
	// answered until this master has applied their index.
	reads    map[uint64]time.Time
	answered []cacRenewal
	seq      uint64
	lastRead time.Time
}

func newCacLeases() *cacLeases { return &cacLeases{reads: map[uint64]time.Time{}} }

// add records a renewal, keeping only those no other dominates (as late
// or later, and covering as much or more: a txid as low or lower).
func (l *cacLeases) add(r cacRenewal) {
	all := append(l.renewals, r)
	dominated := func(i int) bool {
		for j, o := range all {
			if j != i && !o.at.Before(all[i].at) && o.upTo <= all[i].upTo &&
				(o.at.After(all[i].at) || o.upTo < all[i].upTo || j < i) {
				return true
			}
		}
		return false
	}
	var keep []cacRenewal
	for i := range all {
		if !dominated(i) {
			keep = append(keep, all[i])
		}
	}
	slices.SortFunc(keep, func(a, b cacRenewal) int { return cmp.Compare(a.upTo, b.upTo) })
	l.renewals = keep
}

// before is the latest renewal that says a conflict at txid was
// committed after it (zero: none known).
func (l *cacLeases) before(txid uint64) time.Time {
	var at time.Time
	for _, r := range l.renewals {
		if r.upTo < txid && r.at.After(at) {
			at = r.at
		}
	}
	return at
}

// fresh is the latest renewal, zero if none (every renewal kept is at or
// below the applied txid, so it speaks for every conflict not applied yet).
func (l *cacLeases) fresh() time.Time {
	var at time.Time
	for _, r := range l.renewals {
		if r.at.After(at) {
			at = r.at
		}
	}
	return at
}

// prune keeps, of the renewals at or below applied, only the latest: any
// conflict still to come has a higher txid, so that one speaks for it.
func (l *cacLeases) prune(applied uint64) {
	best := -1
	for i, r := range l.renewals {
		if r.upTo <= applied && (best < 0 || r.at.After(l.renewals[best].at)) {
			best = i
		}
	}
	keep := l.renewals[:0]
	for i, r := range l.renewals {
		if r.upTo > applied || i == best {
			keep = append(keep, r)
		}
	}
	l.renewals = keep
}

// cacRenewCtx is a renewal read's request context as raft carries it;
// quorumReadCtx (the snapshot's barriers) has another prefix.
func cacRenewCtx(id uint64) []byte { return binary.BigEndian.AppendUint64([]byte("h2ls"), id) }

// cacRenewID reads a renewal read's context back.
func cacRenewID(rctx []byte) (uint64, bool) {
	if len(rctx) != 12 || string(rctx[:4]) != "h2ls" {
		return 0, false
	}
	return binary.BigEndian.Uint64(rctx[4:]), true
}

// cacRenewEvery is how often, in leases, a master whose kernels hold
// states confirms the group's commit index.
const cacRenewEvery = 10 // a tenth of a lease

// renewLeases sends a renewal read when one is due: this master's kernels
// hold states and the last read went out a tenth of a lease ago.
func (d *quorumDriver) renewLeases(now time.Time) {
	holding := false
	for _, g := range d.grants {
		holding = holding || g.t != nil
	}
	l := d.leases
	if !holding || now.Sub(l.lastRead) < d.lease/cacRenewEvery && !l.lastRead.IsZero() {
		return
	}
	if len(l.reads) >= cacRenewReadsMax {
		oldest := uint64(0)
		for id := range l.reads {
			if oldest == 0 || id < oldest {
				oldest = id
			}
		}
		delete(l.reads, oldest)
	}
	l.seq++
	if err := d.node.ReadIndex(cacRenewCtx(l.seq)); err != nil {
		return // the store failed: the pump says so
	}
	l.reads[l.seq], l.lastRead = now, now
}

// leaseReads takes the answered renewal reads among raft's read states,
// and makes renewals of those this master has applied up to.
func (d *quorumDriver) leaseReads(states []raft.ReadState) {
	l := d.leases
	for _, rs := range states {
		id, ok := cacRenewID(rs.RequestCtx)
		if !ok {
			continue
		}
		if at, ok := l.reads[id]; ok {
			delete(l.reads, id)
			l.answered = append(l.answered, cacRenewal{at: at, upTo: rs.Index})
		}
	}
	applied := d.node.Applied()
	keep := l.answered[:0]
	for _, r := range l.answered {
		if r.upTo <= applied {
			l.add(r)
			continue
		}
		keep = append(keep, r)
	}
	l.answered = keep
}

// holdable reports whether this master may let its kernels hold states
// now: its freshest renewal is less than half a lease old.
func (d *quorumDriver) holdable(now time.Time) bool {
	f := d.leases.fresh()
	return !f.IsZero() && now.Sub(f) <= d.lease/2
}

// revokeWithin is how long a holder in the way of the conflict at txid may
// take to release: until the renewal before it plus half a lease. Zero or
// less: no time at all.
func (d *quorumDriver) revokeWithin(txid uint64, now time.Time) time.Duration {
	at := d.leases.before(txid)
	if at.IsZero() {
		return 0
	}
	return at.Add(d.lease / 2).Sub(now)
}
