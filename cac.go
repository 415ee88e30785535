package main

// CAC_LOCK: cache states the kernel asks its leaf for, decided by the
// quorum group (quorum_fsm.go holds the rules). The kernel opens a CAC_LOCK
// transaction; a grant keeps it open while the state is held, and the
// kernel's DELETE releases it. The debug shell offers the same by hand.

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// CmdCacLock is CAC_LOCK (protocol 0x3, code 0x001, 128-byte header).
var CmdCacLock = mkcmd(ProtoCAC, 0x001, 128)

// ErrCacConflict answers a request other holders' states stand in the way
// of; their revocation is not served yet (docs/PROTOCOL.md §6.6).
const ErrCacConflict = 0x28

// cacLock is the CAC_LOCK payload.
type cacLock struct {
	Domain cacDomain
	Mode   cacMode
	Lo, Hi uint64
	Txid   uint64 // in grants: the transaction the grant is valid at
}

func (c *cacLock) marshal() []byte {
	b := newExt(CmdCacLock)
	b[0x40-HdrSize], b[0x41-HdrSize] = byte(c.Domain), byte(c.Mode)
	le := binary.LittleEndian
	le.PutUint64(b[0x48-HdrSize:], c.Lo)
	le.PutUint64(b[0x50-HdrSize:], c.Hi)
	le.PutUint64(b[0x58-HdrSize:], c.Txid)
	return b
}

func parseCacLock(ext []byte) (cacLock, error) {
	if err := needExt(ext, "CAC_LOCK", 0x60); err != nil {
		return cacLock{}, err
	}
	le := binary.LittleEndian
	c := cacLock{Domain: cacDomain(ext[0x40-HdrSize]), Mode: cacMode(ext[0x41-HdrSize]),
		Lo: le.Uint64(ext[0x48-HdrSize:]), Hi: le.Uint64(ext[0x50-HdrSize:]), Txid: le.Uint64(ext[0x58-HdrSize:])}
	switch {
	case c.Domain == cacDomainNone || int(c.Domain) >= len(cacDomainNames):
		return c, wireErr("domain", uint64(c.Domain), "not TREE, INUM, ATTR or DIRENT")
	case int(c.Mode) >= len(cacModeNames):
		return c, wireErr("mode", uint64(c.Mode), "not INVAL, SHARED, EXCLUSIVE or MODIFIED")
	case c.Lo > c.Hi:
		return c, wireErr("key", c.Lo, "range ends at %#x, before it starts", c.Hi)
	}
	return c, nil
}

// holder names this leaf in the lock table; each kernel transaction holds
// under its own name below it (holder()/N), so that closing one grant can
// never free the keys of another the same leaf still holds.
func (d *quorumDriver) holder() string { return d.leaf.info.Fsid.String() }

func (d *quorumDriver) holdsThrough(h cacHolding) bool {
	return h.Holder == d.holder() || strings.HasPrefix(h.Holder, d.holder()+"/")
}

// lock serves the kernel's CAC_LOCK.
func (d *quorumDriver) lock(t *Trans, m *Msg) {
	req, err := parseCacLock(m.Ext)
	if err != nil {
		d.leaf.log.Warn("bad CAC_LOCK from the kernel", "err", err)
		_ = t.Close(ErrParam)
		return
	}
	holder := fmt.Sprintf("%s/%d", d.holder(), d.lockSeq.Add(1))
	drop := quorumOp{Kind: quorumOpExpire, Holder: holder} // all of this holder's states
	ignore := func(quorumResult, error) {}
	// abandoned and granted belong to the driver's goroutine.
	abandoned, granted := false, false
	t.SetHandler(func(t *Trans, m *Msg) {
		if m.Cmd&FlagDelete == 0 {
			return
		}
		// Released or given up: one trip through the driver's queue, so it
		// is proposed before anything the kernel asks next.
		d.do(d.leaf.ctx, func() {
			abandoned = true
			if granted {
				d.propose(drop, nil, ignore)
			}
		})
		_ = t.Close(ErrOK)
	})
	op := quorumOp{Kind: quorumOpLock, Holder: holder, Domain: req.Domain, Mode: req.Mode, Lo: req.Lo, Hi: req.Hi}
	d.submit(op, nil, func(r quorumResult, err error) {
		switch {
		case err != nil:
			_ = t.Close(quorumErrCode(err))
		case r.Err != "":
			_ = t.Close(ErrParam)
		case r.Grant != nil:
			granted = true
			if abandoned { // the kernel gave up before the answer came
				d.propose(drop, nil, ignore)
				return
			}
			g := cacLock{Domain: r.Grant.Domain, Mode: r.Grant.Mode, Lo: r.Grant.Lo, Hi: r.Grant.Hi, Txid: r.Txid}
			_ = t.Send(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: g.marshal()})
		case len(r.Released) > 0 || req.Mode == cacInval:
			_ = t.Send(&Msg{Header: Header{Cmd: CmdCacLock | FlagDelete}, Ext: (&cacLock{Domain: req.Domain,
				Mode: cacInval, Lo: req.Lo, Hi: req.Hi, Txid: r.Txid}).marshal()})
		default:
			_ = t.Close(ErrCacConflict)
		}
	})
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
				if d.holdsThrough(h) {
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
				members, err := d.leaf.changeMember("quorum-"+verb, strings.TrimSpace(master))
				if err != nil {
					reply(fmt.Sprintf("quorum %s: %v\n", verb, err))
					return
				}
				reply(fmt.Sprintf("members %x\n", members))
			})
			return true
		}
		s := d.Status()
		reply(fmt.Sprintf("master %x %s, leader %x, term %d, last txid %d, members %x, quorum %v\n",
			s.ID, s.State, s.Leader, s.Term, s.LastTxid, s.Members, s.HasQuorum))
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
	return quorumOp{Kind: quorumOpLock, Holder: d.holder() + "/shell", Domain: dom, Mode: mode, Lo: lo, Hi: hi}, nil
}

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
