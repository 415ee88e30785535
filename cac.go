package main

// CAC_LOCK: cache states the kernel asks its leaf for, decided by the
// quorum group (quorum_fsm.go holds the rules). The kernel opens a CAC_LOCK
// transaction; a grant keeps it open while the state is held, and the
// kernel's DELETE releases it. The debug shell offers the same by hand.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
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
	revokeBy time.Time // ... and by when it must have (then we close its transaction)
	orphaned time.Time // when the holder's link went (zero: still there)
	// freeAt is set when this master closed the holder's transaction
	// itself: the group is asked to drop the state no sooner, since the
	// kernel learns of the close (or its revoke's time runs out) up to a
	// delivery later (cacDeliveryShare). released: the transaction has
	// since ended, and the state waits only for freeAt.
	freeAt   time.Time
	released bool
}

// cacDeliveryShare is the share of the lease (a tenth) kept as the margin
// for a message from a leaf to reach its kernel and be acted on. The
// kernel times a revoke from when it receives it, the master from when it
// sent it; and a leaf that forwards a master's close to its kernel
// answers the master before the kernel has read it. So a revoke gives the
// kernel its time less this margin, and a state whose transaction the
// master closed is freed no sooner than the margin after the close
// (docs/PROTOCOL.md §6.6: the assumption is delivery on the local kernel
// link, and through the leaf that forwards, within it).
const cacDeliveryShare = 10

// deliveryMargin is cacDeliveryShare's margin for this driver's lease.
func (d *quorumDriver) deliveryMargin() time.Duration { return d.lease / cacDeliveryShare }

// cacWait is a lock request whose keys other holders have: they were
// asked to release them, and the request is proposed again when they did
// or, after the lease, when they were expired.
type cacWait struct {
	r        *cacRequest
	op       quorumOp
	conflict []cacHolding
	since    time.Time
	expired  bool
}

// cacMaxTries bounds how often one request is refused for conflicts
// before its kernel gets ErrCacConflict.
const cacMaxTries = 4

// cacRequest is one CAC_LOCK transaction this master serves: its
// kernel's, or one another leaf forwarded through a circuit (req.Holder
// set). The driver's goroutine owns it. The transaction's handler runs on
// the link's reader and only posts to the request's mailbox, which the
// inbox guards.
type cacRequest struct {
	t   *Trans
	req cacLock // as opened (the holder filled in once claimed)
	own bool    // from this leaf's kernel: the leaf names the holder and records its states

	holder  string // "" until the driver took the request
	tries   int    // conflicts met in a row
	granted bool   // a state was granted on t
	gone    bool   // the kernel closed t

	// under the inbox's lock
	mail   cacMail
	queued bool
}

// cacMail is what a request's kernel said since the driver last looked.
type cacMail struct {
	mode   cacMode // a mode change asked for on the granted transaction; INVAL: none
	closed bool    // the kernel released it (DELETE)
	lost   bool    // ... or the link did (LOSTLINK)
}

// lock serves a CAC_LOCK opened by this leaf's kernel or forwarded by
// another leaf through a circuit. On the link's reader it only checks the
// payload and hands the request to the driver.
func (d *quorumDriver) lock(t *Trans, m *Msg) {
	req, err := parseCacLock(m.Ext)
	if err != nil {
		d.log.Warn("bad CAC_LOCK", "link", t.Link().Name(), "err", err)
		_ = t.Close(ErrParam)
		return
	}
	r := &cacRequest{t: t, req: req, own: req.Holder.IsNil()}
	if !d.hand(t, func() { d.startLock(r) }) {
		return
	}
	t.SetHandler(func(t *Trans, m *Msg) { d.lockMessage(r, t, m) })
}

// lockMessage takes what the kernel sends on an open CAC_LOCK, on the
// link's reader.
func (d *quorumDriver) lockMessage(r *cacRequest, t *Trans, m *Msg) {
	if m.Cmd&FlagDelete == 0 {
		// The kernel changes the mode of the state it holds: a downgrade
		// answering a revoke, or an upgrade it needs.
		c, err := parseCacLock(m.Ext)
		if m.Cmd&maskBaseCmd != CmdCacLock || err != nil || c.Mode == cacInval {
			d.log.Warn("ignored a message on a granted CAC_LOCK (release with DELETE)", "link", t.Link().Name(),
				"cmd", CmdString(m.Cmd), "err", err)
			return
		}
		d.inbox.post(r, func(mail *cacMail) { mail.mode = c.Mode })
		return
	}
	lost := m.Error == ErrLostLink
	d.inbox.post(r, func(mail *cacMail) { mail.closed, mail.lost = true, lost })
	_ = t.Close(ErrOK)
}

