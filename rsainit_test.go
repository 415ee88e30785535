package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runRsainit runs `hammer2 <args...>` through the CLI and returns its exit
// status, stdout and stderr.
func runRsainit(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"hammer2"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestRsainitCreatesPair(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "etc", "hammer2")
	code, out, errs := runRsainit(t, "rsainit", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	prv, pub := filepath.Join(dir, rsaPrivFile), filepath.Join(dir, rsaPubFile)
	for _, want := range []string{"hammer2 rsainit: created " + prv + "\n", "hammer2 rsainit: created " + pub + "\n", "2048-bit key SHA256:"} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q lacks %q", out, want)
		}
	}
	for path, mode := range map[string]os.FileMode{prv: 0o400, pub: 0o644, dir: 0o700} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %#o, want %#o", path, fi.Mode().Perm(), mode)
		}
	}
	block, _ := pem.Decode(mustRead(t, pub))
	if block == nil || block.Type != "PUBLIC KEY" {
		t.Fatalf("rsa.pub is not a PEM PUBLIC KEY: %q", mustRead(t, pub))
	}
	if _, err := x509.ParsePKIXPublicKey(block.Bytes); err != nil {
		t.Fatal(err)
	}
	keys, err := loadDmsgCryptoKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if keys.Priv.N.BitLen() != rsaDefaultBits {
		t.Fatalf("%d-bit key", keys.Priv.N.BitLen())
	}
	if !strings.Contains(out, keys.Fingerprint()) {
		t.Errorf("output %q lacks the fingerprint %s", out, keys.Fingerprint())
	}

	// A second run keeps both files as they are.
	before := [2][]byte{mustRead(t, prv), mustRead(t, pub)}
	code, out, errs = runRsainit(t, "rsainit", dir)
	if code != 0 {
		t.Fatalf("second run: exit %d: %s", code, errs)
	}
	for _, want := range []string{"hammer2 rsainit: Using existing private key in " + prv + "\n", "hammer2 rsainit: both keys already exist\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("second run: output %q lacks %q", out, want)
		}
	}
	if !bytes.Equal(before[0], mustRead(t, prv)) || !bytes.Equal(before[1], mustRead(t, pub)) {
		t.Fatal("second run changed a key file")
	}
}

// An existing private key, PKCS#8 from OpenSSL 3 here, is kept, and the
// missing rsa.pub is derived from it byte for byte as `openssl rsa -pubout`
// wrote testdata/crypto/b.pub.
func TestRsainitDerivesPublicKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	installRSAKeys(t, dir, "b", 0o400)
	os.Remove(filepath.Join(dir, rsaPubFile))
	code, out, errs := runRsainit(t, "rsainit", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "Using existing private key") || !strings.Contains(out, "created "+filepath.Join(dir, rsaPubFile)) {
		t.Fatalf("output %q", out)
	}
	if got, want := mustRead(t, filepath.Join(dir, rsaPubFile)), mustRead(t, "testdata/crypto/b.pub"); !bytes.Equal(got, want) {
		t.Fatalf("derived rsa.pub\n%s\nwant openssl's\n%s", got, want)
	}
	if got, want := mustRead(t, filepath.Join(dir, rsaPrivFile)), mustRead(t, "testdata/crypto/b.prv"); !bytes.Equal(got, want) {
		t.Fatal("rsa.prv was rewritten")
	}
}

func TestRsainitRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		args  []string
		want  string
	}{
		{"rsa.pub without rsa.prv", func(t *testing.T, d string) {
			installRSAKeys(t, d, "a", 0o400)
			os.Remove(filepath.Join(d, rsaPrivFile))
		}, nil, "exists without"},
		{"private key readable by others", func(t *testing.T, d string) { installRSAKeys(t, d, "a", 0o644) }, nil, "too open"},
		{"mismatched pair", func(t *testing.T, d string) {
			installRSAKeys(t, d, "a", 0o400)
			if err := os.WriteFile(filepath.Join(d, rsaPubFile), mustRead(t, "testdata/crypto/b.pub"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, nil, "does not match"},
		{"1024 bits", func(t *testing.T, d string) {}, []string{"--bits", "1024"}, "2048 or 4096"},
		{"3072 bits", func(t *testing.T, d string) {}, []string{"--bits=3072"}, "2048 or 4096"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			before, _ := os.ReadFile(filepath.Join(dir, rsaPubFile))
			code, _, errs := runRsainit(t, append([]string{"rsainit", dir}, tc.args...)...)
			if code == 0 || !strings.Contains(errs, tc.want) {
				t.Fatalf("exit %d, stderr %q; want failure containing %q", code, errs, tc.want)
			}
			after, _ := os.ReadFile(filepath.Join(dir, rsaPubFile))
			if !bytes.Equal(before, after) {
				t.Fatal("rsa.pub changed")
			}
		})
	}
}

// Without a directory argument rsainit uses the config's key_dir, like
// keygen.
func TestRsainitConfigKeyDir(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "keys")
	cfg := filepath.Join(tmp, "leaf.toml")
	if err := os.WriteFile(cfg, []byte("key_dir = \""+dir+"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	installRSAKeys(t, mkdir(t, dir), "a", 0o400)
	code, out, errs := runRsainit(t, "-c", cfg, "rsainit")
	if code != 0 || !strings.Contains(out, "Using existing private key in "+filepath.Join(dir, rsaPrivFile)) {
		t.Fatalf("exit %d, out %q, err %q", code, out, errs)
	}
}

func TestRsainit4096(t *testing.T) {
	t.Parallel()
	if testing.Short() || raceEnabled {
		t.Skip("4096-bit key generation takes seconds (and under -race, many more, with nothing to race)")
	}
	dir := t.TempDir()
	code, _, errs := runRsainit(t, "rsainit", "--bits", "4096", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	keys, err := loadDmsgCryptoKeys(dir)
	if err != nil {
		t.Fatal(err)
	}
	if keys.Priv.N.BitLen() != 4096 {
		t.Fatalf("%d-bit key", keys.Priv.N.BitLen())
	}
}

func mkdir(tb testing.TB, dir string) string {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	return dir
}
