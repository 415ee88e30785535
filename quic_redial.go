package main

// Keeping an outgoing link up: neither QUIC nor TCP reconnects by itself,
// so each configured peer gets a Redialer that dials (a QUIC link, or a
// DragonFly TCP link by remote_dir's rule, dmsgtcp.go), runs the link until
// it ends, and dials again with exponential backoff and jitter.
//
//	idle ─► dialing ─► up ─► (link ends) ─► backoff ─► dialing ...
//	           │                               ▲
//	           └──── error ────────────────────┘ (refused, for a key problem)

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Redialer states, as reported in DialState.State.
const (
	DialIdle    = "idle"    // Run not started
	DialDialing = "dialing" // attempt in progress
	DialUp      = "up"      // link established, callback running
	// DialConnecting is shown for a link dialed whose peer has not yet
	// sent its first message (the Redialer itself says up).
	DialConnecting = "connecting"
	DialBackoff    = "backoff" // waiting for NextTry after a failure or lost link
	DialRefused    = "refused" // like backoff, but a key was refused (ours or theirs)
	DialStopped    = "stopped" // Run returned
)

// DialState is a Redialer's status snapshot.
type DialState struct {
	Addr     string
	State    string
	Since    time.Time // when State was entered
	NextTry  time.Time // in backoff and refused
	LastErr  string    // why the last attempt or link failed
	Failures int       // consecutive failed attempts or short-lived links
	Ups      uint64    // links established so far (metrics: reconnects)
	Peer     string    // the peer's trust-store name (QUIC) or key (TCP) while up
	// Transport is what the link runs on while up: "quic", "tcp"
	// (plaintext, remote/<ip>.none) or "tcp+rsa".
	Transport string
}

// redialConn is one established transport a Redialer hands to its run
// callback: a *QuicLink or a *tcpConn.
type redialConn interface {
	PeerName() string
	Transport() string
	Since() time.Time
	Err() error // why it ended, once it has
	Close() error
}

// Transport names QUIC for status.
func (l *QuicLink) Transport() string { return "quic" }

// RedialConfig tunes a Redialer. Zero values take the defaults noted.
type RedialConfig struct {
	MinBackoff time.Duration // first retry delay; default 1 s
	MaxBackoff time.Duration // cap on the delay; default 30 s
	// StableAfter is how long a link must have been up for its loss to
	// count as a fresh start (immediate redial) rather than one more
	// failure; it keeps a flapping peer from being hammered. Default
	// MaxBackoff.
	StableAfter time.Duration
	// Logger, if set, gets one line per failed attempt or lost link, with
	// the wait before the next: once per backoff step.
	Logger *slog.Logger
	// OnChange, if set, is called after every state change (with the
	// Redialer's lock held: it must not call back).
	OnChange func()
}

func (c *RedialConfig) setDefaults() {
	if c.MinBackoff <= 0 {
		c.MinBackoff = time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 30 * time.Second
	}
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	if c.StableAfter <= 0 {
		c.StableAfter = c.MaxBackoff
	}
}

// Redialer keeps one outgoing link to addr up while Run runs.
type Redialer struct {
	dial func(context.Context) (redialConn, error)
	addr string
	cfg  RedialConfig
	kick chan struct{}

	mu      sync.Mutex
	state   DialState
	changed chan struct{} // closed and replaced on every state change
}

// NewRedialer prepares a Redialer of QUIC links to addr; nothing happens
// until Run.
func NewRedialer(node *QuicNode, addr string, cfg RedialConfig) *Redialer {
	return newRedialerDial(addr, func(ctx context.Context) (redialConn, error) {
		q, err := node.Dial(ctx, addr)
		if err != nil {
			return nil, err
		}
		return q, nil
	}, cfg)
}

// newRedialerDial prepares a Redialer that calls dial for each attempt;
// addr names the target in its state and logs.
func newRedialerDial(addr string, dial func(context.Context) (redialConn, error), cfg RedialConfig) *Redialer {
	cfg.setDefaults()
	return &Redialer{
		dial:    dial,
		addr:    addr,
		cfg:     cfg,
		kick:    make(chan struct{}, 1),
		state:   DialState{Addr: addr, State: DialIdle, Since: time.Now()},
		changed: make(chan struct{}),
	}
}

