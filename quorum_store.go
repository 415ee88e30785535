package main

// quorumStore keeps one master's raft log, raft hard state, latest
// snapshot and the applied state machine in one bbolt file,
// <dir>/quorum.db. One file and one transaction per step is what makes a
// kill -9 safe: the FSM and the index it reflects are written together, so
// a restart never has to guess whether an entry was applied. bbolt fsyncs
// every commit, so anything a Ready said to persist is on disk before the
// messages that depend on it leave.
//
// Layout (all integers big-endian):
//
//	log/<index u64>         term u64 + raftpb.Entry (protobuf)
//	raft/hardstate          raftpb.HardState (its commit index may lag:
//	                        at least fsm/meta's applied index is committed)
//	raft/snapshot           raftpb.Snapshot (metadata + FSM image)
//	raft/trunc              index u64 + term u64 of the last compacted entry
//	raft/boot               u64, bumped on every open (request id epoch)
//	fsm/meta                JSON quorumFSMImage without holdings and recent
//	                        (removed masters and key bindings included)
//	fsm/confstate           raftpb.ConfState as of fsm/meta's applied index
//	holdings/<cacKey>       JSON cacHolding
//	recent/<txid u64>       origin u64 + request id u64 (the dedup window)

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

const (
	quorumStoreFile = "quorum.db"

	qbLog      = "log"
	qbRaft     = "raft"
	qbFSM      = "fsm"
	qbHoldings = "holdings"
	qbRecent   = "recent"

	qkHardState = "hardstate"
	qkSnapshot  = "snapshot"
	qkTrunc     = "trunc"
	qkBoot      = "boot"
	qkMeta      = "meta"
	qkConfState = "confstate"
)

// quorumStoreOptions: the zero value is what the daemon uses by default.
type quorumStoreOptions struct {
	// noSync skips fsync ([quorum] unsafe_no_fsync): a crash of the
	// machine may then lose what raft was told is durable. For tests and
	// benchmarks whose "crash" only closes the file, as etcd's
	// --unsafe-no-fsync.
	noSync bool
	// lockTimeout bounds the wait for another process's flock on the file.
	lockTimeout time.Duration
}

// quorumMark is an (index, term) pair: the entry the log was compacted up
// to, which raft still asks the term of.
type quorumMark struct{ index, term uint64 }

type quorumStore struct {
	path string
	db   *bolt.DB

	// Cached so raft's frequent FirstIndex/LastIndex calls do not open a
	// transaction. Updated only after the transaction that changed them
	// committed.
	mu       sync.Mutex
	trunc    quorumMark
	last     uint64
	snapMeta quorumMark
	hard     quorumMark // term (index) and vote (term) of raft/hardstate
}

// openQuorumStore opens or creates <dir>/quorum.db.
func openQuorumStore(dir string, opt quorumStoreOptions) (*quorumStore, error) {
	return openQuorumStoreFile(filepath.Join(dir, quorumStoreFile), opt)
}

// openQuorumStoreFile is openQuorumStore of a file of another name (a
// restore builds one before renaming it into place).
func openQuorumStoreFile(path string, opt quorumStoreOptions) (*quorumStore, error) {
	if opt.lockTimeout == 0 {
		opt.lockTimeout = 2 * time.Second
	}
	// NoFreelistSync: a commit does not write the freelist (one page
	// fewer per Ready); bbolt rebuilds it from the pages when it opens
	// the file, which for a file this size costs nothing noticeable. The
	// map freelist is the cheaper one to keep in memory.
	db, err := openStateDB("quorum store", path, &bolt.Options{Timeout: opt.lockTimeout, NoSync: opt.noSync,
		NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if err != nil {
		return nil, err
	}
	s := &quorumStore{path: path, db: db}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{qbLog, qbRaft, qbFSM, qbHoldings, qbRecent} {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = db.View(func(tx *bolt.Tx) error {
			st, err := s.loadMarks(tx)
			s.trunc, s.last, s.snapMeta, s.hard = st.trunc, st.last, st.snap, st.hard
			return err
		})
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("quorum store %s: %w", path, err)
	}
	return s, nil
}

func (s *quorumStore) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("quorum store %s: close: %w", s.path, err)
	}
	return nil
}

