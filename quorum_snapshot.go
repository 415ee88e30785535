package main

// Backup and restore of a quorum group's replicated state, as
// `etcdctl snapshot save/restore` and `consul snapshot save/restore` give.
//
// save writes a consistent copy of one master's quorum.db: the raft log,
// hard state, snapshot and the applied state machine, all from one bbolt
// read transaction (Tx.WriteTo), so the copy is one instant of the file,
// which every Ready and every applied batch changes in a transaction of
// its own. Through a running leaf it first waits for a read barrier (raft
// ReadIndex): the leader confirms the group's commit index with a
// heartbeat round, and the copy is taken once this master has applied up
// to there, so every commit acknowledged before the save began is in it,
// whichever master it is taken from. --local skips the barrier, for a
// group that has lost its majority. With the leaf stopped, save copies the
// file directly.
//
// The file is itself a bbolt file: quorum.db's buckets as they were, plus
// a "backup" bucket holding what it is (the cluster, the master, the txid,
// a SHA-256 over the quorum buckets' contents, which restore checks).
//
// restore seeds a new group, offline, into the state directory of a
// fresh MASTER PFS of the same cluster (pfs_clid), once per restoring
// master, from the same file, as etcd's snapshot restore does:
//
//  1. every committed entry is applied, with the code the daemon runs;
//  2. the membership is the restoring masters (--masters, or the config's
//     [quorum] masters), the masters of the old group are marked removed
//     (so that one coming back is never added again by itself), and the
//     lock table is emptied: its holders' kernels belong to the lost
//     group, and a revalidation finds no state, so each invalidates its
//     cache;
//  3. a snapshot is written at the applied txid with that membership, and
//     the hard state commits it; the log's entries up to it are kept (the
//     record of every commit the saved master still held, with the txid it
//     was acknowledged with), membership changes among them made empty as
//     `quorum recover` does; entries after it, which were not known to be
//     committed, are dropped.
//
// The restored masters start from identical state and elect a leader in a
// later term; the first new commit takes a txid above every earlier one.
// docs/PROTOCOL.md §6.8 says what the copy holds and what it cannot.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// QuorumSnapshotCmd is `hammer2 quorum snapshot save|restore`.
type QuorumSnapshotCmd struct {
	Save    QuorumSnapshotSaveCmd    `cmd:"" help:"Write a consistent copy of this master's replicated state to FILE (through its running leaf, or from quorum.db with the leaf stopped)."`
	Restore QuorumSnapshotRestoreCmd `cmd:"" help:"With the PFS's leaf stopped and no quorum state yet: seed a new group from FILE (run on each restoring master)."`
}

type QuorumSnapshotSaveCmd struct {
	File  string `arg:"" predictor:"file" help:"Where to write the snapshot (replaced if it exists)."`
	Local bool   `help:"Do not wait for the group to confirm its commit index: copy what this master has applied (a group without a majority)."`
}

type QuorumSnapshotRestoreCmd struct {
	File    string   `arg:"" predictor:"file" help:"A file hammer2 quorum snapshot save wrote."`
	Masters []string `sep:"," placeholder:"FSID" help:"The new group's masters: each restoring MASTER PFS's pfs_fsid (or master id, hex), this one included; the same list on each (default: the config's [quorum] masters)."`
}

const (
	quorumSnapshotFormat = 1
	qbBackup             = "backup"
	// quorumSnapshotIdle bounds how long either end of a save waits for
	// the other to make progress (a write or a read of the copy).
	quorumSnapshotIdle = 10 * time.Second
	// quorumReadsMax bounds the read barriers a driver holds at once: a
	// save is an operator's command, and a few at once is plenty.
	quorumReadsMax = 16
)

// quorumSnapshotBuckets are quorum.db's buckets, the ones the digest
// covers, in its order.
var quorumSnapshotBuckets = []string{qbFSM, qbHoldings, qbLog, qbRaft, qbRecent}

