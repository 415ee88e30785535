//go:build !dragonfly

package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// kernelStatesOf is the kernel_states section of a leaf's status: asked
// now (watched: as its watch last showed it).
func kernelStatesOf(t *testing.T, n *leafNode, watched bool) []LockJSON {
	t.Helper()
	r := n.query()
	if watched {
		r = n.latest()
	}
	if r == nil || r.Status == nil {
		t.Fatalf("%s: not running", n.name)
	}
	return r.Status.KernelStates
}

// qpRetryPause is the most a retry of a failed request waits for a change
// (a span, a leader) that may let it succeed; woken by the first change.
const qpRetryPause = 200 * time.Millisecond

// waitAnyChange waits for the next change of any of srcs, at most d.
func waitAnyChange(d time.Duration, srcs ...changeSource) {
	first := true
	waitEventOK(d, func() (bool, string) {
		if first {
			first = false
			return false, ""
		}
		return true, ""
	}, srcs...)
}

// commitVia commits through kernel k (client, for the history) until
// acknowledged, at most d, pausing after a failure until the group or
// watched leaves change.
func (c *qpCluster) commitVia(k *simKernel, client int, d time.Duration, watched ...*leafNode) *qpOp {
	srcs := c.watches()
	for _, n := range watched {
		srcs = append(srcs, &n.watch)
	}
	deadline := time.Now().Add(d)
	var op *qpOp
	for range qpRetriesMax {
		op = c.hist.commit(k, client, 0, c.timeout+3*time.Second)
		if op.r.outcome == qpAcked || time.Now().After(deadline) {
			break
		}
		waitAnyChange(qpRetryPause, srcs...)
	}
	return op
}