// State returns the current state.
func (r *Redialer) State() DialState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// Changed returns a channel closed at the next state change. Take it before
// reading State to miss no change.
func (r *Redialer) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Kick cuts a pending backoff short, e.g. after the trust store was
// reloaded and a refused peer may now be accepted.
func (r *Redialer) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *Redialer) set(f func(*DialState)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.state.State
	f(&r.state)
	if r.state.State != old {
		r.state.Since = time.Now()
	}
	close(r.changed)
	r.changed = make(chan struct{})
	if r.cfg.OnChange != nil {
		r.cfg.OnChange()
	}
}

// Run dials, hands each link to run, which should return when the link
// ends, and redials until ctx is done. Cancelling ctx closes the current
// link so run returns. Run returns ctx's error.
func (r *Redialer) Run(ctx context.Context, run func(redialConn)) error {
	defer r.set(func(s *DialState) {
		s.State, s.NextTry, s.Peer, s.Transport = DialStopped, time.Time{}, "", ""
	})
	failures := 0
	for {
		r.set(func(s *DialState) { s.State, s.NextTry = DialDialing, time.Time{} })
		l, err := r.dial(ctx)
		if ctx.Err() != nil {
			if err == nil {
				l.Close()
			}
			return ctx.Err()
		}
		state := DialBackoff
		var lastErr string
		if err != nil {
			failures++
			lastErr = err.Error()
			if isKeyRefusal(err) {
				state = DialRefused
			}
		} else {
			r.set(func(s *DialState) {
				s.State, s.Peer, s.Transport, s.LastErr = DialUp, l.PeerName(), l.Transport(), ""
				s.Ups++
			})
			stop := context.AfterFunc(ctx, func() { l.Close() })
			run(l)
			stop()
			l.Close()
			if time.Since(l.Since()) >= r.cfg.StableAfter {
				failures = 0
			} else {
				failures++
			}
			lastErr = "link lost"
			if lerr := l.Err(); lerr != nil {
				lastErr += ": " + lerr.Error()
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		delay := r.backoff(failures)
		if r.cfg.Logger != nil {
			r.cfg.Logger.Info("link to node failed; redialing", "remote", r.addr, "state", state, "err", lastErr,
				"failures", failures, "next_try_in", delay.Round(time.Millisecond))
		}
		r.set(func(s *DialState) {
			s.State, s.NextTry, s.LastErr, s.Failures, s.Peer, s.Transport = state, time.Now().Add(delay), lastErr, failures, "", ""
		})
		if err := r.wait(ctx, delay); err != nil {
			return err
		}
	}
}

// isKeyRefusal tells a failure that no retry mends until keys change
// (DialRefused): QUIC's key refusals either way, and DragonFly's NORKEY,
// NOLKEY, KEYFMT and KEYXCHGFAIL on a TCP link.
func isKeyRefusal(err error) bool {
	var untrusted *UntrustedKeyError
	var refused *PeerRefusedError
	return errors.As(err, &untrusted) || errors.As(err, &refused) || errors.Is(err, errIOQNoRemoteKey) ||
		errors.Is(err, errIOQNoLocalKey) || errors.Is(err, errIOQKeyFormat) || errors.Is(err, errIOQKeyExchange)
}

func (r *Redialer) wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-r.kick:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// backoff returns the delay after the given number of consecutive failures:
// none after a stable link, else doubling from MinBackoff up to MaxBackoff,
// drawn from the upper half of that so peers that lost each other at the
// same moment do not redial in lockstep.
func (r *Redialer) backoff(failures int) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := r.cfg.MinBackoff
	for i := 1; i < failures && d < r.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, r.cfg.MaxBackoff)
	return max(r.cfg.MinBackoff, d/2+rand.N(d/2+1))
}
