package main

// The control socket: how one-shot commands (status, connect, disconnect)
// reach a running leaf. A Unix socket, mode 0600, one JSON request and one
// JSON answer per connection.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type controlRequest struct {
	Op string `json:"op"` // "status", "rescan", "quorum-add" or "quorum-remove"
	// Master is the quorum-add/-remove subject: a master id as status
	// prints it (hex).
	Master string `json:"master,omitempty"`
}

type controlResponse struct {
	Error    string      `json:"error,omitempty"`
	Status   *LeafStatus `json:"status,omitempty"`
	Members  []string    `json:"members,omitempty"`  // voters after a quorum change
	Learners []string    `json:"learners,omitempty"` // learners after a quorum change
}

// serveControl listens on path until ctx ends.
func (l *Leaf) serveControl(ctx context.Context, path string) error {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("control socket %s: another leaf answers there", path)
	}
	_ = os.Remove(path) // stale, from a leaf that died
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("control socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("control socket: %w", err)
	}
	l.spawn(func() {
		<-ctx.Done()
		ln.Close()
	})
	l.spawn(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			l.spawn(func() { l.controlConn(c) })
		}
	})
	return nil
}

func (l *Leaf) controlConn(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var req controlRequest
	var resp controlResponse
	if err := json.NewDecoder(c).Decode(&req); err != nil {
		resp.Error = "bad request: " + err.Error()
	} else {
		switch req.Op {
		case "status":
			st := l.Status()
			resp.Status = &st
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
	}
	_ = json.NewEncoder(c).Encode(&resp)
}

// controlCall sends one request to the leaf listening at path.
func controlCall(path string, req controlRequest) (*controlResponse, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w (no control socket at %s)", errNotRunning, path)
		}
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
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
