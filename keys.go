package main

// Node identity and the set of peers we trust.
//
// Every node has one Ed25519 key pair. The private half lives in
// <dir>/node.key, the public half in <dir>/node.pub. Peers are trusted by
// public key only, never by address: <dir>/remote/*.pub holds one key per
// file, the way DragonFly's /etc/hammer2/remote/ does, and the configuration
// may add more. QUIC links are authenticated against that set (quic.go).

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

const (
	nodeKeyFile   = "node.key"
	nodePubFile   = "node.pub"
	remoteDirName = "remote"

	pubKeyPrefix = "ed25519:"
	pemKeyType   = "PRIVATE KEY" // PKCS#8, as openssl genpkey writes it
)

// GenerateKey creates a new node key pair in dir and returns its public half.
// An existing node.key is kept unless overwrite is set: replacing it silently
// would lock this node out of every peer that trusts the old key.
func GenerateKey(dir string, overwrite bool) (ed25519.PublicKey, error) {
	keyPath := filepath.Join(dir, nodeKeyFile)
	if !overwrite {
		if _, err := os.Lstat(keyPath); err == nil {
			return nil, fmt.Errorf("%s already exists; refusing to replace the node key: %w", keyPath, fs.ErrExist)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate node key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode node key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: pemKeyType, Bytes: der})
	if err := writeKeyFile(keyPath, keyPEM, 0o600, overwrite); err != nil {
		return nil, err
	}
	pubText := []byte(FormatPublicKey(pub) + "\n")
	if err := writeKeyFile(filepath.Join(dir, nodePubFile), pubText, 0o644, true); err != nil {
		return nil, err
	}
	return pub, nil
}

// writeKeyFile writes data to a temporary file next to path and moves it
// into place, so a crash never leaves a truncated key behind. Without replace
// the final step is a hard link, which fails if path appeared meanwhile.
func writeKeyFile(path string, data []byte, mode os.FileMode, replace bool) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // harmless after a rename or link
	// CreateTemp uses 0600; widen or keep it explicitly, independent of umask.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if replace {
		return os.Rename(tmp, path)
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists; refusing to replace it", path)
		}
		return err
	}
	return nil
}

// LoadNodeKey reads <dir>/node.key. Like ssh, it refuses a key file that
// group or other may access: such a key must be assumed leaked.
func LoadNodeKey(dir string) (ed25519.PrivateKey, error) {
	// Whoever can write the directory can swap the key (or, in remote/,
	// add a peer to trust).
	if err := checkNotWritableByOthers(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("key directory: %w", err)
	}
	path := filepath.Join(dir, nodeKeyFile)
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("node key %s does not exist (generate one first): %w", path, err)
		}
		return nil, fmt.Errorf("node key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("node key %s: permissions %#o are too open (group/other may access it); chmod 600 %s", path, perm, path)
	}
	data, err := readKeyFileLimited(f, 64<<10)
	if err != nil {
		return nil, fmt.Errorf("node key %s: %w", path, err)
	}
	key, err := parsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("node key %s: %w", path, err)
	}
	return key, nil
}

func parsePrivateKeyPEM(data []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	if block.Type != pemKeyType {
		return nil, fmt.Errorf("PEM block is %q, want %q (PKCS#8)", block.Type, pemKeyType)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse PKCS#8: %w", err)
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want an Ed25519 key", k)
	}
	return priv, nil
}

func readKeyFileLimited(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("file larger than %d bytes", limit)
	}
	return data, nil
}

// FormatPublicKey renders pub as "ed25519:<base64>", the form used in
// node.pub, remote/*.pub and the configuration.
func FormatPublicKey(pub ed25519.PublicKey) string {
	return pubKeyPrefix + base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKey parses the FormatPublicKey form. Surrounding white space is
// ignored so that lines read from files and config values can be passed as is.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("public key: empty")
	}
	b64, ok := strings.CutPrefix(s, pubKeyPrefix)
	if !ok {
		if typ, _, found := strings.Cut(s, ":"); found && !strings.ContainsAny(typ, " \t") {
			return nil, fmt.Errorf("public key: unsupported key type %q (want %q)", typ, strings.TrimSuffix(pubKeyPrefix, ":"))
		}
		return nil, fmt.Errorf("public key: missing %q prefix", pubKeyPrefix)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("public key: bad base64: %w", err)
	}
	if len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("public key: %d bytes, want %d", len(raw), ed25519.PublicKeySize)
	}
	return ed25519.PublicKey(raw), nil
}

