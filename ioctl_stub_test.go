//go:build !dragonfly

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// stubOpenT opens the stand-in PFS in dir, creating it with the defaults
// first if there is none.
func stubOpenT(t *testing.T, dir string) PFS {
	t.Helper()
	if err := CreatePFS(dir, PFSInfo{}); err != nil && !errors.Is(err, fs.ErrExist) {
		t.Fatal(err)
	}
	p, err := OpenPFS(dir)
	if err != nil {
		t.Fatalf("OpenPFS(%s): %v", dir, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// Opening a path without a PFS fails, names the path and how to make one,
// and leaves nothing behind (it used to make a MASTER there).
func TestStubOpenNeverCreates(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	dir := filepath.Join(parent, "typo")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := OpenPFS(dir)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), dir) ||
		!strings.Contains(err.Error(), "hammer2 -s "+parent+" pfs-create typo") {
		t.Errorf("OpenPFS of an empty directory: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("OpenPFS left %v in %s", ents, dir)
	}
	if _, err := OpenPFS(filepath.Join(parent, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenPFS of a missing directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(parent, "missing")); err == nil {
		t.Error("OpenPFS created a missing directory")
	}
}

func TestStubPFSRegistrationDefaults(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "mypfs")
	p := stubOpenT(t, dir)
	if p.Path() != dir {
		t.Errorf("Path() = %q, want %q", p.Path(), dir)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, err %v; want 0700", st.Mode(), err)
	}
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Label != "mypfs" || info.Type != PFSMaster || info.Clid.IsNil() || info.Fsid.IsNil() || info.Clid == info.Fsid {
		t.Errorf("defaults = %+v", info)
	}
	p.Close()

	again, err := stubOpenT(t, dir).Info()
	if err != nil || again != info {
		t.Errorf("reopened: %+v, %v; want %+v", again, err, info)
	}
}

func TestStubPFSCreate(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "slave")
	want := PFSInfo{Label: "cluster-a", Clid: NewUUID(), Type: PFSSlave}
	if err := CreatePFS(dir, want); err != nil {
		t.Fatal(err)
	}
	info, err := stubOpenT(t, dir).Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Fsid.IsNil() {
		t.Errorf("fsid not generated: %+v", info)
	}
	want.Fsid = info.Fsid
	if info != want {
		t.Errorf("Info() = %+v, want %+v", info, want)
	}
	if err := CreatePFS(dir, want); !errors.Is(err, fs.ErrExist) {
		t.Errorf("second CreatePFS: %v, want ErrExist", err)
	}
}

func TestStubBadRegistration(t *testing.T) {
	t.Parallel()
	good := `{"label":"x","clid":"` + NewUUID().String() + `","fsid":"` + NewUUID().String() + `","type":6}`
	cases := []struct{ name, content, field string }{
		{"garbage", "not json at all", ""},
		{"bad clid", strings.Replace(good, `"clid":"`, `"clid":"zz`, 1), "clid"},
		{"type out of range", strings.Replace(good, `"type":6`, `"type":300`, 1), "type"},
		{"type not a number", strings.Replace(good, `"type":6`, `"type":"master"`, 1), "type"},
		{"missing fsid", strings.Replace(good, `"fsid"`, `"other"`, 1), "fsid"},
		{"empty label", strings.Replace(good, `"label":"x"`, `"label":""`, 1), "label"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, stubRegFile)
			if err := os.WriteFile(file, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := OpenPFS(dir)
			if err == nil {
				t.Fatal("OpenPFS accepted a bad registration")
			}
			if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %q does not name %s and field %q", err, file, tc.field)
			}
		})
	}
	t.Run("good", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, stubRegFile), []byte(good), 0o600); err != nil {
			t.Fatal(err)
		}
		if info, err := stubOpenT(t, dir).Info(); err != nil || info.Label != "x" {
			t.Errorf("Info() = %+v, %v", info, err)
		}
	})
}

func TestStubRemotePersists(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := stubOpenT(t, dir)
	clid := NewUUID()
	a, err := p.RemoteAdd(-1, Volconf{Path: "span:alpha", Label: "a", PfsClid: clid, Flags: VolfEnabled})
	if err != nil || a.CopyID != 1 {
		t.Fatalf("add: %+v, %v", a, err)
	}
	if _, err := p.RemoteAdd(40, Volconf{Path: "span:beta"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.RemoteAdd(-1, Volconf{Path: "span:gone"}); err != nil {
		t.Fatal(err)
	}
	if err := p.RemoteDel(-1, "span:gone"); err != nil {
		t.Fatal(err)
	}
	want, err := p.RemoteScan()
	if err != nil {
		t.Fatal(err)
	}
	p.Close()

	got, err := stubOpenT(t, dir).RemoteScan()
	if err != nil || !slices.Equal(got, want) || len(got) != 2 || got[0] != a || got[1].CopyID != 40 {
		t.Errorf("after reopen: %+v, %v; want %+v", got, err, want)
	}

	// The image is the volume header's copyinfo[]; a deleted slot keeps
	// its path with copyid 0.
	img, err := os.ReadFile(filepath.Join(dir, stubRemoteFile))
	if err != nil || len(img) != RemoteSlots*VolconfSize {
		t.Fatalf("image: %d bytes, %v", len(img), err)
	}
	slot2 := img[2*VolconfSize : 3*VolconfSize]
	if slot2[0] != 0 || !strings.HasPrefix(string(slot2[0x40:]), "span:gone\x00") {
		t.Errorf("deleted slot 2 = % x", slot2[:16])
	}
}

func TestStubRemoteErrors(t *testing.T) {
	t.Parallel()
	p := stubOpenT(t, t.TempDir())
	long := strings.Repeat("x", VolconfPathMax+1)
	if _, err := p.RemoteAdd(-1, Volconf{Path: long}); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "path too long") {
		t.Errorf("add long path: %v", err)
	}
	if err := p.RemoteDel(-1, long); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "path too long") {
		t.Errorf("del long path: %v", err)
	}
	if _, err := p.RemoteAdd(256, Volconf{Path: "span:a"}); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("add slot 256: %v", err)
	}
	if err := p.RemoteDel(-1, "span:none"); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("del missing: %v", err)
	}
	for i := 1; i <= 255; i++ {
		if v, err := p.RemoteAdd(-1, Volconf{Path: fmt.Sprintf("span:h%d", i)}); err != nil || int(v.CopyID) != i {
			t.Fatalf("add %d: %+v, %v", i, v, err)
		}
	}
	if _, err := p.RemoteAdd(-1, Volconf{Path: "span:more"}); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("add to full table: %v", err)
	}
}