func (s *quorumStore) Path() string { return s.path }

// quorumMarks is the cached part of the store, computed inside a write
// transaction and installed once it commits.
type quorumMarks struct {
	trunc quorumMark
	last  uint64
	snap  quorumMark
	// hard is raft/hardstate's term and vote as written: saveStep
	// writes the hard state only when they change.
	hard quorumMark
}

func (s *quorumStore) marks() quorumMarks {
	s.mu.Lock()
	defer s.mu.Unlock()
	return quorumMarks{s.trunc, s.last, s.snapMeta, s.hard}
}

func (s *quorumStore) setMarks(m quorumMarks) {
	s.mu.Lock()
	s.trunc, s.last, s.snapMeta, s.hard = m.trunc, m.last, m.snap, m.hard
	s.mu.Unlock()
}

func (s *quorumStore) loadMarks(tx *bolt.Tx) (quorumMarks, error) {
	var m quorumMarks
	if v := tx.Bucket([]byte(qbRaft)).Get([]byte(qkTrunc)); v != nil {
		if len(v) != 16 {
			return m, fmt.Errorf("raft/trunc is %d bytes, want 16", len(v))
		}
		m.trunc = quorumMark{binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])}
	}
	m.last = m.trunc.index
	if k, _ := tx.Bucket([]byte(qbLog)).Cursor().Last(); k != nil {
		m.last = binary.BigEndian.Uint64(k)
	}
	if m.last < m.trunc.index {
		return m, fmt.Errorf("log ends at %d before its compaction point %d", m.last, m.trunc.index)
	}
	snap, err := readSnapshot(tx)
	if err != nil {
		return m, err
	}
	m.snap = quorumMark{snap.GetMetadata().GetIndex(), snap.GetMetadata().GetTerm()}
	if v := tx.Bucket([]byte(qbRaft)).Get([]byte(qkHardState)); v != nil {
		hs := &pb.HardState{}
		if err := proto.Unmarshal(v, hs); err != nil {
			return m, fmt.Errorf("raft/hardstate: %w", err)
		}
		m.hard = hardMark(hs)
	}
	return m, nil
}

// hardMark is what of a hard state must be on disk before raft's
// messages leave: its term and vote. The commit index need not be
// (raft learns it again from the leader), and InitialState never
// returns one below the applied index.
func hardMark(hs *pb.HardState) quorumMark { return quorumMark{hs.GetTerm(), hs.GetVote()} }

// putHardState writes hs into raft/hardstate.
func putHardState(tx *bolt.Tx, m *quorumMarks, hs *pb.HardState) error {
	if err := putProto(tx.Bucket([]byte(qbRaft)), qkHardState, hs); err != nil {
		return err
	}
	m.hard = hardMark(hs)
	return nil
}

func u64key(i uint64) []byte { return binary.BigEndian.AppendUint64(nil, i) }

func readSnapshot(tx *bolt.Tx) (*pb.Snapshot, error) {
	snap := &pb.Snapshot{}
	if v := tx.Bucket([]byte(qbRaft)).Get([]byte(qkSnapshot)); v != nil {
		if err := proto.Unmarshal(v, snap); err != nil {
			return nil, fmt.Errorf("raft/snapshot: %w", err)
		}
	}
	return pb.EnsureSnapshot(snap), nil
}

func putProto(b *bolt.Bucket, key string, m proto.Message) error {
	v, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return b.Put([]byte(key), v)
}

