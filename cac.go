package main

// CAC_LOCK: cache states the kernel asks its leaf for, decided by the
// quorum group (quorum_fsm.go holds the rules). The kernel opens a CAC_LOCK
// transaction; a grant keeps it open while the state is held, and the
// kernel's DELETE releases it. The debug shell offers the same by hand.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

var errCacConflict = errors.New("cache state: the keys' holders did not let go within the lease")

// CAC_LOCK flags (payload byte 0x42).
const (
	// cacFlagRevoke: leaf to kernel on a granted transaction: another
	// holder needs these keys; release them (flush, then DELETE) within
	// LeaseMs. A DELETE from the leaf instead means the state is gone now.
	cacFlagRevoke = 0x01
	// cacFlagRevalidate: kernel to leaf, opening a transaction after the
	// leaf restarted: it held this state, granted at Txid, and would keep
	// its cache. The answer is a grant (same Txid) or a DELETE (drop it).
	cacFlagRevalidate = 0x02
)

// cacLock is the CAC_LOCK payload.
type cacLock struct {
	Domain  cacDomain
	Mode    cacMode
	Flags   uint8
	LeaseMs uint32 // in a revoke: how long the holder has
	Lo, Hi  uint64
	Txid    uint64 // in grants: the transaction the grant is valid at
	// Holder names the state's holder when a leaf forwards its kernel's
	// request to a master: the leaf's pfs_fsid, its boot and a sequence.
	// The kernel leaves it zero.
	Holder    UUID
	Boot, Seq uint32
}

func (c *cacLock) marshal() []byte {
	b := newExt(CmdCacLock)
	b[0x40-HdrSize], b[0x41-HdrSize], b[0x42-HdrSize] = byte(c.Domain), byte(c.Mode), c.Flags
	le := binary.LittleEndian
	le.PutUint32(b[0x44-HdrSize:], c.LeaseMs)
	le.PutUint64(b[0x48-HdrSize:], c.Lo)
	le.PutUint64(b[0x50-HdrSize:], c.Hi)
	le.PutUint64(b[0x58-HdrSize:], c.Txid)
	copy(b[0x60-HdrSize:], c.Holder[:])
	le.PutUint32(b[0x70-HdrSize:], c.Boot)
	le.PutUint32(b[0x74-HdrSize:], c.Seq)
	return b
}

func parseCacLock(ext []byte) (cacLock, error) {
	if err := needExt(ext, "CAC_LOCK", 0x78); err != nil {
		return cacLock{}, err
	}
	le := binary.LittleEndian
	c := cacLock{Domain: cacDomain(ext[0x40-HdrSize]), Mode: cacMode(ext[0x41-HdrSize]), Flags: ext[0x42-HdrSize],
		LeaseMs: le.Uint32(ext[0x44-HdrSize:]), Lo: le.Uint64(ext[0x48-HdrSize:]), Hi: le.Uint64(ext[0x50-HdrSize:]),
		Txid: le.Uint64(ext[0x58-HdrSize:]), Boot: le.Uint32(ext[0x70-HdrSize:]), Seq: le.Uint32(ext[0x74-HdrSize:])}
	copy(c.Holder[:], ext[0x60-HdrSize:])
	switch {
	case c.Domain == cacDomainNone || int(c.Domain) >= len(cacDomainNames):
		return c, wireErr("domain", uint64(c.Domain), "not TREE, INUM, ATTR or DIRENT")
	case int(c.Mode) >= len(cacModeNames):
		return c, wireErr("mode", uint64(c.Mode), "not INVAL, SHARED, EXCLUSIVE or MODIFIED")
	case c.Lo > c.Hi:
		return c, wireErr("key", c.Lo, "range ends at %#x, before it starts", c.Hi)
	case c.Flags&^(cacFlagRevoke|cacFlagRevalidate) != 0:
		return c, wireErr("flags", uint64(c.Flags), "unknown flag bits")
	}
	return c, nil
}

// holderName is how the lock table names a holder: one per kernel
// transaction, so that closing one grant never frees another's keys, and
// never reused across a leaf's restarts.
func holderName(leaf UUID, boot, seq uint32) string { return fmt.Sprintf("%s/%d.%d", leaf, boot, seq) }

