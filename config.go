package main

// The leaf's configuration file. Every key has a built-in default, so a
// leaf starts with no file at all; a file that names an unknown key or
// gives a wrong type is refused with its file, line and key.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"golang.org/x/sys/unix"
)

// DefaultConfigPath is read when no --config is given and it exists.
const DefaultConfigPath = "/etc/hammer2/leaf.toml"

// Config is config.toml.example, key for key.
type Config struct {
	// KeyDir holds node.key, node.pub and remote/*.pub.
	KeyDir string `toml:"key_dir"`
	// RemoteDir holds DragonFly's per-peer files for TCP links:
	// <ip>.pub (the peer's RSA public key: an encrypted link) and
	// <ip>.none (a plaintext link). A TCP peer with neither is refused.
	// Empty: <key_dir>/remote, where DragonFly keeps them.
	RemoteDir string `toml:"remote_dir"`
	// RSAKeyDir holds this node's rsa.prv and rsa.pub for encrypted TCP
	// links (`hammer2 rsainit` makes them). Empty: key_dir.
	RSAKeyDir string `toml:"rsa_key_dir"`
	// RunDir holds the pid file, control socket and background log of
	// each leaf. Empty: /var/run/hammer2 on DragonFly; elsewhere the PFS
	// directory itself.
	RunDir string `toml:"run_dir"`
	// Control overrides the control socket path.
	Control string `toml:"control"`
	// Listen is the UDP address remote nodes dial; "none" (the default:
	// the node's service listens on :987, and remote nodes reach the
	// leaf through it) accepts none, while the leaf still dials its
	// REMOTE slots.
	Listen string `toml:"listen"`
	// Backbone is the local service daemon: "auto" (our service's Unix
	// socket, [service] unix, when it is there, else DragonFly's C service
	// on tcp:127.0.0.1:987; DragonFly's leaf always has its localhost
	// link), "tcp:host:port", "unix:path", or "none".
	Backbone string `toml:"backbone"`
	// PingInterval and DeadAfter apply to the backbone link.
	PingInterval Duration `toml:"ping_interval"`
	DeadAfter    Duration `toml:"dead_after"`
	// RemoteDeadAfter is how soon a silent QUIC peer is declared dead.
	RemoteDeadAfter Duration `toml:"remote_dead_after"`
	// RedialMin and RedialMax bound the exponential redial backoff.
	RedialMin Duration `toml:"redial_min"`
	RedialMax Duration `toml:"redial_max"`
	// LogFormat is "text" or "json".
	LogFormat string `toml:"log_format"`
	// MetricsListen is the TCP address (host:port) where the leaf serves
	// Prometheus metrics at /metrics, read-only; "" or "none" (the
	// default) serves none. Each leaf of a node needs its own address
	// (hammer2 leaf --metrics-listen); `hammer2 metrics` reads them
	// through the control socket whatever this says.
	MetricsListen string `toml:"metrics_listen"`
	// Remotes are dialed in addition to the PFS's REMOTE slots.
	Remotes []RemoteConfig `toml:"remote"`
	// Service configures `hammer2 service`.
	Service ServiceSection `toml:"service"`
	// Quorum configures the quorum group of MASTER PFSs.
	Quorum QuorumSection `toml:"quorum"`
	// Security says who is privileged (docs/SECURITY.md).
	Security SecuritySection `toml:"security"`
	// Limits bound what a peer can make the daemon hold (limits.go).
	Limits Limits `toml:"limits"`

	// loadNote says why LoadConfig used the defaults for a file it could
	// not read, for a debug line.
	loadNote string
}

// LoadNote is LoadConfig's note about the file it did not read, or "".
func (c *Config) LoadNote() string { return c.loadNote }

// TCPRemoteDir is where DragonFly's rule looks for a TCP peer's
// <ip>.pub and <ip>.none.
func (c *Config) TCPRemoteDir() string {
	if c.RemoteDir != "" {
		return c.RemoteDir
	}
	return filepath.Join(c.KeyDir, remoteDirName)
}

// TCPKeyDir is where this node's rsa.prv and rsa.pub are.
func (c *Config) TCPKeyDir() string {
	if c.RSAKeyDir != "" {
		return c.RSAKeyDir
	}
	return c.KeyDir
}

// SecuritySection is the [security] table.
type SecuritySection struct {
	// Group, if set, is a group (name or gid) whose members' local links
	// are privileged, and which gets read and write on the service,
	// kernel and control sockets (mode 0660 instead of 0600).
	Group string `toml:"group"`
}

