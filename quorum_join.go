package main

// Joining the quorum group. A LNK_SPAN says that a MASTER PFS exists
// somewhere in the cluster; it proves nothing about who sent it. So a span
// alone never adds a voter: a master that is not a member asks each member
// master to admit it with QRM_JOIN, a request signed by its node's Ed25519
// key, and a member accepts only a key its leaf trusts (remote/*.pub or
// the config, the same keys its links are authenticated against). The
// leader adds a verified joiner as a learner, binding its id to the key in
// the replicated state, and promotes it to voter once it has caught up.
//
// verifyJoin and quorumJoins are deterministic and do no I/O, so the
// in-memory harness (quorum_test.go) runs exactly what the daemon runs;
// the driver methods at the end of the file carry them over dmsg.

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// qrmJoinAuxSize is a request's aux data: the Ed25519 public key (32
// bytes) then the signature (64 bytes). An answer has none.
const qrmJoinAuxSize = ed25519.PublicKeySize + ed25519.SignatureSize

// quorumJoinDomain starts every signed join statement. The node key also
// signs QUIC's TLS handshakes, whose signed content starts with 64 spaces
// and a TLS context string; this prefix can never be mistaken for that,
// nor a TLS signature for a join.
const quorumJoinDomain = "hammer2-leaf quorum join v1\x00"

// quorumJoinMaxSkew bounds how far a request's signing time may be from
// the member's clock. It limits what a recorded request is worth to
// someone replaying it (the same master asking again, within the
// window), and is wide enough for any clock NTP keeps. (The leases do
// not compare clocks at all: cac_lease.go.)
const quorumJoinMaxSkew = 10 * time.Minute

// quorumMaxJoiners bounds the verified joiners a member remembers. Masters
// are added one at a time by operators; 16 waiting at once is far beyond a
// real cluster, and bounds what even trusted keys can make us hold.
const quorumMaxJoiners = 16

// quorumJoinerSweeps is how many sweeps a verified joiner is remembered
// without asking again. A joiner asks every sweep, so 20 rides out a
// lost request or a slow link; one that went away is forgotten.
const quorumJoinerSweeps = 20

// qrmJoin is the QRM_JOIN payload:
//
//	0x40 from: the joining master's raft id (u64)
//	0x48 to: the member's raft id (u64)
//	0x50 pfs_clid of the group (uuid)
//	0x60 pfs_fsid of the joining master (uuid)
//	0x70 time the request was signed (i64, unix seconds)
//	0x78 result (u8): 0 in a request, the member's answer in the reply
type qrmJoin struct {
	From, To   uint64
	Clid, Fsid UUID
	Time       int64
	Result     quorumJoinResult
	Key        ed25519.PublicKey // request: aux data
	Sig        []byte
}

func (j *qrmJoin) marshal() []byte {
	b := newExt(CmdQrmJoin)
	le := binary.LittleEndian
	le.PutUint64(b[0x40-HdrSize:], j.From)
	le.PutUint64(b[0x48-HdrSize:], j.To)
	copy(b[0x50-HdrSize:], j.Clid[:])
	copy(b[0x60-HdrSize:], j.Fsid[:])
	le.PutUint64(b[0x70-HdrSize:], uint64(j.Time))
	b[0x78-HdrSize] = byte(j.Result)
	return b
}

// aux is a request's aux data.
func (j *qrmJoin) aux() []byte {
	return append(append(make([]byte, 0, qrmJoinAuxSize), j.Key...), j.Sig...)
}

// parseQrmJoin decodes a QRM_JOIN. A request (request set) must carry
// exactly the key and signature as aux data; an answer carries none.
func parseQrmJoin(ext, aux []byte, request bool) (qrmJoin, error) {
	if err := needExt(ext, "QRM_JOIN", 0x79); err != nil {
		return qrmJoin{}, err
	}
	le := binary.LittleEndian
	j := qrmJoin{From: le.Uint64(ext[0x40-HdrSize:]), To: le.Uint64(ext[0x48-HdrSize:]),
		Time: int64(le.Uint64(ext[0x70-HdrSize:])), Result: quorumJoinResult(ext[0x78-HdrSize])}
	copy(j.Clid[:], ext[0x50-HdrSize:])
	copy(j.Fsid[:], ext[0x60-HdrSize:])
	switch {
	case !request:
	case len(aux) != qrmJoinAuxSize:
		return j, wireErr("aux", uint64(len(aux)), "QRM_JOIN request carries %d bytes of key and signature, want %d", len(aux), qrmJoinAuxSize)
	case j.Result != 0:
		return j, wireErr("result", uint64(j.Result), "QRM_JOIN request with a result")
	default:
		j.Key = ed25519.PublicKey(slices.Clone(aux[:ed25519.PublicKeySize]))
		j.Sig = slices.Clone(aux[ed25519.PublicKeySize:])
	}
	return j, nil
}

