package main

// The local backbone: the node's service daemon. "tcp:127.0.0.1:987" is
// DragonFly's own C `hammer2 service` (or ours on its TCP port), by
// DragonFly's rule on both ends: plaintext when remote/127.0.0.1.none
// exists, encrypted with remote/127.0.0.1.pub (dmsgtcp.go); "tcp:" may name
// another machine's service too, which then needs a .pub. "unix:path" is
// this binary's service; "auto", the default, is ours when its socket is
// there and DragonFly's otherwise, chosen again at every attempt, and waits
// quietly while neither runs. Reconnects like a remote link.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

type backbone struct {
	network, addr string // network "auto": chosen at each attempt (target)
	unixSock      string // auto: our service's socket
	cancel        context.CancelFunc
	changes       *notifier // the leaf's

	mu    sync.Mutex
	link  *clusterLink
	state DialState
}

func (b *backbone) current() *clusterLink {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.link
}

func (b *backbone) snapshot() DialState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *backbone) set(f func(*DialState)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.state.State
	f(&b.state)
	if b.state.State != old {
		b.state.Since = time.Now()
	}
	b.changes.Notify()
}

// startBackbone replaces the backbone link with one to spec.
func (l *Leaf) startBackbone(spec string) {
	network, addr, _ := parseBackbone(spec) // validated with the config
	l.mu.Lock()
	old := l.backbone
	l.backbone = nil
	l.cfg.Backbone = spec
	if network != "" {
		ctx, cancel := context.WithCancel(l.ctx)
		b := &backbone{network: network, addr: addr, unixSock: l.cfg.Service.Unix, cancel: cancel, changes: &l.changes,
			state: DialState{Addr: spec, State: DialDialing, Since: time.Now()}}
		l.backbone = b
		l.spawn(func() { l.runBackbone(ctx, b) })
	}
	l.mu.Unlock()
	if old != nil {
		old.cancel()
	}
	l.changes.Notify()
}

func (l *Leaf) runBackbone(ctx context.Context, b *backbone) {
	l.mu.Lock()
	minB, maxB := l.cfg.RedialMin.Duration, l.cfg.RedialMax.Duration
	l.mu.Unlock()
	delay := minB
	var d net.Dialer
	for ctx.Err() == nil {
		network, addr := b.target()
		where := network + ":" + addr
		b.set(func(s *DialState) { s.State, s.NextTry, s.Addr = DialDialing, time.Time{}, b.describe(where) })
		var conn net.Conn
		var peer PeerIdentity
		var err error
		transport := "" // status names it for TCP only
		if network == "tcp" {
			var tc *tcpConn
			if tc, err = l.sec.dial(ctx, addr); err == nil {
				conn, peer, transport = tc, tc.peer, tc.Transport()
			}
		} else if conn, err = d.DialContext(ctx, network, addr); err == nil {
			peer = l.policy.identify(conn)
		}
		if err == nil {
			// Only a privileged service may be the backbone: the spans it
			// relays decide where quorum traffic goes, and anyone could
			// listen on a socket path or a port that is free. Over TCP an
			// RSA-authenticated service is an authenticated node.
			if !peer.Class.Privileged() {
				conn.Close()
				err = fmt.Errorf("backbone %s: the service there is not privileged (%s); not linking", addr, peer)
				l.refused.Warn(l.log, "backbone refused", append([]any{"backbone", where}, peer.attrs()...)...)
			}
		}
		if err == nil {
			c := l.runClusterLink(conn, "backbone "+where, nil, peer)
			up := time.Now()
			b.mu.Lock()
			b.link = c
			b.mu.Unlock()
			// Up once the service has said something: a socket that
			// accepts and then says nothing is no service.
			select {
			case <-c.link.Heard():
				b.set(func(s *DialState) {
					s.State, s.LastErr, s.Failures, s.Transport, s.Ups = DialUp, "", 0, transport, s.Ups+1
				})
			case <-c.link.Done():
			case <-ctx.Done():
			}
			select {
			case <-c.link.Done():
				err = c.link.Err()
			case <-ctx.Done():
				sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_ = c.link.Shutdown(sctx)
				cancel()
			}
			b.mu.Lock()
			b.link = nil
			b.mu.Unlock()
			if time.Since(up) > maxB {
				delay = minB // it was stable; start the backoff over
			}
		}
		if ctx.Err() != nil {
			break
		}
		wait := backboneWait(delay)
		next := time.Now().Add(wait)
		b.set(func(s *DialState) {
			s.State, s.NextTry, s.Failures, s.Transport = DialBackoff, next, s.Failures+1, ""
			if err != nil {
				s.LastErr = err.Error()
			}
		})
		// auto waits quietly while no service runs, or while this machine
		// has no rule for DragonFly's on 127.0.0.1: nothing is wrong.
		logf := l.log.Info
		if b.network == "auto" && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, errIOQNoRemoteKey)) {
			logf = l.log.Debug
		}
		logf("backbone link down; redialing", "backbone", where, "in", wait.Round(time.Millisecond), "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		delay = min(delay*2, maxB)
	}
	b.set(func(s *DialState) { s.State, s.NextTry = DialStopped, time.Time{} })
}

// target is where to dial now: for auto, our service's socket when it
// is there, else DragonFly's service on localhost.
func (b *backbone) target() (network, addr string) {
	if b.network != "auto" {
		return b.network, b.addr
	}
	if fi, err := os.Stat(b.unixSock); err == nil && fi.Mode()&os.ModeSocket != 0 {
		return "unix", b.unixSock
	}
	return "tcp", dragonflyServiceAddr
}

// describe is what status shows as the backbone's target.
func (b *backbone) describe(where string) string {
	if b.network == "auto" {
		return "auto (" + where + ")"
	}
	return where
}

// backboneWait is the wait before the next attempt at delay: jitter above
// the delay, never below it (so never below redial_min), keeps a
// restarted service from being hit by every leaf at once.
func backboneWait(delay time.Duration) time.Duration { return delay + rand.N(delay/2+1) }
