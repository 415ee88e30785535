package main

// The commands: leaf, status, connect, disconnect, keygen.

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// LeafCmd runs the daemon.
type LeafCmd struct {
	PFS      string `arg:"" optional:"" name:"pfs" help:"Mount point of the PFS (off DragonFly: the PFS directory). Default -s or \".\"."`
	Listen   string `help:"UDP address remote nodes dial, or \"none\" (overrides the config)."`
	Backbone string `help:"tcp:<host:port>, unix:<path> or none (overrides the config)."`
	LogJSON  bool   `name:"log-json" help:"Log JSON lines instead of text."`
	// MetricsListen: metrics_http.go.
	MetricsListen string `name:"metrics-listen" placeholder:"HOST:PORT" help:"Serve Prometheus metrics on this TCP address, or none (overrides the config's metrics_listen)."`
}

func (c *LeafCmd) Run(env *Env) (err error) {
	defer func() {
		if err != nil {
			daemonReady(err) // a waiting parent prints it
		}
	}()
	path := c.PFS
	if path == "" {
		path = env.pfsPath()
	}
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	if c.Listen != "" {
		cfg.Listen = c.Listen
	}
	if c.MetricsListen != "" {
		if err := checkMetricsListen(c.MetricsListen); err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		cfg.MetricsListen = c.MetricsListen
	}
	if c.Backbone != "" {
		if _, _, err := parseBackbone(c.Backbone); err != nil {
			return fmt.Errorf("--backbone: %w", err)
		}
		cfg.Backbone = c.Backbone
	}
	if c.LogJSON {
		cfg.LogFormat = "json"
	}
	pfs, err := OpenPFS(path)
	if err != nil {
		return err
	}
	defer pfs.Close()
	info, err := pfs.Info()
	if err != nil {
		return err
	}
	paths := leafPaths(cfg, pfs, info)
	if err := os.MkdirAll(paths.dir, 0o755); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	if env.Debug == 0 && !isDaemonChild() && !underSystemd() {
		return daemonize(env, paths)
	}
	log := env.logger(env.Stderr, cfg.LogFormat)
	sd := newSDNotifier(log)
	pid, err := lockPidFile(paths.pid)
	if err != nil {
		return fmt.Errorf("PFS %s: a leaf is %w", info.Label, err)
	}
	defer pid.release()

	key, err := loadOrCreateKey(cfg.KeyDir, log)
	if err != nil {
		return err
	}
	trust, err := LoadTrustStore(cfg.KeyDir)
	if err != nil {
		log.Warn("trusted keys", "err", err) // the others still load
	}
	leaf, err := NewLeaf(cfg, pfs, key, trust, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloads := make(chan struct{})
	go func() { // ours: it ends with ctx, and Run's return waits for it
		defer close(reloads)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			ncfg, err := env.loadConfig()
			if err != nil {
				log.Error("SIGHUP: config not reloaded", "err", err)
				continue
			}
			if c.Listen != "" {
				ncfg.Listen = c.Listen
			}
			if c.Backbone != "" {
				ncfg.Backbone = c.Backbone
			}
			leaf.Reload(ncfg)
		}
	}()
	defer func() { <-reloads }()
	defer sd.Wait()
	defer stop() // ends the reload loop when Run returns by itself (PFS gone)
	defer sd.Stopping()
	context.AfterFunc(ctx, sd.Stopping) // a signal: shutting down starts now
	return leaf.Run(ctx, paths.control, func() {
		daemonReady(nil)
		sd.Ready(ctx, "serving PFS "+info.Label, leaf.leafProbe(paths.control))
		log.Info("leaf ready", "control", paths.control, "pid_file", paths.pid)
	})
}

// loadOrCreateKey reads the node key, making one on first start as sshd
// makes its host keys: the public half is logged for the operator to share.
func loadOrCreateKey(dir string, log interface{ Info(string, ...any) }) (ed25519.PrivateKey, error) {
	k, err := LoadNodeKey(dir)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("key directory: %w", err)
	}
	pub, err := GenerateKey(dir, false)
	if err != nil {
		// Another daemon starting at the same moment may have made it.
		if k, lerr := LoadNodeKey(dir); lerr == nil {
			return k, nil
		}
		return nil, err
	}
	log.Info("created the node key", "dir", dir, "public_key", FormatPublicKey(pub), "fingerprint", Fingerprint(pub))
	return LoadNodeKey(dir)
}

