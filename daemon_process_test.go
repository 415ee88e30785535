//go:build !dragonfly

package main

// The one harness type of the end-to-end tests: a daemon process, leaf or
// service, that the test starts, stops, kills, freezes and thaws. What the
// process writes is read as it is written (a pipe and a goroutine), and
// its status is watched over its control socket (the watch `hammer2
// status --watch` prints), so that tests wait for the log line or the
// status they need, woken by the event itself, never by rereading a file or
// asking again on a timer.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// daemonProc is one daemon with its log and status watch, across restarts.
// The test goroutine starts and signals it; the goroutines it owns (the
// process's waiter and its watch) end when the process exits, and the
// test's cleanup kills the process and waits for them.
type daemonProc struct {
	t       *testing.T
	kind    string // "leaf" or "service", for messages
	name    string
	bin     string
	logPath string // a copy of everything the process wrote, all starts
	env     []string
	// umask, if not nil, is the file mode mask the process starts with
	// (a shell sets it and execs the daemon): the test's own is the
	// process's, shared with every test running beside it.
	umask *int
	// wrap, if set, runs the daemon through a command that execs it, as
	// `ip netns exec NS` does (faults_net_test.go): the pid stays the
	// daemon's, and so do the signals the test sends it.
	wrap []string

	log   procLog
	watch statusWatch

	mu        sync.Mutex
	control   string // the control socket of the running process
	cmd       *exec.Cmd
	exited    chan struct{} // closed once the current process has exited and its watch ended
	state     *os.ProcessState
	starts    int
	stopWatch context.CancelFunc
}

// newDaemon prepares the harness of one daemon; nothing runs yet. Its
// cleanups kill the process, then report a data race the race detector
// logged and, if the test failed, show the log.
func newDaemon(t *testing.T, kind, name, bin, logPath string) *daemonProc {
	d := &daemonProc{t: t, kind: kind, name: name, bin: bin, logPath: logPath}
	t.Cleanup(func() {
		if strings.Contains(d.logText(), "WARNING: DATA RACE") {
			t.Errorf("%s %s: the race detector reported a data race", kind, name)
		}
		if t.Failed() {
			t.Logf("----- log of %s %s -----\n%s----- end of log of %s -----", kind, name, d.logText(), name)
		}
	})
	t.Cleanup(d.killQuietly)
	return d
}

// start runs bin with args, banner heading this start in the log, and
// waits until the log of this start holds ready; then watches the status
// at control. It fails the test if the process exits first or 15 s pass.
func (d *daemonProc) start(args []string, banner, ready, control string) {
	d.t.Helper()
	d.mu.Lock()
	if d.cmd != nil && !d.hasExitedLocked() {
		d.mu.Unlock()
		d.t.Fatalf("%s %s: already running", d.kind, d.name)
	}
	if err := d.log.open(d.logPath); err != nil {
		d.mu.Unlock()
		d.t.Fatal(err)
	}
	d.starts++
	mark := d.log.begin(fmt.Sprintf("===== start %d of %s %s (%s) =====\n", d.starts, d.kind, d.name, banner))
	cmd := exec.Command(d.bin, args...)
	if d.umask != nil {
		cmd = exec.Command("/bin/sh", append([]string{"-c", fmt.Sprintf(`umask %03o && exec "$0" "$@"`, *d.umask), d.bin}, args...)...)
	}
	if len(d.wrap) > 0 {
		cmd = exec.Command(d.wrap[0], append(append(slices.Clone(d.wrap[1:]), d.bin), args...)...)
	}
	if len(d.env) > 0 {
		cmd.Env = append(os.Environ(), d.env...)
	}
	// One writer for both: exec copies them through one pipe, in order.
	cmd.Stdout, cmd.Stderr = &d.log, &d.log
	// A test binary that dies (a timeout's panic, kill -9) takes its
	// daemons with it, instead of leaving them running on the machine.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// A daemon's child holding the pipe must not keep Wait from returning.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		d.mu.Unlock()
		d.t.Fatal(err)
	}
	exited := make(chan struct{})
	gen := d.watch.reset()
	ctx, cancel := context.WithCancel(context.Background())
	d.cmd, d.exited, d.state, d.control, d.stopWatch = cmd, exited, nil, control, cancel
	d.mu.Unlock()
	watchDone := make(chan struct{})
	watchNow := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case <-watchNow:
		case <-ctx.Done():
			return
		}
		err := controlWatch(ctx, control, func(r *controlResponse) error {
			d.watch.add(gen, r)
			return nil
		})
		d.watch.end(gen, err)
	}()
	go func() {
		_ = cmd.Wait()
		d.mu.Lock()
		d.state = cmd.ProcessState
		d.mu.Unlock()
		d.watch.reset() // what the dead process said is no status
		cancel()
		<-watchDone
		d.log.end()
		close(exited)
	}()
	if !d.log.waitSince(mark, 15*time.Second, exited, ready) {
		select {
		case <-exited:
			d.t.Fatalf("%s %s exited while starting (%v); log:\n%s", d.kind, d.name, d.exitState(), d.log.since(mark))
		default:
			d.t.Fatalf("%s %s: no %q after 15s; log:\n%s", d.kind, d.name, ready, d.log.since(mark))
		}
	}
	close(watchNow) // the control socket answers before the daemon says it is ready
	if _, ok := d.watch.waitSince(time.Time{}, 10*time.Second, func(*controlResponse) bool { return true }); !ok {
		d.t.Fatalf("%s %s: no status from its control socket %s within 10s of starting: %v", d.kind, d.name, control, d.watch.lastErr())
	}
}