// quorumSnapshotMeta is the backup bucket's "meta" record.
type quorumSnapshotMeta struct {
	Format  int       `json:"format"`
	Clid    UUID      `json:"pfs_clid"`
	Fsid    UUID      `json:"pfs_fsid"` // the master it was taken from
	Label   string    `json:"label"`
	Master  string    `json:"master"`  // that master's id, hex
	Applied uint64    `json:"applied"` // the txid the state machine is at
	Commit  uint64    `json:"commit"`  // the hard state's commit index
	Members []string  `json:"members"` // voters then, hex
	Barrier uint64    `json:"barrier"` // the group's commit index the save waited for; 0: none (--local or offline)
	Saved   time.Time `json:"saved"`
	Version string    `json:"version"` // of the binary that saved it
	SHA256  string    `json:"sha256"`  // quorumSnapshotDigest of the quorum buckets
}

// controlSnapshot heads the copy a leaf streams for "quorum-snapshot".
type controlSnapshot struct {
	Size    int64  `json:"size"`
	Clid    UUID   `json:"pfs_clid"`
	Fsid    UUID   `json:"pfs_fsid"`
	Label   string `json:"label"`
	Barrier uint64 `json:"barrier"`
}

// ---- save ----

func (c *QuorumSnapshotSaveCmd) Run(env *Env) error {
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	info, paths, dir, err := pfsPlaces(cfg, env.pfsPath())
	if err != nil {
		return err
	}

	part := c.File + ".part"
	out, err := os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("quorum snapshot save: %w", err)
	}
	defer os.Remove(part) // gone once renamed
	meta := quorumSnapshotMeta{Format: quorumSnapshotFormat, Clid: info.Clid, Fsid: info.Fsid, Label: info.Label,
		Master: fmt.Sprintf("%x", masterID(info.Fsid)), Saved: time.Now().UTC(), Version: versionString()}
	how, err := saveOnline(paths.control, c.Local, out, &meta)
	if errors.Is(err, errNotRunning) {
		how, err = saveOffline(paths, dir, out)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = sealSnapshot(part, &meta)
	}
	if err == nil {
		err = renameSynced(part, c.File)
	}
	if err != nil {
		return fmt.Errorf("quorum snapshot save: %w", err)
	}
	fmt.Fprintf(env.Stdout, "saved %s: txid %d of cluster %s from master %s (%s); members %s\n",
		c.File, meta.Applied, meta.Clid, meta.Master, how, strings.Join(meta.Members, ","))
	return nil
}

// saveOnline has the PFS's running leaf stream its copy into out.
func saveOnline(control string, local bool, out io.Writer, meta *quorumSnapshotMeta) (string, error) {
	c, err := net.DialTimeout("unix", control, 2*time.Second)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return "", fmt.Errorf("%w (no control socket at %s)", errNotRunning, control)
		}
		return "", fmt.Errorf("control socket %s: %w", control, err)
	}
	defer c.Close()
	// The barrier may take the commit timeout; the copy is paced below.
	_ = c.SetDeadline(time.Now().Add(2 * quorumSnapshotIdle))
	if err := json.NewEncoder(c).Encode(&controlRequest{Op: "quorum-snapshot", Local: local}); err != nil {
		return "", fmt.Errorf("control socket %s: %w", control, err)
	}
	dec := json.NewDecoder(c)
	var resp controlResponse
	if err := dec.Decode(&resp); err != nil {
		return "", fmt.Errorf("control socket %s: reading the answer: %w", control, err)
	}
	if resp.Error != "" {
		return "", fmt.Errorf("leaf: %s", resp.Error)
	}
	h := resp.Snapshot
	if h == nil || h.Size <= 0 {
		return "", errors.New("leaf: an answer without a snapshot")
	}
	if h.Clid != meta.Clid || h.Fsid != meta.Fsid {
		return "", fmt.Errorf("leaf: the snapshot is of PFS %s of cluster %s, not this PFS", h.Fsid, h.Clid)
	}
	r := io.MultiReader(dec.Buffered(), &idleConn{c: c, idle: quorumSnapshotIdle})
	// The copy starts after the newline that ends the JSON line.
	var nl [1]byte
	if _, err := io.ReadFull(r, nl[:]); err != nil || nl[0] != '\n' {
		return "", fmt.Errorf("leaf: no newline after the snapshot's header (%q, %v)", nl[:], err)
	}
	n, err := io.CopyN(out, r, h.Size)
	if err != nil {
		return "", fmt.Errorf("the leaf's copy ended after %d of %d bytes: %w", n, h.Size, err)
	}
	meta.Barrier = h.Barrier
	if local {
		return "through the running leaf, --local: what it had applied", nil
	}
	return fmt.Sprintf("through the running leaf, every commit up to the group's commit index %d", h.Barrier), nil
}

