package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The example documents every key with its default: loading it must give
// exactly the built-in defaults (bar the per-user key_dir).
func TestConfigExampleIsTheDefaults(t *testing.T) {
	c, err := LoadConfig("config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	d := DefaultConfig()
	c.KeyDir, d.KeyDir = "", ""
	c.RunDir, d.RunDir = "", ""
	if c.Listen != d.Listen || c.Backbone != d.Backbone || c.PingInterval != d.PingInterval ||
		c.DeadAfter != d.DeadAfter || c.RemoteDeadAfter != d.RemoteDeadAfter || c.RedialMin != d.RedialMin ||
		c.RedialMax != d.RedialMax || c.LogFormat != d.LogFormat || len(c.Remotes) != 0 ||
		len(c.Quorum.Masters) != 0 || c.Quorum.StateDir != d.Quorum.StateDir || c.Quorum.Tick != d.Quorum.Tick ||
		c.Quorum.CommitTimeout != d.Quorum.CommitTimeout || c.Quorum.Lease != d.Quorum.Lease ||
		c.Service.TCP != d.Service.TCP || c.Service.Listen != d.Service.Listen || len(c.Service.Autoconn) != 0 ||
		c.Service.Unix != d.Service.Unix {
		t.Errorf("example %+v\ndiffers from defaults %+v", c, d)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"unknown-key", "listen = \":1\"\nlisen = \"x\"\n", []string{":2", "unknown key lisen"}},
		{"wrong-type", "\n\nping_interval = 5\n", []string{":3", "ping_interval"}},
		{"bad-duration", "dead_after = \"soon\"\n", []string{":1", "dead_after"}},
		{"bad-backbone", "backbone = \"udp:1\"\n", []string{"backbone"}},
		{"bad-log-format", "log_format = \"xml\"\n", []string{"log_format"}},
		{"remote-without-address", "[[remote]]\nname = \"x\"\n", []string{"remote[0]", "address"}},
		{"remote-bad-key", "[[remote]]\naddress = \"h\"\nkey = \"rsa:zz\"\n", []string{"remote[0]", "key"}},
		{"unknown-remote-key", "[[remote]]\naddress = \"h\"\nport = 1\n", []string{"unknown key remote.port"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "leaf.toml")
			if err := os.WriteFile(p, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(p)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range append(tc.want, p) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestConfigDefaultsWithoutFile(t *testing.T) {
	c, err := LoadConfig("")
	if err != nil && !strings.Contains(err.Error(), DefaultConfigPath) {
		t.Fatal(err)
	}
	if _, err := os.Stat(DefaultConfigPath); err == nil {
		t.Skip("this machine has a real " + DefaultConfigPath)
	}
	if c.Listen != ":987" || c.RemoteDeadAfter.Duration != 3*time.Second {
		t.Errorf("defaults: %+v", c)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.toml")); err == nil {
		t.Error("an explicitly named missing file was accepted")
	}
}