func (d *daemonProc) exitState() *os.ProcessState {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

func (d *daemonProc) hasExitedLocked() bool {
	select {
	case <-d.exited:
		return true
	default:
		return false
	}
}

func (d *daemonProc) running() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cmd != nil && !d.hasExitedLocked()
}

func (d *daemonProc) pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cmd.Process.Pid
}

func (d *daemonProc) signal(sig syscall.Signal) {
	d.t.Helper()
	d.mu.Lock()
	cmd := d.cmd
	d.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		d.t.Fatalf("%s %s: signal %v: %v", d.kind, d.name, sig, err)
	}
}

// kill9 kills the daemon with SIGKILL and waits for it.
func (d *daemonProc) kill9() {
	d.t.Helper()
	d.signal(syscall.SIGKILL)
	if _, ok := d.waitExit(10 * time.Second); !ok {
		d.t.Fatalf("%s %s: still running 10s after SIGKILL", d.kind, d.name)
	}
}

// freeze and thaw are SIGSTOP and SIGCONT: a daemon that is there and
// says nothing.
func (d *daemonProc) freeze() { d.t.Helper(); d.signal(syscall.SIGSTOP) }
func (d *daemonProc) thaw()   { d.t.Helper(); d.signal(syscall.SIGCONT) }

// waitExit waits up to d for the process to exit and returns its exit
// code (-1 for a signal). With d 0 it only looks.
func (d *daemonProc) waitExit(dur time.Duration) (int, bool) {
	d.mu.Lock()
	exited := d.exited
	d.mu.Unlock()
	if dur == 0 {
		select {
		case <-exited:
		default:
			return 0, false
		}
	} else {
		timer := time.NewTimer(dur)
		defer timer.Stop()
		select {
		case <-exited:
		case <-timer.C:
			return 0, false
		}
	}
	return d.exitState().ExitCode(), true
}

func (d *daemonProc) killQuietly() {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Kill()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		d.t.Errorf("%s %s: still running 10s after SIGKILL", d.kind, d.name)
	}
}

func (d *daemonProc) logText() string { return d.log.text() }

// logMark is the log's length now: waitLogSince looks only after it.
func (d *daemonProc) logMark() int { return d.log.mark() }

// waitLog waits until the log (all starts) holds every one of want and
// returns it; it fails the test after dur.
func (d *daemonProc) waitLog(dur time.Duration, want ...string) string {
	d.t.Helper()
	return d.waitLogSince(0, dur, want...)
}

// waitLogSince is waitLog for what was written after mark.
func (d *daemonProc) waitLogSince(mark int, dur time.Duration, want ...string) string {
	d.t.Helper()
	if !d.log.waitSince(mark, dur, nil, want...) {
		d.t.Fatalf("%s %s: the log has not all of %q after %v:\n%s", d.kind, d.name, want, dur, d.log.since(mark))
	}
	return d.log.since(mark)
}

