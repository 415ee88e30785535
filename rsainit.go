package main

// `hammer2 rsainit`: DragonFly's command that makes the RSA key pair its
// encrypted TCP links use, done in Go rather than by running openssl.

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// RsainitCmd is `hammer2 rsainit [<dir>]`.
type RsainitCmd struct {
	Dir  string `arg:"" optional:"" help:"Key directory (default: the config's rsa_key_dir, else key_dir: /etc/hammer2)." placeholder:"DIR"`
	Bits int    `default:"2048" help:"Size of a new key: 2048 or 4096 bits (both ends of a link need the same size)."`
}

func (c *RsainitCmd) Run(env *Env) error {
	dir := c.Dir
	if dir == "" {
		cfg, err := env.loadConfig()
		if err != nil {
			return err
		}
		dir = cfg.TCPKeyDir()
	}
	return rsaInit(dir, c.Bits, env.Stdout)
}

// rsaInit makes dir/rsa.prv (mode 0400) and dir/rsa.pub unless they exist,
// and says what it did in DragonFly's words. It never replaces a key: an
// existing rsa.prv is kept and rsa.pub derived from it if missing; an
// rsa.pub without its rsa.prv is refused (DragonFly deletes it, but a
// peer may hold it, and a new private key would not match). Existing keys
// are read back and checked to match.
func rsaInit(dir string, bits int, out io.Writer) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("rsainit: key directory: %w", err)
	}
	prvPath := filepath.Join(dir, rsaPrivFile)
	pubPath := filepath.Join(dir, rsaPubFile)
	prvExists, err := fileExists(prvPath)
	if err != nil {
		return fmt.Errorf("rsainit: %w", err)
	}
	pubExists, err := fileExists(pubPath)
	if err != nil {
		return fmt.Errorf("rsainit: %w", err)
	}

	if !prvExists {
		if pubExists {
			return fmt.Errorf("rsainit: %s exists without %s; restore the private key, or move %s away to make a new pair",
				pubPath, prvPath, pubPath)
		}
		priv, err := generateRSAKey(bits)
		if err != nil {
			return fmt.Errorf("rsainit: %w", err)
		}
		if err := writeKeyFile(prvPath, marshalRSAPrivateKeyPEM(priv), 0o400, false); err != nil {
			return fmt.Errorf("rsainit: %w", err)
		}
		fmt.Fprintf(out, "hammer2 rsainit: created %s\n", prvPath)
	} else {
		fmt.Fprintf(out, "hammer2 rsainit: Using existing private key in %s\n", prvPath)
	}

	priv, err := readRSAPrivateKeyFile(prvPath)
	if err != nil {
		return fmt.Errorf("rsainit: %w", err)
	}
	if !pubExists {
		pem, err := marshalRSAPublicKeyPEM(&priv.PublicKey)
		if err != nil {
			return fmt.Errorf("rsainit: %w", err)
		}
		if err := writeKeyFile(pubPath, pem, 0o644, false); err != nil {
			return fmt.Errorf("rsainit: %w", err)
		}
		fmt.Fprintf(out, "hammer2 rsainit: created %s\n", pubPath)
	} else {
		fmt.Fprintf(out, "hammer2 rsainit: both keys already exist\n")
	}
	keys, err := loadDmsgCryptoKeys(dir)
	if err != nil {
		return fmt.Errorf("rsainit: %w", err)
	}
	fmt.Fprintf(out, "hammer2 rsainit: %d-bit key %s; a peer trusts this node with %s copied to its remote/<this node's ip>.pub\n",
		keys.Priv.N.BitLen(), keys.Fingerprint(), pubPath)
	return nil
}

func fileExists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, err
}