func (c *cacLock) holder() string {
	if c.Holder.IsNil() {
		return ""
	}
	return holderName(c.Holder, c.Boot, c.Seq)
}

func (c *cacLock) holding() cacHolding {
	return cacHolding{Holder: c.holder(), Domain: c.Domain, Mode: c.Mode, Lo: c.Lo, Hi: c.Hi, Txid: c.Txid}
}

// cacGrant is a state this master granted and keeps the transaction of,
// to revoke it when someone else needs the keys. t is nil once the
// holder's link was lost (or, after a restart, until the kernel
// revalidates): the state then stays in the table for the lease, and is
// expired after it.
type cacGrant struct {
	h        cacHolding
	t        *Trans
	revoked  time.Time // when we asked the holder to release (zero: not asked)
	orphaned time.Time // when the holder's link went (zero: still there)
}

// cacWait is a lock request whose keys other holders have: they were
// asked to release them, and the request is proposed again when they did
// or, after the lease, when they were expired.
type cacWait struct {
	op       quorumOp
	conflict []cacHolding
	since    time.Time
	expired  bool
	tries    int
	done     func(quorumResult, error)
}

// cacMaxTries bounds how often one request is refused for conflicts
// before its kernel gets ErrCacConflict.
const cacMaxTries = 4

// lock serves a CAC_LOCK opened by this leaf's kernel or forwarded by
// another leaf (req.Holder set) through a circuit.
func (d *quorumDriver) lock(t *Trans, m *Msg) {
	req, err := parseCacLock(m.Ext)
	if err != nil {
		d.leaf.log.Warn("bad CAC_LOCK", "link", t.Link(), "err", err)
		_ = t.Close(ErrParam)
		return
	}
	own := req.Holder.IsNil() // from our kernel: the leaf names and records it
	if own {
		if !d.leaf.cac.claim(&req) {
			_ = t.Close(ErrOK) // a revalidation of nothing we know: drop it
			return
		}
	}
	holder := req.holder()
	op := quorumOp{Kind: quorumOpLock, Holder: holder, Domain: req.Domain, Mode: req.Mode, Lo: req.Lo, Hi: req.Hi}
	if req.Flags&cacFlagRevalidate != 0 {
		op.Kind, op.UpTo = quorumOpRevalidate, req.Txid
	}
	// granted and gone belong to the driver's goroutine.
	granted, gone := false, false
	var answerFor func(op quorumOp) func(quorumResult, error)
	t.SetHandler(func(t *Trans, m *Msg) {
		if m.Cmd&FlagDelete == 0 {
			// The kernel changes the mode of the state it holds: a
			// downgrade answering a revoke, or an upgrade it needs.
			c, err := parseCacLock(m.Ext)
			if m.Cmd&maskBaseCmd != CmdCacLock || err != nil || c.Mode == cacInval {
				d.leaf.log.Warn("ignored a message on a granted CAC_LOCK (release with DELETE)", "holder", holder, "err", err)
				return
			}
			d.do(d.leaf.ctx, func() {
				if g := d.grants[holder]; g != nil && g.t == t && !gone {
					op := quorumOp{Kind: quorumOpLock, Holder: holder, Domain: g.h.Domain, Mode: c.Mode, Lo: g.h.Lo, Hi: g.h.Hi}
					d.propose(op, nil, answerFor(op))
				}
			})
			return
		}
		lost := m.Error == ErrLostLink
		d.do(d.leaf.ctx, func() {
			gone = true
			if granted {
				d.ended(holder, lost)
			}
		})
		if own && !lost {
			d.leaf.cac.forget(holder)
		}
		_ = t.Close(ErrOK)
	})
	answerFor = func(op quorumOp) func(quorumResult, error) {
		return func(r quorumResult, err error) {
			if err != nil || len(r.Conflict) == 0 {
				delete(d.tries, holder)
			}
			switch {
			case err != nil:
				_ = t.Close(quorumErrCode(err))
			case r.Err != "":
				_ = t.Close(ErrParam)
			case r.Stale:
				d.leaf.log.Info("cache state no longer held as granted; the kernel must drop it", "holder", holder)
				if own {
					d.leaf.cac.forget(holder)
				}
				_ = t.Close(ErrOK)
			case r.Grant != nil:
				granted = true
				g := &cacGrant{h: *r.Grant, t: t}
				d.grants[holder] = g
				if gone { // the kernel gave up before the answer came
					d.ended(holder, false)
					return
				}
				if d.tooOld(r.Op) {
					// Decided long ago (this leaf was cut off or behind): a
					// conflict after it may already have run its lease out.
					d.leaf.log.Warn("cache grant applied too late to hand out; giving it back", "holder", holder,
						"age", time.Since(time.Unix(0, r.Op.At)).Round(time.Millisecond))
					delete(d.grants, holder)
					d.propose(quorumOp{Kind: quorumOpExpire, Holder: holder, UpTo: r.Grant.Txid}, nil, func(quorumResult, error) {})
					_ = t.Close(ErrCacExpired)
					return
				}
				if own {
					d.leaf.cac.granted(*r.Grant)
				}
				out := cacLock{Domain: r.Grant.Domain, Mode: r.Grant.Mode, Lo: r.Grant.Lo, Hi: r.Grant.Hi, Txid: r.Grant.Txid}
				_ = t.Send(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: out.marshal()})
			case len(r.Conflict) > 0:
				d.waitFor(op, r.Conflict, answerFor(op))
			default: // an INVAL request: released what it named
				if own {
					d.leaf.cac.forget(holder)
				}
				_ = t.Send(&Msg{Header: Header{Cmd: CmdCacLock | FlagDelete}, Ext: (&cacLock{Domain: req.Domain,
					Mode: cacInval, Lo: req.Lo, Hi: req.Hi, Txid: r.Txid}).marshal()})
			}
		}
	}
	d.submit(op, nil, answerFor(op))
}