// StatusCmd is `hammer2 status`.
type StatusCmd struct {
	PFS     []string `arg:"" optional:"" name:"path" help:"PFSs to show (default -s or \".\")."`
	JSON    bool     `name:"json" help:"Print JSON (docs/STATUS.md: schema_version, then the fields; new fields may appear)."`
	Check   bool     `name:"check" help:"Health check: exit 0 healthy, 1 degraded (a line per reason), 2 not running."`
	Service bool     `name:"service" help:"Show the node's service daemon instead: its links, who is behind each, its autoconn targets."`
	Unix    string   `name:"unix" help:"With --service: the service's Unix socket (default: the config's [service] unix)." placeholder:"PATH"`
	Watch   bool     `name:"watch" help:"Show the status, then again each time it changes, until interrupted (one PFS; with --json, one JSON object a line)."`
}

func (c *StatusCmd) Run(env *Env) error {
	paths := c.PFS
	if len(paths) == 0 {
		paths = []string{env.pfsPath()}
	}
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	if c.Service {
		return c.service(env, cfg)
	}
	if c.Watch && c.Check {
		return errors.New("status: --check is one look, --watch many: give one of them")
	}
	if c.Watch {
		if len(paths) != 1 {
			return fmt.Errorf("status --watch: one PFS at a time (%d given)", len(paths))
		}
		return c.watchLeaf(env, cfg, paths[0])
	}
	all := []statusJSON{}
	worst := 0
	for _, p := range paths {
		pfs, err := OpenPFS(p)
		if err != nil {
			return err
		}
		slots, err := pfs.RemoteScan()
		if err != nil {
			pfs.Close()
			return fmt.Errorf("%s: %w", p, err)
		}
		info, err := pfs.Info()
		if err != nil {
			pfs.Close()
			return err
		}
		rp := leafPaths(cfg, pfs, info)
		pfs.Close()
		resp, lerr := controlCall(rp.control, controlRequest{Op: "status"})
		var st *LeafStatus
		if lerr == nil {
			st = resp.Status
		}
		s := newStatusJSON(p, slots, st, lerr)
		if lerr != nil && !errors.Is(lerr, errNotRunning) {
			// A socket that does not answer is a leaf in trouble, not
			// one that is not running.
			s.Health = Health{State: HealthDegraded, Reasons: []string{"leaf does not answer: " + lerr.Error()}}
		}
		if c.Check {
			h := s.Health
			worst = max(worst, h.checkCode())
			if !c.JSON {
				prefix := ""
				if len(paths) > 1 {
					prefix = p + ": "
				}
				printHealth(env.Stdout, prefix, h)
				continue
			}
		}
		if c.JSON {
			all = append(all, s)
			continue
		}
		if len(paths) > 1 {
			fmt.Fprintf(env.Stdout, "%s:\n", p)
		}
		printStatus(env.Stdout, slots, st, lerr)
	}
	if c.JSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(leafStatusDoc{SchemaVersion: statusSchemaVersion, PFS: all}); err != nil {
			return err
		}
	}
	if worst != 0 {
		return exitStatus(worst)
	}
	return nil
}

