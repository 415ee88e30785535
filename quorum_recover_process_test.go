package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLongQuorumRecover: three masters, two lost for good (kill -9, their
// quorum.db deleted). The survivor alone commits nothing; `hammer2 quorum
// recover` refuses while its leaf runs, and with the leaf stopped makes
// the survivor the whole group. Restarted, it commits alone, and every
// commit acknowledged before or after is in its log at the txid it was
// acknowledged with. A lost master that comes back empty (its
// quorum.masters makes it found a group of its own) is not stepped by
// the survivor, which keeps committing.
func TestLongQuorumRecover(t *testing.T) {
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
	c.waitCaughtUp(15 * time.Second)

	// The leader and one follower are lost for good.
	s := (leader + 1) % 3
	lost := []int{leader, (leader + 2) % 3}
	for _, i := range lost {
		c.killMaster(i)
		if err := os.Remove(filepath.Join(c.masters[i].pfs, quorumStoreFile)); err != nil {
			t.Fatal(err)
		}
	}
	if op := c.commit(s); op.r.outcome == qpAcked {
		t.Fatalf("the lone survivor m%d of three acknowledged a commit: %v", s+1, op)
	}

	sm := c.masters[s]
	recoverCmd := []string{"-s", sm.pfs, "quorum", "recover", "--survivors", c.ids[s]}
	out, errOut, code := sm.h2(recoverCmd...)
	if code == 0 || !strings.Contains(errOut, "stop the PFS's leaf first") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Fatalf("quorum recover while the leaf runs: exit %d, stdout %q, stderr %q; want one line refusing", code, out, errOut)
	}
	c.killMaster(s) // a crash: the harshest way to stop
	out, errOut, code = sm.h2(recoverCmd...)
	if code != 0 || !strings.Contains(out, "recovered:") || !strings.Contains(out, "voters "+c.ids[s]+";") {
		t.Fatalf("quorum recover: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	t.Logf("m%d: %s", s+1, strings.TrimSpace(out))
	c.restartMaster(s)
	op := c.commitUntil(s, 20*time.Second)
	if op == nil {
		t.Fatalf("no commit through the recovered m%d within 20s:%s", s+1, qpFmtStatuses(c.statuses()))
	}
	for _, a := range acked {
		if op.r.txid <= a.r.txid {
			t.Errorf("after the recovery txid %d, not above %d acknowledged before", op.r.txid, a.r.txid)
		}
	}
	acked = append(acked, op)
	if st, err := qpStatusOf(sm); err != nil || len(st.Members) != 1 || st.Members[0] != c.ids[s] || !st.HasQuorum {
		t.Errorf("the recovered m%d's group: %+v, %v; want itself alone, with a quorum", s+1, st, err)
	}

	// A lost master comes back with no state: it founds a group of its
	// own and campaigns, and the survivor ignores it.
	z := lost[1]
	c.restartMaster(z)
	waitQP(t, 15*time.Second, "the survivor refusing the returning master's raft traffic", []changeSource{&sm.log}, func() (bool, string) {
		lt := sm.logText()
		return strings.Contains(lt, "not stepping raft messages from a master outside") && strings.Contains(lt, "from="+c.ids[z]), ""
	})
	for range 3 {
		op := c.commit(s)
		if op.r.outcome != qpAcked {
			t.Fatalf("commit through the survivor with the lost master back: %v", op)
		}
		acked = append(acked, op)
	}
	if st, err := qpStatusOf(sm); err != nil || len(st.Members) != 1 || st.Members[0] != c.ids[s] {
		t.Errorf("the survivor's group after the lost master came back: %+v, %v", st, err)
	}

	// Every acknowledged commit is in the survivor's log, where it was
	// acknowledged.
	c.stopAll()
	lg, err := qpReadLog(sm.pfs)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range acked {
		if got := lg.byTxid[a.r.txid]; got != a.payload {
			t.Errorf("%v: the survivor's log has %q at txid %d", a, got, a.r.txid)
		}
		if len(lg.txids[a.payload]) != 1 {
			t.Errorf("%v: in the survivor's log at %v", a, lg.txids[a.payload])
		}
	}
	t.Logf("the survivor's log: %d..%d committed, %d acknowledged commits checked", lg.first, lg.commit, len(acked))
}