// startLock names the request's holder and proposes it.
func (d *quorumDriver) startLock(r *cacRequest) {
	if r.own && !d.cac.claim(&r.req) {
		_ = r.t.Close(ErrOK) // a revalidation of nothing we know: drop it
		return
	}
	r.holder = r.req.holder()
	op := quorumOp{Kind: quorumOpLock, Holder: r.holder, Domain: r.req.Domain, Mode: r.req.Mode, Lo: r.req.Lo, Hi: r.req.Hi}
	if r.req.Flags&cacFlagRevalidate != 0 {
		op.Kind, op.UpTo = quorumOpRevalidate, r.req.Txid
	}
	d.proposeLock(r, op)
}

// lockNews acts on what the request's kernel said meanwhile. A release
// wins over a mode change it came with.
func (d *quorumDriver) lockNews(r *cacRequest, mail cacMail) {
	if r.holder == "" || r.gone {
		return // never taken (nothing to release), or already released
	}
	switch {
	case mail.closed:
		r.gone = true
		if r.granted {
			d.ended(r.holder, mail.lost)
		}
		if r.own && !mail.lost {
			d.cac.forget(r.holder)
		}
	case mail.mode != cacInval:
		if g := d.grants[r.holder]; g != nil && g.t == r.t {
			d.proposeLock(r, quorumOp{Kind: quorumOpLock, Holder: r.holder, Domain: g.h.Domain, Mode: mail.mode, Lo: g.h.Lo, Hi: g.h.Hi})
		}
	}
}

func (d *quorumDriver) proposeLock(r *cacRequest, op quorumOp) {
	d.propose(op, nil, func(res quorumResult, err error) { d.lockAnswer(r, op, res, err) })
}

// lockAnswer answers the kernel with what the group decided on op.
func (d *quorumDriver) lockAnswer(r *cacRequest, op quorumOp, res quorumResult, err error) {
	t := r.t
	if err != nil || len(res.Conflict) == 0 {
		r.tries = 0
	}
	switch {
	case err != nil:
		_ = t.Close(quorumErrCode(err))
	case res.Err != "":
		_ = t.Close(ErrParam)
	case res.Stale:
		d.log.Info("cache state no longer held as granted; the kernel must drop it", "holder", r.holder)
		if r.own {
			d.cac.forget(r.holder)
		}
		_ = t.Close(ErrOK)
	case res.Grant != nil:
		r.granted = true
		d.obs.cacGrant()
		d.grants[r.holder] = &cacGrant{h: *res.Grant, t: t}
		if r.gone { // the kernel gave up before the answer came
			d.ended(r.holder, false)
			return
		}
		if now := d.clock.Now(); !d.holdable(now) {
			// Decided long ago, or this master has not heard the group
			// confirm its commit index for half a lease (it was cut off
			// or behind): a conflict after it may already have run its
			// lease out.
			d.log.Warn("cache grant applied too late to hand out; giving it back", "holder", r.holder,
				"renewed", d.renewedAgo(now), "answer", ErrString(ErrCacExpired))
			delete(d.grants, r.holder)
			d.propose(quorumOp{Kind: quorumOpExpire, Holder: r.holder, UpTo: res.Grant.Txid}, nil, func(quorumResult, error) {})
			_ = t.Close(ErrCacExpired)
			return
		}
		if r.own {
			d.cac.granted(*res.Grant)
		}
		out := cacLock{Domain: res.Grant.Domain, Mode: res.Grant.Mode, Lo: res.Grant.Lo, Hi: res.Grant.Hi, Txid: res.Grant.Txid}
		_ = t.Send(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: out.marshal()})
	case len(res.Conflict) > 0:
		d.obs.cacConflict()
		d.waitFor(r, op, res.Conflict)
	default: // an INVAL request: released what it named
		if r.own {
			d.cac.forget(r.holder)
		}
		_ = t.Send(&Msg{Header: Header{Cmd: CmdCacLock | FlagDelete}, Ext: (&cacLock{Domain: r.req.Domain,
			Mode: cacInval, Lo: r.req.Lo, Hi: r.req.Hi, Txid: res.Txid}).marshal()})
	}
}