// saveOffline copies quorum.db of a stopped leaf, holding its pid file
// so that none starts meanwhile.
func saveOffline(paths runPaths, dir string, out io.Writer) (string, error) {
	path := filepath.Join(dir, quorumStoreFile)
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("no leaf runs and there is no quorum state in %s (is state_dir right?)", dir)
		}
		return "", err
	}
	if err := os.MkdirAll(paths.dir, 0o755); err != nil {
		return "", fmt.Errorf("run directory: %w", err)
	}
	pid, err := lockPidFile(paths.pid)
	if err != nil {
		return "", fmt.Errorf("the leaf did not answer on its control socket, and %w", err)
	}
	defer pid.release()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(out)
		return err
	})
	return "from quorum.db, the leaf stopped", err
}

// sealSnapshot checks the copy at path, fills meta from it and writes
// meta into its backup bucket.
func sealSnapshot(path string, meta *quorumSnapshotMeta) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("the copy: %w", err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		if err := checkQuorumFile(tx); err != nil {
			return err
		}
		img, cs, hs, err := readQuorumState(tx)
		if err != nil {
			return err
		}
		meta.Applied, meta.Commit = img.Applied, hs.GetCommit()
		meta.Members = hexStrings(cs.GetVoters())
		meta.SHA256, err = quorumSnapshotDigest(tx)
		return err
	})
	if err != nil {
		return fmt.Errorf("the copy: %w", err)
	}
	v, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	return db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte(qbBackup))
		if err != nil {
			return err
		}
		return b.Put([]byte(qkMeta), v)
	})
}

// checkQuorumFile runs bbolt's consistency check and sees quorum.db's
// buckets there.
func checkQuorumFile(tx *bolt.Tx) error {
	for err := range tx.Check() {
		return fmt.Errorf("bbolt check: %w", err)
	}
	for _, b := range quorumSnapshotBuckets {
		if tx.Bucket([]byte(b)) == nil {
			return fmt.Errorf("no %s bucket: not a quorum state file", b)
		}
	}
	return nil
}

// readQuorumState reads the state machine's meta record, its membership
// and the hard state.
func readQuorumState(tx *bolt.Tx) (quorumFSMImage, *pb.ConfState, *pb.HardState, error) {
	var img quorumFSMImage
	cs, hs := &pb.ConfState{}, &pb.HardState{}
	fb := tx.Bucket([]byte(qbFSM))
	v := fb.Get([]byte(qkMeta))
	if v == nil {
		return img, nil, nil, errors.New("fsm/meta missing: this master never applied anything")
	}
	if err := json.Unmarshal(v, &img); err != nil {
		return img, nil, nil, fmt.Errorf("fsm/meta: %w", err)
	}
	if v := fb.Get([]byte(qkConfState)); v != nil {
		if err := proto.Unmarshal(v, cs); err != nil {
			return img, nil, nil, fmt.Errorf("fsm/confstate: %w", err)
		}
	}
	if v := tx.Bucket([]byte(qbRaft)).Get([]byte(qkHardState)); v != nil {
		if err := proto.Unmarshal(v, hs); err != nil {
			return img, nil, nil, fmt.Errorf("raft/hardstate: %w", err)
		}
	}
	if img.Applied > hs.GetCommit() { // the commit index on disk may lag (quorumStore.saveStep)
		hs.Commit = new(img.Applied)
	}
	return img, cs, hs, nil
}

