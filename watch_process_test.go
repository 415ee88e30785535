//go:build !dragonfly

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestProcessStatusWatch: `hammer2 status --watch --json` prints the
// status at once and again when it changes (here: a remote link coming
// up), one JSON object a line; and a daemon holds at most
// controlWatchersMax watches at once.
func TestProcessStatusWatch(t *testing.T) {
	t.Parallel()
	a, b := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "b", daemonOpts{})
	a.trust(b)
	b.trust(a)
	b.start()
	a.start()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, a.bin, "-c", a.cfgPath, "status", "--watch", "--json", a.pfs)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	lines := make(chan statusJSON, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var doc leafStatusDoc
			if err := json.Unmarshal(sc.Bytes(), &doc); err != nil || len(doc.PFS) != 1 || doc.SchemaVersion != statusSchemaVersion {
				t.Errorf("status --watch printed %q: %v", sc.Text(), err)
				return
			}
			lines <- doc.PFS[0]
		}
	}()
	next := func(what string) statusJSON {
		t.Helper()
		select {
		case s, ok := <-lines:
			if !ok {
				t.Fatalf("status --watch ended before %s", what)
			}
			return s
		case <-time.After(10 * time.Second):
			t.Fatalf("status --watch: no line for %s within 10s", what)
		}
		return statusJSON{}
	}
	if s := next("the first status"); !s.Running || s.Leaf == nil || s.Leaf.Pid != a.pid() || len(s.Leaf.Remotes) != 0 {
		t.Fatalf("the first line: %+v", s)
	}
	if _, errOut, code := a.h2("-s", a.pfs, "connect", "span:"+b.addr); code != 0 {
		t.Fatalf("connect: exit %d: %s", code, errOut)
	}
	for {
		s := next("the link to b up")
		if len(s.Slots) == 1 && len(s.Leaf.Remotes) == 1 && s.Leaf.Remotes[0].State == DialUp && len(s.Leaf.Spans) == 1 {
			break
		}
	}

	// The watcher limit: the CLI's watch and the harness's hold two.
	var stops []context.CancelFunc
	defer func() {
		for _, s := range stops {
			s()
		}
	}()
	errs := make(chan error, controlWatchersMax)
	for range controlWatchersMax - 2 {
		wctx, stop := context.WithCancel(context.Background())
		stops = append(stops, stop)
		started := make(chan struct{})
		go func() {
			once := false
			errs <- controlWatch(wctx, a.controlPath(), func(*controlResponse) error {
				if !once {
					once = true
					close(started)
				}
				return nil
			})
		}()
		select {
		case <-started:
		case err := <-errs:
			t.Fatalf("watch %d refused: %v", len(stops), err)
		case <-time.After(10 * time.Second):
			t.Fatal("a watch got no status within 10s")
		}
	}
	err = controlWatch(context.Background(), a.controlPath(), func(*controlResponse) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "too many watchers") {
		t.Errorf("watch %d: %v, want refused with too many watchers", controlWatchersMax+1, err)
	}
	for _, s := range stops {
		s()
	}
	for range stops {
		if err := <-errs; err != nil {
			t.Errorf("a watch ended with %v when its caller hung up", err)
		}
	}
	stops = nil
}
