package main

// Every command and result code on our links, with the name logs print:
// DragonFly's (sys/sys/dmsg.h; /work/shared/reference/dmsg-protocol.md)
// and ours (docs/PROTOCOL.md). This file is the one table: a Cmd* or Err*
// wire constant declared anywhere else, or one without a name here, fails
// TestSeams.
//
// A command value is proto<<20 | code<<8 | the extended header's size in
// 64-byte units. The size is part of the command's identity (both
// DragonFly libraries dispatch on the exact value), so each constant
// spells out all three and says which struct size gives its units.

import "fmt"

// Protocols (bits 23..20 of cmd). CAC and QRM were named in DragonFly's 2012
// headers and left without payloads; docs/PROTOCOL.md defines ours.
const (
	ProtoLNK uint32 = 0x0 << 20
	ProtoDBG uint32 = 0x1 << 20
	ProtoHM2 uint32 = 0x2 << 20
	ProtoCAC uint32 = 0x3 << 20
	ProtoQRM uint32 = 0x4 << 20
	ProtoBLK uint32 = 0x5 << 20
	ProtoVOP uint32 = 0x6 << 20
)

var protoNames = [...]string{"LNK", "DBG", "HM2", "CAC", "QRM", "BLK", "VOP"}

// Commands we send or accept.
const (
	CmdLnkPad     = ProtoLNK | 0x000<<8 | 1 // 64-byte header
	CmdLnkPing    = ProtoLNK | 0x001<<8 | 1 // 64
	CmdLnkAuth    = ProtoLNK | 0x010<<8 | 2 // 128; DragonFly defines it and never sends it
	CmdLnkConn    = ProtoLNK | 0x011<<8 | 6 // 328, the newest layout
	CmdLnkSpan    = ProtoLNK | 0x012<<8 | 7 // 432
	CmdLnkVolconf = ProtoLNK | 0x020<<8 | 8 // 472
	CmdLnkError   = ProtoLNK | 0xFFF<<8 | 1 // 64
	CmdDbgShell   = ProtoDBG | 0x001<<8 | 1 // 64; the text is the aux data

	// Ours, all with 128-byte headers (PROTOCOL §6). DragonFly reserved
	// CAC_LOCK and QRM_COMMIT without payloads.
	CmdCacLock   = ProtoCAC | 0x001<<8 | 2 // §6.6
	CmdQrmCommit = ProtoQRM | 0x001<<8 | 2 // §6.4
	CmdQrmRaft   = ProtoQRM | 0x002<<8 | 2 // §6.3
	CmdQrmJoin   = ProtoQRM | 0x003<<8 | 2 // §6.2; aux: the node key and signature
)

// cmdNames names every command above, and DragonFly's block commands,
// which a leaf refuses (NOSUPP) but names in its logs.
var cmdNames = map[uint32]string{
	CmdLnkPad: "LNK_PAD", CmdLnkPing: "LNK_PING", CmdLnkAuth: "LNK_AUTH",
	CmdLnkConn: "LNK_CONN", CmdLnkSpan: "LNK_SPAN", CmdLnkVolconf: "LNK_HAMMER2_VOLCONF",
	CmdLnkError: "LNK_ERROR", CmdDbgShell: "DBG_SHELL",
	CmdCacLock: "CAC_LOCK", CmdQrmCommit: "QRM_COMMIT", CmdQrmRaft: "QRM_RAFT", CmdQrmJoin: "QRM_JOIN",
	ProtoBLK | 0x001<<8 | 2: "BLK_OPEN", ProtoBLK | 0x002<<8 | 2: "BLK_CLOSE",
	ProtoBLK | 0x003<<8 | 2: "BLK_READ", ProtoBLK | 0x004<<8 | 2: "BLK_WRITE",
	ProtoBLK | 0x005<<8 | 2: "BLK_FLUSH", ProtoBLK | 0x006<<8 | 2: "BLK_FREEBLKS",
	ProtoBLK | 0xFFF<<8 | 3: "BLK_ERROR",
}

var flagNames = []struct {
	bit  uint32
	name string
}{
	{FlagCreate, "CREATE"}, {FlagDelete, "DELETE"}, {FlagReply, "REPLY"},
	{FlagAbort, "ABORT"}, {FlagRevTrans, "REVTRANS"}, {FlagRevCirc, "REVCIRC"},
}

