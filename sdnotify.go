package main

// systemd's service notification (sd_notify(3)), for units of
// Type=notify: READY=1 once the daemon serves (the point at which the
// background start reports "ok" to its parent), STOPPING=1 when it begins
// to shut down, and, when the unit sets WatchdogSec=, WATCHDOG=1 at half
// of WATCHDOG_USEC.
//
// The watchdog ping is earned, not free-running: before each ping the
// daemon must answer a status request on its own control socket (the
// accept loop, the request path and the locks every operator command
// takes), and a leaf that is a quorum master must also have its quorum
// driver run a no-op from its inbox (the one goroutine that owns raft and
// the bbolt file: a fsync that never returns or a stuck step shows there
// first). A daemon wedged in either misses its pings and systemd restarts
// it; a goroutine that only proves the process exists would keep a dead
// daemon "healthy".
//
// Off systemd (no NOTIFY_SOCKET; always on DragonFly) every call is a
// no-op.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// underSystemd reports whether the daemon was started by systemd as a
// Type=notify unit. Such a unit waits for READY=1 from its main process,
// so the daemon must stay in the foreground whatever -d says.
func underSystemd() bool { return os.Getenv("NOTIFY_SOCKET") != "" }

// sdNotifier speaks to systemd for one daemon. Ready starts the watchdog
// goroutine, which the notifier owns; it ends with the context given to
// Ready, and Wait waits for it.
type sdNotifier struct {
	// send delivers one notification (daemon.SdNotify); nil: not under
	// systemd, every call is a no-op.
	send     func(state string) error
	watchdog time.Duration // WATCHDOG_USEC; 0: no watchdog
	log      *slog.Logger
	missed   *logLimiter

	wg       sync.WaitGroup
	stopOnce sync.Once
}

// sdWatchdogLogsPerSecond bounds the log lines of missed pings: one a
// ping interval is plenty, and a watchdog of a few hundred ms must not
// flood the journal.
const sdWatchdogLogsPerSecond = 0.2

// newSDNotifier reads systemd's environment. A malformed WATCHDOG_USEC
// is logged and leaves the watchdog off: the unit then restarts nothing,
// which is what it would do without the setting.
func newSDNotifier(log *slog.Logger) *sdNotifier {
	n := &sdNotifier{log: log, missed: newLogLimiter(sdWatchdogLogsPerSecond)}
	if !underSystemd() {
		return n
	}
	n.send = func(state string) error {
		_, err := daemon.SdNotify(false, state)
		return err
	}
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd: watchdog not enabled", "err", err)
	}
	n.watchdog = wd
	return n
}

func (n *sdNotifier) notify(state string) {
	if n.send == nil {
		return
	}
	if err := n.send(state); err != nil {
		n.log.Warn("systemd: notification not delivered", "state", state, "err", err)
	}
}

// Ready tells systemd the daemon serves, and starts the watchdog if the
// unit asked for one: probe must succeed within half the interval for
// each ping (see the top of this file). The watchdog ends with ctx.
func (n *sdNotifier) Ready(ctx context.Context, status string, probe func(context.Context) error) {
	if n.send == nil {
		return
	}
	n.notify(fmt.Sprintf("READY=1\nMAINPID=%d\nSTATUS=%s", os.Getpid(), status))
	if n.watchdog <= 0 {
		return
	}
	n.log.Info("systemd: watchdog on", "interval", n.watchdog, "ping_every", n.watchdog/2)
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.runWatchdog(ctx, probe)
	}()
}

// runWatchdog pings at half the interval, each ping after a probe that
// succeeded within that half; a ping is skipped (and logged) otherwise.
func (n *sdNotifier) runWatchdog(ctx context.Context, probe func(context.Context) error) {
	every := n.watchdog / 2
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, every)
		err := probe(pctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			n.missed.Warn(n.log, "systemd: watchdog ping withheld: the daemon did not answer its own probe", "err", err,
				"interval", n.watchdog)
		default:
			n.notify("WATCHDOG=1")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Stopping tells systemd the daemon is shutting down; once, however often
// it is called.
func (n *sdNotifier) Stopping() {
	n.stopOnce.Do(func() { n.notify("STOPPING=1") })
}

// Wait waits for the watchdog goroutine, which ends with Ready's context.
func (n *sdNotifier) Wait() { n.wg.Wait() }

// controlProbe is the watchdog's probe of a daemon: a status request on
// its control socket, answered by the deadline.
func controlProbe(path string) func(context.Context) error {
	return func(ctx context.Context) error {
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(10 * time.Second)
		}
		if _, err := controlCallDeadline(path, controlRequest{Op: "status"}, deadline); err != nil {
			return fmt.Errorf("control socket: %w", err)
		}
		return nil
	}
}

// leafProbe is the leaf's watchdog probe: its control socket, and its
// quorum driver if it is a master.
func (l *Leaf) leafProbe(control string) func(context.Context) error {
	viaControl := controlProbe(control)
	return func(ctx context.Context) error {
		if err := viaControl(ctx); err != nil {
			return err
		}
		if l.quorum != nil {
			return l.quorum.alive(ctx)
		}
		return nil
	}
}

// errDriverStopped: the quorum driver's goroutine has returned.
var errDriverStopped = errors.New("quorum driver stopped")

// alive has the driver's goroutine run a no-op from its inbox, and
// reports whether it did before ctx ended. A full inbox counts as not
// alive: a driver that cannot take one more request within half a
// watchdog interval is as good as stuck.
func (d *quorumDriver) alive(ctx context.Context) error {
	ran := make(chan struct{})
	if !d.inbox.put(inboxRequest, func() { close(ran) }) {
		return fmt.Errorf("quorum driver: %w", errQuorumBusy)
	}
	select {
	case <-ran:
		return nil
	case <-d.done:
		return errDriverStopped
	case <-ctx.Done():
		return fmt.Errorf("quorum driver: no turn within the watchdog's half interval: %w", ctx.Err())
	}
}
