package main

// The RSA key files of DragonFly's encrypted TCP links.
//
// DragonFly keeps them beside our Ed25519 node key, in the key directory
// (/etc/hammer2 by default): rsa.prv is this node's private key (PEM, the
// PKCS#1 "RSA PRIVATE KEY" that `openssl genrsa` wrote for years, or the
// PKCS#8 "PRIVATE KEY" of OpenSSL 3), rsa.pub its public half (PEM
// SubjectPublicKeyInfo, "PUBLIC KEY"), and remote/<ip>.pub holds a peer's
// public key in the same form. The handshake that uses them is in
// dmsghandshake.go.

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

const (
	rsaPrivFile = "rsa.prv"
	rsaPubFile  = "rsa.pub"

	// rsaDefaultBits is what DragonFly's rsainit generates: two 256-byte
	// blocks per 512-byte handshake buffer.
	rsaDefaultBits = 2048

	// rsaKeyFileMax bounds what is read from a key file; a 4096-bit PEM
	// private key is about 3.3 KB.
	rsaKeyFileMax = 64 << 10
)

// dmsgCryptoKeys is this node's RSA identity for DragonFly's encrypted TCP
// links, loaded from rsa.prv and rsa.pub in one key directory. It is
// immutable once loaded and safe for concurrent use by any number of
// handshakes; a reload builds a new one.
type dmsgCryptoKeys struct {
	Dir  string          // the key directory; peers' keys are in Dir/remote
	Priv *rsa.PrivateKey // from rsa.prv, checked to match rsa.pub
}

// loadDmsgCryptoKeys reads dir/rsa.prv and dir/rsa.pub. A missing file is
// NOLKEY, a bad or mismatched one KEYFMT, as in DragonFly. The private key
// file must be closed to group and other.
func loadDmsgCryptoKeys(dir string) (*dmsgCryptoKeys, error) {
	priv, err := readRSAPrivateKeyFile(filepath.Join(dir, rsaPrivFile))
	if err != nil {
		return nil, err
	}
	pubPath := filepath.Join(dir, rsaPubFile)
	pub, err := readRSAPublicKeyFile(pubPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("dmsg crypto: %w: %w (run hammer2 rsainit)", errIOQNoLocalKey, err)
		}
		return nil, err
	}
	if !pub.Equal(&priv.PublicKey) {
		return nil, fmt.Errorf("dmsg crypto: %w: %s does not match %s (%s, want %s)", errIOQKeyFormat,
			pubPath, rsaPrivFile, rsaFingerprint(pub), rsaFingerprint(&priv.PublicKey))
	}
	if _, err := dmsgRSABlockSize(priv.Size()); err != nil {
		return nil, fmt.Errorf("dmsg crypto: %s: %w", pubPath, err)
	}
	return &dmsgCryptoKeys{Dir: dir, Priv: priv}, nil
}

// Fingerprint is the short form of the node's public key, for logs and
// status.
func (k *dmsgCryptoKeys) Fingerprint() string { return rsaFingerprint(&k.Priv.PublicKey) }

// rsaFingerprint is "SHA256:<base64>" of the key's SubjectPublicKeyInfo DER,
// the bytes rsa.pub encodes: `openssl pkey -pubin -in rsa.pub -outform DER |
// openssl dgst -sha256 -binary | base64` gives the same digest.
func rsaFingerprint(pub *rsa.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "SHA256:?"
	}
	sum := sha256.Sum256(der)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// dmsgRSABlockSize checks an RSA key size (in bytes) against the handshake:
// the 512-byte buffer is cut into key-sized blocks, so the size must divide
// 512, and each block's retry counter (bytes 4..7) must stay out of the
// session key, which rules out blocks under 128 bytes. That leaves 1024-,
// 2048- and 4096-bit keys.
func dmsgRSABlockSize(size int) (int, error) {
	switch size {
	case 128, 256, 512:
		return size, nil
	}
	return 0, fmt.Errorf("%w: %d-bit RSA key; DragonFly's handshake takes 1024, 2048 or 4096 bits", errIOQKeyFormat, size*8)
}

