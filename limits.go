package main

// What a peer can make a daemon hold, and the bounds on it. Each bound
// has a default, a unit and a reason here and in config.toml.example
// ([limits]); docs/SECURITY.md lists them with what they protect. Going
// over one closes only the offending link, with one log line naming the
// peer, the limit and the value.

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limits are the [limits] table.
type Limits struct {
	// Links bounds the links one listener (a TCP port, a Unix socket)
	// holds at once. Each costs a file descriptor, three goroutines and
	// its buffers; past it a new connection is closed at once.
	Links int `toml:"links"`
	// UnprivilegedLinks bounds the unprivileged links of all listeners
	// together, below Links, so that a local user cannot take every slot
	// from the leaves and the kernel.
	UnprivilegedLinks int `toml:"unprivileged_links"`
	// HelloTimeout is how long an accepted link may stay without saying
	// who it is: an LNK_CONN (a shell: its first line). DragonFly's own
	// peers send theirs at once.
	HelloTimeout Duration `toml:"hello_timeout"`
	// SpansPerLink bounds the spans one link may advertise; Spans the
	// spans of all links together. A leaf advertises one per PFS; a
	// service link carries its cluster's.
	SpansPerLink int `toml:"spans_per_link"`
	Spans        int `toml:"spans"`
	// TransPerLink bounds the transactions a peer holds open on one link
	// (its spans count, and the circuits it opens); CircuitsPerLink the
	// circuits it opens through a service to other nodes.
	TransPerLink    int `toml:"transactions_per_link"`
	CircuitsPerLink int `toml:"circuits_per_link"`
	// QueueBytes is what may queue for a peer that stopped reading before
	// its link is closed.
	QueueBytes int `toml:"queue_bytes"`
	// RefusedLogsPerSecond bounds the log lines about refused
	// connections and handshakes; the rest are counted and the count is
	// logged with the next line let through.
	RefusedLogsPerSecond float64 `toml:"refused_logs_per_second"`
}

// defaultLimits are the built-in bounds (config.toml.example repeats them
// with their reasons).
func defaultLimits() Limits {
	return Limits{
		Links:                1024,
		UnprivilegedLinks:    8,
		HelloTimeout:         Duration{10 * time.Second},
		SpansPerLink:         4096,
		Spans:                16384,
		TransPerLink:         16384,
		CircuitsPerLink:      4096,
		QueueBytes:           64 << 20,
		RefusedLogsPerSecond: 10,
	}
}

func (l Limits) validate() error {
	for _, c := range []struct {
		key string
		v   int
	}{{"links", l.Links}, {"unprivileged_links", l.UnprivilegedLinks}, {"spans_per_link", l.SpansPerLink},
		{"spans", l.Spans}, {"transactions_per_link", l.TransPerLink}, {"circuits_per_link", l.CircuitsPerLink},
		{"queue_bytes", l.QueueBytes}} {
		if c.v <= 0 {
			return fmt.Errorf("key limits.%s: %d is not a positive number", c.key, c.v)
		}
	}
	switch {
	case l.HelloTimeout.Duration <= 0:
		return fmt.Errorf("key limits.hello_timeout: %v is not a positive duration", l.HelloTimeout)
	case l.UnprivilegedLinks > l.Links:
		return fmt.Errorf("key limits.unprivileged_links: %d is above limits.links %d", l.UnprivilegedLinks, l.Links)
	case l.SpansPerLink > l.Spans:
		return fmt.Errorf("key limits.spans_per_link: %d is above limits.spans %d", l.SpansPerLink, l.Spans)
	case l.TransPerLink < l.SpansPerLink+l.CircuitsPerLink:
		return fmt.Errorf("key limits.transactions_per_link: %d is below spans_per_link + circuits_per_link (%d): a link's spans and circuits are transactions too",
			l.TransPerLink, l.SpansPerLink+l.CircuitsPerLink)
	case l.QueueBytes < 2*AuxMax:
		return fmt.Errorf("key limits.queue_bytes: %d is below two of the largest messages (%d)", l.QueueBytes, 2*AuxMax)
	case l.RefusedLogsPerSecond <= 0:
		return fmt.Errorf("key limits.refused_logs_per_second: %v is not positive", l.RefusedLogsPerSecond)
	}
	return nil
}

// LimitError is a peer going over a limit; it closes the link.
type LimitError struct {
	Limit  string // the config key, e.g. "spans_per_link"
	Value  uint64 // what the peer asked for
	Max    uint64
	Unit   string // "" for a count
	Reason string
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("over limits.%s: %d%s, the most is %d%s (%s)", e.Limit, e.Value, e.Unit, e.Max, e.Unit, e.Reason)
}

// logLimiter lets at most a rate of log lines through and counts the
// rest, so that a flood of refused connections cannot flood the log.
// Safe for concurrent use.
type logLimiter struct {
	lim *rate.Limiter

	mu         sync.Mutex
	suppressed int
}

func newLogLimiter(perSecond float64) *logLimiter {
	burst := max(1, int(2*perSecond))
	return &logLimiter{lim: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// Warn logs msg if the rate allows, with the count of lines suppressed
// since the last one.
func (ll *logLimiter) Warn(log *slog.Logger, msg string, args ...any) {
	if ll == nil {
		log.Warn(msg, args...)
		return
	}
	ll.mu.Lock()
	if !ll.lim.Allow() {
		ll.suppressed++
		ll.mu.Unlock()
		return
	}
	n := ll.suppressed
	ll.suppressed = 0
	ll.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed_since_last", n)
	}
	log.Warn(msg, args...)
}

// keyedLogLimiter lets an event be logged once per key and interval (every 0:
// once), across goroutines, and at most perMinute events a minute in all
// (0: no cap), so that a peer inventing ids cannot flood the log. A key
// held back by the cap is logged when it comes again later. The limiter
// forgets every key when it has seen keyedLogLimiterKeys of them, so distinct
// keys cost bounded memory and at worst repeat some lines.
type keyedLogLimiter struct {
	every     time.Duration
	perMinute int

	mu     sync.Mutex
	last   map[string]time.Time
	window time.Time // start of the current minute
	count  int       // events allowed in it
}

const keyedLogLimiterKeys = 1024

func (l *keyedLogLimiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && (l.every == 0 || now.Sub(t) < l.every) {
		return false
	}
	if l.perMinute > 0 {
		if now.Sub(l.window) >= time.Minute {
			l.window, l.count = now, 0
		}
		if l.count >= l.perMinute {
			return false
		}
		l.count++
	}
	if l.last == nil || len(l.last) >= keyedLogLimiterKeys {
		l.last = map[string]time.Time{}
	}
	l.last[key] = now
	return true
}
