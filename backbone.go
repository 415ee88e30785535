package main

// The local backbone: the node's service daemon. "tcp:127.0.0.1:987" is
// DragonFly's own C `hammer2 service`, which takes plaintext dmsg from
// localhost when its remote/127.0.0.1.none file exists; "unix:path" is this
// binary's service. Reconnects like a remote link.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

type backbone struct {
	network, addr string
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
		b := &backbone{network: network, addr: addr, cancel: cancel, changes: &l.changes,
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
		b.set(func(s *DialState) { s.State, s.NextTry = DialDialing, time.Time{} })
		conn, err := d.DialContext(ctx, b.network, b.addr)
		var peer PeerIdentity
		if err == nil {
			// Only a privileged service may be the backbone: the spans it
			// relays decide where quorum traffic goes, and anyone could
			// listen on a socket path or a port that is free.
			if peer = l.policy.identify(conn); !peer.Class.Privileged() {
				conn.Close()
				err = fmt.Errorf("backbone %s: the service there is not privileged (%s); not linking", b.addr, peer)
				l.refused.Warn(l.log, "backbone refused", append([]any{"backbone", b.network + ":" + b.addr}, peer.attrs()...)...)
			}
		}
		if err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetNoDelay(true)
			}
			c := l.runClusterLink(conn, "backbone "+b.network+":"+b.addr, nil, peer)
			up := time.Now()
			b.mu.Lock()
			b.link = c
			b.mu.Unlock()
			b.set(func(s *DialState) { s.State, s.LastErr, s.Failures = DialUp, "", 0 })
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
		// Jitter above the delay (never below redial_min) keeps a
		// restarted service from being hit by every leaf at once.
		wait := delay + rand.N(delay/2+1)
		next := time.Now().Add(wait)
		b.set(func(s *DialState) {
			s.State, s.NextTry, s.Failures = DialBackoff, next, s.Failures+1
			if err != nil {
				s.LastErr = err.Error()
			}
		})
		l.log.Info("backbone link down; redialing", "backbone", b.network+":"+b.addr, "in", wait.Round(time.Millisecond), "err", err)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
		delay = min(delay*2, maxB)
	}
	b.set(func(s *DialState) { s.State, s.NextTry = DialStopped, time.Time{} })
}