// waitLogLine waits until a line of the log (all starts) satisfies match.
func (d *daemonProc) waitLogLine(dur time.Duration, what string, match func(line string) bool) string {
	d.t.Helper()
	var found string
	waitEvent(d.t, dur, fmt.Sprintf("%s %s: the log has no %s", d.kind, d.name, what), func() (bool, string) {
		for line := range strings.Lines(d.logText()) {
			if match(line) {
				found = line
				return true, ""
			}
		}
		return false, "log:\n" + d.logText()
	}, &d.log)
	return found
}

// query asks the daemon for its status now, over its control socket (a
// one-shot read; waits use the watch): nil if it does not answer.
func (d *daemonProc) query() *controlResponse {
	d.mu.Lock()
	path := d.control
	d.mu.Unlock()
	r, err := controlCall(path, controlRequest{Op: "status"})
	if err != nil {
		return nil
	}
	return r
}

// latest is the daemon's status as its watch last showed it, nil while
// it is not running. It may be a coalescing delay behind a change that
// just happened: conditions that waits evaluate read it, one-shot checks
// query.
func (d *daemonProc) latest() *controlResponse {
	if u, ok := d.watch.current(); ok {
		return u.resp
	}
	return nil
}

// ---- the log ----

// procLog is a daemon's output across its starts, kept in memory as it
// is written and copied to a file (a person reading a failed run's
// directory finds it there). Writers are exec's copying goroutines; any
// goroutine may read and wait.
type procLog struct {
	changed notifier

	mu   sync.Mutex
	buf  []byte
	file *os.File
}

func (l *procLog) open(path string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		return nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	l.file = f
	return err
}

// begin writes a start's banner and returns the mark before it.
func (l *procLog) begin(banner string) int {
	m := l.mark()
	_, _ = l.Write([]byte(banner))
	return m
}

// end closes the file copy once the process is gone (a new start opens it
// again).
func (l *procLog) end() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
}

func (l *procLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf = append(l.buf, p...)
	if l.file != nil {
		_, _ = l.file.Write(p)
	}
	l.mu.Unlock()
	l.changed.Notify()
	return len(p), nil
}

func (l *procLog) Changed() <-chan struct{} { return l.changed.Changed() }

func (l *procLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buf)
}

func (l *procLog) text() string { return l.since(0) }

func (l *procLog) since(mark int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.buf[min(mark, len(l.buf)):])
}

// waitSince waits until what was written after mark holds every one of
// want: false after dur, or when stop is closed first.
func (l *procLog) waitSince(mark int, dur time.Duration, stop <-chan struct{}, want ...string) bool {
	timer := time.NewTimer(dur)
	defer timer.Stop()
	for {
		changed := l.changed.Changed()
		text := l.since(mark)
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(text, w)
		}
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-stop:
			// The process is gone: its last words are in already (exec's
			// copy ends before Wait returns).
			text = l.since(mark)
			for _, w := range want {
				if !strings.Contains(text, w) {
					return false
				}
			}
			return true
		case <-timer.C:
			return false
		}
	}
}

// ---- the status watch ----

// statusUpdate is one line of a daemon's watch, and when it came.
type statusUpdate struct {
	seq  uint64
	at   time.Time
	resp *controlResponse
}

// statusWatchKeep bounds the updates kept per start: enough for a test's
// waits to look back over a fault (a chaos run makes a few a second).
const statusWatchKeep = 2000

// statusWatch holds the status lines of a daemon's current start. The
// watch goroutine adds them; reset (at each start and exit) drops them, so
// that nothing a dead process said is taken for its successor's state.
type statusWatch struct {
	changed notifier

	mu   sync.Mutex
	gen  int
	seq  uint64
	hist []statusUpdate
	err  error // why the last watch ended
}

func (w *statusWatch) Changed() <-chan struct{} { return w.changed.Changed() }

func (w *statusWatch) reset() int {
	w.mu.Lock()
	w.gen++
	w.hist = nil
	gen := w.gen
	w.mu.Unlock()
	w.changed.Notify()
	return gen
}

