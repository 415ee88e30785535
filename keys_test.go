package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestKeyGenerateLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pub, err := GenerateKey(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, nodeKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("node.key mode %#o, want 0600", perm)
	}
	priv, err := LoadNodeKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(priv.Public()) {
		t.Fatal("loaded private key does not match the generated public key")
	}
	filePub, err := ReadPublicKeyFile(filepath.Join(dir, nodePubFile))
	if err != nil {
		t.Fatal(err)
	}
	if !pub.Equal(filePub) {
		t.Fatal("node.pub does not hold the generated public key")
	}

	if _, err := GenerateKey(dir, false); err == nil || !strings.Contains(err.Error(), nodeKeyFile) {
		t.Fatalf("second GenerateKey without overwrite: err = %v, want refusal naming %s", err, nodeKeyFile)
	}
	again, err := LoadNodeKey(dir)
	if err != nil || !again.Equal(priv) {
		t.Fatalf("refused GenerateKey changed the key (err %v)", err)
	}

	pub2, err := GenerateKey(dir, true)
	if err != nil {
		t.Fatal(err)
	}
	if pub2.Equal(pub) {
		t.Fatal("overwrite produced the same key")
	}
	if priv2, err := LoadNodeKey(dir); err != nil || !pub2.Equal(priv2.Public()) {
		t.Fatalf("after overwrite: %v", err)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

func TestKeyFilePermissions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := GenerateKey(dir, false); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, nodeKeyFile)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644, 0o660} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadNodeKey(dir)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "too open") {
			t.Errorf("mode %#o: err = %v, want 'too open' naming %s", mode, err, path)
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadNodeKey(dir); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
}

func TestKeyLoadErrors(t *testing.T) {
	t.Parallel()
	write := func(t *testing.T, data string) string {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, nodeKeyFile), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	tests := []struct {
		name, data, want string
	}{
		{"not PEM", "hello\n", "no PEM block"},
		{"wrong type", "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n", `"RSA PRIVATE KEY"`},
		{"bad DER", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "PKCS#8"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := write(t, tc.data)
			_, err := LoadNodeKey(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), filepath.Join(dir, nodeKeyFile)) {
				t.Errorf("err = %v, want it to name the file and contain %q", err, tc.want)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		dir := t.TempDir()
		_, err := LoadNodeKey(dir)
		if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, nodeKeyFile)) {
			t.Errorf("err = %v, want it to name the file", err)
		}
	})
}