// update runs fn in one write transaction and installs the marks it
// computed only if the commit (and its fsync) succeeded.
func (s *quorumStore) update(what string, fn func(tx *bolt.Tx, m *quorumMarks) error) error {
	m := s.marks()
	err := s.db.Update(func(tx *bolt.Tx) error { return fn(tx, &m) })
	if err != nil {
		return fmt.Errorf("quorum store %s: %s: %w", s.path, what, err)
	}
	s.setMarks(m)
	return nil
}

// ---- raft.Storage ----

var _ raft.Storage = (*quorumStore)(nil)

// InitialState returns the hard state and the membership as of the
// applied index, which is what raft.Config.Applied is set to on restart:
// raft will not hand back the conf changes up to there, so the ConfState
// must already include them.
func (s *quorumStore) InitialState() (*pb.HardState, *pb.ConfState, error) {
	var hs *pb.HardState
	cs := &pb.ConfState{}
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket([]byte(qbRaft)).Get([]byte(qkHardState)); v != nil {
			hs = &pb.HardState{}
			if err := proto.Unmarshal(v, hs); err != nil {
				return fmt.Errorf("raft/hardstate: %w", err)
			}
		}
		if v := tx.Bucket([]byte(qbFSM)).Get([]byte(qkConfState)); v != nil {
			if err := proto.Unmarshal(v, cs); err != nil {
				return fmt.Errorf("fsm/confstate: %w", err)
			}
		}
		// saveStep leaves the commit index behind when only it changed;
		// whatever was applied was committed.
		if v := tx.Bucket([]byte(qbFSM)).Get([]byte(qkMeta)); v != nil && hs != nil {
			var img quorumFSMImage
			if err := json.Unmarshal(v, &img); err != nil {
				return fmt.Errorf("fsm/meta: %w", err)
			}
			if img.Applied > hs.GetCommit() {
				hs.Commit = new(img.Applied)
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("quorum store %s: initial state: %w", s.path, err)
	}
	return hs, pb.EnsureConfState(cs), nil
}

// Entries returns [lo,hi), at least one entry, at most maxSize bytes
// beyond the first. raft compares the sentinel errors directly, so they
// are returned unwrapped.
func (s *quorumStore) Entries(lo, hi, maxSize uint64) ([]*pb.Entry, error) {
	m := s.marks()
	if lo <= m.trunc.index {
		return nil, raft.ErrCompacted
	}
	if hi > m.last+1 || lo > hi {
		return nil, raft.ErrUnavailable
	}
	var out []*pb.Entry
	var size uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket([]byte(qbLog)).Cursor()
		next := lo
		for k, v := c.Seek(u64key(lo)); k != nil && next < hi; k, v = c.Next() {
			if idx := binary.BigEndian.Uint64(k); idx != next {
				return fmt.Errorf("log has %d where %d belongs", idx, next)
			}
			e := &pb.Entry{}
			if len(v) < 8 {
				return fmt.Errorf("log/%d: short record", next)
			}
			if err := proto.Unmarshal(v[8:], e); err != nil {
				return fmt.Errorf("log/%d: %w", next, err)
			}
			size += uint64(proto.Size(e))
			if len(out) > 0 && size > maxSize {
				break
			}
			out = append(out, e)
			next++
		}
		if len(out) == 0 && lo < hi {
			return raft.ErrUnavailable
		}
		return nil
	})
	if errors.Is(err, raft.ErrUnavailable) {
		return nil, raft.ErrUnavailable
	}
	if err != nil {
		return nil, fmt.Errorf("quorum store %s: entries [%d,%d): %w", s.path, lo, hi, err)
	}
	return out, nil
}

func (s *quorumStore) Term(i uint64) (uint64, error) {
	m := s.marks()
	switch {
	case i == m.trunc.index:
		return m.trunc.term, nil
	case i < m.trunc.index:
		return 0, raft.ErrCompacted
	case i > m.last:
		return 0, raft.ErrUnavailable
	}
	var term uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket([]byte(qbLog)).Get(u64key(i))
		if len(v) < 8 {
			return fmt.Errorf("log/%d missing or short", i)
		}
		term = binary.BigEndian.Uint64(v)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("quorum store %s: term: %w", s.path, err)
	}
	return term, nil
}

