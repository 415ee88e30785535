package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The keys in testdata/crypto were made with openssl (see its README):
// a, c and d in PKCS#1 (`openssl genrsa -traditional`), b in PKCS#8
// (`openssl genpkey`, OpenSSL 3's default), each .pub by `openssl rsa
// -pubout`, the command DragonFly's rsainit runs.

func testRSAKey(tb testing.TB, name string) *rsa.PrivateKey {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "crypto", name+".prv"))
	if err != nil {
		tb.Fatal(err)
	}
	k, err := parseRSAPrivateKeyPEM(data)
	if err != nil {
		tb.Fatalf("%s.prv: %v", name, err)
	}
	return k
}

func testRSAPub(tb testing.TB, name string) *rsa.PublicKey {
	tb.Helper()
	pub, err := readRSAPublicKeyFile(filepath.Join("testdata", "crypto", name+".pub"))
	if err != nil {
		tb.Fatal(err)
	}
	return pub
}

// installRSAKeys copies testdata key <name> into dir as rsa.prv (mode
// prvMode) and rsa.pub.
func installRSAKeys(tb testing.TB, dir, name string, prvMode os.FileMode) {
	tb.Helper()
	for _, f := range []struct {
		src, dst string
		mode     os.FileMode
	}{{name + ".prv", rsaPrivFile, prvMode}, {name + ".pub", rsaPubFile, 0o644}} {
		data, err := os.ReadFile(filepath.Join("testdata", "crypto", f.src))
		if err != nil {
			tb.Fatal(err)
		}
		p := filepath.Join(dir, f.dst)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			tb.Fatal(err)
		}
		if err := os.Chmod(p, f.mode); err != nil {
			tb.Fatal(err)
		}
	}
}

func TestParseRSAPrivateKeyPEM(t *testing.T) {
	t.Parallel()
	_, edPriv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	edDER, err := x509.MarshalPKCS8PrivateKey(edPriv)
	if err != nil {
		t.Fatal(err)
	}
	a, err := os.ReadFile("testdata/crypto/a.prv")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("testdata/crypto/b.prv")
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(a)
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}, Bytes: block.Bytes})
	for _, tc := range []struct {
		name string
		data []byte
		want string // error substring; "" for success
	}{
		{"PKCS#1 from openssl genrsa", a, ""},
		{"PKCS#8 from openssl genpkey", b, ""},
		{"PKCS#8 Ed25519", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: edDER}), "want an RSA key"},
		{"public key", mustRead(t, "testdata/crypto/a.pub"), `"PUBLIC KEY"`},
		{"encrypted", encrypted, "encrypted"},
		{"not PEM", []byte("hello"), "no PEM block"},
		{"bad DER", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte{1, 2, 3}}), "PKCS#1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := parseRSAPrivateKeyPEM(tc.data)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if k.N.BitLen() != 2048 {
					t.Fatalf("%d bits", k.N.BitLen())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func mustRead(tb testing.TB, path string) []byte {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func TestLoadDmsgCryptoKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, dir string)
		want    error  // nil for success
		wantMsg string // substring of the error
	}{
		{name: "PKCS#1 0400", setup: func(t *testing.T, d string) { installRSAKeys(t, d, "a", 0o400) }},
		{name: "PKCS#8 0600", setup: func(t *testing.T, d string) { installRSAKeys(t, d, "b", 0o600) }},
		{name: "4096 bits", setup: func(t *testing.T, d string) { installRSAKeys(t, d, "c", 0o400) }},
		{name: "no keys", setup: func(t *testing.T, d string) {}, want: errIOQNoLocalKey, wantMsg: "rsa.prv does not exist"},
		{name: "no rsa.pub", setup: func(t *testing.T, d string) {
			installRSAKeys(t, d, "a", 0o400)
			os.Remove(filepath.Join(d, rsaPubFile))
		}, want: errIOQNoLocalKey, wantMsg: "rsa.pub"},
		{name: "group-readable", setup: func(t *testing.T, d string) { installRSAKeys(t, d, "a", 0o440) },
			want: errIOQKeyFormat, wantMsg: "too open"},
		{name: "other-readable", setup: func(t *testing.T, d string) { installRSAKeys(t, d, "a", 0o604) },
			want: errIOQKeyFormat, wantMsg: "too open"},
		{name: "rsa.pub of another key", setup: func(t *testing.T, d string) {
			installRSAKeys(t, d, "a", 0o400)
			if err := os.WriteFile(filepath.Join(d, rsaPubFile), mustRead(t, "testdata/crypto/b.pub"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: errIOQKeyFormat, wantMsg: "does not match"},
		{name: "garbage rsa.pub", setup: func(t *testing.T, d string) {
			installRSAKeys(t, d, "a", 0o400)
			if err := os.WriteFile(filepath.Join(d, rsaPubFile), []byte("ed25519:AAAA\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, want: errIOQKeyFormat, wantMsg: "no PEM block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			k, err := loadDmsgCryptoKeys(dir)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if k.Dir != dir || k.Priv == nil {
					t.Fatalf("keys %+v", k)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("error %v, want %v containing %q", err, tc.want, tc.wantMsg)
			}
		})
	}
}

// The fingerprint is over the SubjectPublicKeyInfo DER, so openssl gives
// the same digest:
//
//	openssl pkey -pubin -in testdata/crypto/a.pub -outform DER | openssl dgst -sha256 -binary | base64
func TestRSAFingerprint(t *testing.T) {
	t.Parallel()
	got := rsaFingerprint(testRSAPub(t, "a"))
	want := "SHA256:" + strings.TrimRight(string(bytes.TrimSpace(mustRead(t, "testdata/crypto/a.pub.sha256"))), "=")
	if got != want {
		t.Fatalf("fingerprint %s, want %s (from openssl)", got, want)
	}
	if rsaFingerprint(testRSAPub(t, "b")) == got {
		t.Fatal("two keys share a fingerprint")
	}
}

func TestDmsgRSABlockSize(t *testing.T) {
	t.Parallel()
	for bits, ok := range map[int]bool{1024: true, 2048: true, 4096: true, 512: false, 3072: false, 8192: false} {
		_, err := dmsgRSABlockSize(bits / 8)
		if (err == nil) != ok {
			t.Errorf("%d bits: %v", bits, err)
		}
		if err != nil && !errors.Is(err, errIOQKeyFormat) {
			t.Errorf("%d bits: %v is not KEYFMT", bits, err)
		}
	}
}
