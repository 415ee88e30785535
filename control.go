package main

// The control socket: how one-shot commands (status, connect, disconnect,
// quorum) reach a running leaf, and status reaches a running service. A
// Unix socket, mode 0600, one JSON request and one JSON answer per
// connection, except "watch": its answer is a status line at once and
// another each time the daemon's state changes, until the caller hangs up.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type controlRequest struct {
	Op string `json:"op"` // "status", "watch", "metrics", "rescan", "quorum-add", "quorum-remove" or "quorum-snapshot"
	// Master is the quorum-add/-remove subject: a master id as status
	// prints it (hex).
	Master string `json:"master,omitempty"`
	// Local: quorum-snapshot without the read barrier.
	Local bool `json:"local,omitempty"`
}

type controlResponse struct {
	Error    string         `json:"error,omitempty"`
	Status   *LeafStatus    `json:"status,omitempty"`
	Service  *ServiceStatus `json:"service,omitempty"`  // a service's status
	Members  []string       `json:"members,omitempty"`  // voters after a quorum change
	Learners []string       `json:"learners,omitempty"` // learners after a quorum change
	// Snapshot heads the copy that follows this line (quorum-snapshot).
	Snapshot *controlSnapshot `json:"snapshot,omitempty"`
	// Metrics is the daemon's metrics in Prometheus's text format
	// ("metrics").
	Metrics string `json:"metrics,omitempty"`
}

// controlServer is a daemon's control socket: one JSON request and one
// JSON answer per connection (a stream of them for "watch"). The socket is
// 0600 (0660 with security.group) whatever the umask, and each caller's
// credentials are checked as well: an unprivileged caller may only look
// (status, watch and metrics).
type controlServer struct {
	path    string
	policy  privilegePolicy
	log     *slog.Logger
	refused *logLimiter
	spawn   func(func()) // runs a goroutine its owner waits for
	handle  func(controlRequest) controlResponse
	// snapshot, if set, serves "quorum-snapshot": it writes its own
	// answer and the copy after it (quorum_snapshot.go).
	snapshot func(context.Context, controlRequest, net.Conn)
	// changes is notified by the daemon whenever its status changes;
	// nil: no watch.
	changes *notifier
	// watchers holds a token per running watch: at most
	// controlWatchersMax connections may be held open.
	watchers chan struct{}
}

// Watch bounds. A watch holds a goroutine pair and a connection for as
// long as the caller likes, so their number is bounded; a few people and
// scripts at once is what the socket serves. Bursts of changes (a link
// coming up brings its spans, a raft Ready several fields) are coalesced
// into one line per controlWatchCoalesce, short enough that a watcher
// still sees each step of a link's life. A watcher that does not read for
// controlWatchWriteTimeout is dropped: its unread lines pile up in our
// socket buffer, and nobody is watching any more.
const (
	controlWatchersMax       = 8
	controlWatchCoalesce     = 10 * time.Millisecond
	controlWatchWriteTimeout = 10 * time.Second
)

// serve listens until ctx ends.
func (cs *controlServer) serve(ctx context.Context) error {
	ln, err := cs.policy.listenUnix(cs.path)
	if errors.Is(err, errSocketInUse) {
		return fmt.Errorf("control socket %s: another daemon answers there", cs.path)
	}
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	cs.spawn(func() {
		<-ctx.Done()
		ln.Close()
	})
	cs.watchers = make(chan struct{}, controlWatchersMax)
	cs.spawn(func() {
		_ = acceptLoop(ctx, ln, cs.log, "control "+cs.path, func(c net.Conn) {
			cs.spawn(func() { cs.conn(ctx, c) })
		})
	})
	return nil
}

func (cs *controlServer) conn(ctx context.Context, c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	peer := cs.policy.identify(c)
	var req controlRequest
	var resp controlResponse
	switch err := json.NewDecoder(io.LimitReader(c, controlRequestMax)).Decode(&req); {
	case err != nil:
		resp.Error = "bad request: " + err.Error()
	case !controlReadOnly(req.Op) && !peer.Class.Privileged():
		cs.refused.Warn(cs.log, "control socket: refused an unprivileged caller", append([]any{"op", req.Op}, peer.attrs()...)...)
		resp.Error = cs.policy.needs(req.Op, peer)
	case req.Op == "quorum-snapshot" && cs.snapshot != nil:
		cs.snapshot(ctx, req, c)
		return
	case req.Op == "watch" && cs.changes == nil:
		resp.Error = "this daemon has no watch"
	case req.Op == "watch":
		select {
		case cs.watchers <- struct{}{}:
			cs.watch(ctx, c)
			<-cs.watchers
			return
		default:
			resp.Error = fmt.Sprintf("too many watchers (at most %d at once)", controlWatchersMax)
		}
	default:
		resp = cs.handle(req)
	}
	_ = json.NewEncoder(c).Encode(&resp)
}

