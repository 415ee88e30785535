package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// The tests' scratch space. Every test makes files and directories by the
// thousand (pid files, logs, sockets, quorum.db, key pairs, config), and
// on some disks creating an inode costs far more CPU than the work around
// it: on the ext4 of the 2-core VM this suite is measured on, mkdir and
// create take about 0.4 ms of CPU each, against 10 µs on tmpfs, which
// came to 2 to 5 s of a -short run's 16 core-seconds, on the way of the
// daemons' timers. So, unless the caller chose TMPDIR, the tests and every
// process they start use /dev/shm when it is a tmpfs anyone may write to,
// as /tmp. fsync there returns at once, as it did on that ext4; no test
// depends on surviving a power cut.
//
// /dev/shm itself, not a directory made in it: a Unix socket's path is at
// most 107 bytes, and the deepest the tests make (a leaf's control socket
// in a PFS of `hammer2 dev` in a CLI script's $WORK) has 7 to spare under
// /tmp; /dev/shm takes 4 of them.

// scratchOnTmpfs sets TMPDIR to /dev/shm and returns a function that
// unsets it, or leaves TMPDIR alone and returns a no-op.
func scratchOnTmpfs() (restore func()) {
	noop := func() {}
	if _, set := os.LookupEnv("TMPDIR"); set {
		return noop
	}
	const dir = "/dev/shm"
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		return noop
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode()&(os.ModeSticky|0o777) != os.ModeSticky|0o777 {
		return noop
	}
	if unix.Access(dir, unix.W_OK|unix.X_OK) != nil || os.Setenv("TMPDIR", dir) != nil {
		return noop
	}
	return func() { os.Unsetenv("TMPDIR") }
}