// service shows the node's service daemon.
func (c *StatusCmd) service(env *Env, cfg Config) error {
	sock := cfg.Service.Unix
	if c.Unix != "" {
		sock = c.Unix
	}
	if c.Watch {
		return c.watch(serviceControlPath(sock), func(resp *controlResponse) (any, func()) {
			doc := serviceStatusDoc{SchemaVersion: statusSchemaVersion, Health: serviceHealth(resp.Service, time.Now()),
				Service: resp.Service}
			return doc, func() { printServiceStatus(env.Stdout, resp.Service) }
		}, env)
	}
	resp, err := controlCall(serviceControlPath(sock), controlRequest{Op: "status"})
	if c.Check {
		var h Health
		switch {
		case errors.Is(err, errNotRunning):
			h = serviceHealth(nil, time.Now())
		case err != nil:
			h = Health{State: HealthDegraded, Reasons: []string{"service does not answer: " + err.Error()}}
		default:
			h = serviceHealth(resp.Service, time.Now())
		}
		if c.JSON {
			var st *ServiceStatus
			if err == nil {
				st = resp.Service
			}
			enc := json.NewEncoder(env.Stdout)
			enc.SetIndent("", "  ")
			if err := enc.Encode(serviceStatusDoc{SchemaVersion: statusSchemaVersion, Health: h, Service: st}); err != nil {
				return err
			}
		} else {
			printHealth(env.Stdout, "", h)
		}
		if code := h.checkCode(); code != 0 {
			return exitStatus(code)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("service: %w", err)
	}
	if c.JSON {
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(serviceStatusDoc{SchemaVersion: statusSchemaVersion, Health: serviceHealth(resp.Service, time.Now()),
			Service: resp.Service})
	}
	printServiceStatus(env.Stdout, resp.Service)
	return nil
}

// watchLeaf is `status --watch` of the leaf of the PFS at p: each line
// as `status` would show it, its REMOTE slots read again each time.
func (c *StatusCmd) watchLeaf(env *Env, cfg Config, p string) error {
	pfs, err := OpenPFS(p)
	if err != nil {
		return err
	}
	defer pfs.Close()
	info, err := pfs.Info()
	if err != nil {
		return err
	}
	rp := leafPaths(cfg, pfs, info)
	return c.watch(rp.control, func(resp *controlResponse) (any, func()) {
		slots, err := pfs.RemoteScan()
		s := newStatusJSON(p, slots, resp.Status, err)
		doc := leafStatusDoc{SchemaVersion: statusSchemaVersion, PFS: []statusJSON{s}}
		return doc, func() { printStatus(env.Stdout, slots, resp.Status, err) }
	}, env)
}

// watch prints each status line of the daemon at path until interrupted:
// show gives what --json prints and what prints it for people.
func (c *StatusCmd) watch(path string, show func(*controlResponse) (any, func()), env *Env) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	enc := json.NewEncoder(env.Stdout)
	first := true
	return controlWatch(ctx, path, func(resp *controlResponse) error {
		v, human := show(resp)
		if c.JSON {
			return enc.Encode(v)
		}
		if !first {
			fmt.Fprintln(env.Stdout)
		}
		first = false
		fmt.Fprintf(env.Stdout, "----- %s -----\n", time.Now().Format("15:04:05.000"))
		human()
		return nil
	})
}

// ConnectCmd is `hammer2 connect <target>`.
type ConnectCmd struct {
	Target string `arg:"" help:"span:<host>[:port] (TCP when remote_dir names the host, else QUIC), tcp:<host>[:port] or quic:<host>[:port]"`
}

func (c *ConnectCmd) Run(env *Env) error {
	if err := checkSpanTarget(c.Target); err != nil {
		return fmt.Errorf("connect %s: %w", c.Target, err)
	}
	return changeRemote(env, "connect", c.Target, func(pfs PFS) error {
		slots, err := pfs.RemoteScan()
		if err != nil {
			return err
		}
		for _, v := range slots {
			if v.Path == c.Target {
				return fmt.Errorf("already in REMOTE slot %d", v.CopyID)
			}
		}
		_, err = pfs.RemoteAdd(-1, Volconf{Path: c.Target})
		return err
	})
}

// checkSpanTarget refuses what no daemon would dial: the target must be
// span:<host>[:port], the form DragonFly's daemon acts on (TCP when
// remote_dir names the host's address, QUIC otherwise), or
// tcp:<host>[:port] / quic:<host>[:port] for one transport, with a host
// and a port in 1..65535.
func checkSpanTarget(target string) error {
	if _, ok := spanTarget(target); ok {
		return nil
	}
	spec, ok := strings.CutPrefix(target, "span:")
	if !ok {
		if !strings.HasPrefix(target, transportTCP+":") && !strings.HasPrefix(target, transportQUIC+":") {
			return errors.New(`not span:<host>[:port] or tcp:<host>[:port] (the forms a daemon dials)`)
		}
		spec = target
	}
	if _, err := parseNodeTarget(spec); err != nil {
		return fmt.Errorf("not span:<host>[:port]: %w", err)
	}
	return errors.New("not span:<host>[:port]")
}

// DisconnectCmd is `hammer2 disconnect <target>`.
type DisconnectCmd struct {
	Target string `arg:"" help:"The linkage's path, as connect was given it."`
}

func (c *DisconnectCmd) Run(env *Env) error {
	return changeRemote(env, "disconnect", c.Target, func(pfs PFS) error {
		return pfs.RemoteDel(-1, c.Target)
	})
}