// ended drops a grant whose transaction closed. A release drops the state
// at once; a lost link leaves it for the lease, since the holder's kernel
// may not know yet that it must stop using it.
func (d *quorumDriver) ended(holder string, lost bool) {
	g := d.grants[holder]
	if g == nil {
		return
	}
	if lost {
		g.t, g.orphaned = nil, time.Now()
		return
	}
	delete(d.grants, holder)
	d.propose(quorumOp{Kind: quorumOpExpire, Holder: holder}, nil, func(quorumResult, error) {})
}

// waitFor parks a refused lock request until its conflicts are gone.
func (d *quorumDriver) waitFor(op quorumOp, conflict []cacHolding, done func(quorumResult, error)) {
	// Each refusal gives the holders in the way a whole lease from now:
	// they are asked to release only as this conflict is applied.
	w := &cacWait{op: op, conflict: conflict, since: time.Now(), done: done}
	if t, ok := d.tries[op.Holder]; ok {
		w.tries = t
	}
	if w.tries++; w.tries > cacMaxTries {
		delete(d.tries, op.Holder)
		done(quorumResult{}, errCacConflict)
		return
	}
	d.tries[op.Holder] = w.tries
	d.waits = append(d.waits, w)
}

// cacApplied acts on what the group decided: holders of ours in someone's
// way are asked to release, and requests waiting on released keys go
// again.
func (d *quorumDriver) cacApplied(applied []quorumResult) {
	released := false
	for _, r := range applied {
		for _, h := range r.Conflict {
			if g := d.grants[h.Holder]; g != nil && g.t != nil && g.revoked.IsZero() {
				g.revoked = time.Now()
				if d.tooOld(r.Op) { // the requester's lease may be nearly out: no time to flush politely
					d.leaf.log.Warn("conflict applied too late for a revoke; taking the state back", "holder", h.Holder)
					_ = g.t.Close(ErrCacExpired)
					g.t, g.orphaned = nil, time.Now()
					continue
				}
				// A reader in the way of a writer must go; a writer in the
				// way of a reader may stay as a reader.
				keep := cacInval
				if r.Op.Mode == cacShared && g.h.Mode >= cacExclusive {
					keep = cacShared
				}
				rv := cacLock{Domain: g.h.Domain, Mode: keep, Flags: cacFlagRevoke, Lo: g.h.Lo, Hi: g.h.Hi,
					Txid: r.Txid, LeaseMs: uint32(d.lease / time.Millisecond)}
				_ = g.t.Send(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: rv.marshal()})
			}
		}
		if len(r.Released) > 0 || r.Grant != nil && len(d.waits) > 0 {
			released = true // keys freed, or a holder downgraded
		}
		if r.Op.Kind != quorumOpExpire {
			continue
		}
		for _, h := range r.Released {
			if g := d.grants[h.Holder]; g != nil {
				if g.t != nil { // asked to release and did not: too late now
					d.leaf.log.Warn("cache state expired while its transaction was open", "holder", h.Holder)
					_ = g.t.Close(ErrCacExpired)
				}
				delete(d.grants, h.Holder)
				d.leaf.cac.forget(h.Holder)
			}
		}
	}
	if released {
		d.retryWaits(false)
	}
}