// quorumSnapshotDigest is a SHA-256 over the quorum buckets: each
// bucket's name, then each key and value, every piece length-prefixed.
// bbolt iterates in key order, so equal contents give equal digests
// whatever the file's page layout.
func quorumSnapshotDigest(tx *bolt.Tx) (string, error) {
	h := sha256.New()
	put := func(b []byte) {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	for _, name := range quorumSnapshotBuckets {
		b := tx.Bucket([]byte(name))
		if b == nil {
			return "", fmt.Errorf("no %s bucket", name)
		}
		put([]byte(name))
		err := b.ForEach(func(k, v []byte) error {
			if v == nil {
				return fmt.Errorf("%s/%x: a nested bucket", name, k)
			}
			put(k)
			put(v)
			return nil
		})
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func hexStrings(ids []uint64) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = fmt.Sprintf("%x", id)
	}
	slices.Sort(out)
	return out
}

// renameSynced renames from to to and syncs the directory, so that the
// file is there after a crash once this returns.
func renameSynced(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(to))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// idleConn reads or writes c with a deadline idle from each call: a copy
// may take as long as it takes, but not stall.
type idleConn struct {
	c    net.Conn
	idle time.Duration
}

func (r *idleConn) Read(p []byte) (int, error) {
	_ = r.c.SetReadDeadline(time.Now().Add(r.idle))
	return r.c.Read(p)
}

func (r *idleConn) Write(p []byte) (int, error) {
	_ = r.c.SetWriteDeadline(time.Now().Add(r.idle))
	return r.c.Write(p)
}

// ---- the leaf's side ----

// serveSnapshot answers "quorum-snapshot" on the control socket: a
// controlResponse naming the size, then the copy (see the top of this
// file). The caller is privileged (controlServer checked).
func (l *Leaf) serveSnapshot(ctx context.Context, req controlRequest, c net.Conn) {
	fail := func(err error) {
		_ = c.SetWriteDeadline(time.Now().Add(quorumSnapshotIdle))
		_ = json.NewEncoder(c).Encode(&controlResponse{Error: err.Error()})
	}
	if l.quorum == nil {
		fail(errors.New("this leaf is not a member of a quorum group (not a MASTER, or no quorum.masters)"))
		return
	}
	var barrier uint64
	if !req.Local {
		bctx, cancel := context.WithTimeout(ctx, min(l.cfg.Quorum.CommitTimeout.Duration, quorumSnapshotIdle))
		var err error
		barrier, err = l.quorum.Barrier(bctx)
		cancel()
		if err != nil {
			fail(fmt.Errorf("the group did not confirm its commit index: %w (with --local, save what this master has applied)", err))
			return
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Now()) }) // shutting down: end the copy
	defer stop()
	start := time.Now()
	var size int64
	err := l.qstore.db.View(func(tx *bolt.Tx) error {
		size = tx.Size()
		w := &idleConn{c: c, idle: quorumSnapshotIdle}
		hdr := controlResponse{Snapshot: &controlSnapshot{Size: size, Clid: l.info.Clid, Fsid: l.info.Fsid,
			Label: l.info.Label, Barrier: barrier}}
		if err := json.NewEncoder(w).Encode(&hdr); err != nil {
			return err
		}
		_, err := tx.WriteTo(w)
		return err
	})
	if err != nil {
		l.log.Warn("quorum snapshot: the copy did not reach the caller", "err", err)
		return
	}
	l.log.Info("quorum snapshot: copy sent", "bytes", size, "barrier", barrier, "took", time.Since(start).Round(time.Millisecond))
}

// ---- the read barrier ----

// quorumRead is one read barrier the driver holds.
type quorumRead struct {
	ctx   context.Context // the caller's: it gave up once this is done
	index uint64          // the group's commit index, once known
	known bool
	done  func(index uint64)
}

// quorumReadCtx is a barrier's request context, as raft carries it: a
// prefix that tells it apart from anything else, and the id.
func quorumReadCtx(id uint64) []byte { return binary.BigEndian.AppendUint64([]byte("h2rd"), id) }

// Barrier waits until this master has applied everything the group had
// committed when it was called, as the leader confirms with a heartbeat
// round (raft's ReadIndex), and returns that commit index. With no leader
// it waits until ctx ends.
func (d *quorumDriver) Barrier(ctx context.Context) (uint64, error) {
	type result struct {
		index uint64
		err   error
	}
	ch := make(chan result, 1)
	ok := d.inbox.put(inboxRequest, func() {
		if len(d.reads) >= quorumReadsMax {
			ch <- result{err: errQuorumBusy}
			return
		}
		d.readSeq++
		id := d.readSeq
		if err := d.node.ReadIndex(quorumReadCtx(id)); err != nil {
			ch <- result{err: err}
			return
		}
		d.reads[id] = &quorumRead{ctx: ctx, done: func(i uint64) { ch <- result{index: i} }}
	})
	if !ok {
		return 0, fmt.Errorf("quorum: read barrier: %w", errQuorumBusy)
	}
	select {
	case r := <-ch:
		return r.index, r.err
	case <-ctx.Done():
		return 0, fmt.Errorf("quorum: read barrier: %w", ctx.Err())
	case <-d.done:
		return 0, fmt.Errorf("quorum: read barrier: %w", errDriverStopped)
	}
}

