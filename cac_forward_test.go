//go:build !dragonfly

package main

// A non-master leaf forwards its kernel's QRM_COMMIT to the nearest
// master. When that master's circuit is already gone (its leaf died and
// the span's withdrawal is still on its way), the circuit is refused
// CANTCIRC before any master saw the request: the leaf tries the next
// master, and answers 0x27 when none takes it. An answer a master gives,
// whatever it is, goes to the kernel unchanged and is never tried again
// elsewhere, since the master may have applied it.

import (
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fwMaster stands in for a master's leaf on the service: it advertises a
// MASTER span of the cluster at dist and answers every QRM_COMMIT and
// CAC_LOCK opened under it with answer.
type fwMaster struct {
	tries    atomic.Int32
	released chan struct{} // closed when a granted CAC_LOCK is closed
}

// fwAnswer is how a stand-in master answers a QRM_COMMIT.
type fwAnswer int

const (
	fwCommit  fwAnswer = iota // phase 1, then phase 2 at txid 7; a CAC_LOCK granted at txid 9
	fwGone                    // CANTCIRC: as a leaf refuses a circuit under a span it no longer has
	fwUnknown                 // 0x26: the master had it, the outcome is unknown
)

func startFwMaster(t *testing.T, svc *Service, name string, clid UUID, dist uint32, answer fwAnswer) *fwMaster {
	t.Helper()
	fm := &fwMaster{released: make(chan struct{})}
	l := attach(t, svc, name, func(tr *Trans, m *Msg) {
		if tr.IsRoot() || tr.Parent() == nil || m.Cmd&FlagCreate == 0 {
			return
		}
		fm.tries.Add(1)
		switch {
		case answer == fwCommit && tr.Cmd() == CmdCacLock:
			g, err := parseCacLock(m.Ext)
			if err != nil {
				t.Errorf("%s: forwarded CAC_LOCK: %v", name, err)
				_ = tr.Close(ErrParam)
				return
			}
			g.Txid = 9
			tr.SetHandler(func(tr *Trans, m *Msg) {
				if m.Cmd&FlagDelete != 0 {
					close(fm.released)
				}
			})
			_ = tr.Send(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: g.marshal()})
		case answer == fwCommit:
			_ = tr.Send(&Msg{Header: Header{Cmd: CmdQrmCommit}, Ext: (&qrmCommit{Phase: 1, ReqID: 1}).marshal()})
			_ = tr.Send(&Msg{Header: Header{Cmd: CmdQrmCommit | FlagDelete},
				Ext: (&qrmCommit{Phase: 2, Txid: 7, ReqID: 1}).marshal()})
		case answer == fwGone:
			_ = tr.Close(ErrCantCirc)
		case answer == fwUnknown:
			_ = tr.Close(ErrQuorumUnknown)
		}
	})
	sp := LnkSpan{PeerID: clid, PfsID: NewUUID(), PfsType: PFSMaster, PeerType: PeerHammer2,
		ProtoVersion: SpanProto1, Dist: dist}
	sp.SetLabels(name, "qrm")
	if _, err := l.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(*Trans, *Msg) {}); err != nil {
		t.Fatal(err)
	}
	return fm
}

// startFwSlave runs a SLAVE leaf of cluster clid in process on the
// service at sock, and returns it once it has masters spans of the
// cluster.
func startFwSlave(t *testing.T, dir, sock string, clid UUID, masters int) (*Leaf, string) {
	t.Helper()
	pfsDir := filepath.Join(dir, "pfs")
	if err := CreatePFS(pfsDir, PFSInfo{Label: "qrm", Clid: clid, Fsid: NewUUID(), Type: PFSSlave}); err != nil {
		t.Fatal(err)
	}
	pfs, err := OpenPFS(pfsDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pfs.Close() })
	keyDir := filepath.Join(dir, "key")
	key, trust := newTestNodeKey(t, keyDir)
	cfg := DefaultConfig()
	cfg.KeyDir, cfg.RunDir = keyDir, filepath.Join(dir, "run")
	cfg.Backbone, cfg.Listen = "unix:"+sock, "none"
	l, err := NewLeaf(cfg, pfs, key, trust, discardLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- l.Run(ctx, "", func() { close(ready) }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("leaf: %v", err)
		}
	})
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("leaf: %v", err)
	case <-timeout.C:
		t.Fatal("leaf not ready after 10 s")
	}
	for {
		changed := l.changes.Changed()
		if n := len(l.masters()); n == masters {
			return l, pfsDir
		}
		select {
		case <-changed:
		case <-timeout.C:
			t.Fatalf("the leaf sees %d master spans after 10 s, want %d: %v", len(l.masters()), masters, l.spans.list())
		}
	}
}