// retryWaits proposes again the waiting requests whose conflicts are
// gone from the table (or all of them, when force).
func (d *quorumDriver) retryWaits(force bool) {
	keep := d.waits[:0]
	for _, w := range d.waits {
		if force || len(d.node.fsm.conflicts(w.op)) == 0 {
			d.propose(w.op, nil, w.done)
			continue
		}
		keep = append(keep, w)
	}
	d.waits = keep
}

// cacTick enforces the leases: holders that did not release within one
// are expired (the group drops their states, so the waiting request can
// be granted), orphans are expired, and when this master has been out of
// touch with a majority for half a lease it takes its own holders' states
// back, because the group may expire them at the end of the lease.
func (d *quorumDriver) cacTick(now time.Time) {
	for _, w := range d.waits {
		if w.expired || now.Sub(w.since) < d.lease {
			continue
		}
		w.expired = true
		// Only the states that were asked to go: one granted since then
		// gets its own revoke when this request is refused again.
		still := d.node.fsm.conflicts(w.op)
		for _, h := range w.conflict {
			if !slices.ContainsFunc(still, func(s cacHolding) bool { return s.key() == h.key() && s.Txid == h.Txid }) {
				continue
			}
			d.leaf.log.Info("cache state not released within the lease; expiring it", "holder", h.Holder,
				"domain", h.Domain, "keys", fmt.Sprintf("%d-%d", h.Lo, h.Hi))
			d.propose(quorumOp{Kind: quorumOpExpire, Holder: h.Holder, UpTo: h.Txid}, nil, func(quorumResult, error) {})
		}
	}
	// A request whose expiries did not go through (no majority) gives up.
	keep := d.waits[:0]
	for _, w := range d.waits {
		if now.Sub(w.since) > 2*d.lease+d.commitTimeout {
			delete(d.tries, w.op.Holder)
			w.done(quorumResult{}, errCacConflict)
			continue
		}
		keep = append(keep, w)
	}
	d.waits = keep
	for holder, g := range d.grants {
		if !g.orphaned.IsZero() && now.Sub(g.orphaned) >= d.lease {
			g.orphaned = now // once per lease, until it is gone
			d.propose(quorumOp{Kind: quorumOpExpire, Holder: holder, UpTo: g.h.Txid}, nil, func(quorumResult, error) {})
		}
	}
	if time.Duration(d.node.ContactAge())*d.tick > d.lease/2 {
		for _, g := range d.grants {
			if g.t != nil {
				d.leaf.log.Warn("no majority for half a lease; taking back a cache state", "holder", g.h.Holder)
				_ = g.t.Close(ErrQuorumTimeout)
				g.t, g.orphaned = nil, now
			}
		}
	}
}

// tooOld reports an entry proposed more than half a lease ago. The lease
// runs from when the group decided, so a leaf that applies a grant or a
// conflict that late (it was cut off, or far behind) must not act as if
// the holder still had the whole lease. At is the proposer's clock:
// masters' clocks must agree within a small part of a lease.
func (d *quorumDriver) tooOld(op quorumOp) bool {
	return op.At != 0 && time.Since(time.Unix(0, op.At)) > d.lease/2
}

// adoptRecovered takes the states this leaf's kernel held before a
// restart as orphans: the kernel revalidates them, or they expire.
func (d *quorumDriver) adoptRecovered(hs []cacHolding) {
	now := time.Now()
	for _, h := range hs {
		d.grants[h.Holder] = &cacGrant{h: h, orphaned: now}
	}
}