// CmdString names a command for logs, e.g. "LNK_SPAN|CREATE|REPLY". A
// command without a name is shown by family, code and header size, e.g.
// "QRM_0x005(128B)", so that a log says which protocol a peer spoke.
func CmdString(cmd uint32) string {
	base := cmd & maskBaseCmd
	name, ok := cmdNames[base]
	switch p := (base & maskProto) >> 20; {
	case ok:
	case int(p) < len(protoNames):
		name = fmt.Sprintf("%s_%#03x(%dB)", protoNames[p], (base&maskCmd)>>8, cmdHdrSize(base))
	default:
		name = fmt.Sprintf("%#08x", base)
	}
	for _, f := range flagNames {
		if cmd&f.bit != 0 {
			name += "|" + f.name
		}
	}
	return name
}

// Result and error codes carried in the header's error field. 0x01-0x1F
// are local iocom errors in DragonFly, never sent; 0x20-0x24 are
// DragonFly's; ours follow them.
const (
	ErrOK       uint32 = 0x00
	ErrNoSupp   uint32 = 0x20 // nobody serves that command here
	ErrLostLink uint32 = 0x21 // synthesized locally for every open transaction of a lost link
	ErrIO       uint32 = 0x22
	ErrParam    uint32 = 0x23 // malformed or refused; the log line names the field
	ErrCantCirc uint32 = 0x24 // the circuit (span) it was opened under is gone

	ErrQuorumTimeout uint32 = 0x25 // no majority in time; the request was never applied
	ErrQuorumUnknown uint32 = 0x26 // in a log but not committed in time: outcome unknown
	ErrNoQuorum      uint32 = 0x27 // this leaf serves no quorum group, or reaches no master
	// ErrCacConflict answers a request whose conflicting holders did not
	// let go within the lease (they were asked to and then expired, and
	// others took the keys meanwhile, more times than a request retries).
	ErrCacConflict uint32 = 0x28
	// ErrCacExpired closes a granted CAC_LOCK whose state the group
	// expired: the holder did not release it within the lease after being
	// asked, or its leaf lost the group. The kernel must drop the state at
	// once.
	ErrCacExpired uint32 = 0x29
	// ErrNoPerm: the peer's link is unprivileged, and what it asked for
	// changes cluster state (docs/SECURITY.md).
	ErrNoPerm uint32 = 0x2A
	// ErrQuorumBusy: the master's quorum driver had as many requests
	// waiting as it takes (quorumInboxRequests); this one was refused
	// before it was proposed, so it was never applied and may be sent
	// again (PROTOCOL §6.4).
	ErrQuorumBusy uint32 = 0x2B
)

var errNames = map[uint32]string{
	ErrOK: "OK", ErrNoSupp: "NOSUPP", ErrLostLink: "LOSTLINK", ErrIO: "IO", ErrParam: "PARAM",
	ErrCantCirc: "CANTCIRC", ErrQuorumTimeout: "QUORUM_TIMEOUT", ErrQuorumUnknown: "QUORUM_UNKNOWN",
	ErrNoQuorum: "NO_QUORUM", ErrCacConflict: "CAC_CONFLICT", ErrCacExpired: "CAC_EXPIRED",
	ErrNoPerm: "NOPERM", ErrQuorumBusy: "QUORUM_BUSY",
}

// ErrString names an error code for logs as the docs write it, e.g.
// "0x23 PARAM"; a code without a name is its number.
func ErrString(code uint32) string {
	if n, ok := errNames[code]; ok {
		return fmt.Sprintf("0x%02x %s", code, n)
	}
	return fmt.Sprintf("0x%02x", code)
}

// quorumJoinResult is a member's answer to QRM_JOIN, in the payload's
// result byte (PROTOCOL §6.2).
type quorumJoinResult uint8

const (
	joinNone         quorumJoinResult = iota // a request
	joinAccepted                             // verified and remembered; the leader adds it
	joinMember                               // already a voter or learner
	joinNotMember                            // the answering master is in no group itself
	joinWrongCluster                         // pfs_clid is not this group's
	joinWrongID                              // from is not masterID(fsid), or to is not the member
	joinUntrusted                            // the key is not in the member's trusted keys
	joinBadSignature                         // the signature does not verify
	joinRemoved                              // an operator removed this master
	joinRebind                               // the id is bound to another key
	joinClock                                // signed too far from the member's clock
	joinBusy                                 // too many joiners waiting
)

var quorumJoinResultNames = [...]string{"none", "accepted", "already a member", "not a member itself",
	"wrong cluster", "id does not match the fsid", "untrusted key", "bad signature", "removed by an operator",
	"id bound to another key", "clock skew", "too many joiners"}

func (r quorumJoinResult) String() string {
	if int(r) < len(quorumJoinResultNames) {
		return quorumJoinResultNames[r]
	}
	return fmt.Sprintf("result(%d)", uint8(r))
}