func TestPublicKeyText(t *testing.T) {
	t.Parallel()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s := FormatPublicKey(pub)
	if !strings.HasPrefix(s, "ed25519:") {
		t.Fatalf("FormatPublicKey = %q", s)
	}
	for _, in := range []string{s, "  " + s + "\n", s + "\r\n"} {
		got, err := ParsePublicKey(in)
		if err != nil || !got.Equal(pub) {
			t.Errorf("ParsePublicKey(%q) = %v, %v", in, got, err)
		}
	}

	short := base64.StdEncoding.EncodeToString(make([]byte, 31))
	bad := []struct{ in, want string }{
		{"", "empty"},
		{"   ", "empty"},
		{"ed25519:", "0 bytes"},
		{"ed25519:" + short, "31 bytes"},
		{"ed25519:!!!notbase64", "base64"},
		{"rsa:AAAA", `unsupported key type "rsa"`},
		{strings.TrimPrefix(s, "ed25519:"), "missing"},
		{"ED25519:" + strings.TrimPrefix(s, "ed25519:"), "unsupported key type"},
	}
	for _, tc := range bad {
		_, err := ParsePublicKey(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParsePublicKey(%q): err = %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestKeyFingerprint(t *testing.T) {
	t.Parallel()
	pub := ed25519.PublicKey(make([]byte, ed25519.PublicKeySize))
	sum := sha256.Sum256(pub)
	want := "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
	if got := Fingerprint(pub); got != want {
		t.Fatalf("Fingerprint = %q, want %q", got, want)
	}
	if len(want) != len("SHA256:")+43 || strings.HasSuffix(want, "=") {
		t.Fatalf("fingerprint %q is not ssh-style", want)
	}
}

func writePub(t *testing.T, dir, name string, pub ed25519.PublicKey) {
	t.Helper()
	rdir := filepath.Join(dir, remoteDirName)
	if err := os.MkdirAll(rdir, 0o755); err != nil {
		t.Fatal(err)
	}
	data := "# " + name + "\n" + FormatPublicKey(pub) + "\n"
	if err := os.WriteFile(filepath.Join(rdir, name+".pub"), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func newPub(t *testing.T) ed25519.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestTrustStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	a, b, c, cfgKey := newPub(t), newPub(t), newPub(t), newPub(t)
	writePub(t, dir, "10.0.0.1", a)
	writePub(t, dir, "host-b", b)
	rdir := filepath.Join(dir, remoteDirName)
	os.WriteFile(filepath.Join(rdir, "broken.pub"), []byte("ed25519:xx\n"), 0o644)
	os.WriteFile(filepath.Join(rdir, "README"), []byte("not a key"), 0o644)

	ts, err := LoadTrustStore(dir)
	if err == nil || !strings.Contains(err.Error(), "broken.pub") {
		t.Errorf("LoadTrustStore err = %v, want one naming broken.pub", err)
	}
	if ts == nil {
		t.Fatal("LoadTrustStore returned no store")
	}
	if name, ok := ts.Lookup(a); !ok || name != "10.0.0.1" {
		t.Errorf("Lookup(a) = %q, %v", name, ok)
	}
	if name, ok := ts.Lookup(b); !ok || name != "host-b" {
		t.Errorf("Lookup(b) = %q, %v", name, ok)
	}
	if _, ok := ts.Lookup(c); ok {
		t.Error("untrusted key c found")
	}
	if err := ts.AddKey("from-config", cfgKey); err != nil {
		t.Fatal(err)
	}
	if err := ts.AddKey("short", cfgKey[:5]); err == nil {
		t.Error("AddKey accepted a short key")
	}
	if len(ts.Keys()) != 3 {
		t.Errorf("Keys() = %d entries, want 3", len(ts.Keys()))
	}

	// Reload picks up added and removed files and keeps configured keys,
	// while lookups run concurrently (for -race).
	os.Remove(filepath.Join(rdir, "broken.pub"))
	os.Remove(filepath.Join(rdir, "host-b.pub"))
	writePub(t, dir, "c", c)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				ts.Lookup(a)
				ts.Keys()
			}
		})
	}
	if err := ts.Reload(); err != nil {
		t.Errorf("Reload: %v", err)
	}
	wg.Wait()
	if _, ok := ts.Lookup(b); ok {
		t.Error("removed key b still trusted after Reload")
	}
	if name, ok := ts.Lookup(c); !ok || name != "c" {
		t.Errorf("Lookup(c) after Reload = %q, %v", name, ok)
	}
	if name, ok := ts.Lookup(cfgKey); !ok || name != "from-config" {
		t.Errorf("configured key lost on Reload: %q, %v", name, ok)
	}
}

func TestTrustStoreNoDir(t *testing.T) {
	t.Parallel()
	ts, err := LoadTrustStore(t.TempDir()) // no remote/ inside
	if err != nil {
		t.Fatal(err)
	}
	if len(ts.Keys()) != 0 {
		t.Fatal("keys from nowhere")
	}
	empty, err := LoadTrustStore("")
	if err != nil || empty.Dir() != "" {
		t.Fatalf("LoadTrustStore(\"\") = %v, %v", empty, err)
	}
}

func TestTrustStoreTwoKeysInFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rdir := filepath.Join(dir, remoteDirName)
	os.MkdirAll(rdir, 0o755)
	data := FormatPublicKey(newPub(t)) + "\n" + FormatPublicKey(newPub(t)) + "\n"
	os.WriteFile(filepath.Join(rdir, "two.pub"), []byte(data), 0o644)
	_, err := LoadTrustStore(dir)
	if err == nil || !strings.Contains(err.Error(), "two.pub:2") {
		t.Fatalf("err = %v, want it to point at two.pub:2", err)
	}
}

// DragonFly's RSA keys share remote/ with our Ed25519 lines: they are
// left to the TCP links, without a warning.
func TestTrustStoreSkipsRSAKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writePub(t, dir, "node2", newPub(t))
	pem, err := os.ReadFile("testdata/crypto/a.pub")
	if err != nil {
		t.Skip("no test RSA key:", err)
	}
	if err := os.WriteFile(filepath.Join(dir, remoteDirName, "192.0.2.7.pub"), pem, 0o644); err != nil {
		t.Fatal(err)
	}
	ts, err := LoadTrustStore(dir)
	if err != nil {
		t.Errorf("an RSA key in remote/ gave a warning: %v", err)
	}
	if n := len(ts.Keys()); n != 1 {
		t.Errorf("%d keys trusted, want the one Ed25519 key", n)
	}
}
