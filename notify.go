package main

// Telling status watchers that a daemon's state changed. A daemon calls
// Notify wherever its state changes (a link up or down, a span added or
// withdrawn, a dial state, the quorum status after a pump); a watcher takes
// Changed before it snapshots the state, so no change between the two is
// missed, and waits on it.

import "sync"

// notifier is a close-and-replace channel: Changed returns a channel that
// the next Notify closes. The zero value is ready, and a nil *notifier
// ignores Notify, so hooks need no checks. Notify with nobody waiting
// costs a lock and nothing else.
type notifier struct {
	mu sync.Mutex
	ch chan struct{} // nil until someone waits
}

// Changed returns a channel closed at the next Notify. Take it before
// reading the state it guards.
func (n *notifier) Changed() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch == nil {
		n.ch = make(chan struct{})
	}
	return n.ch
}

// Notify wakes everyone waiting on Changed.
func (n *notifier) Notify() {
	if n == nil {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ch != nil {
		close(n.ch)
		n.ch = nil
	}
}