// QuorumSection is the [quorum] table.
type QuorumSection struct {
	// Masters lists the pfs_fsids of the founding masters of the PFS's
	// cluster, this one included, the same list on each (as etcd's
	// initial cluster). Empty: this leaf runs no quorum group. Ignored once
	// the group exists: membership then lives in its log.
	Masters []string `toml:"masters"`
	// StateDir holds quorum.db. Empty: the run directory.
	StateDir string `toml:"state_dir"`
	// Tick is the engine's clock; elections take 10 ticks.
	Tick Duration `toml:"tick"`
	// CommitTimeout is how long a commit may wait for a majority.
	CommitTimeout Duration `toml:"commit_timeout"`
	// Lease is how long a cache state's holder has to release it once
	// asked, and how long the state of a holder whose link is lost
	// survives (its kernel may revalidate it meanwhile).
	Lease Duration `toml:"lease"`
	// UnsafeNoFsync skips fsync in quorum.db, as etcd's
	// --unsafe-no-fsync: a crash of the machine may lose commits the
	// group acknowledged. For tests and benchmarks only.
	UnsafeNoFsync bool `toml:"unsafe_no_fsync"`
}

// ServiceSection is the [service] table.
type ServiceSection struct {
	// Unix is the socket leaves connect to.
	Unix string `toml:"unix"`
	// TCP is DragonFly's dmsg over TCP: its kernel (through
	// mount_hammer2), its tools and its services connect here, each
	// by DragonFly's rule (remote_dir). "none" disables it.
	TCP string `toml:"tcp"`
	// Listen is the UDP address other nodes dial; "none" disables it. A
	// leaf on the same node must then listen elsewhere (or "none").
	Listen string `toml:"listen"`
	// Autoconn lists nodes to keep links to, as DragonFly's
	// /etc/hammer2/autoconn does: tcp:<host>[:port] (DragonFly's TCP
	// link), quic:<host>[:port], or <host>[:port], which is TCP when
	// remote_dir has a file for its address and QUIC otherwise.
	Autoconn []string `toml:"autoconn"`
	// MetricsListen is the TCP address (host:port) where the service
	// serves Prometheus metrics at /metrics, read-only; "" or "none"
	// (the default) serves none.
	MetricsListen string `toml:"metrics_listen"`
}

// RemoteConfig is one [[remote]] table.
type RemoteConfig struct {
	// Address is host or host:port (port 987 if absent), QUIC unless
	// remote_dir names its address; tcp:<host>[:port] for DragonFly's
	// TCP link, quic:<host>[:port] for QUIC whatever remote_dir says.
	Address string `toml:"address"`
	// Key, if set, trusts this public key ("ed25519:..."), named Name.
	Key  string `toml:"key"`
	Name string `toml:"name"`
}

// Duration reads TOML strings like "1s" or "250ms".
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// DefaultConfig is what a leaf runs with when nothing is configured.
func DefaultConfig() Config {
	c := Config{
		KeyDir:          "/etc/hammer2",
		Listen:          "none",
		Backbone:        "auto",
		PingInterval:    Duration{time.Second},
		DeadAfter:       Duration{10 * time.Second},
		RemoteDeadAfter: Duration{3 * time.Second},
		RedialMin:       Duration{time.Second},
		RedialMax:       Duration{30 * time.Second},
		LogFormat:       "text",
		MetricsListen:   "none",
		Limits:          defaultLimits(),
		Quorum: QuorumSection{Tick: Duration{100 * time.Millisecond}, CommitTimeout: Duration{5 * time.Second},
			Lease: Duration{5 * time.Second}},
		Service: ServiceSection{
			Unix:   defaultServiceSocket(),
			TCP:    fmt.Sprintf(":%d", ListenPort),
			Listen: fmt.Sprintf(":%d", ListenPort),
			// Off unless asked for: an unauthenticated read endpoint.
			MetricsListen: "none",
		},
	}
	if runtime.GOOS == "dragonfly" {
		c.RunDir = "/var/run/hammer2"
	}
	// A user can run the whole daemon without root, on their own paths:
	// where /etc/hammer2 is not theirs to write, their keys live in their
	// own config directory.
	if os.Geteuid() != 0 && unix.Access(c.KeyDir, unix.W_OK) != nil {
		if d, err := os.UserConfigDir(); err == nil {
			c.KeyDir = filepath.Join(d, "hammer2")
		}
	}
	return c
}

