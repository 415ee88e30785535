package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The example documents every key with its default: loading it must give
// exactly the built-in defaults (bar the per-user key_dir), and every key
// of Config must appear in it (set, or commented out where the default
// depends on the platform).
func TestConfigExampleIsTheDefaults(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig("config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	d := DefaultConfig()
	c.KeyDir, d.KeyDir = "", ""
	c.RunDir, d.RunDir = "", ""
	c.Service.Unix, d.Service.Unix = "", ""
	for _, x := range []*Config{&c, &d} { // an empty list reads as [], not nil
		x.Remotes, x.Quorum.Masters, x.Service.Autoconn = nil, nil, nil
	}
	if !reflect.DeepEqual(c, d) {
		t.Errorf("example %+v\ndiffers from defaults %+v", c, d)
	}
	text, err := os.ReadFile("config.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range tomlKeys(reflect.TypeOf(Config{}), "") {
		table, name := "", key
		if i := strings.LastIndex(key, "."); i >= 0 {
			table, name = key[:i], key[i+1:]
		}
		if table == "remote" {
			table = "[remote]" // [[remote]], shown commented out
		}
		found, cur := false, ""
		for _, l := range strings.Split(string(text), "\n") {
			l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "#"))
			if strings.HasPrefix(l, "[") {
				cur = strings.Trim(l, "[] ")
				if strings.HasPrefix(l, "[[") {
					cur = "[" + cur + "]"
				}
				continue
			}
			if k, _, ok := strings.Cut(l, "="); ok && cur == table && strings.TrimSpace(k) == name {
				found = true
			}
		}
		if !found {
			t.Errorf("config.toml.example does not document key %s", key)
		}
	}
}

// tomlKeys lists the dotted keys of a config struct type.
func tomlKeys(t reflect.Type, prefix string) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("toml")
		if tag == "" || tag == "-" {
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != reflect.TypeOf(Duration{}) {
			out = append(out, tomlKeys(ft, prefix+tag+".")...)
			continue
		}
		out = append(out, prefix+tag)
	}
	return out
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
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
	t.Parallel()
	c, err := LoadConfig("")
	if err != nil && !strings.Contains(err.Error(), DefaultConfigPath) {
		t.Fatal(err)
	}
	if _, err := os.Stat(DefaultConfigPath); err == nil {
		t.Skip("this machine has a real " + DefaultConfigPath)
	}
	if c.Listen != "none" || c.Backbone != "auto" || c.RemoteDeadAfter.Duration != 3*time.Second {
		t.Errorf("defaults: %+v", c)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.toml")); err == nil {
		t.Error("an explicitly named missing file was accepted")
	}
}
