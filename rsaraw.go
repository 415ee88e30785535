package main

// Raw (unpadded) RSA, as DragonFly's handshake uses it with OpenSSL's
// RSA_NO_PADDING: out = in^d mod n or in^e mod n on key-sized big-endian
// blocks. crypto/rsa offers no unpadded operation, and math/big is not
// constant time, which matters here because the private key is applied to
// blocks a peer chooses. filippo.io/bigmod is the constant-time modular
// arithmetic crypto/rsa itself is built on, exported.

import (
	"crypto/rsa"
	"errors"

	"filippo.io/bigmod"
)

var errRSARange = errors.New("RSA block not below the modulus")

// rawRSAPublic applies a public key. Immutable; safe for concurrent use.
type rawRSAPublic struct {
	n *bigmod.Modulus
	e uint
}

func newRawRSAPublic(pub *rsa.PublicKey) (*rawRSAPublic, error) {
	if pub == nil || pub.N == nil || pub.E < 3 || pub.N.Bit(0) == 0 {
		return nil, errors.New("malformed RSA public key")
	}
	n, err := bigmod.NewModulus(pub.N.Bytes())
	if err != nil {
		return nil, err
	}
	return &rawRSAPublic{n: n, e: uint(pub.E)}, nil
}

// size is the block size, OpenSSL's RSA_size.
func (k *rawRSAPublic) size() int { return k.n.Size() }

// apply returns in^e mod n, left-padded to size bytes. in must be size
// bytes and below n.
func (k *rawRSAPublic) apply(in []byte) ([]byte, error) {
	if len(in) != k.size() {
		return nil, errRSARange
	}
	x, err := bigmod.NewNat().SetBytes(in, k.n)
	if err != nil {
		return nil, errRSARange
	}
	return bigmod.NewNat().ExpShortVarTime(x, k.e, k.n).Bytes(k.n), nil
}

// rawRSAPrivate applies a private key with the Chinese remainder theorem
// and checks the result with the public exponent, as crypto/rsa does
// against faults. Immutable; safe for concurrent use.
type rawRSAPrivate struct {
	pub    rawRSAPublic
	p, q   *bigmod.Modulus
	dp, dq []byte
	qinv   *bigmod.Nat // mod p
}

func newRawRSAPrivate(priv *rsa.PrivateKey) (*rawRSAPrivate, error) {
	if len(priv.Primes) != 2 {
		return nil, errors.New("RSA key without exactly two primes")
	}
	pub, err := newRawRSAPublic(&priv.PublicKey)
	if err != nil {
		return nil, err
	}
	pre := priv.Precomputed
	if pre.Dp == nil || pre.Dq == nil || pre.Qinv == nil {
		// Keys parsed by crypto/x509 or made by GenerateKey come
		// precomputed; compute on a copy rather than touch the caller's.
		c := *priv
		c.Precompute()
		pre = c.Precomputed
		if pre.Dp == nil {
			return nil, errors.New("RSA key cannot be precomputed")
		}
	}
	p, err := bigmod.NewModulus(priv.Primes[0].Bytes())
	if err != nil {
		return nil, err
	}
	q, err := bigmod.NewModulus(priv.Primes[1].Bytes())
	if err != nil {
		return nil, err
	}
	qinv, err := bigmod.NewNat().SetBytes(pre.Qinv.Bytes(), p)
	if err != nil {
		return nil, err
	}
	return &rawRSAPrivate{pub: *pub, p: p, q: q, dp: pre.Dp.Bytes(), dq: pre.Dq.Bytes(), qinv: qinv}, nil
}

func (k *rawRSAPrivate) size() int { return k.pub.size() }

// apply returns in^d mod n, left-padded to size bytes. in must be size bytes
// and below n.
func (k *rawRSAPrivate) apply(in []byte) ([]byte, error) {
	n := k.pub.n
	if len(in) != n.Size() {
		return nil, errRSARange
	}
	c, err := bigmod.NewNat().SetBytes(in, n)
	if err != nil {
		return nil, errRSARange
	}
	// m1 = c^dp mod p, m2 = c^dq mod q, h = qinv·(m1 − m2) mod p,
	// m = m2 + h·q (below n, so the final reduction mod n is exact).
	t := bigmod.NewNat().Mod(c, k.p)
	m1 := bigmod.NewNat().Exp(t, k.dp, k.p)
	t = bigmod.NewNat().Mod(c, k.q)
	m2 := bigmod.NewNat().Exp(t, k.dq, k.q)
	t = bigmod.NewNat().Mod(m2, k.p)
	h := m1.Sub(t, k.p).Mul(k.qinv, k.p)
	m := h.ExpandFor(n).Mul(bigmod.NewNat().Mod(k.q.Nat(), n), n)
	m.Add(bigmod.NewNat().Mod(m2, n), n)
	// A fault in the CRT arithmetic would leak a factor of n through
	// the output; check m^e == c before letting it out.
	if bigmod.NewNat().ExpShortVarTime(m, k.pub.e, n).Equal(c) != 1 {
		return nil, errors.New("RSA private operation failed its check")
	}
	return m.Bytes(n), nil
}