// fwCommitVia sends one QRM_COMMIT on a kernel link to the leaf of pfsDir
// and returns the txid of its phase 2, or the error it ended with.
func fwCommitVia(t *testing.T, pfsDir string) (txid uint64, code uint32) {
	t.Helper()
	k, err := dialQBKernel("kernel", pfsDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.link.Close() })
	type end struct {
		txid uint64
		code uint32
	}
	ended := make(chan end, 1)
	_, err = k.link.Root().Open(&Msg{Header: Header{Cmd: CmdQrmCommit}, Ext: newExt(CmdQrmCommit), Aux: []byte("op")},
		func(_ *Trans, m *Msg) {
			if m.Cmd&FlagDelete == 0 {
				return
			}
			if m.Cmd&maskBaseCmd != CmdQrmCommit {
				ended <- end{code: m.Error}
				return
			}
			c, err := parseQrmCommit(m.Ext)
			if err != nil {
				t.Errorf("phase 2: %v", err)
			}
			ended <- end{txid: c.Txid, code: m.Error}
		})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ended:
		return e.txid, e.code
	case <-time.After(10 * time.Second):
		t.Fatal("no end of the commit after 10 s")
		return 0, 0
	}
}

func TestForwardPastGoneCircuit(t *testing.T) {
	for _, tc := range []struct {
		name        string
		near, far   fwAnswer // the nearest master's answer, the other's
		txid        uint64
		code        uint32
		nearN, farN int32 // tries each master saw
	}{
		{name: "the next master takes it", near: fwGone, far: fwCommit, txid: 7, nearN: 1, farN: 1},
		{name: "no master takes it", near: fwGone, far: fwGone, code: ErrNoQuorum, nearN: 1, farN: 1},
		{name: "a master's answer is final", near: fwUnknown, far: fwCommit, code: ErrQuorumUnknown, nearN: 1, farN: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := shortTempDir(t)
			sock := filepath.Join(dir, "svc.sock")
			svc := NewService(ServiceConfig{Unix: sock}, nil, discardLogger())
			runServiceInProcess(t, svc)
			clid := NewUUID()
			near := startFwMaster(t, svc, "near", clid, 0, tc.near)
			far := startFwMaster(t, svc, "far", clid, 4, tc.far)
			_, pfsDir := startFwSlave(t, dir, sock, clid, 2)
			txid, code := fwCommitVia(t, pfsDir)
			if txid != tc.txid || code != tc.code {
				t.Errorf("the kernel got txid %d error %#x (%s), want txid %d error %#x (%s)",
					txid, code, ErrString(code), tc.txid, tc.code, ErrString(tc.code))
			}
			if n, f := near.tries.Load(), far.tries.Load(); n != tc.nearN || f != tc.farN {
				t.Errorf("tries: nearest master %d, other %d; want %d and %d", n, f, tc.nearN, tc.farN)
			}
		})
	}
}

// TestForwardLockPastGoneCircuit: a CAC_LOCK whose nearest master's
// circuit is gone is granted by the next one; the leaf records the grant
// under the holder name it gave the request, and forgets it when the
// kernel releases it.
func TestForwardLockPastGoneCircuit(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "svc.sock")
	svc := NewService(ServiceConfig{Unix: sock}, nil, discardLogger())
	runServiceInProcess(t, svc)
	clid := NewUUID()
	near := startFwMaster(t, svc, "near", clid, 0, fwGone)
	far := startFwMaster(t, svc, "far", clid, 4, fwCommit)
	l, pfsDir := startFwSlave(t, dir, sock, clid, 2)
	k, err := dialQBKernel("kernel", pfsDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.link.Close() })

	granted := make(chan cacLock, 1)
	var releasing atomic.Bool // the kernel's own close is answered with a close
	req := cacLock{Domain: cacInum, Mode: cacExclusive, Lo: 300, Hi: 300}
	kt, err := k.link.Root().Open(&Msg{Header: Header{Cmd: CmdCacLock}, Ext: req.marshal()}, func(_ *Trans, m *Msg) {
		g, err := parseCacLock(m.Ext)
		switch {
		case m.Cmd&FlagDelete != 0 && releasing.Load():
		case m.Cmd&FlagDelete != 0:
			t.Errorf("the lock ended before its release: %s error %s", CmdString(m.Cmd), ErrString(m.Error))
		case err != nil:
			t.Errorf("grant: %v", err)
		default:
			granted <- g
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	select {
	case g := <-granted:
		if g.Txid != 9 || g.Mode != cacExclusive {
			t.Errorf("granted %s at txid %d, want EXCLUSIVE at 9", g.Mode, g.Txid)
		}
	case <-timeout.C:
		t.Fatal("no grant after 10 s")
	}
	if n, f := near.tries.Load(), far.tries.Load(); n != 1 || f != 1 {
		t.Errorf("tries: nearest master %d, other %d; want 1 and 1", n, f)
	}
	held, err := l.cstore.list()
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].Txid != 9 || !strings.HasPrefix(held[0].Holder, l.info.Fsid.String()+"/") {
		t.Fatalf("the leaf records %+v, want the grant at txid 9 held by %s/...", held, l.info.Fsid)
	}

	// The kernel releases it: the master's transaction ends, and the
	// record goes.
	changed := l.changes.Changed()
	releasing.Store(true)
	_ = kt.Close(ErrOK)
	select {
	case <-far.released:
	case <-timeout.C:
		t.Fatal("the master's transaction still open 10 s after the release")
	}
	for {
		held, err := l.cstore.list()
		if err != nil {
			t.Fatal(err)
		}
		if len(held) == 0 {
			return
		}
		select {
		case <-changed:
			changed = l.changes.Changed()
		case <-timeout.C:
			t.Fatalf("the leaf still records %+v 10 s after the release", held)
		}
	}
}