// ended drops a grant whose transaction closed. A release drops the state
// at once; a lost link leaves it for the lease, since the holder's kernel
// may not know yet that it must stop using it; and the answer to a close
// of this master's own waits until freeAt, since a leaf that forwards
// answers before its kernel has read the close.
func (d *quorumDriver) ended(holder string, lost bool) {
	g := d.grants[holder]
	if g == nil {
		return
	}
	now := d.clock.Now()
	if lost {
		g.t, g.orphaned = nil, now
		return
	}
	if now.Before(g.freeAt) { // this master closed it: its kernel may not know yet
		g.t, g.released = nil, true
		return
	}
	delete(d.grants, holder)
	d.propose(quorumOp{Kind: quorumOpExpire, Holder: holder}, nil, func(quorumResult, error) {})
}

// waitFor parks a refused lock request until its conflicts are gone.
func (d *quorumDriver) waitFor(r *cacRequest, op quorumOp, conflict []cacHolding) {
	if r.tries++; r.tries > cacMaxTries {
		d.lockAnswer(r, op, quorumResult{}, errCacConflict)
		return
	}
	// Each refusal gives the holders in the way a whole lease from now:
	// they are asked to release only as this conflict is applied.
	d.waits = append(d.waits, &cacWait{r: r, op: op, conflict: conflict, since: d.clock.Now()})
}

// cacApplied acts on what the group decided: holders of ours in someone's
// way are asked to release, and requests waiting on released keys go
// again.
func (d *quorumDriver) cacApplied(applied []quorumResult) {
	released := false
	for _, r := range applied {
		for _, h := range r.Conflict {
			if g := d.grants[h.Holder]; g != nil && g.t != nil && g.revoked.IsZero() {
				now := d.clock.Now()
				g.revoked = now
				// The kernel times its part from when the revoke reaches it:
				// it gets the margin less, so that its time is out by
				// revokeBy, when this master takes the state back.
				within := d.revokeWithin(r.Txid, now)
				kernel := within - d.deliveryMargin()
				if kernel < time.Millisecond { // the requester's lease may be nearly out: no time to flush politely
					d.log.Warn("conflict applied too late for a revoke; taking the state back", "holder", h.Holder,
						"renewed", d.renewedAgo(now), "answer", ErrString(ErrCacExpired))
					_ = g.t.Close(ErrCacExpired)
					g.t, g.orphaned, g.freeAt = nil, now, now.Add(d.deliveryMargin())
					continue
				}
				g.revokeBy = now.Add(within)
				// A reader in the way of a writer must go; a writer in the
				// way of a reader may stay as a reader.
				keep := cacInval
				if r.Op.Mode == cacShared && g.h.Mode >= cacExclusive {
					keep = cacShared
				}
				rv := cacLock{Domain: g.h.Domain, Mode: keep, Flags: cacFlagRevoke, Lo: g.h.Lo, Hi: g.h.Hi,
					Txid: r.Txid, LeaseMs: uint32(kernel / time.Millisecond)}
				_ = g.t.Send(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: rv.marshal()})
				d.obs.cacRevoke()
			}
		}
		if len(r.Released) > 0 || r.Grant != nil && len(d.waits) > 0 {
			released = true // keys freed, or a holder downgraded
		}
		if r.Op.Kind != quorumOpExpire {
			continue
		}
		d.obs.cacExpire(len(r.Released))
		for _, h := range r.Released {
			if g := d.grants[h.Holder]; g != nil {
				if g.t != nil { // asked to release and did not: too late now
					d.log.Warn("cache state expired while its transaction was open", "holder", h.Holder,
						"answer", ErrString(ErrCacExpired))
					_ = g.t.Close(ErrCacExpired)
				}
				delete(d.grants, h.Holder)
				d.cac.forget(h.Holder)
			}
		}
	}
	if released {
		d.retryWaits()
	}
}

// retryWaits proposes again the waiting requests whose conflicts are
// gone from the table.
func (d *quorumDriver) retryWaits() {
	keep := d.waits[:0]
	for _, w := range d.waits {
		if len(d.node.Conflicts(w.op)) == 0 {
			d.proposeLock(w.r, w.op)
			continue
		}
		keep = append(keep, w)
	}
	d.waits = keep
}