// quorumJoinStatement is what the joining master signs: the domain, the
// group, its PFS, its key and the time. The id is not in it: it is
// masterID(fsid), checked separately.
func quorumJoinStatement(clid, fsid UUID, key ed25519.PublicKey, at int64) []byte {
	b := make([]byte, 0, len(quorumJoinDomain)+2*len(UUID{})+len(key)+8)
	b = append(b, quorumJoinDomain...)
	b = append(b, clid[:]...)
	b = append(b, fsid[:]...)
	b = append(b, key...)
	return binary.BigEndian.AppendUint64(b, uint64(at))
}

// newQrmJoin is master fsid's signed request to member to.
func newQrmJoin(key ed25519.PrivateKey, clid, fsid UUID, to uint64, now time.Time) qrmJoin {
	pub := key.Public().(ed25519.PublicKey)
	j := qrmJoin{From: masterID(fsid), To: to, Clid: clid, Fsid: fsid, Time: now.Unix(), Key: pub}
	j.Sig = ed25519.Sign(key, quorumJoinStatement(clid, fsid, pub, j.Time))
	return j
}

// quorumKeyFP is the SHA-256 of a node's public key: what the replicated
// state binds a master's id to. It prints (and is stored in JSON) as
// Fingerprint does, so logs, status and the state agree.
type quorumKeyFP [sha256.Size]byte

func keyFP(pub ed25519.PublicKey) quorumKeyFP { return sha256.Sum256(pub) }

func (k quorumKeyFP) String() string { return "SHA256:" + base64.RawStdEncoding.EncodeToString(k[:]) }

func (k quorumKeyFP) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k *quorumKeyFP) UnmarshalText(b []byte) error {
	s, ok := strings.CutPrefix(string(b), "SHA256:")
	raw, err := base64.RawStdEncoding.DecodeString(s)
	if !ok || err != nil || len(raw) != len(k) {
		return fmt.Errorf("key fingerprint %q: want SHA256:<%d bytes, base64>", b, len(k))
	}
	copy(k[:], raw)
	return nil
}

// admitted: the answering master is a member that accepted the joiner or
// already has it in its configuration.
func (r quorumJoinResult) admitted() bool { return r == joinAccepted || r == joinMember }

// keyChecked: the result of verifyJoin is about the key (trusted, signed)
// rather than what the request claims, and admit decides with it.
func (r quorumJoinResult) keyChecked() bool {
	return r == joinAccepted || r == joinUntrusted || r == joinBadSignature
}

// verifyJoin checks a request on any goroutine: first what it claims
// (the group, the ids, the time), then the key's trust and the signature.
// A claim that fails refuses the request; a key result goes on to admit.
// It returns the key's fingerprint and trusted name for the log; lookup
// is TrustStore.Lookup.
func verifyJoin(req qrmJoin, clid UUID, self uint64, lookup func(ed25519.PublicKey) (string, bool), now time.Time) (quorumJoinResult, quorumKeyFP, string) {
	fp := keyFP(req.Key)
	switch {
	case req.Clid != clid:
		return joinWrongCluster, fp, ""
	case req.To != self || req.From == self || masterID(req.Fsid) != req.From:
		return joinWrongID, fp, ""
	case now.Sub(time.Unix(req.Time, 0)).Abs() > quorumJoinMaxSkew:
		return joinClock, fp, ""
	}
	name, ok := "", false
	if lookup != nil {
		name, ok = lookup(req.Key)
	}
	if !ok {
		return joinUntrusted, fp, ""
	}
	if !ed25519.Verify(req.Key, quorumJoinStatement(req.Clid, req.Fsid, req.Key, req.Time), req.Sig) {
		return joinBadSignature, fp, name
	}
	return joinAccepted, fp, name
}

// quorumJoiner is a verified joiner a member remembers.
type quorumJoiner struct {
	key  quorumKeyFP
	seen uint64 // sweep it last asked at
}

// quorumJoins is a member's table of verified joiners, owned by its
// driver's goroutine. Every member keeps one, so whichever is leader
// when the joiner asks next can add it.
type quorumJoins struct {
	joiners map[uint64]*quorumJoiner
}