// Fingerprint is the ssh-style short form of pub ("SHA256:<base64>"), for
// logs and for comparing keys by eye.
func Fingerprint(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// ReadPublicKeyFile reads a file holding one public key line. Blank lines and
// lines starting with '#' are ignored, so keys can carry a comment.
func ReadPublicKeyFile(path string) (ed25519.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var key ed25519.PublicKey
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		if key != nil {
			return nil, fmt.Errorf("%s:%d: more than one key in the file", path, line)
		}
		if key, err = ParsePublicKey(text); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if key == nil {
		return nil, fmt.Errorf("%s: no public key in the file", path)
	}
	return key, nil
}

// isPEMFile reports whether path starts like a PEM file: DragonFly keeps
// its peers' RSA keys as remote/<ip>.pub beside our Ed25519 lines.
func isPEMFile(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var b [11]byte
	n, _ := io.ReadFull(f, b[:])
	return string(b[:n]) == "-----BEGIN "
}

// TrustedKey is one entry of a TrustStore.
type TrustedKey struct {
	Name   string // file base name without ".pub", or the name given to AddKey
	Key    ed25519.PublicKey
	Source string // the file it came from, or "config"
}

// TrustStore is the set of peer keys this node accepts. It is safe for
// concurrent use: TLS handshakes look keys up while SIGHUP reloads the
// directory.
type TrustStore struct {
	dir string // "<dir>/remote", or "" for config keys only

	mu     sync.RWMutex
	config []TrustedKey           // from AddKey; survive Reload
	files  []TrustedKey           // from dir, sorted by name
	byKey  map[string]*TrustedKey // string(key) -> entry; config wins over files
}

// LoadTrustStore reads the keys in <dir>/remote/*.pub. A missing remote
// directory is not an error (all keys may come from the configuration); an
// empty dir means no directory at all. A file that does not parse is
// reported in the error, but the other keys are still loaded and the store
// is usable: one typo must not cut a node off from all its peers.
func LoadTrustStore(dir string) (*TrustStore, error) {
	t := &TrustStore{byKey: map[string]*TrustedKey{}}
	if dir != "" {
		t.dir = filepath.Join(dir, remoteDirName)
	}
	return t, t.Reload()
}

// Dir returns the directory the store reads, "" if none.
func (t *TrustStore) Dir() string { return t.dir }

// AddKey trusts pub under name, in addition to the directory's keys.
func (t *TrustStore) AddKey(name string, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("trust key %q: %d bytes, want %d", name, len(pub), ed25519.PublicKeySize)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.config = append(t.config, TrustedKey{Name: name, Key: slices.Clone(pub), Source: "config"})
	t.reindexLocked()
	return nil
}

// SetConfigKeys replaces every key given by AddKey or a previous call with
// keys: what a reloaded configuration trusts, and no longer what it dropped.
func (t *TrustStore) SetConfigKeys(keys []TrustedKey) error {
	cfg := make([]TrustedKey, 0, len(keys))
	for _, k := range keys {
		if len(k.Key) != ed25519.PublicKeySize {
			return fmt.Errorf("trust key %q: %d bytes, want %d", k.Name, len(k.Key), ed25519.PublicKeySize)
		}
		cfg = append(cfg, TrustedKey{Name: k.Name, Key: slices.Clone(k.Key), Source: "config"})
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.config = cfg
	t.reindexLocked()
	return nil
}

// Reload rereads the directory, replacing the keys that came from it.
func (t *TrustStore) Reload() error {
	if t.dir == "" {
		return nil
	}
	entries, err := os.ReadDir(t.dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("trust store: %w", err)
	}
	var files []TrustedKey
	var errs []error
	if err == nil {
		// A directory another user can write trusts nobody: any of its
		// keys may be theirs.
		if err := checkNotWritableByOthers(t.dir); err != nil {
			entries = nil
			errs = append(errs, fmt.Errorf("trust store: every key in it ignored: %w", err))
		}
	}
	for _, e := range entries { // ReadDir sorts by name
		name, ok := strings.CutSuffix(e.Name(), ".pub")
		if !ok || name == "" || strings.HasPrefix(e.Name(), ".") || e.IsDir() {
			continue
		}
		path := filepath.Join(t.dir, e.Name())
		if isPEMFile(path) {
			continue // a DragonFly peer's RSA key (remote/<ip>.pub), for TCP links
		}
		if err := checkNotWritableByOthers(path); err != nil {
			errs = append(errs, fmt.Errorf("trust store: key ignored: %w", err))
			continue
		}
		pub, err := ReadPublicKeyFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("trust store: %w", err))
			continue
		}
		files = append(files, TrustedKey{Name: name, Key: pub, Source: path})
	}
	t.mu.Lock()
	t.files = files
	t.reindexLocked()
	t.mu.Unlock()
	return errors.Join(errs...)
}

func (t *TrustStore) reindexLocked() {
	m := make(map[string]*TrustedKey, len(t.config)+len(t.files))
	for _, list := range [][]TrustedKey{t.config, t.files} {
		for i := range list {
			if _, dup := m[string(list[i].Key)]; !dup {
				m[string(list[i].Key)] = &list[i]
			}
		}
	}
	t.byKey = m
}

// Lookup reports whether pub is trusted and under which name.
func (t *TrustStore) Lookup(pub ed25519.PublicKey) (name string, ok bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	e, ok := t.byKey[string(pub)]
	if !ok {
		return "", false
	}
	return e.Name, true
}

// Keys returns every trusted key: configured keys first, then the
// directory's in name order. A key listed twice appears twice.
func (t *TrustStore) Keys() []TrustedKey {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make([]TrustedKey, 0, len(t.config)+len(t.files))
	out = append(out, t.config...)
	out = append(out, t.files...)
	return out
}