// readRSAPrivateKeyFile reads a PEM private key that only its owner may
// read: like ssh, a key that group or other can open is taken as leaked.
func readRSAPrivateKeyFile(path string) (*rsa.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("dmsg crypto: %w: %s does not exist (run hammer2 rsainit): %w", errIOQNoLocalKey, path, err)
		}
		return nil, fmt.Errorf("dmsg crypto: %w: %w", errIOQNoLocalKey, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("dmsg crypto: %w: %w", errIOQNoLocalKey, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("dmsg crypto: %w: %s: permissions %#o are too open (group/other may access it); chmod 400 %s",
			errIOQKeyFormat, path, perm, path)
	}
	data, err := readKeyFileLimited(f, rsaKeyFileMax)
	if err != nil {
		return nil, fmt.Errorf("dmsg crypto: %w: %s: %w", errIOQKeyFormat, path, err)
	}
	priv, err := parseRSAPrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("dmsg crypto: %w: %s: %w", errIOQKeyFormat, path, err)
	}
	return priv, nil
}

// parseRSAPrivateKeyPEM takes the first PEM block, PKCS#1 or PKCS#8.
func parseRSAPrivateKeyPEM(data []byte) (*rsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if len(block.Headers) != 0 {
		// Proc-Type / DEK-Info: a passphrase-protected key, which a
		// daemon cannot open.
		return nil, errors.New("PEM block is encrypted")
	}
	var priv *rsa.PrivateKey
	switch block.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS#1: %w", err)
		}
		priv = k
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS#8: %w", err)
		}
		rk, ok := k.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("key is %T, want an RSA key", k)
		}
		priv = rk
	default:
		return nil, fmt.Errorf("PEM block is %q, want \"RSA PRIVATE KEY\" or \"PRIVATE KEY\"", block.Type)
	}
	if len(priv.Primes) != 2 {
		return nil, fmt.Errorf("RSA key has %d primes, want 2", len(priv.Primes))
	}
	return priv, nil
}

// readRSAPublicKeyFile reads a PEM public key (ours or a peer's). Open
// errors come back as the os package's, for the caller to classify; a file
// that does not parse is KEYFMT.
func readRSAPublicKeyFile(path string) (*rsa.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := readKeyFileLimited(f, rsaKeyFileMax)
	if err != nil {
		return nil, fmt.Errorf("dmsg crypto: %w: %s: %w", errIOQKeyFormat, path, err)
	}
	pub, err := parseRSAPublicKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("dmsg crypto: %w: %s: %w", errIOQKeyFormat, path, err)
	}
	return pub, nil
}

// parseRSAPublicKeyPEM takes SubjectPublicKeyInfo ("PUBLIC KEY", what
// DragonFly reads and rsainit writes) and, leniently, PKCS#1 ("RSA PUBLIC
// KEY").
func parseRSAPublicKeyPEM(data []byte) (*rsa.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	switch block.Type {
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse SubjectPublicKeyInfo: %w", err)
		}
		pub, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("key is %T, want an RSA key", k)
		}
		return pub, nil
	case "RSA PUBLIC KEY":
		pub, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS#1: %w", err)
		}
		return pub, nil
	}
	return nil, fmt.Errorf("PEM block is %q, want \"PUBLIC KEY\"", block.Type)
}

// marshalRSAPrivateKeyPEM encodes PKCS#1, which every OpenSSL and LibreSSL
// that DragonFly has shipped reads.
func marshalRSAPrivateKeyPEM(priv *rsa.PrivateKey) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(priv)})
}

// marshalRSAPublicKeyPEM encodes SubjectPublicKeyInfo, as `openssl rsa
// -pubout` writes it.
func marshalRSAPublicKeyPEM(pub *rsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// generateRSAKey makes a key for the handshake; bits must be 2048 or 4096
// (1024 still works on the wire but is too weak to create).
func generateRSAKey(bits int) (*rsa.PrivateKey, error) {
	if bits != 2048 && bits != 4096 {
		return nil, fmt.Errorf("%d-bit RSA: DragonFly's handshake takes 2048 or 4096 bits", bits)
	}
	return rsa.GenerateKey(rand.Reader, bits)
}
