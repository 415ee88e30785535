package main

// Giving a stopped master's store a new group: the half that `quorum
// recover` (quorum_recover.go) and `quorum snapshot --restore`
// (quorum_snapshot.go) share. Both apply every committed entry with the
// code the daemon runs, mark every old member outside the new group
// removed, and write the state back as a snapshot whose voters are the
// new group, with every membership change left in the log emptied. They
// differ in what the log after the snapshot means (recover keeps it,
// uncommitted; a restored copy drops it) and in the vote (recover keeps
// its term's vote; a restored group is new, and nobody has voted in it).

import (
	"fmt"
	"slices"

	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/raft/v3/raftpb"
)

// quorumReseat is a store's committed state, applied, on its way to a
// new group. It is used once, by one goroutine, on a store no node runs.
type quorumReseat struct {
	store  *quorumStore
	hs     *pb.HardState
	fsm    *quorumFSM
	before []uint64 // the members before
	voters []uint64 // the new group, sorted, without repeats
}

// openReseat checks the new group, voters, for master self (the errors
// name them as who, plural, and one, singular) and applies what store
// holds committed, as a restart would. empty is the error for a store
// that holds no group.
func openReseat(store *quorumStore, self uint64, voters []uint64, who, one string, empty error) (*quorumReseat, error) {
	voters = slices.Clone(voters)
	slices.Sort(voters)
	voters = slices.Compact(voters)
	switch {
	case len(voters) == 0:
		return nil, fmt.Errorf("no %s named", who)
	case slices.Contains(voters, 0):
		return nil, fmt.Errorf("%s id 0 is reserved", one)
	case !slices.Contains(voters, self):
		return nil, fmt.Errorf("the %s %s do not include this master %x", who, hexIDs(voters), self)
	}
	if isEmpty, err := store.isEmpty(); err != nil || isEmpty {
		if err == nil {
			err = empty
		}
		return nil, err
	}
	n, err := newQuorumNode(self, nil, store, quorumConfig{})
	if err != nil {
		return nil, err
	}
	if _, err := n.Advance(); err != nil {
		return nil, err
	}
	hs, _, err := store.InitialState()
	if err != nil {
		return nil, err
	}
	fsm, before := n.takeState()
	if fsm.applied < hs.GetCommit() {
		return nil, fmt.Errorf("applied only txid %d of the %d committed", fsm.applied, hs.GetCommit())
	}
	return &quorumReseat{store: store, hs: hs, fsm: fsm, before: before, voters: voters}, nil
}

// removeOthers marks every member before that is not in the new group
// removed, so that no leader adds it back by itself and its raft
// traffic is not stepped (quorumNode.admits), and clears the mark of
// every new voter. It returns the members it marked.
func (r *quorumReseat) removeOthers() []uint64 {
	var removed []uint64
	for _, id := range r.before {
		if !slices.Contains(r.voters, id) {
			r.fsm.removed[id] = true
			removed = append(removed, id)
		}
	}
	for _, id := range r.voters {
		delete(r.fsm.removed, id)
	}
	return removed
}

// quorumReseated is what quorumReseat.write wrote.
type quorumReseated struct {
	at, term uint64 // the snapshot: the last applied txid and its term
	tail     int    // entries the log held after the snapshot
	emptied  int    // membership changes in the log made empty entries
}

// write stores the state as a snapshot at the last applied txid whose
// voters are the new group, and makes every membership change in the log
// an empty entry. With dropTail the entries after the snapshot are
// deleted and the vote cleared (a new group); without, they stay, and so
// does the vote. op names the update in errors.
func (r *quorumReseat) write(op string, dropTail bool) (quorumReseated, error) {
	var w quorumReseated
	cs := &pb.ConfState{Voters: r.voters}
	w.at = r.fsm.applied
	var err error
	if w.term, err = r.store.Term(w.at); err != nil {
		return w, err
	}
	data, err := r.fsm.encode()
	if err != nil {
		return w, err
	}
	snap := &pb.Snapshot{Data: data, Metadata: &pb.SnapshotMetadata{Index: new(w.at), Term: new(w.term), ConfState: cs}}
	puts, dels := r.fsm.takeDirty()
	seen, floor := r.fsm.takeSeen()
	err = r.store.update(op, func(tx *bolt.Tx, m *quorumMarks) error {
		lb := tx.Bucket([]byte(qbLog))
		if m.last > w.at {
			w.tail = int(m.last - w.at)
		}
		vote, last := r.hs.GetVote(), max(m.last, w.at)
		if dropTail {
			if err := deleteFrom(lb, w.at+1); err != nil {
				return err
			}
			vote, last = 0, w.at
		}
		var err error
		if w.emptied, err = emptyConfChangesTx(lb); err != nil {
			return err
		}
		if err := putProto(tx.Bucket([]byte(qbRaft)), qkSnapshot, snap); err != nil {
			return err
		}
		if err := saveFSMTx(tx, r.fsm, cs, puts, dels, seen, floor); err != nil {
			return err
		}
		// The term stays, so that the next leader's term is above every
		// kept entry's.
		nhs := &pb.HardState{Term: new(max(r.hs.GetTerm(), w.term)), Vote: new(vote), Commit: new(w.at)}
		if err := putHardState(tx, m, nhs); err != nil {
			return err
		}
		m.snap, m.last = quorumMark{w.at, w.term}, last
		return nil
	})
	return w, err
}