func newQuorumJoins() *quorumJoins { return &quorumJoins{joiners: map[uint64]*quorumJoiner{}} }

// admit is the member's decision on a request whose claims verifyJoin
// accepted; verified is what it found about the key. A master the group
// already has (a learner an operator added, or one that restarted empty)
// is answered as a member whatever its key, unless its id is bound to
// another: the answer only lets it step the raft traffic the group sends
// it anyway. Any other master must be verified. The joiner is then
// remembered for the leader's sweep. now counts sweeps.
func (j *quorumJoins) admit(n *quorumNode, id uint64, key quorumKeyFP, verified quorumJoinResult, now uint64) quorumJoinResult {
	switch b, bound := n.Bound(id); {
	case !n.InGroup():
		return joinNotMember
	case n.Removed(id):
		return joinRemoved
	case bound && b != key:
		return joinRebind
	case n.InConfig(id):
		delete(j.joiners, id)
		return joinMember
	case verified != joinAccepted:
		return verified
	}
	if w := j.joiners[id]; w != nil {
		if w.key != key {
			return joinRebind // another key already asked for this id; the first one wins
		}
		w.seen = now
		return joinAccepted
	}
	if len(j.joiners) >= quorumMaxJoiners {
		return joinBusy
	}
	j.joiners[id] = &quorumJoiner{key: key, seen: now}
	return joinAccepted
}