func TestStubTwoHandlesShareRemote(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, b := stubOpenT(t, dir), stubOpenT(t, dir)
	if _, err := a.RemoteAdd(-1, Volconf{Path: "span:from-a"}); err != nil {
		t.Fatal(err)
	}
	got, err := b.RemoteScan()
	if err != nil || len(got) != 1 || got[0].Path != "span:from-a" {
		t.Fatalf("b sees %+v, %v", got, err)
	}
	if err := b.RemoteDel(-1, "span:from-a"); err != nil {
		t.Fatal(err)
	}
	if got, err := a.RemoteScan(); err != nil || len(got) != 0 {
		t.Fatalf("a sees %+v, %v after b's delete", got, err)
	}

	// Concurrent read-modify-writes from both handles must not lose adds.
	const perHandle = 20
	var wg sync.WaitGroup
	for _, p := range []PFS{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perHandle {
				if _, err := p.RemoteAdd(-1, Volconf{Path: fmt.Sprintf("span:%p-%d", p, i)}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if got, err := a.RemoteScan(); err != nil || len(got) != 2*perHandle {
		t.Errorf("after concurrent adds: %d slots, %v; want %d", len(got), err, 2*perHandle)
	}
}

func TestStubMounted(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "pfs")
	p := stubOpenT(t, dir)
	if !p.Mounted() {
		t.Fatal("fresh PFS not mounted")
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if p.Mounted() {
		t.Error("Mounted() after the directory was removed")
	}
	if _, err := p.Info(); err == nil {
		t.Error("Info() succeeded after the directory was removed")
	}

	q := stubOpenT(t, t.TempDir())
	q.Close()
	if q.Mounted() {
		t.Error("Mounted() after Close")
	}
}

// stubDialKernel plays the kernel end: it dials once Recluster is listening.
func stubDialKernel(t *testing.T, dir string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("unix", KernelSocketPath(dir))
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("dial kernel socket: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type stubReclusterResult struct {
	c   net.Conn
	err error
}

func stubGoRecluster(ctx context.Context, p PFS) <-chan stubReclusterResult {
	ch := make(chan stubReclusterResult, 1)
	go func() {
		c, err := p.Recluster(ctx)
		ch <- stubReclusterResult{c, err}
	}()
	return ch
}

func stubExchange(t *testing.T, leaf, kernel net.Conn, msg string) {
	t.Helper()
	check := func(from, to net.Conn, s string) {
		if _, err := from.Write([]byte(s)); err != nil {
			t.Fatalf("write %q: %v", s, err)
		}
		to.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, len(s))
		if _, err := io.ReadFull(to, buf); err != nil || string(buf) != s {
			t.Fatalf("read %q, %v; want %q", buf, err, s)
		}
	}
	check(leaf, kernel, "to-kernel:"+msg)
	check(kernel, leaf, "to-leaf:"+msg)
}

func TestStubRecluster(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir := t.TempDir()
	// A socket file left behind by a dead daemon must not get in the way.
	if err := os.WriteFile(KernelSocketPath(dir), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p := stubOpenT(t, dir)

	ch := stubGoRecluster(ctx, p)
	k1 := stubDialKernel(t, dir)
	r1 := <-ch
	if r1.err != nil {
		t.Fatal(r1.err)
	}
	stubExchange(t, r1.c, k1, "first")

	ch = stubGoRecluster(ctx, p)
	k2 := stubDialKernel(t, dir)
	r2 := <-ch
	if r2.err != nil {
		t.Fatal(r2.err)
	}
	stubExchange(t, r2.c, k2, "second")

	// The replaced link is gone at both ends.
	k1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := k1.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("old kernel end: read %d, %v; want EOF", n, err)
	}
	if _, err := r1.c.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("old leaf end: write err %v, want closed", err)
	}

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(KernelSocketPath(dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file after Close: %v", err)
	}
	// The current link outlives the handle, like the kernel's.
	stubExchange(t, r2.c, k2, "after-close")
	if _, err := p.Recluster(ctx); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Recluster after Close: %v", err)
	}
}

func TestStubReclusterCancel(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := stubOpenT(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	ch := stubGoRecluster(ctx, p)
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case r := <-ch:
		if !errors.Is(r.err, context.Canceled) {
			t.Fatalf("cancelled Recluster: %v, %v", r.c, r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Recluster ignored cancellation")
	}

	// The listener stays usable after a cancelled wait.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	ch = stubGoRecluster(ctx2, p)
	k := stubDialKernel(t, dir)
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	stubExchange(t, r.c, k, "after-cancel")
	r.c.Close()
}
