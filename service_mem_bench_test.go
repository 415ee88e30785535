package main

// What a service's memory costs per link and per relayed span, so that
// limits (limits.go) can be chosen against a memory budget
// (docs/SECURITY.md). A real service process; N leaves played by links in
// this process over its Unix socket, each advertising one span, which the
// service relays to the N-1 others.
//
//	go test -run '^$' -bench BenchmarkServiceMemory -benchtime 1x .

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// benchService runs a service process on a Unix socket only.
func benchService(b *testing.B) (sock string, pid int) {
	b.Helper()
	return benchServiceConfig(b, "/dev/null")
}

// benchServiceConfig is benchService with a config file.
func benchServiceConfig(b *testing.B, config string) (sock string, pid int) {
	b.Helper()
	dir := shortTempDir(b)
	sock = filepath.Join(dir, "s.sock")
	logPath := filepath.Join(dir, "svc.log")
	lf, err := os.Create(logPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(h2Binary(b), "-c", config, "-d", "service", "--unix", sock, "--tcp", "none", "--listen", "none")
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		lf.Close()
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		if out, _ := os.ReadFile(logPath); bytes.Contains(out, []byte("service running")) {
			return sock, cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			b.Fatal("the service did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settledRSS is the service's RSS once it has stopped growing: two reads
// 200 ms apart within 1 %, after a forced GC would be ideal but the
// process is not ours to collect, so it is given the time instead.
func settledRSS(b *testing.B, pid int) int {
	b.Helper()
	prev := rssKiB(b, pid)
	for range 25 {
		time.Sleep(200 * time.Millisecond)
		cur := rssKiB(b, pid)
		if d := cur - prev; d*100 <= prev && -d*100 <= prev {
			return cur
		}
		prev = cur
	}
	return prev
}

func BenchmarkServiceMemory(b *testing.B) {
	for _, n := range []int{10, 100, 500} {
		b.Run(fmt.Sprintf("leaves=%d", n), func(b *testing.B) {
			for range b.N {
				sock, pid := benchService(b)
				base := settledRSS(b, pid)
				var relayed atomic.Int64
				want := int64(n * (n - 1))
				reached := make(chan struct{})
				links := make([]*Link, n)
				for i := range n {
					c, err := net.Dial("unix", sock)
					if err != nil {
						b.Fatal(err)
					}
					cfg := LinkConfig{Name: "leaf", PingInterval: -1, DeadAfter: -1, Logger: discardLogger(),
						Handler: func(t *Trans, m *Msg) {
							if !t.IsRoot() && t.Cmd() == CmdLnkSpan && m.Cmd&FlagCreate != 0 {
								t.SetHandler(func(*Trans, *Msg) {})
								_ = t.Reply(ErrOK)
								if relayed.Add(1) == want {
									close(reached)
								}
							}
						}}
					l := NewLink(c, cfg)
					conn := LnkConn{PeerType: PeerHammer2, PeerMask: 1 << PeerHammer2, ProtoVersion: SpanProto1}
					if _, err := l.Root().Open(&Msg{Header: Header{Cmd: CmdLnkConn}, Ext: conn.Marshal()}, func(*Trans, *Msg) {}); err != nil {
						b.Fatal(err)
					}
					l.Start()
					links[i] = l
				}
				idle := settledRSS(b, pid)
				clid := NewUUID()
				for _, l := range links {
					sp := LnkSpan{PeerID: clid, PfsID: NewUUID(), PfsType: PFSMaster, PeerType: PeerHammer2, ProtoVersion: SpanProto1}
					sp.SetLabels("bench", "")
					if _, err := l.Root().Open(&Msg{Header: Header{Cmd: CmdLnkSpan}, Ext: sp.Marshal()}, func(*Trans, *Msg) {}); err != nil {
						b.Fatal(err)
					}
				}
				select {
				case <-reached:
				case <-time.After(2 * time.Minute):
					b.Fatalf("%d of %d relays after 2 minutes", relayed.Load(), want)
				}
				spans := settledRSS(b, pid)
				b.ReportMetric(float64(base)/1024, "MB-empty")
				b.ReportMetric(float64(idle)/1024, "MB-idle")
				b.ReportMetric(float64(spans)/1024, "MB-relaying")
				b.ReportMetric(float64(idle-base)*1024/float64(n), "B/idle-link")
				b.ReportMetric(float64(spans-idle)*1024/float64(want), "B/relay")
				for _, l := range links {
					l.Close()
				}
			}
		})
	}
}