func (s *quorumStore) LastIndex() (uint64, error)  { return s.marks().last, nil }
func (s *quorumStore) FirstIndex() (uint64, error) { return s.marks().trunc.index + 1, nil }

func (s *quorumStore) Snapshot() (*pb.Snapshot, error) {
	var snap *pb.Snapshot
	err := s.db.View(func(tx *bolt.Tx) (err error) {
		snap, err = readSnapshot(tx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("quorum store %s: snapshot: %w", s.path, err)
	}
	return snap, nil
}

// ---- writers ----

// Append adds entries, first dropping any tail they conflict with (raft
// only sends overlapping entries when the old ones lost to a new leader).
func (s *quorumStore) Append(ents []*pb.Entry) error {
	return s.update("append", func(tx *bolt.Tx, m *quorumMarks) error { return appendTx(tx, m, ents) })
}

func appendTx(tx *bolt.Tx, m *quorumMarks, ents []*pb.Entry) error {
	if len(ents) == 0 {
		return nil
	}
	first := ents[0].GetIndex()
	if ents[len(ents)-1].GetIndex() <= m.trunc.index {
		return nil
	}
	if first <= m.trunc.index {
		ents = ents[m.trunc.index+1-first:]
		first = ents[0].GetIndex()
	}
	if first > m.last+1 {
		return fmt.Errorf("append at %d would leave a gap after %d", first, m.last)
	}
	b := tx.Bucket([]byte(qbLog))
	if err := deleteFrom(b, first); err != nil {
		return err
	}
	for i, e := range ents {
		if e.GetIndex() != first+uint64(i) {
			return fmt.Errorf("append: entry %d where %d belongs", e.GetIndex(), first+uint64(i))
		}
		v, err := proto.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode entry %d: %w", e.GetIndex(), err)
		}
		rec := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(v)), e.GetTerm())
		if err := b.Put(u64key(e.GetIndex()), append(rec, v...)); err != nil {
			return err
		}
	}
	m.last = ents[len(ents)-1].GetIndex()
	return nil
}

// deleteFrom removes keys >= from. Keys are collected first because
// deleting under a moving bbolt cursor skips elements.
func deleteFrom(b *bolt.Bucket, from uint64) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(u64key(from)); k != nil; k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// deleteThrough removes keys <= through.
func deleteThrough(b *bolt.Bucket, through uint64) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= through; k, _ = c.Next() {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func (s *quorumStore) SetHardState(hs *pb.HardState) error {
	return s.update("set hard state", func(tx *bolt.Tx, m *quorumMarks) error {
		return putHardState(tx, m, hs)
	})
}

// ApplySnapshot replaces log and state machine with a snapshot received
// from the leader. The FSM image is decoded and written in the same
// transaction, so the file never holds a log from one history and a lock
// table from another.
func (s *quorumStore) ApplySnapshot(snap *pb.Snapshot) error {
	return s.update("apply snapshot", func(tx *bolt.Tx, m *quorumMarks) error {
		_, err := applySnapshotTx(tx, m, snap)
		return err
	})
}

func applySnapshotTx(tx *bolt.Tx, m *quorumMarks, snap *pb.Snapshot) (*quorumFSM, error) {
	snap = pb.EnsureSnapshot(snap)
	md := snap.GetMetadata()
	if md.GetIndex() <= m.snap.index {
		return nil, raft.ErrSnapOutOfDate
	}
	fsm, err := decodeQuorumFSM(snap.GetData(), md.GetIndex())
	if err != nil {
		return nil, err
	}
	if err := putProto(tx.Bucket([]byte(qbRaft)), qkSnapshot, snap); err != nil {
		return nil, err
	}
	// raft drops its whole log on a snapshot; the file must agree.
	for _, b := range []string{qbLog, qbHoldings, qbRecent} {
		if err := tx.DeleteBucket([]byte(b)); err != nil {
			return nil, err
		}
		if _, err := tx.CreateBucket([]byte(b)); err != nil {
			return nil, err
		}
	}
	mark := quorumMark{md.GetIndex(), md.GetTerm()}
	if err := tx.Bucket([]byte(qbRaft)).Put([]byte(qkTrunc), markBytes(mark)); err != nil {
		return nil, err
	}
	fsm.seenNew = nil
	if err := saveFSMTx(tx, fsm, md.GetConfState(), fsm.list(), nil, fsm.seenQ, 0); err != nil {
		return nil, err
	}
	m.trunc, m.last, m.snap = mark, mark.index, mark
	return fsm, nil
}

func markBytes(m quorumMark) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, m.index), m.term)
}

