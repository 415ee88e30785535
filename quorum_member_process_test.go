package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestLongQuorumMembership: a fourth MASTER of the cluster, not among the
// founders in quorum.masters, whose node key the members trust, asks to
// join; the leader adds it as a learner, catches it up and promotes it,
// and it commits through its own kernel. A fifth, whose key nobody
// trusts, is refused (each member logs why, with its key) and never
// becomes a member or a learner, although its span is advertised like
// the fourth's. An operator's `hammer2 quorum remove` takes the fourth
// out again, and the leader does not add it back although its span is
// still there.
func TestLongQuorumMembership(t *testing.T) {
	longTest(t)
	t.Parallel()
	c := newQPCluster(t, 3, false, 3*time.Second)
	leader := c.waitLeader(20 * time.Second)

	founders := make([]string, c.n)
	for i, m := range c.masters {
		founders[i] = strconv.Quote(m.info.Fsid.String())
	}
	qtoml := fmt.Sprintf("\n[quorum]\nmasters = [%s]\ntick = \"100ms\"\ncommit_timeout = \"3s\"\n", strings.Join(founders, ", "))
	fsid := NewUUID()
	id := fmt.Sprintf("%x", masterID(fsid))
	m4 := newSvcLeaf(t, "m4", PFSInfo{Label: "qrm", Clid: c.clid, Fsid: fsid, Type: PFSMaster})
	m4.writeConfig(qtoml)
	fsid5 := NewUUID()
	id5 := fmt.Sprintf("%x", masterID(fsid5))
	m5 := newSvcLeaf(t, "m5", PFSInfo{Label: "qrm", Clid: c.clid, Fsid: fsid5, Type: PFSMaster})
	m5.writeConfig(qtoml)
	// The operator trusts m4's key on the members and has them reread
	// their keys; m5's is trusted nowhere.
	marks := make([]int, c.n)
	for i, m := range c.masters {
		m.trust(m4)
		marks[i] = m.logMark()
		m.signal(syscall.SIGHUP)
	}
	for i, m := range c.masters {
		m.waitLogSince(marks[i], 10*time.Second, "configuration reloaded")
	}
	startLeafOn(m4, c.svcs[0])
	t.Cleanup(m4.killQuietly)
	startLeafOn(m5, c.svcs[0])
	t.Cleanup(m5.killQuietly)

	// Everyone, m4 included, agrees on four voters and one leader; m5 is
	// neither a voter nor a learner anywhere.
	watches := append(c.watches(), &m4.watch)
	waitQP(t, 20*time.Second, "m4 added and caught up", watches, func() (bool, string) {
		st4, err := qpWatchedOf(m4)
		if err != nil {
			return false, err.Error()
		}
		sts := c.statuses()
		for _, s := range sts {
			if s == nil || len(s.Members) != 4 || !slices.Contains(s.Members, id) || len(s.Learners) != 0 {
				return false, qpFmtStatuses(append(sts, st4))
			}
		}
		ok := len(st4.Members) == 4 && st4.HasQuorum && st4.Leader == sts[leader].Leader
		return ok, qpFmtStatuses(append(sts, st4))
	})
	for i, s := range c.statusesNow() {
		if s != nil && (slices.Contains(s.Members, id5) || slices.Contains(s.Learners, id5)) {
			t.Errorf("m%d has the untrusted m5 (%s) in the group: %+v", i+1, id5, *s)
		}
	}
	var logs []changeSource
	for _, m := range c.masters {
		logs = append(logs, &m.log)
	}
	waitQP(t, 10*time.Second, "m5's join refused for its untrusted key", logs, func() (bool, string) {
		for _, m := range c.masters {
			lt := m.logText()
			if !strings.Contains(lt, "refused a master's join request") || !strings.Contains(lt, "master="+id5) ||
				!strings.Contains(lt, m5.fp) || !strings.Contains(lt, `reason="untrusted key"`) {
				return false, m.name + " did not log the refusal"
			}
		}
		return true, ""
	})
	var added, promoted bool
	for _, m := range c.masters {
		lt := m.logText()
		added = added || strings.Contains(lt, `change="add learner"`) && strings.Contains(lt, "master="+id)
		promoted = promoted || strings.Contains(lt, "change=promote master="+id) || strings.Contains(lt, "master="+id+" change=promote")
	}
	if !added || !promoted {
		t.Errorf("no leader logged adding m4 as a learner (%v) and promoting it (%v)", added, promoted)
	}
	refusedFor := func(n *leafNode, why string) bool {
		for line := range strings.Lines(n.logText()) {
			if strings.Contains(line, "refused this master's join request") && strings.Contains(line, why) {
				return true
			}
		}
		return false
	}
	if refusedFor(m4, `reason="untrusted key"`) {
		t.Errorf("m4 was refused for its key although the members trust it")
	}
	if !refusedFor(m5, `reason="untrusted key"`) {
		t.Errorf("m5 does not log why the members refuse it")
	}
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
	waitQP(t, 10*time.Second, "m4 removed", c.watches(), func() (bool, string) {
		sts := c.statuses()
		for _, s := range sts {
			if s == nil || len(s.Members) != 3 || slices.Contains(s.Members, id) {
				return false, qpFmtStatuses(sts)
			}
		}
		return true, ""
	})
	// Several sweeps later it is still out, its span still advertised. A
	// leader would add it back at a sweep (every quorumSweepTicks ticks of
	// 100 ms here); nothing marks a sweep outside the driver, so this is
	// a window of four sweeps, not a wait for an event.
	time.Sleep(4 * quorumSweepTicks * 100 * time.Millisecond)
	for i, s := range c.statusesNow() {
		if s != nil && (slices.Contains(s.Members, id) || slices.Contains(s.Learners, id)) {
			t.Errorf("m%d lists the removed master %s again: %v %v", i+1, id, s.Members, s.Learners)
		}
		if s != nil && (slices.Contains(s.Members, id5) || slices.Contains(s.Learners, id5)) {
			t.Errorf("m%d lists the untrusted m5 (%s): %v %v", i+1, id5, s.Members, s.Learners)
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

// waitQP waits until cond holds, woken by each change of srcs, for at
// most d.
func waitQP(t *testing.T, d time.Duration, what string, srcs []changeSource, cond func() (bool, string)) {
	t.Helper()
	waitEvent(t, d, what, cond, srcs...)
}