// changeRemote edits the REMOTE slots as DragonFly's commands do, then
// tells a running leaf to act on it at once. (On DragonFly the kernel also
// pushes a VOLCONF to the leaf; the rescan makes that immaterial.)
func changeRemote(env *Env, verb, target string, change func(PFS) error) error {
	if len(target) > VolconfPathMax {
		return fmt.Errorf("%s: Path too long", verb)
	}
	// The config first: a bad one must fail the command before a slot
	// is written.
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	pfs, err := OpenPFS(env.pfsPath())
	if err != nil {
		return err
	}
	defer pfs.Close()
	if err := change(pfs); err != nil {
		return fmt.Errorf("%s %s: %w", verb, target, err)
	}
	info, err := pfs.Info()
	if err != nil {
		return err
	}
	if _, err := controlCall(leafPaths(cfg, pfs, info).control, controlRequest{Op: "rescan"}); err != nil {
		if errors.Is(err, errNotRunning) {
			return nil // the slot is stored; a leaf will act on it when started
		}
		return fmt.Errorf("%s: slot stored, but the leaf did not take it: %w", verb, err)
	}
	return nil
}

// KeygenCmd is `hammer2 keygen`.
type KeygenCmd struct {
	Dir   string `help:"Key directory (default: the config's key_dir)." placeholder:"DIR"`
	Force bool   `help:"Replace an existing key (peers trusting the old one will refuse this node)."`
}

func (c *KeygenCmd) Run(env *Env) error {
	dir := c.Dir
	if dir == "" {
		cfg, err := env.loadConfig()
		if err != nil {
			return err
		}
		dir = cfg.KeyDir
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("key directory: %w", err)
	}
	pub, err := GenerateKey(dir, c.Force)
	if errors.Is(err, fs.ErrExist) {
		// The key a peer needs is this one: say it, and how to replace it.
		k, lerr := LoadNodeKey(dir)
		if lerr != nil {
			return fmt.Errorf("keygen: %s/node.key exists but does not load: %w", dir, lerr)
		}
		if !env.Quiet {
			fmt.Fprintf(env.Stderr, "hammer2 keygen: %s/node.key exists; its public key is below (replace it with --force, and peers trusting it will refuse this node)\n", dir)
		}
		fmt.Fprintln(env.Stdout, FormatPublicKey(k.Public().(ed25519.PublicKey)))
		return nil
	}
	if err != nil {
		return err
	}
	if !env.Quiet {
		fmt.Fprintf(env.Stderr, "hammer2 keygen: created %s/node.key; trust this node by putting the line below in a peer's remote/<name>.pub\n", dir)
	}
	fmt.Fprintln(env.Stdout, FormatPublicKey(pub))
	return nil
}

// QuorumCmd is `hammer2 quorum add|remove|recover|snapshot`: the operator's hand
// on membership. A master that is not a member joins by itself only if
// the members trust its node key; a master that is gone for good keeps
// its vote until it is removed here; a group that lost its majority for
// good is shrunk to the survivors by recover.
type QuorumCmd struct {
	Add     QuorumAddCmd     `cmd:"" help:"Add a master (its id as status shows it) to the group: a learner first, a voter once caught up."`
	Remove  QuorumRemoveCmd  `cmd:"" help:"Remove a master from the group; the leader will not add it back by itself."`
	Recover QuorumRecoverCmd `cmd:"" help:"With the leaf stopped: make the survivors of a lost majority the whole group (entries only the lost masters held are lost)."`
	// Snapshot: quorum_snapshot.go.
	Snapshot QuorumSnapshotCmd `cmd:"" help:"Back up this master's replicated state to a file, or seed a new group from one."`
}

type QuorumAddCmd struct {
	Master string `arg:"" help:"The master's id, hex, as hammer2 status shows it."`
}

type QuorumRemoveCmd struct {
	Master string `arg:"" help:"The master's id, hex, as hammer2 status shows it."`
}

func (c *QuorumAddCmd) Run(env *Env) error    { return changeMember(env, "add", c.Master) }
func (c *QuorumRemoveCmd) Run(env *Env) error { return changeMember(env, "remove", c.Master) }

// changeMember asks the PFS's running leaf to change the group.
func changeMember(env *Env, verb, master string) error {
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	_, paths, _, err := pfsPlaces(cfg, env.pfsPath())
	if err != nil {
		return err
	}
	resp, err := controlCall(paths.control, controlRequest{Op: "quorum-" + verb, Master: master})
	if err != nil {
		return fmt.Errorf("quorum %s %s: %w", verb, master, err)
	}
	fmt.Fprintf(env.Stdout, "members: %s\n", strings.Join(resp.Members, " "))
	if len(resp.Learners) > 0 {
		fmt.Fprintf(env.Stdout, "learners: %s (promoted once caught up)\n", strings.Join(resp.Learners, " "))
	}
	return nil
}
