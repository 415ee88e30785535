package main

// The replicated state machine behind QRM_COMMIT and CAC_LOCK. Every master
// applies the same committed entries in the same order, so everything here
// must be a pure function of (state, txid, op): no clocks, no map-order
// dependent decisions, no I/O. Time only enters through op.At, which the
// proposer filled in and which is recorded but never compared with "now".
// Persistence is the store's business; the FSM only says which holdings
// changed since the last save (takeDirty).

import (
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// cacDomain is the namespace a cache state covers. DragonFly's 2013
// CAC_LOCK text names four; the key in each is an inclusive u64 range
// (inode numbers or directory hashes, the FSM does not care which).
// Domains are independent: a TREE holding does not conflict with an INUM
// holding on the same key, because the FSM has no notion of the namespace
// hierarchy; whoever proposes decides which domains a kernel op needs.
type cacDomain uint8

const (
	cacDomainNone cacDomain = iota
	cacTree                 // a whole subtree
	cacInum                 // create/delete by inode number or name
	cacAttr                 // attributes other than mtime
	cacDirent               // attributes + names directly under the inode
)

var cacDomainNames = [...]string{"NONE", "TREE", "INUM", "ATTR", "DIRENT"}

func (d cacDomain) String() string {
	if int(d) < len(cacDomainNames) {
		return cacDomainNames[d]
	}
	return fmt.Sprintf("domain(%d)", uint8(d))
}

func parseCacDomain(s string) (cacDomain, error) {
	for i, n := range cacDomainNames[1:] {
		if strings.EqualFold(s, n) {
			return cacDomain(i + 1), nil
		}
	}
	return 0, fmt.Errorf("unknown cache domain %q (want TREE, INUM, ATTR or DIRENT)", s)
}

// cacMode is a MESI cache state. The order matters: everything from
// EXCLUSIVE up excludes every other holder.
type cacMode uint8

const (
	cacInval cacMode = iota
	cacShared
	cacExclusive
	cacModified // EXCLUSIVE with dirty data: revoking it means a flush first
)

var cacModeNames = [...]string{"INVAL", "SHARED", "EXCLUSIVE", "MODIFIED"}

func (m cacMode) String() string {
	if int(m) < len(cacModeNames) {
		return cacModeNames[m]
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

func parseCacMode(s string) (cacMode, error) {
	for i, n := range cacModeNames {
		if strings.EqualFold(s, n) {
			return cacMode(i), nil
		}
	}
	return 0, fmt.Errorf("unknown cache mode %q (want INVAL, SHARED, EXCLUSIVE or MODIFIED)", s)
}

// cacCompatible reports whether two different holders may keep a and b on
// overlapping keys at the same time.
func cacCompatible(a, b cacMode) bool { return a == cacShared && b == cacShared }

// cacGrantAlign is the block a grant is widened to when nobody else holds
// anything in the extra keys, so a kernel walking neighbouring inodes does
// not need a quorum round per inode. It is a constant, not configuration:
// every master must widen identically or their lock tables diverge.
const cacGrantAlign = 16

// Limits checked before proposing and again when applying, so a bad entry
// from a buggy peer is rejected identically everywhere instead of growing
// the table without bound.
const (
	quorumMaxPayload = 1 << 20
	quorumMaxHolder  = 256
)

// quorumOpKind says what an entry asks the state machine to do.
type quorumOpKind uint8

const (
	quorumOpNone    quorumOpKind = iota
	quorumOpCommit               // QRM_COMMIT: order an opaque operation
	quorumOpLock                 // CAC_LOCK: acquire or change a cache state
	quorumOpRelease              // drop a holder's states in a range
	quorumOpExpire               // drop a holder's states after its lease ran out
	quorumOpMembers              // membership change (raft ConfChange entries)
	// quorumOpRevalidate confirms that Holder still has exactly the state
	// granted at UpTo, after its leaf restarted; it changes nothing.
	quorumOpRevalidate
)

var quorumOpNames = [...]string{"none", "commit", "lock", "release", "expire", "members", "revalidate"}

func (k quorumOpKind) String() string {
	if int(k) < len(quorumOpNames) {
		return quorumOpNames[k]
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// quorumOp is the body of a normal raft entry (see encodeQuorumEntry).
type quorumOp struct {
	Kind    quorumOpKind `json:"kind"`
	Payload []byte       `json:"payload,omitempty"` // Commit
	Holder  string       `json:"holder,omitempty"`  // Lock, Release, Expire: the leaf holding the state
	Domain  cacDomain    `json:"domain,omitempty"`  // Lock, Release
	Mode    cacMode      `json:"mode,omitempty"`    // Lock; INVAL means release
	Lo      uint64       `json:"lo,omitempty"`      // Lock, Release: inclusive key range
	Hi      uint64       `json:"hi,omitempty"`
	// UpTo limits Expire to states granted at or before this txid (0 = all),
	// so an expiry decided before the holder came back and was granted new
	// states does not wipe those too.
	UpTo uint64 `json:"upto,omitempty"`
	// At is the proposer's wall clock (unix ns). It is stored with grants
	// for operators and lease bookkeeping outside the FSM, never compared.
	At int64 `json:"at,omitempty"`
}

func (op quorumOp) validate() error {
	switch op.Kind {
	case quorumOpCommit:
		if len(op.Payload) > quorumMaxPayload {
			return fmt.Errorf("commit payload of %d bytes exceeds %d", len(op.Payload), quorumMaxPayload)
		}
		return nil
	case quorumOpLock, quorumOpRelease, quorumOpRevalidate:
		if op.Domain == cacDomainNone || int(op.Domain) >= len(cacDomainNames) {
			return fmt.Errorf("%s: invalid cache domain %d", op.Kind, op.Domain)
		}
		if op.Kind != quorumOpRelease && int(op.Mode) >= len(cacModeNames) {
			return fmt.Errorf("lock: invalid cache mode %d", op.Mode)
		}
		if op.Lo > op.Hi {
			return fmt.Errorf("%s: empty key range %d-%d", op.Kind, op.Lo, op.Hi)
		}
	case quorumOpExpire:
	default:
		return fmt.Errorf("unknown quorum op kind %d", op.Kind)
	}
	if op.Holder == "" || len(op.Holder) > quorumMaxHolder {
		return fmt.Errorf("%s: holder must be 1-%d bytes, got %d", op.Kind, quorumMaxHolder, len(op.Holder))
	}
	return nil
}

// cacHolding is one cache state one holder has on one key range.
type cacHolding struct {
	Holder string    `json:"holder"`
	Domain cacDomain `json:"domain"`
	Mode   cacMode   `json:"mode"`
	Lo     uint64    `json:"lo"`
	Hi     uint64    `json:"hi"`
	Txid   uint64    `json:"txid"` // the entry that granted it
	At     int64     `json:"at,omitempty"`
}

func (h cacHolding) String() string {
	return fmt.Sprintf("%s %s %s %d-%d txid=%d", h.Holder, h.Domain, h.Mode, h.Lo, h.Hi, h.Txid)
}

func (h cacHolding) overlaps(lo, hi uint64) bool { return h.Lo <= hi && lo <= h.Hi }

func compareHoldings(a, b cacHolding) int {
	return cmp.Or(cmp.Compare(a.Domain, b.Domain), cmp.Compare(a.Lo, b.Lo), cmp.Compare(a.Hi, b.Hi),
		strings.Compare(a.Holder, b.Holder))
}

// cacKey identifies a holding. One holder's holdings in a domain never
// overlap (a new grant trims the old ones), so (domain, lo, holder) is
// unique.
type cacKey struct {
	domain cacDomain
	lo     uint64
	holder string
}

func (h cacHolding) key() cacKey { return cacKey{h.Domain, h.Lo, h.Holder} }

// bytes is the bbolt key: ordered by domain, then lo, then holder, which
// is also the order snapshots list holdings in.
func (k cacKey) bytes() []byte {
	b := make([]byte, 9, 9+len(k.holder))
	b[0] = byte(k.domain)
	binary.BigEndian.PutUint64(b[1:], k.lo)
	return append(b, k.holder...)
}

// quorumOutcome is the FSM's deterministic answer to one op. Every master
// computes the same one; the proposer's leaf turns it into the reply.
type quorumOutcome struct {
	Grant    *cacHolding  // Lock granted (possibly wider than asked)
	Conflict []cacHolding // Lock refused: these holdings must be revoked first
	Released []cacHolding // states dropped by Release, Expire or an INVAL Lock
	Err      string       // op rejected (invalid or undecodable); nothing changed
	// Stale answers a Revalidate whose state is no longer held as it was
	// granted: the holder's cache must be invalidated.
	Stale bool
}

// quorumFSM is the lock table plus the applied index it reflects.
type quorumFSM struct {
	applied    uint64
	lastCommit uint64 // txid of the last Commit op
	holdings   map[cacDomain]map[cacKey]cacHolding
	dirty      map[cacKey]struct{}

	// The requests applied in the last quorumDedupWindow txids.
	seen      map[quorumReqKey]uint64
	seenQ     []quorumSeen // ascending txid
	seenNew   []quorumSeen // not saved yet
	seenFloor uint64       // entries below this txid are forgotten

	// removed are masters an operator took out of the group. Their
	// spans may still be seen; the leader must not add them back by
	// itself (an operator's add does).
	removed map[uint64]bool
	// bound is the node key each automatically joined master proved it
	// holds (its SHA-256): a later join for the same id under another
	// key is refused.
	bound map[uint64]quorumKeyFP
}

func newQuorumFSM() *quorumFSM {
	return &quorumFSM{holdings: map[cacDomain]map[cacKey]cacHolding{}, dirty: map[cacKey]struct{}{},
		seen: map[quorumReqKey]uint64{}, removed: map[uint64]bool{}, bound: map[uint64]quorumKeyFP{}}
}

// quorumBinding is one entry of the bound table as images hold it.
type quorumBinding struct {
	ID  uint64      `json:"id"`
	Key quorumKeyFP `json:"key"`
}

// boundList is the bound table, sorted by id.
func (f *quorumFSM) boundList() []quorumBinding {
	out := make([]quorumBinding, 0, len(f.bound))
	for id, k := range f.bound {
		out = append(out, quorumBinding{id, k})
	}
	slices.SortFunc(out, func(a, b quorumBinding) int { return cmp.Compare(a.ID, b.ID) })
	if len(out) == 0 {
		return nil
	}
	return out
}

// removedList is the removed masters, sorted.
func (f *quorumFSM) removedList() []uint64 {
	var out []uint64
	for id := range f.removed {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// quorumDedupWindow is how many txids back the FSM remembers which request
// each entry carried. A master hands a request to raft again when it
// cannot know whether its forward to the leader arrived (the link
// dropped, the leader changed, or nothing committed for an election
// timeout); whichever copy commits second is skipped on every master.
// The window counts txids, not time, so that every master forgets
// identically; it is far longer than a request's deadline at any rate
// the group can commit.
const quorumDedupWindow = 1 << 17

type quorumReqKey struct{ origin, reqID uint64 }

// quorumSeen is one remembered request, as the store and snapshots hold it.
type quorumSeen struct {
	Txid   uint64 `json:"txid"`
	Origin uint64 `json:"origin"`
	ReqID  uint64 `json:"req"`
}

// duplicate reports a request already applied within the window.
func (f *quorumFSM) duplicate(origin, reqID uint64) bool {
	_, ok := f.seen[quorumReqKey{origin, reqID}]
	return ok
}

// remember records the request applied at txid and forgets those that
// fell out of the window.
func (f *quorumFSM) remember(txid, origin, reqID uint64) {
	s := quorumSeen{Txid: txid, Origin: origin, ReqID: reqID}
	f.seen[quorumReqKey{origin, reqID}] = txid
	f.seenQ = append(f.seenQ, s)
	f.seenNew = append(f.seenNew, s)
	if txid <= quorumDedupWindow {
		return
	}
	floor := txid - quorumDedupWindow
	i := 0
	for i < len(f.seenQ) && f.seenQ[i].Txid < floor {
		delete(f.seen, quorumReqKey{f.seenQ[i].Origin, f.seenQ[i].ReqID})
		i++
	}
	f.seenQ, f.seenFloor = f.seenQ[i:], floor
	for len(f.seenNew) > 0 && f.seenNew[0].Txid < floor {
		f.seenNew = f.seenNew[1:]
	}
}

// takeSeen returns the requests remembered since the last call and the
// txid below which the store may forget.
func (f *quorumFSM) takeSeen() ([]quorumSeen, uint64) {
	n := f.seenNew
	f.seenNew = nil
	return n, f.seenFloor
}

func (f *quorumFSM) put(h cacHolding) {
	m := f.holdings[h.Domain]
	if m == nil {
		m = map[cacKey]cacHolding{}
		f.holdings[h.Domain] = m
	}
	m[h.key()] = h
	f.dirty[h.key()] = struct{}{}
}

func (f *quorumFSM) del(h cacHolding) {
	delete(f.holdings[h.Domain], h.key())
	f.dirty[h.key()] = struct{}{}
}

// inDomain returns the holdings of d overlapping [lo,hi], sorted, so that
// callers never depend on map order.
func (f *quorumFSM) inDomain(d cacDomain, lo, hi uint64) []cacHolding {
	var out []cacHolding
	for _, h := range f.holdings[d] {
		if h.overlaps(lo, hi) {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, compareHoldings)
	return out
}

// list returns every holding, sorted.
func (f *quorumFSM) list() []cacHolding {
	var out []cacHolding
	for _, m := range f.holdings {
		for _, h := range m {
			out = append(out, h)
		}
	}
	slices.SortFunc(out, compareHoldings)
	return out
}

// skip advances the applied index over an entry with nothing for the FSM
// (leader no-ops, membership changes, undecodable data).
func (f *quorumFSM) skip(txid uint64) {
	if txid > f.applied {
		f.applied = txid
	}
}

// apply executes op at txid. Entries at or below the applied index are
// ignored: after a restart raft may hand back entries the bbolt file
// already reflects, and applying a lock twice would move its txid.
func (f *quorumFSM) apply(txid uint64, op quorumOp) (quorumOutcome, bool) {
	if txid <= f.applied {
		return quorumOutcome{}, false
	}
	f.applied = txid
	if err := op.validate(); err != nil {
		return quorumOutcome{Err: err.Error()}, true
	}
	switch op.Kind {
	case quorumOpCommit:
		f.lastCommit = txid
		return quorumOutcome{}, true
	case quorumOpLock:
		if op.Mode == cacInval {
			return quorumOutcome{Released: f.trim(op.Holder, op.Domain, op.Lo, op.Hi)}, true
		}
		return f.lock(txid, op), true
	case quorumOpRelease:
		return quorumOutcome{Released: f.trim(op.Holder, op.Domain, op.Lo, op.Hi)}, true
	case quorumOpExpire:
		return quorumOutcome{Released: f.expire(op.Holder, op.UpTo)}, true
	case quorumOpRevalidate:
		for _, h := range f.inDomain(op.Domain, op.Lo, op.Hi) {
			if h.Holder == op.Holder && h.Lo == op.Lo && h.Hi == op.Hi && h.Mode == op.Mode && h.Txid == op.UpTo {
				return quorumOutcome{Grant: &h}, true
			}
		}
		return quorumOutcome{Stale: true}, true
	}
	return quorumOutcome{Err: fmt.Sprintf("unhandled op kind %s", op.Kind)}, true
}

// conflicts lists the other holders' states that stand in the way of op.
func (f *quorumFSM) conflicts(op quorumOp) []cacHolding {
	var conflict []cacHolding
	for _, h := range f.inDomain(op.Domain, op.Lo, op.Hi) {
		if h.Holder != op.Holder && !cacCompatible(h.Mode, op.Mode) {
			conflict = append(conflict, h)
		}
	}
	return conflict
}

func (f *quorumFSM) lock(txid uint64, op quorumOp) quorumOutcome {
	if conflict := f.conflicts(op); len(conflict) > 0 {
		return quorumOutcome{Conflict: conflict}
	}
	// Widen each side to the aligned block only where nobody, the
	// requester included, holds anything: that never creates a conflict
	// and never silently changes a state the requester already has.
	lo, hi := op.Lo, op.Hi
	if alo := lo &^ (cacGrantAlign - 1); alo < lo && len(f.inDomain(op.Domain, alo, lo-1)) == 0 {
		lo = alo
	}
	if ahi := hi | (cacGrantAlign - 1); ahi > hi && len(f.inDomain(op.Domain, hi+1, ahi)) == 0 {
		hi = ahi
	}
	f.trim(op.Holder, op.Domain, lo, hi)
	g := cacHolding{Holder: op.Holder, Domain: op.Domain, Mode: op.Mode, Lo: lo, Hi: hi, Txid: txid, At: op.At}
	f.put(g)
	return quorumOutcome{Grant: &g}
}

// trim removes holder's states on [lo,hi] in domain d, keeping the parts
// outside the range, and returns the parts removed.
func (f *quorumFSM) trim(holder string, d cacDomain, lo, hi uint64) []cacHolding {
	var released []cacHolding
	for _, h := range f.inDomain(d, lo, hi) {
		if h.Holder != holder {
			continue
		}
		f.del(h)
		cut := h
		if h.Lo < lo {
			left := h
			left.Hi = lo - 1
			f.put(left)
			cut.Lo = lo
		}
		if h.Hi > hi {
			right := h
			right.Lo = hi + 1
			f.put(right)
			cut.Hi = hi
		}
		released = append(released, cut)
	}
	return released
}

func (f *quorumFSM) expire(holder string, upTo uint64) []cacHolding {
	var released []cacHolding
	for _, h := range f.list() {
		if h.Holder == holder && (upTo == 0 || h.Txid <= upTo) {
			f.del(h)
			released = append(released, h)
		}
	}
	return released
}

// takeDirty returns what changed since the last call: holdings to write
// and keys to delete, both sorted so that bbolt sees the same write order
// on every master.
func (f *quorumFSM) takeDirty() (puts []cacHolding, dels []cacKey) {
	for k := range f.dirty {
		if h, ok := f.holdings[k.domain][k]; ok {
			puts = append(puts, h)
		} else {
			dels = append(dels, k)
		}
	}
	clear(f.dirty)
	slices.SortFunc(puts, compareHoldings)
	slices.SortFunc(dels, func(a, b cacKey) int {
		return cmp.Or(cmp.Compare(a.domain, b.domain), cmp.Compare(a.lo, b.lo), strings.Compare(a.holder, b.holder))
	})
	return puts, dels
}

// checkInvariants verifies what every grant decision relies on: no two
// holders with overlapping keys in one domain unless both are SHARED, and
// no holder overlapping itself.
func (f *quorumFSM) checkInvariants() error {
	for _, d := range []cacDomain{cacTree, cacInum, cacAttr, cacDirent} {
		hs := f.inDomain(d, 0, ^uint64(0))
		for i, a := range hs {
			if a.Mode == cacInval || a.Lo > a.Hi {
				return fmt.Errorf("malformed holding %s", a)
			}
			for _, b := range hs[i+1:] {
				if b.Lo > a.Hi {
					break // sorted by lo: nothing further overlaps a
				}
				if a.Holder == b.Holder {
					return fmt.Errorf("holder %s overlaps itself: %s / %s", a.Holder, a, b)
				}
				if !cacCompatible(a.Mode, b.Mode) {
					return fmt.Errorf("incompatible holdings overlap: %s / %s", a, b)
				}
			}
		}
	}
	return nil
}

// quorumFSMImage is the FSM as raft snapshots carry it and as the store's
// meta record holds it (without holdings there: those have their own
// bucket). JSON of sorted slices is deterministic, so two masters at the
// same index produce identical snapshot bytes.
type quorumFSMImage struct {
	Version    int          `json:"version"`
	Applied    uint64       `json:"applied"`
	LastCommit uint64       `json:"last_commit"`
	Holdings   []cacHolding `json:"holdings,omitempty"`
	Recent     []quorumSeen `json:"recent,omitempty"` // the dedup window, ascending txid
	Removed    []uint64     `json:"removed,omitempty"`
	// Bound: masters whose id is bound to a node key. Added after
	// version 1 images existed; absent means none.
	Bound []quorumBinding `json:"bound,omitempty"`
}

const quorumFSMImageVersion = 1

func (f *quorumFSM) encode() ([]byte, error) {
	b, err := json.Marshal(quorumFSMImage{Version: quorumFSMImageVersion, Applied: f.applied,
		LastCommit: f.lastCommit, Holdings: f.list(), Recent: f.seenQ, Removed: f.removedList(), Bound: f.boundList()})
	if err != nil {
		return nil, fmt.Errorf("encode quorum state at txid %d: %w", f.applied, err)
	}
	return b, nil
}

var errQuorumImage = errors.New("bad quorum state image")

// decodeQuorumFSM rebuilds an FSM from a snapshot. Empty data is the
// bootstrap snapshot: an empty table at index.
func decodeQuorumFSM(data []byte, index uint64) (*quorumFSM, error) {
	f := newQuorumFSM()
	f.applied = index
	if len(data) == 0 {
		return f, nil
	}
	var img quorumFSMImage
	if err := json.Unmarshal(data, &img); err != nil {
		return nil, fmt.Errorf("%w at txid %d: %w", errQuorumImage, index, err)
	}
	if img.Version != quorumFSMImageVersion {
		return nil, fmt.Errorf("%w at txid %d: version %d, want %d", errQuorumImage, index, img.Version, quorumFSMImageVersion)
	}
	if img.Applied != index {
		return nil, fmt.Errorf("%w: image is at txid %d, snapshot at %d", errQuorumImage, img.Applied, index)
	}
	f.lastCommit = img.LastCommit
	for _, id := range img.Removed {
		f.removed[id] = true
	}
	for _, b := range img.Bound {
		f.bound[b.ID] = b.Key
	}
	for _, h := range img.Holdings {
		f.put(h)
	}
	clear(f.dirty)
	for _, r := range img.Recent {
		f.remember(r.Txid, r.Origin, r.ReqID)
	}
	if err := f.checkInvariants(); err != nil {
		return nil, fmt.Errorf("%w at txid %d: %w", errQuorumImage, index, err)
	}
	return f, nil
}
