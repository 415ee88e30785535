package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

// ServiceCmd is `hammer2 service`.
type ServiceCmd struct {
	Unix     string   `help:"Unix socket for leaves (overrides [service] unix)."`
	TCP      string   `name:"tcp" help:"Plaintext dmsg address for DragonFly's tools, or none (overrides [service] tcp)."`
	Listen   string   `help:"UDP address for other nodes, or none (overrides [service] listen)."`
	Autoconn []string `help:"Nodes to keep links to (adds to [service] autoconn)."`
}

func (c *ServiceCmd) Run(env *Env) (err error) {
	defer func() {
		if err != nil {
			daemonReady(err)
		}
	}()
	cfg, err := LoadConfig(env.Config)
	if err != nil {
		return err
	}
	sc := cfg.Service
	for _, o := range []struct{ flag, dst *string }{{&c.Unix, &sc.Unix}, {&c.TCP, &sc.TCP}, {&c.Listen, &sc.Listen}} {
		if *o.flag != "" {
			*o.dst = *o.flag
		}
	}
	sc.Autoconn = append(sc.Autoconn, c.Autoconn...)
	for _, p := range []*string{&sc.Unix, &sc.TCP} {
		if *p == "none" {
			*p = ""
		}
	}
	if sc.Unix != "" {
		if err := os.MkdirAll(filepath.Dir(sc.Unix), 0o755); err != nil {
			return fmt.Errorf("service socket directory: %w", err)
		}
	}
	// The pid file and log sit beside the socket and are named after it,
	// so that several services (tests, or one per address) can share a
	// directory.
	base := serviceBase(sc.Unix)
	paths := runPaths{dir: filepath.Dir(base), pid: base + ".pid", log: base + ".log", control: base + ".control"}
	if env.Debug == 0 && !isDaemonChild() {
		err := daemonize(env, paths)
		if errors.Is(err, errAlreadyRunning) || err != nil && err.Error() == errAlreadyRunning.Error() {
			return c.alreadyRunning(env)
		}
		return err
	}
	log := env.logger(env.Stderr, cfg.LogFormat)
	pid, err := lockPidFile(paths.pid)
	if err != nil {
		return c.alreadyRunning(env)
	}
	defer pid.release()
	var node *QuicNode
	if sc.Listen != "none" || len(sc.Autoconn) > 0 {
		key, err := loadOrCreateKey(cfg.KeyDir, log)
		if err != nil {
			return err
		}
		trust, err := LoadTrustStore(cfg.KeyDir)
		if err != nil {
			log.Warn("trusted keys", "err", err)
		}
		for _, r := range cfg.Remotes {
			if pub, err := ParsePublicKey(r.Key); err == nil {
				_ = trust.AddKey(cmp.Or(r.Name, r.Address), pub)
			}
		}
		qc := QuicConfig{Listen: sc.Listen, DeadAfter: cfg.RemoteDeadAfter.Duration, Logger: log,
			RefusedLogsPerSecond: cfg.Limits.RefusedLogsPerSecond}
		if sc.Listen == "none" {
			qc.Listen, qc.DialOnly = ":0", true // autoconn only: accept nothing
		}
		node, err = NewQuicNode(key, trust, qc)
		if err != nil {
			return err
		}
	}
	policy, err := newPrivilegePolicy(cfg.Security.Group)
	if err != nil {
		return err
	}
	svc := NewService(ServiceConfig{Unix: sc.Unix, TCP: sc.TCP, Autoconn: sc.Autoconn,
		DeadAfter: cfg.DeadAfter.Duration, Ping: cfg.PingInterval.Duration,
		RedialMin: cfg.RedialMin.Duration, RedialMax: cfg.RedialMax.Duration,
		Policy: policy, Limits: cfg.Limits, Control: paths.control}, node, log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err = svc.Run(ctx, func() { daemonReady(nil) })
	if errors.Is(err, errAlreadyRunning) {
		if node != nil {
			node.Close()
		}
		return c.alreadyRunning(env)
	}
	return err
}

// serviceBase is the path the service's pid file, log and control socket
// are named from: beside its Unix socket, so that several services (tests,
// or one per address) can share a directory.
func serviceBase(unixSock string) string {
	if unixSock == "" || unixSock == "none" {
		return filepath.Join(os.TempDir(), fmt.Sprintf("hammer2-service-%d", os.Getuid()))
	}
	return strings.TrimSuffix(unixSock, ".sock")
}

// serviceControlPath is where a service configured with this Unix socket
// answers `hammer2 status --service`.
func serviceControlPath(unixSock string) string { return serviceBase(unixSock) + ".control" }

// alreadyRunning is success, as in DragonFly: `hammer2 -q service` is an
// idempotent "make sure it runs".
func (c *ServiceCmd) alreadyRunning(env *Env) error {
	daemonReady(errAlreadyRunning)
	if !env.Quiet {
		fmt.Fprintln(env.Stderr, "hammer2: service: daemon already running")
	}
	return nil
}