// serveReads, on the driver's goroutine after each pump, takes the
// confirmed indexes and answers the barriers this master has applied up
// to; those whose callers gave up are forgotten.
func (d *quorumDriver) serveReads(states []raft.ReadState) {
	for _, rs := range states {
		rctx := rs.RequestCtx
		if len(rctx) != 12 || !bytes.HasPrefix(rctx, []byte("h2rd")) {
			continue
		}
		if r := d.reads[binary.BigEndian.Uint64(rctx[4:])]; r != nil {
			r.index, r.known = rs.Index, true
		}
	}
	applied := d.node.Applied()
	for id, r := range d.reads {
		switch {
		case r.ctx.Err() != nil:
			delete(d.reads, id)
		case r.known && applied >= r.index:
			delete(d.reads, id)
			r.done(r.index)
		}
	}
}

// ---- restore ----

func (c *QuorumSnapshotRestoreCmd) Run(env *Env) error {
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	masters := c.Masters
	if len(masters) == 0 {
		masters = cfg.Quorum.Masters
	}
	if len(masters) == 0 {
		return errors.New("quorum snapshot restore: name the new group's masters (--masters, or [quorum] masters in the config)")
	}
	var voters []uint64
	for _, m := range masters {
		id, err := parseMasterRef(m)
		if err != nil {
			return fmt.Errorf("quorum snapshot restore: master %q: %w", m, err)
		}
		voters = append(voters, id)
	}
	info, paths, dir, err := pfsPlaces(cfg, env.pfsPath())
	if err != nil {
		return err
	}
	if info.Type&0x0F != PFSMaster {
		return fmt.Errorf("quorum snapshot restore: PFS %s is a %s, not a MASTER", info.Label, pfsTypeName(info.Type))
	}
	meta, err := readSnapshotMeta(c.File)
	if err != nil {
		return fmt.Errorf("quorum snapshot restore: %s: %w", c.File, err)
	}
	if meta.Clid != info.Clid {
		return fmt.Errorf("quorum snapshot restore: the snapshot is of cluster %s and PFS %s is of cluster %s (create the PFS with -u %s)",
			meta.Clid, info.Label, info.Clid, meta.Clid)
	}
	// The leaf's pid file lock says whether it runs; holding it keeps one
	// from starting meanwhile.
	if err := os.MkdirAll(paths.dir, 0o755); err != nil {
		return fmt.Errorf("quorum snapshot restore: run directory: %w", err)
	}
	pid, err := lockPidFile(paths.pid)
	if err != nil {
		return fmt.Errorf("quorum snapshot restore: stop the PFS's leaf first: %w", err)
	}
	defer pid.release()
	final := filepath.Join(dir, quorumStoreFile)
	if _, err := os.Stat(final); err == nil {
		return fmt.Errorf("quorum snapshot restore: %s exists: this master already holds a group (restore seeds a new one; move it away first)", final)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("quorum snapshot restore: %w", err)
	}
	rep, err := restoreSnapshotInto(c.File, dir, masterID(info.Fsid), voters)
	if err != nil {
		return fmt.Errorf("quorum snapshot restore: %w", err)
	}
	fmt.Fprintf(env.Stdout, "restored txid %d of cluster %s (saved %s from master %s); %s\n",
		meta.Applied, meta.Clid, meta.Saved.Format(time.RFC3339), meta.Master, rep)
	return nil
}

// parseMasterRef reads a master as [quorum] masters names it (a PFS's
// pfs_fsid) or as status prints it (its id, hex).
func parseMasterRef(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if u, err := ParseUUID(s); err == nil {
		return masterID(u), nil
	}
	id, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil || id == 0 {
		return 0, errors.New("neither a pfs_fsid nor a master id (hex, as status shows it)")
	}
	return id, nil
}

