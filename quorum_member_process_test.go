package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestQuorumMembership: a fourth MASTER of the cluster, not among the
// founders in quorum.masters, is added by the leader once its span shows,
// caught up, and commits through its own kernel. An operator's `hammer2
// quorum remove` takes it out again, and the leader does not add it back
// although its span is still there.
func TestQuorumMembership(t *testing.T) {
	t.Parallel()
	c := newQPCluster(t, 3, false, 3*time.Second)
	leader := c.waitLeader(20 * time.Second)

	founders := make([]string, c.n)
	for i, m := range c.masters {
		founders[i] = strconv.Quote(m.info.Fsid.String())
	}
	fsid := NewUUID()
	id := fmt.Sprintf("%x", masterID(fsid))
	m4 := newSvcLeaf(t, "m4", PFSInfo{Label: "qrm", Clid: c.clid, Fsid: fsid, Type: PFSMaster})
	m4.writeConfig(fmt.Sprintf("\n[quorum]\nmasters = [%s]\ntick = \"100ms\"\ncommit_timeout = \"3s\"\n",
		strings.Join(founders, ", ")))
	startLeafOn(m4, c.svcs[0])
	t.Cleanup(m4.killQuietly)

	// Everyone, m4 included, agrees on four members and one leader.
	waitQP(t, 20*time.Second, "m4 added and caught up", func() (bool, string) {
		st4, err := qpStatusOf(m4)
		if err != nil {
			return false, err.Error()
		}
		sts := c.statuses()
		for _, s := range sts {
			if s == nil || len(s.Members) != 4 || !slices.Contains(s.Members, id) {
				return false, qpFmtStatuses(append(sts, st4))
			}
		}
		ok := len(st4.Members) == 4 && st4.HasQuorum && st4.Leader == sts[leader].Leader
		return ok, qpFmtStatuses(append(sts, st4))
	})
	k4, err := qpDialKernel(t, "k4", m4, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if op := c.hist.commit(k4, 3, 3, 6*time.Second); op.r.outcome != qpAcked {
		t.Fatalf("commit through the added master: %v", op)
	}

	// The operator removes it through m1's leaf.
	out, errOut, code := c.masters[0].h2("-s", c.masters[0].pfs, "quorum", "remove", id)
	if code != 0 {
		t.Fatalf("hammer2 quorum remove %s: exit %d: %s%s", id, code, out, errOut)
	}
	if strings.Contains(out, id) || !strings.HasPrefix(out, "members: ") {
		t.Errorf("hammer2 quorum remove %s printed %q; want the members without it", id, out)
	}
	waitQP(t, 10*time.Second, "m4 removed", func() (bool, string) {
		sts := c.statuses()
		for _, s := range sts {
			if s == nil || len(s.Members) != 3 || slices.Contains(s.Members, id) {
				return false, qpFmtStatuses(sts)
			}
		}
		return true, ""
	})
	// Several sweeps later it is still out, its span still advertised.
	time.Sleep(2 * time.Second)
	for i, s := range c.statuses() {
		if s != nil && slices.Contains(s.Members, id) {
			t.Errorf("m%d lists the removed master %s again: %v", i+1, id, s.Members)
		}
	}
	if op := c.commitUntil(0, 10*time.Second); op == nil {
		t.Fatal("no commit through m1 after the removal")
	}

	// Bad operator input names the field.
	_, errOut, code = c.masters[0].h2("-s", c.masters[0].pfs, "quorum", "remove", "nothex")
	if code == 0 || !strings.Contains(errOut, `master "nothex"`) {
		t.Errorf("quorum remove nothex: exit %d, stderr %q", code, errOut)
	}
}

// waitQP polls cond every 100 ms until it holds or d has passed.
func waitQP(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v:%s", what, d, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