func (w *statusWatch) add(gen int, r *controlResponse) {
	w.mu.Lock()
	if gen == w.gen {
		w.seq++
		if len(w.hist) == statusWatchKeep {
			w.hist = append(w.hist[:0:0], w.hist[statusWatchKeep/2:]...)
		}
		w.hist = append(w.hist, statusUpdate{seq: w.seq, at: time.Now(), resp: r})
	}
	w.mu.Unlock()
	w.changed.Notify()
}

func (w *statusWatch) end(gen int, err error) {
	w.mu.Lock()
	if gen == w.gen {
		w.err = err
	}
	w.mu.Unlock()
	w.changed.Notify()
}

func (w *statusWatch) lastErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *statusWatch) current() (statusUpdate, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.hist) == 0 {
		return statusUpdate{}, false
	}
	return w.hist[len(w.hist)-1], true
}

// history is the updates of the current start from the status as it was
// at since onward.
func (w *statusWatch) history(since time.Time) []statusUpdate {
	w.mu.Lock()
	defer w.mu.Unlock()
	from := 0
	for i, u := range w.hist {
		if u.at.After(since) {
			break
		}
		from = i
	}
	return slices.Clone(w.hist[from:])
}

// waitSince returns the first update satisfying cond, looking from the
// status as it was at since (the last update before it) onward, waiting
// for new ones for at most dur. false: none did; the update returned is
// the last one seen.
// catchUp reports whether the stream shows a state that match accepts:
// its latest update, or one received after since within dur. It lets a
// stream catch up to a state read directly from the daemon.
func (w *statusWatch) catchUp(since time.Time, dur time.Duration, match func(*controlResponse) bool) bool {
	if u, ok := w.current(); ok && match(u.resp) {
		return true
	}
	_, ok := w.waitSince(since, dur, match)
	return ok
}

func (w *statusWatch) waitSince(since time.Time, dur time.Duration, cond func(*controlResponse) bool) (statusUpdate, bool) {
	timer := time.NewTimer(dur)
	defer timer.Stop()
	var next uint64 // the first seq not looked at; 0: from since
	var last statusUpdate
	for {
		changed := w.changed.Changed()
		w.mu.Lock()
		hist := w.hist
		w.mu.Unlock()
		if next == 0 && len(hist) > 0 {
			next = hist[0].seq
			for _, u := range hist {
				if u.at.After(since) {
					break
				}
				next = u.seq
			}
		}
		for _, u := range hist {
			if u.seq < next {
				continue
			}
			next, last = u.seq+1, u
			if cond(u.resp) {
				return u, true
			}
		}
		select {
		case <-changed:
		case <-timer.C:
			return last, false
		}
	}
}

// ---- waiting on several ----

// changeSource is anything whose changes a test can wait for: a log, a
// status watch, a simulated kernel.
type changeSource interface{ Changed() <-chan struct{} }

// waitEvent evaluates cond now and after each change of any of srcs until
// it holds; it fails the test after d with cond's last word.
func waitEvent(t testing.TB, d time.Duration, what string, cond func() (bool, string), srcs ...changeSource) {
	t.Helper()
	if !waitEventOK(d, cond, srcs...) {
		_, why := cond()
		t.Fatalf("%s: not within %v: %s", what, d, why)
	}
}

// waitEventOK is waitEvent without failing: false after d.
func waitEventOK(d time.Duration, cond func() (bool, string), srcs ...changeSource) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	cases := make([]reflect.SelectCase, len(srcs)+1)
	cases[len(srcs)] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(timer.C)}
	for {
		for i, s := range srcs {
			cases[i] = reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(s.Changed())}
		}
		if ok, _ := cond(); ok {
			return true
		}
		if chosen, _, _ := reflect.Select(cases); chosen == len(srcs) {
			return false
		}
	}
}

// daemonOpts are a test leaf's or service's config values (durations as
// TOML strings).
type daemonOpts struct {
	RemoteDeadAfter string // QUIC idle bound on remote links; default 1s
	DeadAfter       string // dmsg silence bound on every link; default 3s
	PingInterval    string // default 250ms
	RedialMin       string // default 100ms
	RedialMax       string // default 500ms
}

func (o daemonOpts) withDefaults() daemonOpts {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.RemoteDeadAfter, "1s")
	def(&o.DeadAfter, "3s")
	def(&o.PingInterval, "250ms")
	def(&o.RedialMin, "100ms")
	def(&o.RedialMax, "500ms")
	return o
}