// CreateSnapshot records the FSM image data as of index i (which must be
// applied) as the snapshot raft sends to followers too far behind.
func (s *quorumStore) CreateSnapshot(i uint64, cs *pb.ConfState, data []byte) (*pb.Snapshot, error) {
	m := s.marks()
	if i <= m.snap.index {
		return nil, raft.ErrSnapOutOfDate
	}
	if i > m.last {
		return nil, fmt.Errorf("quorum store %s: snapshot at %d beyond last index %d", s.path, i, m.last)
	}
	term, err := s.Term(i)
	if err != nil {
		return nil, err
	}
	snap := &pb.Snapshot{Data: data, Metadata: &pb.SnapshotMetadata{Index: new(i), Term: new(term),
		ConfState: proto.Clone(pb.EnsureConfState(cs)).(*pb.ConfState)}}
	err = s.update("create snapshot", func(tx *bolt.Tx, m *quorumMarks) error {
		m.snap = quorumMark{i, term}
		return putProto(tx.Bucket([]byte(qbRaft)), qkSnapshot, snap)
	})
	if err != nil {
		return nil, err
	}
	return snap, nil
}

// Compact drops entries up to and including i. i may not pass the
// snapshot: a follower needing those entries must be able to get the
// state they produced instead.
func (s *quorumStore) Compact(i uint64) error {
	m := s.marks()
	if i <= m.trunc.index {
		return raft.ErrCompacted
	}
	if i > m.last || i > m.snap.index {
		return fmt.Errorf("quorum store %s: compact to %d beyond last index %d or snapshot %d", s.path, i, m.last, m.snap.index)
	}
	term, err := s.Term(i)
	if err != nil {
		return err
	}
	return s.update("compact", func(tx *bolt.Tx, m *quorumMarks) error {
		if err := deleteThrough(tx.Bucket([]byte(qbLog)), i); err != nil {
			return err
		}
		m.trunc = quorumMark{i, term}
		return tx.Bucket([]byte(qbRaft)).Put([]byte(qkTrunc), markBytes(m.trunc))
	})
}

// saveReady persists one raft Ready (snapshot, entries, hard state) in a
// single transaction. It returns the FSM decoded from the snapshot, if
// there was one.
func (s *quorumStore) saveReady(hs *pb.HardState, ents []*pb.Entry, snap *pb.Snapshot) (*quorumFSM, error) {
	var fsm *quorumFSM
	err := s.update("save ready", func(tx *bolt.Tx, m *quorumMarks) error {
		if !raft.IsEmptySnap(snap) {
			var err error
			if fsm, err = applySnapshotTx(tx, m, snap); err != nil {
				return err
			}
		}
		if err := appendTx(tx, m, ents); err != nil {
			return err
		}
		if !raft.IsEmptyHardState(hs) {
			return putHardState(tx, m, hs)
		}
		return nil
	})
	return fsm, err
}

