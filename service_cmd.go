package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ServiceCmd is `hammer2 service`.
type ServiceCmd struct {
	Unix     string   `help:"Unix socket for leaves (overrides [service] unix)."`
	TCP      string   `name:"tcp" help:"DragonFly's dmsg over TCP (its kernel, tools and services, by remote_dir's rule), or none (overrides [service] tcp)."`
	Listen   string   `help:"UDP address for other nodes, or none (overrides [service] listen)."`
	Autoconn []string `help:"Nodes to keep links to, [tcp:|quic:]<host>[:port] (adds to [service] autoconn)."`
	// MetricsListen: metrics_http.go.
	MetricsListen string `name:"metrics-listen" placeholder:"HOST:PORT" help:"Serve Prometheus metrics on this TCP address, or none (overrides [service] metrics_listen)."`
}

func (c *ServiceCmd) Run(env *Env) (err error) {
	defer func() {
		if err != nil {
			daemonReady(err)
		}
	}()
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	sc := cfg.Service
	for _, o := range []struct{ flag, dst *string }{{&c.Unix, &sc.Unix}, {&c.TCP, &sc.TCP}, {&c.Listen, &sc.Listen}, {&c.MetricsListen, &sc.MetricsListen}} {
		if *o.flag != "" {
			*o.dst = *o.flag
		}
	}
	for _, a := range c.Autoconn {
		if _, err := parseNodeTarget(a); err != nil {
			return fmt.Errorf("--autoconn %s: %w", a, err)
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
	if env.Debug == 0 && !isDaemonChild() && !underSystemd() {
		err := daemonize(env, paths)
		if err != nil && strings.HasPrefix(err.Error(), errAlreadyRunning.Error()) {
			return c.alreadyRunning(env, err.Error())
		}
		return err
	}
	log := env.logger(env.Stderr, cfg.LogFormat)
	sd := newSDNotifier(log)
	pid, err := lockPidFile(paths.pid)
	var held *pidHeldError
	if errors.As(err, &held) {
		return c.alreadyRunning(env, fmt.Sprintf("%v (pid %s)", errAlreadyRunning, held.pid))
	}
	if err != nil {
		return err
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
	sec := newTCPSecurity(cfg.TCPRemoteDir(), cfg.TCPKeyDir(), policy, rand.Reader, log)
	svc := NewService(ServiceConfig{Unix: sc.Unix, TCP: sc.TCP, Autoconn: sc.Autoconn,
		DeadAfter: cfg.DeadAfter.Duration, Ping: cfg.PingInterval.Duration,
		RedialMin: cfg.RedialMin.Duration, RedialMax: cfg.RedialMax.Duration,
		Policy: policy, Limits: cfg.Limits, Control: paths.control, TCPSec: sec, MetricsListen: sc.MetricsListen}, node, log)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer sd.Wait()
	defer stop()
	defer sd.Stopping()
	context.AfterFunc(ctx, sd.Stopping) // a signal: shutting down starts now
	err = svc.Run(ctx, func() {
		daemonReady(nil)
		sd.Ready(ctx, "relaying", controlProbe(paths.control))
	})
	var inUse *portInUseError
	switch {
	case errors.Is(err, errAlreadyRunning):
		err = c.alreadyRunning(env, fmt.Sprintf("%v (a service answers on %s)", errAlreadyRunning, sc.Unix))
	case errors.As(err, &inUse) && speaksDmsg(inUse.addr, sec):
		// DragonFly's own service, or ours with another socket: a service
		// runs, which is what `hammer2 -q service` asks for.
		err = c.alreadyRunning(env, fmt.Sprintf("%v (a dmsg service answers on TCP %s)", errAlreadyRunning, inUse.addr))
	case errors.As(err, &inUse):
		err = fmt.Errorf("service: TCP %s is held by another program, not a dmsg service; choose another with [service] tcp or --tcp", inUse.addr)
	}
	if err != nil && node != nil {
		node.Close()
	}
	return err
}

// speaksDmsg reports whether a dmsg service answers at addr: DragonFly's
// and ours send their LNK_CONN as soon as a connection opens, after the
// handshake when our remote_dir has a .pub for the address. Without any
// file for it the service there refuses us by the same rule, closing at
// once without a byte, which no other program that holds a port and
// accepts does.
func speaksDmsg(addr string, sec *tcpSecurity) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// A wildcard listener (":987", DragonFly's) is asked on loopback.
	if host, port, err := splitHostPortDefault(addr, ListenPort); err == nil && (host == "" || host == "0.0.0.0" || host == "::") {
		addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
	}
	ap, err := resolveTCP(ctx, addr)
	if err != nil {
		return false
	}
	var c net.Conn
	if _, _, err := sec.check(ap.Addr()); err != nil {
		raw, err := net.DialTimeout("tcp", ap.String(), time.Second)
		if err != nil {
			return false
		}
		defer raw.Close()
		_ = raw.SetReadDeadline(time.Now().Add(time.Second))
		n, err := raw.Read(make([]byte, 1))
		return n == 0 && errors.Is(err, io.EOF)
	}
	tc, err := sec.dial(ctx, ap.String())
	if err != nil {
		return false
	}
	c = tc
	defer c.Close()
	// A service sends its LNK_CONN at once; a second is plenty on a
	// loaded machine, and only a refusal to start waits it out.
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	var hdr [HdrSize]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return false
	}
	var m Msg
	hs, _, err := PeekSizes(hdr[:])
	if err != nil || hs != cmdHdrSize(CmdLnkConn) {
		return false
	}
	ext := make([]byte, hs)
	copy(ext, hdr[:])
	if _, err := io.ReadFull(c, ext[HdrSize:]); err != nil {
		return false
	}
	return DecodeHeader(ext, &m) == nil && m.Cmd&maskBaseCmd == CmdLnkConn
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
// idempotent "make sure it runs". why starts with errAlreadyRunning's
// text, which a waiting parent recognises.
func (c *ServiceCmd) alreadyRunning(env *Env, why string) error {
	daemonReady(errors.New(why))
	if !env.Quiet {
		fmt.Fprintln(env.Stderr, "hammer2: service: "+why)
	}
	return nil
}