// TestQuorumForwarding: the leaf of a SLAVE PFS of the cluster has no
// vote; its kernel's QRM_COMMIT and CAC_LOCK travel to a master under the
// master's span and get the same answers: both commit phases with a txid
// in the group's order, a grant the slave's leaf records, and a revoke
// when a master's kernel needs the keys.
func TestQuorumForwarding(t *testing.T) {
	notShort(t)
	t.Parallel()
	c := newQPCluster(t, 3, false, 3*time.Second)
	began := time.Now()
	c.waitLeader(20 * time.Second)
	s1 := newSvcLeaf(t, "s1", PFSInfo{Label: "qrm", Clid: c.clid, Type: PFSSlave})
	startLeafOn(s1, c.svcs[0])
	t.Cleanup(s1.killQuietly)
	ks, err := qpDialKernel(t, "ks", s1, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wait := c.timeout + 3*time.Second

	// Commits: the first may find the slave's leaf still without a
	// master's span.
	var last uint64
	for i := range 3 {
		op := c.commitVia(ks, 3, 10*time.Second, s1)
		if op.r.outcome != qpAcked || !op.r.phase1 {
			t.Fatalf("commit %d through the slave's leaf: %v\nkernel link:\n%s", i, op, ks.dump())
		}
		if op.r.txid <= last {
			t.Errorf("commit %d got txid %d, not above %d", i, op.r.txid, last)
		}
		last = op.r.txid
	}
	if op := c.commitUntil(0, 10*time.Second); op == nil || op.r.txid <= last {
		t.Errorf("a master's commit after the slave's: %v, want a txid above %d", op, last)
	}

	// A cache state through the slave's leaf, recorded there.
	ex := cacLock{Domain: cacInum, Mode: cacExclusive, Lo: 300, Hi: 300}
	g := ks.cacLockReq(ex, wait)
	if g.outcome != qpAcked || len(g.bad) > 0 {
		t.Fatalf("CAC_LOCK through the slave's leaf: %+v", g)
	}
	states := kernelStatesOf(t, s1, false)
	if len(states) != 1 || states[0].Txid != g.grant.Txid || !strings.HasPrefix(states[0].Holder, s1.info.Fsid.String()+"/") {
		t.Errorf("slave's status kernel_states %+v, want the grant at txid %d held by %s/...", states, g.grant.Txid, s1.info.Fsid)
	}
	// A master's kernel needs it: the slave's kernel is asked, releases,
	// and the master's request is granted after that.
	gm := c.kernel(1).cacLockReq(ex, wait)
	if gm.outcome != qpAcked {
		t.Fatalf("m2's CAC_LOCK over the slave's state: %+v", gm)
	}
	ks.mu.Lock()
	revokes := ks.revokes
	ks.mu.Unlock()
	if revokes != 1 {
		t.Errorf("the slave's kernel got %d revokes, want 1", revokes)
	}
	if at, ok := ks.lockEnded(g.msgid); !ok || at.After(gm.at) {
		t.Errorf("the slave's state was not revoked before m2's grant (ended %v %v, granted %v)", at, ok, gm.at)
	}
	waitQP(t, 5*time.Second, "the slave's record dropped", []changeSource{&s1.watch}, func() (bool, string) {
		st := kernelStatesOf(t, s1, true)
		return len(st) == 0, fmt.Sprint(st)
	})
	c.kernel(1).cacRelease(gm.msgid)
	ks.checkClean()

	// The master the slave's leaf forwards through dies: the slave's
	// kernel loses the state at once (its transaction ends), and its next
	// requests go through another master.
	g2 := ks.cacLockReq(cacLock{Domain: cacInum, Mode: cacExclusive, Lo: 900, Hi: 900}, wait)
	if g2.outcome != qpAcked {
		t.Fatalf("second CAC_LOCK through the slave's leaf: %+v", g2)
	}
	via := -1
	for i := range c.masters {
		if strings.Contains(c.locksOf(i), "INUM 896-911") {
			via = i
		}
	}
	if via < 0 {
		t.Fatalf("no master lists the slave's state INUM 896-911")
	}
	c.killMaster(via)
	waitQP(t, 5*time.Second, "the slave's state ended with its master", []changeSource{ks}, func() (bool, string) {
		_, ok := ks.lockEnded(g2.msgid)
		return ok, ks.dump()
	})
	if op := c.commitVia(ks, 3, 15*time.Second, s1); op.r.outcome != qpAcked {
		t.Errorf("commit through the slave's leaf after m%d died: %v", via+1, op)
	}
	c.restartMaster(via) // the history is checked against every master's log
	c.waitCaughtUp(20 * time.Second)
	c.verify(began, time.Now())
}

// TestQuorumRevalidateAfterRestart: a master's leaf is killed with -9
// while its kernel holds two cache states. Another master takes one of
// the keys meanwhile (after the lease). The restarted leaf recovers its
// record from cache.db; the kernel, reconnecting, revalidates both: the
// untouched one is confirmed at its original txid, the taken one is not.
func TestQuorumRevalidateAfterRestart(t *testing.T) {
	notShort(t)
	t.Parallel()
	c := newQPCluster(t, 3, false, 3*time.Second)
	leader := c.waitLeader(20 * time.Second)
	victim := (leader + 1) % c.n // keep the leader: fewer elections on 2 cores
	other := (leader + 2) % c.n
	wait := c.timeout + 3*time.Second
	keep := cacLock{Domain: cacInum, Mode: cacExclusive, Lo: 400, Hi: 400}
	lose := cacLock{Domain: cacAttr, Mode: cacShared, Lo: 500, Hi: 500}
	k := c.kernel(victim)
	gk := k.cacLockReq(keep, wait)
	gl := k.cacLockReq(lose, wait)
	if gk.outcome != qpAcked || gl.outcome != qpAcked {
		t.Fatalf("grants before the kill: %+v / %+v", gk, gl)
	}

	c.killMaster(victim)
	took := c.kernel(other).cacLockReq(cacLock{Domain: cacAttr, Mode: cacExclusive, Lo: 500, Hi: 500}, 2*time.Second+wait)
	if took.outcome != qpAcked {
		t.Fatalf("m%d's request over the dead leaf's state (granted after the lease): %+v", other+1, took)
	}
	c.restartMaster(victim)
	k2, err := qpDialKernel(t, "k-again", c.masters[victim], 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.kernels[victim] = k2
	rk, rl := gk.grant, gl.grant
	rk.Flags, rl.Flags = cacFlagRevalidate, cacFlagRevalidate
	var ok qpLockReply
	deadline := time.Now().Add(15 * time.Second)
	for range qpRetriesMax {
		ok = k2.cacLockReq(rk, wait)
		if ok.outcome == qpAcked || time.Now().After(deadline) || ok.code == 0 && ok.outcome == qpRefused {
			break
		}
		waitAnyChange(qpRetryPause, c.watches()...)
	}
	if ok.outcome != qpAcked || ok.grant.Txid != gk.grant.Txid || ok.grant.Lo != gk.grant.Lo || ok.grant.Hi != gk.grant.Hi {
		t.Errorf("revalidating the untouched state (granted %d-%d at txid %d): %+v", gk.grant.Lo, gk.grant.Hi, gk.grant.Txid, ok)
	}
	if r := k2.cacLockReq(rl, wait); r.outcome == qpAcked {
		t.Errorf("revalidating the state another master took meanwhile was confirmed: %+v", r)
	}
	// An unknown state is not confirmed either.
	bogus := cacLock{Domain: cacTree, Mode: cacShared, Lo: 1, Hi: 1, Txid: gk.grant.Txid, Flags: cacFlagRevalidate}
	if r := k2.cacLockReq(bogus, wait); r.outcome == qpAcked {
		t.Errorf("revalidating a state the leaf never granted was confirmed: %+v", r)
	}
	// The confirmed state is held again: another master's request revokes it.
	k2.cacRelease(ok.msgid)
	c.kernel(other).cacRelease(took.msgid)
}