// saveStep persists one raft Ready without a snapshot in a single
// transaction: its entries, its hard state if its term or vote changed
// and, when fsm is set, what applying its committed entries did. With
// nothing to write it opens no transaction, so a Ready of messages alone
// costs no fsync.
//
// A hard state whose commit index alone moved is not written: raft does
// not need it on disk (etcd raft's MustSync), and raft/hardstate shares
// its bbolt leaf with raft/snapshot, the image of the whole state
// machine, dedup window included (megabytes), which bbolt would copy and
// write again with every Ready.
func (s *quorumStore) saveStep(hs *pb.HardState, ents []*pb.Entry, fsm *quorumFSM, cs *pb.ConfState) error {
	writeHS := !raft.IsEmptyHardState(hs) && hardMark(hs) != s.marks().hard
	if len(ents) == 0 && !writeHS && fsm == nil {
		return nil
	}
	var puts []cacHolding
	var dels []cacKey
	var seen []quorumSeen
	var floor uint64
	what := "save ready"
	if fsm != nil {
		puts, dels = fsm.takeDirty()
		seen, floor = fsm.takeSeen()
		what = fmt.Sprintf("save ready and applied state at txid %d", fsm.applied)
	}
	return s.update(what, func(tx *bolt.Tx, m *quorumMarks) error {
		if err := appendTx(tx, m, ents); err != nil {
			return err
		}
		if writeHS {
			if err := putHardState(tx, m, hs); err != nil {
				return err
			}
		}
		if fsm == nil {
			return nil
		}
		return saveFSMTx(tx, fsm, cs, puts, dels, seen, floor)
	})
}

// saveApplied records what applying a batch of committed entries did.
func (s *quorumStore) saveApplied(fsm *quorumFSM, cs *pb.ConfState) error {
	puts, dels := fsm.takeDirty()
	seen, floor := fsm.takeSeen()
	return s.update(fmt.Sprintf("save applied state at txid %d", fsm.applied), func(tx *bolt.Tx, _ *quorumMarks) error {
		return saveFSMTx(tx, fsm, cs, puts, dels, seen, floor)
	})
}

func saveFSMTx(tx *bolt.Tx, fsm *quorumFSM, cs *pb.ConfState, puts []cacHolding, dels []cacKey, seen []quorumSeen, floor uint64) error {
	meta, err := json.Marshal(quorumFSMImage{Version: quorumFSMImageVersion, Applied: fsm.applied, LastCommit: fsm.lastCommit,
		Removed: fsm.removedList(), Bound: fsm.boundList()})
	if err != nil {
		return fmt.Errorf("encode fsm/meta: %w", err)
	}
	fb := tx.Bucket([]byte(qbFSM))
	if err := fb.Put([]byte(qkMeta), meta); err != nil {
		return err
	}
	if err := putProto(fb, qkConfState, pb.EnsureConfState(cs)); err != nil {
		return err
	}
	hb := tx.Bucket([]byte(qbHoldings))
	for _, k := range dels {
		if err := hb.Delete(k.bytes()); err != nil {
			return err
		}
	}
	for _, h := range puts {
		v, err := json.Marshal(h)
		if err != nil {
			return fmt.Errorf("encode holding %s: %w", h, err)
		}
		if err := hb.Put(h.key().bytes(), v); err != nil {
			return err
		}
	}
	rb := tx.Bucket([]byte(qbRecent))
	// Collected first: deleting under a bbolt cursor skips keys.
	var old [][]byte
	c := rb.Cursor()
	for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) < floor; k, _ = c.Next() {
		old = append(old, k)
	}
	for _, k := range old {
		if err := rb.Delete(k); err != nil {
			return err
		}
	}
	for _, r := range seen {
		v := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, r.Origin), r.ReqID)
		if err := rb.Put(u64key(r.Txid), v); err != nil {
			return err
		}
	}
	return nil
}