// defaultServiceSocket is where leaves find the service: the system run
// directory as root, a per-user temporary one otherwise.
func defaultServiceSocket() string {
	switch {
	case runtime.GOOS == "dragonfly":
		return "/var/run/hammer2/service.sock"
	case os.Geteuid() == 0:
		return "/run/hammer2/service.sock"
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("hammer2-%d", os.Getuid()), "service.sock")
}

// LoadConfig reads path over the defaults. An empty path reads
// DefaultConfigPath if it exists.
func LoadConfig(path string) (Config, error) { return loadConfigAt(path, DefaultConfigPath) }

// loadConfigAt is LoadConfig with the machine's file at def.
func loadConfigAt(path, def string) (Config, error) {
	c := DefaultConfig()
	explicit := path != ""
	if !explicit {
		path = def
	}
	data, err := os.ReadFile(path)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			return c, nil
		}
		if !explicit && errors.Is(err, os.ErrPermission) {
			// The machine's config is root's (/etc/hammer2 is 0700 once
			// root has run): a user's commands on their own paths go on
			// with the defaults, which LoadNote says.
			c.loadNote = fmt.Sprintf("%s is not readable (%v): using the defaults", path, err)
			return c, nil
		}
		return c, fmt.Errorf("config: %w", err)
	}
	if err := checkNotWritableByOthers(path); err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if err := checkDurations(path, data); err != nil {
		return c, err
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, configError(path, err)
	}
	if err := c.validate(); err != nil {
		// Name the line of the key the error is about, if the file sets it.
		if m := validateKeyRe.FindStringSubmatch(err.Error()); m != nil {
			if line := tomlKeyLine(data, m[1]); line > 0 {
				return c, fmt.Errorf("config %s:%d: %w", path, line, err)
			}
		}
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// validateKeyRe finds the key a validation error names.
var validateKeyRe = regexp.MustCompile(`^key ([a-z_]+(?:\.[a-z_]+)?)[:\[ ]`)

func configError(path string, err error) error {
	var se *toml.StrictMissingError
	if errors.As(err, &se) {
		var msgs []string
		for _, e := range se.Errors {
			row, _ := e.Position()
			msgs = append(msgs, fmt.Sprintf("%s:%d: unknown key %s", path, row, strings.Join(e.Key(), ".")))
		}
		return fmt.Errorf("config %s", strings.Join(msgs, "; "))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return fmt.Errorf("config %s:%d:%d: key %s: %s", path, row, col, strings.Join(de.Key(), "."), tomlWords(de.Error()))
	}
	return fmt.Errorf("config %s: %w", path, err)
}

// goTypeRe is go-toml's type mismatch, which names Go types.
var goTypeRe = regexp.MustCompile(`cannot decode TOML (\w+) into struct field \S+ of type (\S+)`)

// tomlWords says a type mismatch in the config's words, not Go's.
func tomlWords(msg string) string {
	m := goTypeRe.FindStringSubmatch(msg)
	if m == nil {
		return strings.TrimPrefix(msg, "toml: ")
	}
	want := map[string]string{"string": "a string", "int": "an integer", "int64": "an integer", "uint64": "an integer",
		"float64": "a number", "bool": "true or false", "[]string": "an array of strings",
		"main.Duration": `a duration such as "1s"`, "[]main.RemoteConfig": "[[remote]] tables"}[m[2]]
	if want == "" {
		want = "another type"
	}
	got := map[string]string{"integer": "an integer", "string": "a string", "float": "a number", "boolean": "a boolean",
		"array": "an array", "table": "a table", "datetime": "a date"}[m[1]]
	if got == "" {
		got = m[1]
	}
	return fmt.Sprintf("needs %s, not %s", want, got)
}

// durationKeys are the keys holding durations, dotted below their table.
var durationKeys = []string{"ping_interval", "dead_after", "remote_dead_after", "redial_min", "redial_max",
	"quorum.tick", "quorum.commit_timeout", "quorum.lease", "limits.hello_timeout"}

// checkDurations names the line of a duration key that does not parse:
// go-toml reports no position for errors from a TextUnmarshaler.
func checkDurations(path string, data []byte) error {
	var raw map[string]any
	if err := toml.Unmarshal(data, &raw); err != nil {
		return configError(path, err)
	}
	for _, k := range durationKeys {
		table, key, nested := strings.Cut(k, ".")
		m := raw
		if nested {
			m, _ = raw[table].(map[string]any)
		} else {
			key = table
		}
		v, ok := m[key]
		if !ok {
			continue
		}
		s, isStr := v.(string)
		_, perr := time.ParseDuration(s)
		if isStr && perr == nil {
			continue
		}
		return fmt.Errorf("config %s:%d: key %s: %v is not a duration such as \"1s\" or \"250ms\"", path, tomlKeyLine(data, k), k, v)
	}
	return nil
}

// tomlKeyLine is the line (from 1) where a dotted key is set, 0 if not
// found: its table's header, then the key's own line below it.
func tomlKeyLine(data []byte, dotted string) int {
	table, key, nested := strings.Cut(dotted, ".")
	if !nested {
		table, key = "", dotted
	}
	cur := ""
	for i, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") {
			cur = strings.Trim(l, "[] ")
			continue
		}
		if name, _, ok := strings.Cut(l, "="); ok && cur == table && strings.TrimSpace(name) == key {
			return i + 1
		}
	}
	return 0
}

