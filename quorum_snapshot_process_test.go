//go:build !dragonfly

package main

import (
	"fmt"
	"os"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// tamper copies the snapshot at src to dst with the log entry at txid
// changed: what a disk's bit rot or a hand edit would leave.
func tamper(t *testing.T, src, dst string, txid uint64) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(dst, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		lb := tx.Bucket([]byte(qbLog))
		v := append([]byte(nil), lb.Get(u64key(txid))...)
		if len(v) == 0 {
			return fmt.Errorf("no log entry at %d", txid)
		}
		v[len(v)-1] ^= 1
		return lb.Put(u64key(txid), v)
	})
	if err != nil {
		t.Fatal(err)
	}
}
