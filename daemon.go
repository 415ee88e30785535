package main

// Backgrounding and the pid file. The leaf backgrounds by re-executing
// itself in a new session (Go cannot fork) and waits for the child to say
// it is serving, so that a start that fails (a leaf already running, a bad
// key) fails in the foreground with its message.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const daemonEnv = "HAMMER2_LEAF_DAEMON_FD"

func isDaemonChild() bool { return os.Getenv(daemonEnv) != "" }

// daemonize starts this command again in the background and waits until it
// reports ready or fails.
func daemonize(env *Env, paths runPaths) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("background: %w", err)
	}
	logf, err := os.OpenFile(paths.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("background log: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(self, env.Args[1:]...)
	cmd.Args[0] = env.Args[0] // keep the name we dispatch on
	cmd.Env = append(os.Environ(), daemonEnv+"=3")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, logf, logf
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("background: %w", err)
	}
	w.Close()
	done := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		done <- strings.TrimSpace(line)
	}()
	select {
	case msg := <-done:
		if msg == "ok" {
			fmt.Fprintf(env.Stderr, "%s: running in the background, pid %d, log %s\n", filepath.Base(env.Args[0]), cmd.Process.Pid, paths.log)
			_ = cmd.Process.Release()
			return nil
		}
		_ = cmd.Wait()
		if msg == "" {
			return fmt.Errorf("the background leaf exited; see %s", paths.log)
		}
		return errors.New(msg)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("the background leaf did not report ready in 30s; see %s", paths.log)
	}
}

// daemonReady tells a waiting parent how the start went; a no-op in the
// foreground.
func daemonReady(err error) {
	fd, convErr := strconv.Atoi(os.Getenv(daemonEnv))
	if convErr != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "ready")
	msg := "ok"
	if err != nil {
		msg = err.Error()
	}
	fmt.Fprintln(f, msg)
	f.Close()
	os.Unsetenv(daemonEnv)
}

// pidFile is a held lock on a pid file.
type pidFile struct{ f *os.File }

// lockPidFile takes path's lock and writes our pid there, or says which
// leaf holds it.
func lockPidFile(path string) (*pidFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pid file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b := make([]byte, 32)
		n, _ := f.ReadAt(b, 0)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &pidHeldError{pid: strings.TrimSpace(string(b[:n])), path: path}
		}
		return nil, fmt.Errorf("pid file %s: %w", path, err)
	}
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("pid file %s: write: %w", path, err)
	}
	return &pidFile{f: f}, nil
}

// pidHeldError is a pid file another running daemon holds.
type pidHeldError struct{ pid, path string }

func (e *pidHeldError) Error() string {
	return fmt.Sprintf("already running (pid %s, pid file %s)", e.pid, e.path)
}

func (p *pidFile) release() {
	_ = os.Remove(p.f.Name())
	p.f.Close()
}