func (c *Config) validate() error {
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("key log_format: %q is neither \"text\" nor \"json\"", c.LogFormat)
	}
	if _, _, err := parseBackbone(c.Backbone); err != nil {
		return fmt.Errorf("key backbone: %w", err)
	}
	for _, m := range []struct{ key, v string }{{"metrics_listen", c.MetricsListen}, {"service.metrics_listen", c.Service.MetricsListen}} {
		if err := checkMetricsListen(m.v); err != nil {
			return fmt.Errorf("key %s: %w", m.key, err)
		}
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{{"ping_interval", c.PingInterval}, {"dead_after", c.DeadAfter}, {"remote_dead_after", c.RemoteDeadAfter},
		{"redial_min", c.RedialMin}, {"redial_max", c.RedialMax}} {
		if d.v.Duration <= 0 {
			return fmt.Errorf("key %s: %v is not a positive duration", d.key, d.v)
		}
	}
	if c.RedialMax.Duration < c.RedialMin.Duration {
		return fmt.Errorf("key redial_max: %v is below redial_min %v", c.RedialMax, c.RedialMin)
	}
	for i, m := range c.Quorum.Masters {
		if _, err := ParseUUID(m); err != nil {
			return fmt.Errorf("key quorum.masters: entry %d: %w", i, err)
		}
	}
	if c.Quorum.Tick.Duration <= 0 || c.Quorum.CommitTimeout.Duration < c.Quorum.Tick.Duration {
		return fmt.Errorf("key quorum.commit_timeout: %v must be at least quorum.tick %v", c.Quorum.CommitTimeout, c.Quorum.Tick)
	}
	if c.Quorum.Lease.Duration < 2*c.Quorum.Tick.Duration {
		return fmt.Errorf("key quorum.lease: %v must be at least two quorum.tick (%v)", c.Quorum.Lease, c.Quorum.Tick)
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if _, err := newPrivilegePolicy(c.Security.Group); err != nil {
		return err
	}
	for i, a := range c.Service.Autoconn {
		if _, err := parseNodeTarget(a); err != nil {
			return fmt.Errorf("key service.autoconn: entry %d: %w", i, err)
		}
	}
	for i, r := range c.Remotes {
		if r.Address == "" {
			return fmt.Errorf("remote[%d]: key address is required", i)
		}
		if _, err := parseNodeTarget(r.Address); err != nil {
			return fmt.Errorf("remote[%d]: key address: %w", i, err)
		}
		if r.Key != "" {
			if _, err := ParsePublicKey(r.Key); err != nil {
				return fmt.Errorf("remote[%d] (%s): key key: %w", i, r.Address, err)
			}
		}
	}
	return nil
}

// parseBackbone splits "tcp:addr", "unix:path", "auto" or "none".
func parseBackbone(s string) (network, addr string, err error) {
	switch s {
	case "none", "":
		return "", "", nil
	case "auto":
		return "auto", "", nil
	}
	network, addr, ok := strings.Cut(s, ":")
	if !ok || addr == "" || network != "tcp" && network != "unix" {
		return "", "", fmt.Errorf("%q is not auto, tcp:<host:port>, unix:<path> or none", s)
	}
	return network, addr, nil
}

// dragonflyServiceAddr is where DragonFly's C `hammer2 service` takes
// local links (and where an auto backbone looks when ours is not there).
var dragonflyServiceAddr = fmt.Sprintf("127.0.0.1:%d", ListenPort)
