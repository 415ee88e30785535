package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestLongQuorumSnapshot: three masters commit; `quorum snapshot save` on
// a follower, right after the last acknowledgement, copies the group's
// state through the running leaf (its read barrier brings it level).
// Every master is then lost. `restore` refuses a PFS that holds a group,
// a running leaf, another cluster's PFS and a file whose contents
// changed; into three fresh MASTER PFSs of the cluster it seeds a new
// group, which elects a leader, grants a key held at the save at once
// (the old holders are gone with the old group) and commits again at
// txids above every earlier one; and every commit acknowledged before the save is in each
// restored master's log at the txid it was acknowledged with.
func TestLongQuorumSnapshot(t *testing.T) {
	longTest(t)
	t.Parallel()
	c := newQPCluster(t, 3, false, 2*time.Second)
	leader := c.waitLeader(20 * time.Second)
	var acked []*qpOp
	for i := range 6 {
		op := c.commit((leader + i) % 3)
		if op.r.outcome != qpAcked {
			t.Fatalf("commit before any fault: %v", op)
		}
		acked = append(acked, op)
	}
	// A cache state held at the save: the restored group drops it.
	ex5 := cacLock{Domain: cacInum, Mode: cacExclusive, Lo: 5, Hi: 5}
	if g := c.lockUntil(leader, ex5, 10*time.Second); g.outcome != qpAcked {
		t.Fatalf("EXCLUSIVE INUM 5 through the leader: %+v", g)
	}
	f := (leader + 1) % 3
	fm := c.masters[f]
	file := filepath.Join(shortTempDir(t), "group.snap")
	out, errOut, code := fm.h2("-s", fm.pfs, "quorum", "snapshot", "save", file)
	if code != 0 || !strings.Contains(out, "saved "+file) || !strings.Contains(out, "through the running leaf, every commit") {
		t.Fatalf("quorum snapshot save on m%d: exit %d, stdout %q, stderr %q", f+1, code, out, errOut)
	}
	t.Logf("m%d: %s", f+1, strings.TrimSpace(out))
	last := acked[len(acked)-1].r.txid
	if meta, err := readSnapshotMeta(file); err != nil || meta.Applied < last || meta.Barrier < last {
		t.Fatalf("the snapshot: %+v, %v; want it at or past txid %d, the last acknowledged", meta, err, last)
	}

	// Every master is lost.
	for i := range c.n {
		c.killMaster(i)
	}
	// With the leaf stopped, save copies quorum.db itself.
	offline := filepath.Join(filepath.Dir(file), "offline.snap")
	if out, errOut, code := fm.h2("-s", fm.pfs, "quorum", "snapshot", "save", offline); code != 0 || !strings.Contains(out, "the leaf stopped") {
		t.Errorf("offline save: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if out, errOut, code := fm.h2("-s", fm.pfs, "quorum", "snapshot", "restore", file); code == 0 || !strings.Contains(errOut, "already holds a group") {
		t.Errorf("restore over an existing quorum.db: exit %d, stdout %q, stderr %q; want a refusal", code, out, errOut)
	}

	// Fresh MASTER PFSs of the same cluster, with their own config.
	fsids := make([]UUID, c.n)
	quoted := make([]string, c.n)
	ids := make([]string, c.n)
	for i := range c.n {
		fsids[i] = NewUUID()
		quoted[i] = strconv.Quote(fsids[i].String())
		ids[i] = fmt.Sprintf("%x", masterID(fsids[i]))
	}
	qtoml := fmt.Sprintf("\n[quorum]\nmasters = [%s]\ntick = \"100ms\"\ncommit_timeout = %q\nlease = \"2s\"\n",
		strings.Join(quoted, ", "), c.timeout.String())
	fresh := make([]*leafNode, c.n)
	for i := range c.n {
		fresh[i] = newSvcLeaf(t, fmt.Sprintf("r%d", i+1), PFSInfo{Label: "qrm", Clid: c.clid, Fsid: fsids[i], Type: PFSMaster})
	}
	// A running leaf (no quorum config yet, so it makes no quorum.db) is
	// refused.
	startLeafOn(fresh[0], c.svcs[0])
	if out, errOut, code := fresh[0].h2("-s", fresh[0].pfs, "quorum", "snapshot", "restore", "--masters", strings.Join(ids, ","), file); code == 0 || !strings.Contains(errOut, "stop the PFS's leaf first") {
		t.Errorf("restore with the leaf running: exit %d, stdout %q, stderr %q; want a refusal", code, out, errOut)
	}
	fresh[0].kill9()
	// Another cluster's PFS is refused.
	other := newSvcLeaf(t, "other", PFSInfo{Label: "qrm", Clid: NewUUID(), Type: PFSMaster})
	if out, errOut, code := other.h2("-s", other.pfs, "quorum", "snapshot", "restore", "--masters", fmt.Sprintf("%x", masterID(other.info.Fsid)), file); code == 0 || !strings.Contains(errOut, "-u "+c.clid.String()) {
		t.Errorf("restore into another cluster's PFS: exit %d, stdout %q, stderr %q; want a refusal", code, out, errOut)
	}
	// A copy whose contents changed is refused.
	tampered := filepath.Join(filepath.Dir(file), "tampered.snap")
	tamper(t, file, tampered, acked[0].r.txid)
	if out, errOut, code := fresh[1].h2("-s", fresh[1].pfs, "quorum", "snapshot", "restore", "--masters", strings.Join(ids, ","), tampered); code == 0 || !strings.Contains(errOut, "contents changed") {
		t.Errorf("restore of a changed file: exit %d, stdout %q, stderr %q; want a refusal", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(fresh[1].pfs, quorumStoreFile)); err == nil {
		t.Error("a refused restore left a quorum.db")
	}

	// Restore into each, the masters from the config, and start them.
	for i, n := range fresh {
		n.writeConfig(qtoml)
		out, errOut, code := n.h2("-s", n.pfs, "quorum", "snapshot", "restore", file)
		if code != 0 || !strings.Contains(out, "restored txid") || !strings.Contains(out, "voters ") || !strings.Contains(out, "; 1 cache states dropped") {
			t.Fatalf("restore into r%d: exit %d, stdout %q, stderr %q", i+1, code, out, errOut)
		}
		if i == 0 {
			t.Logf("r1: %s", strings.TrimSpace(out))
		}
		c.masters[i], c.ids[i], c.kernels[i] = n, ids[i], nil
		c.restartMaster(i)
	}
	c.waitLeader(20 * time.Second)
	for i := range c.n {
		if st, err := qpStatusOf(c.masters[i]); err != nil || strings.Join(st.Members, ",") != strings.Join(slices.Sorted(slices.Values(ids)), ",") {
			t.Errorf("r%d's group: %+v, %v; want the restored masters %v", i+1, st, err, ids)
		}
	}
	// The restored group's table is empty: another kernel gets the key
	// at once, with no holder to revoke.
	if g := c.lockUntil(1, ex5, 10*time.Second); g.outcome != qpAcked {
		t.Errorf("EXCLUSIVE INUM 5 through restored r2: %+v", g)
	}
	var after []*qpOp
	for i := range c.n {
		op := c.commitUntil(i, 20*time.Second)
		if op == nil {
			t.Fatalf("no commit through restored r%d within 20s:%s", i+1, qpFmtStatuses(c.statuses()))
		}
		for _, a := range acked {
			if op.r.txid <= a.r.txid {
				t.Errorf("after the restore txid %d, not above %d acknowledged before", op.r.txid, a.r.txid)
			}
		}
		after = append(after, op)
	}

	c.stopAll()
	for i, n := range fresh {
		lg, err := qpReadLog(n.pfs)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range append(append([]*qpOp(nil), acked...), after...) {
			if got := lg.byTxid[a.r.txid]; got != a.payload {
				t.Errorf("r%d: %v: its log has %q at txid %d", i+1, a, got, a.r.txid)
			}
			if len(lg.txids[a.payload]) != 1 {
				t.Errorf("r%d: %v: in its log at %v", i+1, a, lg.txids[a.payload])
			}
		}
		t.Logf("r%d's log: %d..%d committed, %d commits checked", i+1, lg.first, lg.commit, len(acked)+len(after))
	}
}

// tamper copies the snapshot at src to dst with the log entry at txid
// changed: what a disk's bit rot or a hand edit would leave.
func tamper(t *testing.T, src, dst string, txid uint64) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(dst, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		lb := tx.Bucket([]byte(qbLog))
		v := append([]byte(nil), lb.Get(u64key(txid))...)
		if len(v) == 0 {
			return fmt.Errorf("no log entry at %d", txid)
		}
		v[len(v)-1] ^= 1
		return lb.Put(u64key(txid), v)
	})
	if err != nil {
		t.Fatal(err)
	}
}