// loadFSM reads the applied state machine and the membership it implies.
func (s *quorumStore) loadFSM() (*quorumFSM, *pb.ConfState, error) {
	fsm := newQuorumFSM()
	cs := &pb.ConfState{}
	err := s.db.View(func(tx *bolt.Tx) error {
		fb := tx.Bucket([]byte(qbFSM))
		if v := fb.Get([]byte(qkMeta)); v != nil {
			var img quorumFSMImage
			if err := json.Unmarshal(v, &img); err != nil {
				return fmt.Errorf("fsm/meta: %w", err)
			}
			if img.Version != quorumFSMImageVersion {
				return fmt.Errorf("fsm/meta: version %d, want %d", img.Version, quorumFSMImageVersion)
			}
			fsm.applied, fsm.lastCommit = img.Applied, img.LastCommit
			for _, id := range img.Removed {
				fsm.removed[id] = true
			}
			for _, b := range img.Bound {
				fsm.bound[b.ID] = b.Key
			}
		}
		if v := fb.Get([]byte(qkConfState)); v != nil {
			if err := proto.Unmarshal(v, cs); err != nil {
				return fmt.Errorf("fsm/confstate: %w", err)
			}
		}
		err := tx.Bucket([]byte(qbHoldings)).ForEach(func(k, v []byte) error {
			var h cacHolding
			if err := json.Unmarshal(v, &h); err != nil {
				return fmt.Errorf("holdings/%x: %w", k, err)
			}
			fsm.put(h)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket([]byte(qbRecent)).ForEach(func(k, v []byte) error {
			if len(k) != 8 || len(v) != 16 {
				return fmt.Errorf("recent/%x: malformed record of %d bytes", k, len(v))
			}
			fsm.remember(binary.BigEndian.Uint64(k), binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]))
			return nil
		})
	})
	if err == nil {
		clear(fsm.dirty)
		fsm.seenNew = nil
		err = fsm.checkInvariants()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("quorum store %s: load state machine: %w", s.path, err)
	}
	return fsm, pb.EnsureConfState(cs), nil
}

// isEmpty reports a file that has never been part of a group.
func (s *quorumStore) isEmpty() (bool, error) {
	m := s.marks()
	if m.last != 0 || m.snap.index != 0 {
		return false, nil
	}
	hs, _, err := s.InitialState()
	return raft.IsEmptyHardState(hs), err
}

// bootstrap makes this file the start of a new group whose voters are
// the given masters. Instead of raft's Bootstrap (which fakes
// uncommitted conf-change entries) it writes a snapshot at index 1 with
// that membership, as etcd raft recommends: every founding master starts
// from the identical state, and one that joins later is caught up by
// snapshot.
func (s *quorumStore) bootstrap(voters []uint64) error {
	empty, err := s.isEmpty()
	if err != nil {
		return err
	}
	if !empty {
		return fmt.Errorf("quorum store %s: bootstrap: file already holds a group", s.path)
	}
	cs := &pb.ConfState{Voters: voters}
	fsm := newQuorumFSM()
	fsm.applied = 1
	data, err := fsm.encode()
	if err != nil {
		return err
	}
	snap := &pb.Snapshot{Data: data, Metadata: &pb.SnapshotMetadata{Index: new(uint64(1)), Term: new(uint64(1)), ConfState: cs}}
	return s.update("bootstrap", func(tx *bolt.Tx, m *quorumMarks) error {
		if _, err := applySnapshotTx(tx, m, snap); err != nil {
			return err
		}
		return putHardState(tx, m, &pb.HardState{Term: new(uint64(1)), Commit: new(uint64(1))})
	})
}

// nextBoot bumps and returns the boot counter, which request ids are
// scoped by: a restarted master must never reuse an id that may still
// sit uncommitted in some log.
func (s *quorumStore) nextBoot() (uint64, error) {
	var boot uint64
	err := s.update("bump boot counter", func(tx *bolt.Tx, _ *quorumMarks) error {
		b := tx.Bucket([]byte(qbRaft))
		if v := b.Get([]byte(qkBoot)); len(v) == 8 {
			boot = binary.BigEndian.Uint64(v)
		}
		boot++
		return b.Put([]byte(qkBoot), u64key(boot))
	})
	return boot, err
}