// shell answers the quorum commands of the leaf's debug shell; reply is
// called once, later, with the output. It reports false for other lines.
func (d *quorumDriver) shell(line string, reply func(string)) bool {
	cmd, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
	arg = strings.TrimSpace(arg)
	switch cmd {
	case "commit":
		d.submit(quorumOp{Kind: quorumOpCommit, Payload: []byte(arg)}, nil, func(r quorumResult, err error) {
			if err != nil {
				reply(fmt.Sprintf("commit failed: %v\n", err))
				return
			}
			reply(fmt.Sprintf("committed at txid %d\n", r.Txid))
		})
	case "lock":
		op, err := d.parseShellLock(arg)
		if err != nil {
			reply(err.Error() + "\n")
			return true
		}
		d.submit(op, nil, func(r quorumResult, err error) { reply(lockAnswer(r, err)) })
	case "locks":
		d.do(d.leaf.ctx, func() {
			var b strings.Builder
			for _, h := range d.node.Holdings() {
				if d.grants[h.Holder] != nil || h.Holder == d.shellHolder() {
					fmt.Fprintf(&b, "%-9s %-6s %d-%d txid %d\n", h.Mode, h.Domain, h.Lo, h.Hi, h.Txid)
				}
			}
			if b.Len() == 0 {
				b.WriteString("no cache states held through this leaf\n")
			}
			reply(b.String())
		})
	case "quorum":
		if verb, master, ok := strings.Cut(arg, " "); ok && (verb == "add" || verb == "remove") {
			d.leaf.spawn(func() { // Member waits on the driver's goroutine, which runs this
				members, learners, err := d.leaf.changeMember("quorum-"+verb, strings.TrimSpace(master))
				if err != nil {
					reply(fmt.Sprintf("quorum %s: %v\n", verb, err))
					return
				}
				reply(fmt.Sprintf("members %x learners %x\n", members, learners))
			})
			return true
		}
		s := d.Status()
		reply(fmt.Sprintf("master %x %s, leader %x, term %d, last txid %d, members %x, learners %x, quorum %v\n",
			s.ID, s.State, s.Leader, s.Term, s.LastTxid, s.Members, s.Learners, s.HasQuorum))
	default:
		return false
	}
	return true
}

// parseShellLock reads `<mode> <domain> <key>[-<key>]`.
func (d *quorumDriver) parseShellLock(arg string) (quorumOp, error) {
	f := strings.Fields(arg)
	if len(f) != 3 {
		return quorumOp{}, fmt.Errorf("usage: lock <INVAL|SHARED|EXCLUSIVE|MODIFIED> <TREE|INUM|ATTR|DIRENT> <key>[-<key>]")
	}
	mode, err := parseCacMode(strings.ToUpper(f[0]))
	if err != nil {
		return quorumOp{}, err
	}
	dom, err := parseCacDomain(strings.ToUpper(f[1]))
	if err != nil {
		return quorumOp{}, err
	}
	loS, hiS, ranged := strings.Cut(f[2], "-")
	lo, err := strconv.ParseUint(loS, 0, 64)
	hi := lo
	if err == nil && ranged {
		hi, err = strconv.ParseUint(hiS, 0, 64)
	}
	if err != nil || hi < lo {
		return quorumOp{}, fmt.Errorf("lock: key range %q is not <key>[-<key>] with the first no larger", f[2])
	}
	return quorumOp{Kind: quorumOpLock, Holder: d.shellHolder(), Domain: dom, Mode: mode, Lo: lo, Hi: hi}, nil
}

// shellHolder is the debug shell's holder: one per leaf, kept until an
// INVAL from the shell releases it.
func (d *quorumDriver) shellHolder() string { return d.leaf.info.Fsid.String() + "/shell" }

func lockAnswer(r quorumResult, err error) string {
	switch {
	case err != nil:
		return fmt.Sprintf("lock failed: %v\n", err)
	case r.Err != "":
		return fmt.Sprintf("lock refused: %s\n", r.Err)
	case r.Grant != nil:
		return fmt.Sprintf("granted %s %s %d-%d at txid %d\n", r.Grant.Mode, r.Grant.Domain, r.Grant.Lo, r.Grant.Hi, r.Txid)
	case len(r.Released) > 0:
		return fmt.Sprintf("released %d state(s) at txid %d\n", len(r.Released), r.Txid)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "conflict at txid %d; held by:\n", r.Txid)
	for _, h := range r.Conflict {
		fmt.Fprintf(&b, "  %s %s %s %d-%d\n", h.Holder, h.Mode, h.Domain, h.Lo, h.Hi)
	}
	return b.String()
}