// cacTick enforces the leases: holders that did not release within one
// are expired (the group drops their states, so the waiting request can
// be granted), orphans are expired, and this master takes its own
// holders' states back when their time is out: a revoked holder's, or
// every one once the group has not renewed this master's view for half a
// lease (cac_lease.go), because the group may expire them after a lease.
// Then it asks for a renewal if one is due.
func (d *quorumDriver) cacTick(now time.Time) {
	for _, w := range d.waits {
		if w.expired || now.Sub(w.since) < d.lease {
			continue
		}
		w.expired = true
		// Only the states that were asked to go: one granted since then
		// gets its own revoke when this request is refused again.
		still := d.node.Conflicts(w.op)
		for _, h := range w.conflict {
			if !slices.ContainsFunc(still, func(s cacHolding) bool { return s.key() == h.key() && s.Txid == h.Txid }) {
				continue
			}
			d.log.Info("cache state not released within the lease; expiring it", "holder", h.Holder,
				"domain", h.Domain, "keys", fmt.Sprintf("%d-%d", h.Lo, h.Hi))
			d.propose(quorumOp{Kind: quorumOpExpire, Holder: h.Holder, UpTo: h.Txid}, nil, func(quorumResult, error) {})
		}
	}
	// A request whose expiries did not go through (no majority) gives up.
	keep := d.waits[:0]
	for _, w := range d.waits {
		if now.Sub(w.since) > 2*d.lease+d.commitTimeout {
			d.lockAnswer(w.r, w.op, quorumResult{}, errCacConflict)
			continue
		}
		keep = append(keep, w)
	}
	d.waits = keep
	// States whose transaction this master closed, and whose kernels have
	// had the margin to learn of it since, go now.
	for _, holder := range slices.Sorted(maps.Keys(d.grants)) {
		if g := d.grants[holder]; g.released && !now.Before(g.freeAt) {
			delete(d.grants, holder)
			d.propose(quorumOp{Kind: quorumOpExpire, Holder: holder}, nil, func(quorumResult, error) {})
		}
	}
	var due []string
	for holder, g := range d.grants {
		if !g.orphaned.IsZero() && now.Sub(g.orphaned) >= d.lease {
			due = append(due, holder)
		}
	}
	slices.Sort(due) // so that expiries take txids in the same order on every run
	for _, holder := range due {
		g := d.grants[holder]
		g.orphaned = now // once per lease, until it is gone
		d.propose(quorumOp{Kind: quorumOpExpire, Holder: holder, UpTo: g.h.Txid}, nil, func(quorumResult, error) {})
	}
	// A holder asked to release and still holding when its time is out
	// loses the state now: the group may expire it soon after.
	for _, holder := range slices.Sorted(maps.Keys(d.grants)) {
		if g := d.grants[holder]; g.t != nil && !g.revokeBy.IsZero() && !now.Before(g.revokeBy) {
			d.log.Warn("cache state not released within its revoke; taking it back", "holder", holder,
				"answer", ErrString(ErrCacExpired))
			_ = g.t.Close(ErrCacExpired)
			g.t, g.orphaned, g.freeAt = nil, now, g.revokeBy // the kernel's own time ran out a margin ago
		}
	}
	if !d.holdable(now) {
		for _, holder := range slices.Sorted(maps.Keys(d.grants)) {
			if g := d.grants[holder]; g.t != nil {
				d.log.Warn("the group has not confirmed this master's view for half a lease; taking back a cache state",
					"holder", g.h.Holder, "renewed", d.renewedAgo(now), "answer", ErrString(ErrQuorumTimeout))
				_ = g.t.Close(ErrQuorumTimeout)
				g.t, g.orphaned, g.freeAt = nil, now, now.Add(d.deliveryMargin())
			}
		}
	}
	d.renewLeases(now)
}

// renewedAgo says, for a log line, how long ago the last renewal was.
func (d *quorumDriver) renewedAgo(now time.Time) string {
	f := d.leases.fresh()
	if f.IsZero() {
		return "never"
	}
	return now.Sub(f).Round(time.Millisecond).String() + " ago"
}

// adoptRecovered takes the states this leaf's kernel held before a
// restart as orphans: the kernel revalidates them, or they expire.
func (d *quorumDriver) adoptRecovered(hs []cacHolding) {
	now := d.clock.Now()
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
		ok := d.inbox.put(inboxRequest, func() {
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
		if !ok {
			d.busy("a shell command")
			reply(fmt.Sprintf("locks: %v\n", errQuorumBusy))
		}
	case "quorum":
		if verb, master, ok := strings.Cut(arg, " "); ok && (verb == "add" || verb == "remove") {
			d.host.spawn(func() { // Member waits for the driver; the link's reader, which runs this, must not
				members, learners, err := d.host.changeMember("quorum-"+verb, strings.TrimSpace(master))
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
func (d *quorumDriver) shellHolder() string { return d.fsid.String() + "/shell" }

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