// next is the leader's membership step, one change at a time: promote
// the lowest caught-up learner, else add the lowest verified joiner as a
// learner. It forgets joiners that stopped asking, joined, or may no
// longer join. A zero change means nothing to do.
func (j *quorumJoins) next(n *quorumNode, now uint64) (quorumMemberChange, uint64, *quorumKeyFP) {
	for id, w := range j.joiners {
		b, bound := n.Bound(id)
		if now-w.seen > quorumJoinerSweeps || n.Removed(id) || bound && b != w.key || n.InConfig(id) {
			delete(j.joiners, id)
		}
	}
	if n.Status().State != "StateLeader" || n.PendingConfChange() {
		return 0, 0, nil
	}
	if ready := n.ReadyLearners(); len(ready) > 0 {
		return quorumPromote, ready[0], nil
	}
	if len(j.joiners) == 0 {
		return 0, 0, nil
	}
	ids := make([]uint64, 0, len(j.joiners))
	for id := range j.joiners {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	key := j.joiners[ids[0]].key
	return quorumAddLearner, ids[0], &key
}

// quorumLogPerMinute caps the join and step-filter lines a minute: enough
// for every master of a real cluster, a bound for a flood.
const quorumLogPerMinute = 30

// ---- on the wire ----

// join serves a QRM_JOIN another master opened under our span: verify,
// decide on the driver's goroutine, answer with the result and DELETE.
func (d *quorumDriver) join(t *Trans, m *Msg) {
	req, err := parseQrmJoin(m.Ext, m.Aux, true)
	if err != nil {
		d.log.Warn("bad QRM_JOIN", "link", t.Link().Name(), "err", err)
		_ = t.Close(ErrParam)
		return
	}
	t.SetHandler(func(t *Trans, m *Msg) {
		if m.Cmd&FlagDelete != 0 {
			_ = t.Close(ErrOK)
		}
	})
	answer := func(res quorumJoinResult) {
		a := req
		a.Result = res
		_ = t.Send(&Msg{Header: Header{Cmd: CmdQrmJoin | FlagDelete}, Ext: a.marshal()})
	}
	if st := d.Status(); !slices.Contains(st.Members, d.self) && !slices.Contains(st.Learners, d.self) {
		answer(joinNotMember) // nothing to vouch with: spare the signature check
		return
	}
	verified, fp, name := verifyJoin(req, d.clid, d.self, d.host.trusted, d.clock.Wall())
	if !verified.keyChecked() {
		d.joinRefused(req, fp, verified)
		answer(verified)
		return
	}
	d.hand(t, func() {
		res := d.joins.admit(d.node, req.From, fp, verified, d.sweeps)
		switch res {
		case joinAccepted:
			if d.joinLog.allow(fmt.Sprintf("ok/%x/%s", req.From, fp), d.clock.Now()) {
				d.log.Info("quorum: verified a joining master", "master", fmt.Sprintf("%x", req.From),
					"fsid", req.Fsid, "key", fp, "trusted_as", name)
			}
		case joinMember:
		default:
			d.joinRefused(req, fp, res)
		}
		answer(res)
	})
}

// joinRefused logs a refusal once per joiner and reason.
func (d *quorumDriver) joinRefused(req qrmJoin, fp quorumKeyFP, res quorumJoinResult) {
	if !d.joinLog.allow(fmt.Sprintf("no/%x/%d", req.From, res), d.clock.Now()) {
		return
	}
	d.log.Warn("quorum: refused a master's join request", "master", fmt.Sprintf("%x", req.From),
		"fsid", req.Fsid, "pfs_clid", req.Clid, "key", fp, "reason", res.String())
}

// requestJoins asks the masters in ask to admit this master: all those
// of its cluster it sees, while it is outside the group; those whose
// traffic it refused, while it is in. One request per master at a time,
// at most one per sweep. A master that answers as a member becomes a
// sponsor, whose raft traffic this master then steps.
func (d *quorumDriver) requestJoins(ask map[uint64]bool) {
	if d.node.Removed(d.self) {
		if d.joinLog.allow("self-removed", d.clock.Now()) {
			d.log.Warn("quorum: this master was removed from the group; it does not ask to join again (an operator's quorum add brings it back)",
				"master", fmt.Sprintf("%x", d.self))
		}
		return
	}
	if d.key == nil {
		return
	}
	ids := make([]uint64, 0, len(ask))
	for id := range ask {
		if id != d.self {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		if t := d.joinOut[id]; t != nil && !t.RxDone() {
			continue
		}
		req := newQrmJoin(d.key, d.clid, d.fsid, id, d.clock.Wall())
		t, err := d.openUnder(id, &Msg{Header: Header{Cmd: CmdQrmJoin}, Ext: req.marshal(), Aux: req.aux()},
			func(t *Trans, m *Msg) { d.joinAnswer(id, t, m) })
		if err != nil {
			continue
		}
		d.joinOut[id] = t
	}
}

// joinAnswer takes a member's answer to our join request.
func (d *quorumDriver) joinAnswer(id uint64, t *Trans, m *Msg) {
	res := joinNone
	if m.Cmd&maskBaseCmd == CmdQrmJoin {
		if a, err := parseQrmJoin(m.Ext, nil, false); err == nil && a.From == d.self && a.To == id {
			res = a.Result
		}
	}
	done := m.Cmd&FlagDelete != 0
	if done {
		_ = t.Close(ErrOK)
	}
	// Dropped if the driver is overloaded: the next sweep asks again.
	d.inbox.put(inboxRequest, func() {
		if done && d.joinOut[id] == t {
			delete(d.joinOut, id)
		}
		switch {
		case res.admitted():
			d.node.Sponsor(id)
		case res != joinNone:
			if d.joinLog.allow(fmt.Sprintf("answer/%x/%d", id, res), d.clock.Now()) {
				d.log.Warn("quorum: a master refused this master's join request", "member", fmt.Sprintf("%x", id),
					"reason", res.String(), "key", keyFP(d.key.Public().(ed25519.PublicKey)))
			}
		case done && m.Error != ErrOK:
			if d.joinLog.allow(fmt.Sprintf("error/%x/%d", id, m.Error), d.clock.Now()) {
				d.log.Info("quorum: a master did not take this master's join request", "member", fmt.Sprintf("%x", id),
					"error", ErrString(m.Error))
			}
		}
	})
}

// openUnder opens a transaction under the nearest span of master id.
func (d *quorumDriver) openUnder(id uint64, m *Msg, h Handler) (*Trans, error) {
	span := d.host.masterSpan(id)
	if span == nil {
		return nil, fmt.Errorf("quorum: no span reaches master %x", id)
	}
	return span.Open(m, h)
}

// stepRefused notes raft traffic from a master outside this master's
// configuration: one that is not removed is asked at the next sweep
// (sweepMasters), and the refusal is logged at most once a minute per
// sender.
func (d *quorumDriver) stepRefused(from uint64, err error) {
	if !errors.Is(err, errQuorumNotMember) {
		return
	}
	if !d.node.Removed(from) && len(d.strangers) < quorumMaxSponsors {
		d.strangers[from] = true
	}
	if !d.stepLog.allow(fmt.Sprintf("%x", from), d.clock.Now()) {
		return
	}
	d.log.Warn("quorum: not stepping raft messages from a master outside this master's configuration",
		"from", fmt.Sprintf("%x", from), "removed", d.node.Removed(from), "err", err)
}