// readSnapshotMeta opens a snapshot file read-only and checks it: format,
// bbolt's consistency check, and the digest.
func readSnapshotMeta(path string) (quorumSnapshotMeta, error) {
	var meta quorumSnapshotMeta
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return meta, err
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(qbBackup))
		if b == nil || b.Get([]byte(qkMeta)) == nil {
			return errors.New("no backup record: not a file hammer2 quorum snapshot save wrote")
		}
		if err := json.Unmarshal(b.Get([]byte(qkMeta)), &meta); err != nil {
			return fmt.Errorf("backup record: %w", err)
		}
		if meta.Format != quorumSnapshotFormat {
			return fmt.Errorf("snapshot format %d, this binary reads %d", meta.Format, quorumSnapshotFormat)
		}
		if err := checkQuorumFile(tx); err != nil {
			return err
		}
		sum, err := quorumSnapshotDigest(tx)
		if err != nil {
			return err
		}
		if sum != meta.SHA256 {
			return fmt.Errorf("contents changed since it was saved: SHA-256 %s, recorded %s", sum, meta.SHA256)
		}
		return nil
	})
	return meta, err
}

// restoreSnapshotInto writes dir/quorum.db from the snapshot for master
// self of the group voters: a copy made and rewritten under another name,
// renamed into place only when complete, so that a crash leaves either
// no quorum.db or the whole restored one.
func restoreSnapshotInto(snapPath, dir string, self uint64, voters []uint64) (quorumRestore, error) {
	var rep quorumRestore
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return rep, fmt.Errorf("state directory: %w", err)
	}
	tmp := filepath.Join(dir, quorumStoreFile+".restore")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return rep, err
	}
	src, err := bolt.Open(snapPath, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return rep, err
	}
	err = src.View(func(tx *bolt.Tx) error { return tx.CopyFile(tmp, 0o600) })
	src.Close()
	if err != nil {
		return rep, fmt.Errorf("copy: %w", err)
	}
	defer os.Remove(tmp) // gone once renamed
	store, err := openQuorumStoreFile(tmp, quorumStoreOptions{lockTimeout: time.Second})
	if err != nil {
		return rep, err
	}
	err = store.update("drop the backup record", func(tx *bolt.Tx, _ *quorumMarks) error {
		return tx.DeleteBucket([]byte(qbBackup))
	})
	if err == nil {
		rep, err = restoreQuorum(store, self, voters)
	}
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return rep, err
	}
	return rep, renameSynced(tmp, filepath.Join(dir, quorumStoreFile))
}

// quorumRestore is what restoreQuorum did.
type quorumRestore struct {
	Applied, Term uint64   // the snapshot written: the restored txid, and its term
	First         uint64   // the first log entry kept
	Dropped       int      // entries after the snapshot dropped (not known to be committed)
	Emptied       int      // membership changes in the log made empty entries
	Holdings      int      // cache states dropped
	Voters        []uint64 // the new group
	Removed       []uint64 // the old group's members, marked removed
}

func (r quorumRestore) String() string {
	return fmt.Sprintf("voters %s; old members %s marked removed; %d cache states dropped; log kept from index %d to %d, %d uncommitted entries dropped, %d membership changes emptied",
		hexIDs(r.Voters), orNoneIDs(r.Removed), r.Holdings, r.First, r.Applied, r.Dropped, r.Emptied)
}

// restoreQuorum rewrites store, a copy of another master's quorum.db, as
// master self's start of a new group of voters (see the top of this
// file). The store must not be in use by a node.
func restoreQuorum(store *quorumStore, self uint64, voters []uint64) (quorumRestore, error) {
	var rep quorumRestore
	r, err := openReseat(store, self, voters, "masters", "master", errors.New("the snapshot holds no group"))
	if err != nil {
		return rep, err
	}
	rep.Removed = r.removeOthers()
	for _, h := range r.fsm.list() {
		r.fsm.del(h)
		rep.Holdings++
	}
	w, err := r.write("restore", true)
	if err != nil {
		return rep, err
	}
	rep.Applied, rep.Term, rep.Dropped, rep.Emptied = w.at, w.term, w.tail, w.emptied
	rep.First, rep.Voters = store.marks().trunc.index+1, r.voters
	return rep, nil
}
