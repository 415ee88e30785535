package main

// Recovery from a permanent loss of the majority, as etcd's
// --force-new-cluster and Consul's peers.json do it. With a majority of
// the voters gone for good nothing commits, and `quorum remove` cannot
// help: it is a change the group must commit. The operator stops the
// survivors' leaves and rewrites each survivor's quorum.db offline so
// that the survivors alone are the group:
//
//  1. every committed entry is applied, with the code the daemon runs;
//  2. a snapshot is written at the applied index whose voters are the
//     survivors, and every other member is marked removed in the state
//     machine, so it is never added back automatically and its raft
//     traffic is not stepped (quorumNode.admits);
//  3. the entries after it, which this master holds but did not know to
//     be committed, stay in the log, uncommitted: raft commits the
//     elected survivor's tail with its first entry, so a commit the old
//     majority acknowledged with this master's help is not lost, and
//     survivors whose tails differ settle it as raft always does;
//  4. the log is kept, entries before the snapshot too (a survivor that
//     is behind catches up from them, and they are the record of what
//     was committed), but every membership change in it is made an
//     empty entry: replayed on a survivor that is behind, an old change
//     would undo the survivors' configuration;
//  5. the hard state's commit index is the snapshot's, and its term and
//     vote stay, so the survivors elect a leader in a later term.
//
// What it cannot save: entries a majority committed without any survivor
// holding them. docs/PROTOCOL.md §6.2 says what the operator must weigh.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// QuorumRecoverCmd is `hammer2 -s <pfs> quorum recover --survivors ...`.
type QuorumRecoverCmd struct {
	Survivors []string `required:"" sep:"," placeholder:"ID" help:"The masters that remain (hex ids as hammer2 status shows them), this one included; the same list on each survivor."`
}

func (c *QuorumRecoverCmd) Run(env *Env) error {
	var survivors []uint64
	for _, s := range c.Survivors {
		id, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(s), "0x"), 16, 64)
		if err != nil || id == 0 {
			return fmt.Errorf("quorum recover: --survivors: master %q: not a master id (hex, as status shows it)", s)
		}
		survivors = append(survivors, id)
	}
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	info, paths, dir, err := pfsPlaces(cfg, env.pfsPath())
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, quorumStoreFile)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("quorum recover: no quorum state in %s (is state_dir right?)", dir)
		}
		return fmt.Errorf("quorum recover: %w", err)
	}
	// The leaf's pid file lock says whether it runs; holding it keeps one
	// from starting meanwhile.
	if err := os.MkdirAll(paths.dir, 0o755); err != nil {
		return fmt.Errorf("quorum recover: run directory: %w", err)
	}
	pid, err := lockPidFile(paths.pid)
	if err != nil {
		return fmt.Errorf("quorum recover: stop the PFS's leaf first: %w", err)
	}
	defer pid.release()
	store, err := openQuorumStore(dir, quorumStoreOptions{lockTimeout: time.Second})
	if err != nil {
		return fmt.Errorf("quorum recover: %w", err)
	}
	defer store.Close()
	rep, err := recoverQuorum(store, masterID(info.Fsid), survivors)
	if err != nil {
		return fmt.Errorf("quorum recover: %w", err)
	}
	fmt.Fprintln(env.Stdout, rep)
	return nil
}

// quorumRecovery is what recoverQuorum did.
type quorumRecovery struct {
	Applied, Term uint64   // the snapshot written: the last committed txid here, and its term
	Last          uint64   // the log's last index, kept
	Tail          int      // entries after the snapshot, uncommitted, kept
	Emptied       int      // membership changes in the log made empty entries
	Voters        []uint64 // the group now
	Removed       []uint64 // members before, marked removed
}

func (r quorumRecovery) String() string {
	return fmt.Sprintf("recovered: applied txid %d (term %d); voters %s; removed %s; %d uncommitted entries kept up to index %d; %d old membership changes in the log emptied",
		r.Applied, r.Term, hexIDs(r.Voters), orNoneIDs(r.Removed), r.Tail, r.Last, r.Emptied)
}

func hexIDs(ids []uint64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprintf("%x", id)
	}
	return strings.Join(s, ",")
}

func orNoneIDs(ids []uint64) string {
	if len(ids) == 0 {
		return "none"
	}
	return hexIDs(ids)
}

// recoverQuorum makes survivors the whole group in master self's store
// (see the top of this file). The store must not be in use by a node.
func recoverQuorum(store *quorumStore, self uint64, survivors []uint64) (quorumRecovery, error) {
	var rep quorumRecovery
	r, err := openReseat(store, self, survivors, "survivors", "survivor", fmt.Errorf("%s holds no group", store.Path()))
	if err != nil {
		return rep, err
	}
	for _, id := range r.voters {
		if !slices.Contains(r.before, id) {
			return rep, fmt.Errorf("master %x is not a member of the group (members: %s)", id, hexIDs(r.before))
		}
	}
	rep.Removed = r.removeOthers()
	w, err := r.write("recover", false)
	if err != nil {
		return rep, err
	}
	rep.Applied, rep.Term, rep.Tail, rep.Emptied = w.at, w.term, w.tail, w.emptied
	rep.Last, rep.Voters = store.marks().last, r.voters
	return rep, nil
}

// emptyConfChangesTx makes every membership change in the log an empty
// entry at the same index and term: replayed on a master that is behind,
// an old change would undo a membership written by recover or restore.
// It returns how many it emptied.
func emptyConfChangesTx(lb *bolt.Bucket) (int, error) {
	var emptied []*pb.Entry
	c := lb.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		idx := binary.BigEndian.Uint64(k)
		e := &pb.Entry{}
		if len(v) < 8 {
			return 0, fmt.Errorf("log/%d: short record", idx)
		}
		if err := proto.Unmarshal(v[8:], e); err != nil {
			return 0, fmt.Errorf("log/%d: %w", idx, err)
		}
		if t := e.GetType(); t == pb.EntryConfChange || t == pb.EntryConfChangeV2 {
			emptied = append(emptied, &pb.Entry{Index: new(e.GetIndex()), Term: new(e.GetTerm()), Type: pb.EntryNormal.Enum()})
		}
	}
	for _, e := range emptied {
		v, err := proto.Marshal(e)
		if err != nil {
			return 0, err
		}
		rec := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(v)), e.GetTerm())
		if err := lb.Put(u64key(e.GetIndex()), append(rec, v...)); err != nil {
			return 0, err
		}
	}
	return len(emptied), nil
}