// watch writes the status at once and again after each change (counters
// aside: bytes and RTT alone do not make a line) until the caller hangs
// up, stops reading, or the daemon stops.
func (cs *controlServer) watch(ctx context.Context, c net.Conn) {
	_ = c.SetDeadline(time.Time{})
	// The caller has nothing more to say: anything it sends, or its
	// hanging up, ends the watch. c.Close (deferred by conn) ends the read.
	gone := make(chan struct{})
	cs.spawn(func() {
		var b [1]byte
		_, _ = c.Read(b[:])
		close(gone)
	})
	enc := json.NewEncoder(c)
	var last []byte
	coalesce := time.NewTimer(0)
	defer coalesce.Stop()
	for {
		changed := cs.changes.Changed() // before the snapshot: no change is missed
		resp := cs.handle(controlRequest{Op: "status"})
		if key, _ := json.Marshal(resp.withoutCounters()); !bytes.Equal(key, last) {
			last = key
			_ = c.SetWriteDeadline(time.Now().Add(controlWatchWriteTimeout))
			if err := enc.Encode(&resp); err != nil {
				return
			}
		}
		select {
		case <-changed:
		case <-gone:
			return
		case <-ctx.Done():
			return
		}
		coalesce.Reset(controlWatchCoalesce)
		select {
		case <-coalesce.C:
		case <-gone:
			return
		case <-ctx.Done():
			return
		}
	}
}

// withoutCounters is the response with the fields that change on every
// message (bytes, RTT) cleared: what decides whether a watcher gets a line.
func (r controlResponse) withoutCounters() controlResponse {
	if r.Status != nil {
		st := r.Status.withoutCounters()
		r.Status = &st
	}
	if r.Service != nil {
		st := r.Service.withoutCounters()
		r.Service = &st
	}
	return r
}

// serveControl serves the leaf's control socket at path until ctx ends.
func (l *Leaf) serveControl(ctx context.Context, path string) error {
	cs := &controlServer{path: path, policy: l.policy, log: l.log, refused: l.refused, spawn: l.spawn, handle: l.control,
		snapshot: l.serveSnapshot, changes: &l.changes}
	return cs.serve(ctx)
}

// control answers one request to the leaf.
func (l *Leaf) control(req controlRequest) (resp controlResponse) {
	switch req.Op {
	case "status":
		st := l.Status()
		resp.Status = &st
	case "metrics":
		resp.Metrics, resp.Error = l.obs.textOrError()
	case "rescan":
		if err := l.Rescan(); err != nil {
			resp.Error = err.Error()
		}
	case "quorum-add", "quorum-remove":
		members, learners, err := l.changeMember(req.Op, req.Master)
		if err != nil {
			resp.Error = err.Error()
		}
		for _, m := range members {
			resp.Members = append(resp.Members, fmt.Sprintf("%x", m))
		}
		for _, m := range learners {
			resp.Learners = append(resp.Learners, fmt.Sprintf("%x", m))
		}
	default:
		resp.Error = fmt.Sprintf("unknown op %q", req.Op)
	}
	return resp
}

// controlRequestMax bounds a request: they are a few dozen bytes.
const controlRequestMax = 64 << 10

// controlCall sends one request to the leaf listening at path.
func controlCall(path string, req controlRequest) (*controlResponse, error) {
	return controlCallDeadline(path, req, time.Now().Add(10*time.Second))
}

// controlCallDeadline is controlCall answered by deadline (the dial
// within 2 s of it at most).
func controlCallDeadline(path string, req controlRequest, deadline time.Time) (*controlResponse, error) {
	c, err := net.DialTimeout("unix", path, max(time.Millisecond, min(2*time.Second, time.Until(deadline))))
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (no control socket at %s)", errNotRunning, path)
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if err := json.NewEncoder(c).Encode(&req); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	var resp controlResponse
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return nil, fmt.Errorf("control socket %s: reading the answer: %w", path, err)
	}
	if resp.Error != "" {
		return &resp, fmt.Errorf("leaf: %s", resp.Error)
	}
	return &resp, nil
}

// controlWatch asks the daemon listening at path for a watch and calls fn
// with each status line, until ctx ends (nil), the daemon goes away (an
// error wrapping io.EOF), or fn returns an error (returned).
func controlWatch(ctx context.Context, path string, fn func(*controlResponse) error) error {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	c, err := d.DialContext(dctx, "unix", path)
	cancel()
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w (no control socket at %s)", errNotRunning, path)
		}
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := json.NewEncoder(c).Encode(&controlRequest{Op: "watch"}); err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	dec := json.NewDecoder(c)
	for {
		var resp controlResponse
		if err := dec.Decode(&resp); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return fmt.Errorf("control socket %s: the watch ended: %w", path, err)
		}
		if resp.Error != "" {
			return fmt.Errorf("control socket %s: %s", path, resp.Error)
		}
		if err := fn(&resp); err != nil {
			return err
		}
	}
}

// changeMember serves quorum-add and quorum-remove, waiting at most the
// commit timeout (the control connection allows 10 s). An added master
// enters as a learner; the leader promotes it once it has caught up.
func (l *Leaf) changeMember(op, master string) (voters, learners []uint64, err error) {
	if l.quorum == nil {
		return nil, nil, errors.New("this leaf is not a member of a quorum group (not a MASTER, or no quorum.masters)")
	}
	id, err := strconv.ParseUint(strings.TrimPrefix(master, "0x"), 16, 64)
	if err != nil || id == 0 {
		return nil, nil, fmt.Errorf("master %q: not a master id (hex, as status shows it)", master)
	}
	change := quorumAddLearner
	if op == "quorum-remove" {
		change = quorumRemove
	}
	ctx, cancel := context.WithTimeout(l.ctx, min(l.cfg.Quorum.CommitTimeout.Duration, 9*time.Second))
	defer cancel()
	return l.quorum.Member(ctx, change, id)
}
