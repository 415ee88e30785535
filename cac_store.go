package main

// The leaf's own record of the cache states its kernel holds, in
// <state dir>/cache.db. The quorum group's table says who holds what; this
// file says which of those holders are this leaf's kernel, so that a leaf
// killed with -9 and started again can tell the kernel's revalidation
// requests apart from strangers and confirm them with the group instead
// of making the kernel drop its cache.
//
// Layout:
//
//	held/<holder>   JSON cacHolding, as granted
//	meta/boot       u64, bumped on every open: holder names never repeat

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

const (
	cacheStoreFile = "cache.db"
	cbHeld         = "held"
	cbMeta         = "meta"
	ckBoot         = "boot"
)

type cacheStore struct {
	path string
	db   *bolt.DB
	boot uint64

	changes *notifier // told of every change, for status watchers (the leaf's; nil: none)
}

// openCacheStore opens <dir>/cache.db and takes this run's boot number.
func openCacheStore(dir string) (*cacheStore, error) {
	path := filepath.Join(dir, cacheStoreFile)
	db, err := openStateDB("cache store", path, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	s := &cacheStore{path: path, db: db}
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists([]byte(cbHeld)); err != nil {
			return err
		}
		mb, err := tx.CreateBucketIfNotExists([]byte(cbMeta))
		if err != nil {
			return err
		}
		if v := mb.Get([]byte(ckBoot)); len(v) == 8 {
			s.boot = binary.BigEndian.Uint64(v)
		}
		s.boot++
		return mb.Put([]byte(ckBoot), binary.BigEndian.AppendUint64(nil, s.boot))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("cache store %s: %w", path, err)
	}
	return s, nil
}

func (s *cacheStore) Close() error { return s.db.Close() }

// put records a state granted to this leaf's kernel.
func (s *cacheStore) put(h cacHolding) error {
	v, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("cache store: encode %s: %w", h, err)
	}
	return s.update(func(b *bolt.Bucket) error { return b.Put([]byte(h.Holder), v) })
}

// del forgets a holder's state (released, expired or found stale).
func (s *cacheStore) del(holder string) error {
	// A request that never got a state has no record: a read, not a
	// write transaction's fsync, tells.
	var held bool
	if err := s.db.View(func(tx *bolt.Tx) error {
		held = tx.Bucket([]byte(cbHeld)).Get([]byte(holder)) != nil
		return nil
	}); err != nil {
		return fmt.Errorf("cache store %s: %w", s.path, err)
	}
	if !held {
		return nil
	}
	return s.update(func(b *bolt.Bucket) error { return b.Delete([]byte(holder)) })
}

func (s *cacheStore) update(fn func(*bolt.Bucket) error) error {
	if err := s.db.Update(func(tx *bolt.Tx) error { return fn(tx.Bucket([]byte(cbHeld))) }); err != nil {
		return fmt.Errorf("cache store %s: %w", s.path, err)
	}
	s.changes.Notify()
	return nil
}

// list returns every recorded state, sorted.
func (s *cacheStore) list() ([]cacHolding, error) {
	var out []cacHolding
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte(cbHeld)).ForEach(func(k, v []byte) error {
			var h cacHolding
			if err := json.Unmarshal(v, &h); err != nil {
				return fmt.Errorf("held/%s: %w", k, err)
			}
			out = append(out, h)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("cache store %s: %w", s.path, err)
	}
	slices.SortFunc(out, compareHoldings)
	return out, nil
}

// cacAgent is the leaf's side of its kernel's cache states, master or not:
// it names each request's holder and keeps the record that outlives a
// restart. Safe for concurrent use (kernel handlers and the driver).
type cacAgent struct {
	leaf  UUID
	store *cacheStore
	log   *slog.Logger

	mu        sync.Mutex
	seq       uint32
	recovered []cacHolding // held before the restart, not revalidated yet
}

func newCacAgent(leaf UUID, store *cacheStore, log *slog.Logger) (*cacAgent, error) {
	rec, err := store.list()
	if err != nil {
		return nil, err
	}
	if len(rec) > 0 {
		log.Info("cache states recorded before a restart; the kernel may revalidate them", "states", len(rec))
	}
	return &cacAgent{leaf: leaf, store: store, log: log, recovered: rec}, nil
}

// claim names the holder of a request from this leaf's kernel. A
// revalidation gets the name it had before the restart; false means the
// leaf has no record of that state, so the kernel must drop it.
func (a *cacAgent) claim(req *cacLock) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if req.Flags&cacFlagRevalidate == 0 {
		a.seq++
		req.Holder, req.Boot, req.Seq = a.leaf, uint32(a.store.boot), a.seq
		return true
	}
	for i, h := range a.recovered {
		if h.Domain == req.Domain && h.Mode == req.Mode && h.Lo == req.Lo && h.Hi == req.Hi && h.Txid == req.Txid {
			leaf, boot, seq, err := parseHolderName(h.Holder)
			if err != nil {
				break
			}
			a.recovered = slices.Delete(a.recovered, i, i+1)
			req.Holder, req.Boot, req.Seq = leaf, boot, seq
			return true
		}
	}
	return false
}

// granted records a state the kernel now holds.
func (a *cacAgent) granted(h cacHolding) {
	if err := a.store.put(h); err != nil {
		a.log.Error("recording a cache state failed; a restart will make the kernel drop it", "holder", h.Holder, "err", err)
	}
}

// forget drops the record of a state the kernel no longer holds.
func (a *cacAgent) forget(holder string) {
	if err := a.store.del(holder); err != nil {
		a.log.Warn("forgetting a cache state failed", "holder", holder, "err", err)
	}
}

// Recovered lists the states not revalidated since the restart.
func (a *cacAgent) Recovered() []cacHolding {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.recovered)
}

// dropUnclaimed forgets the records the kernel did not revalidate within
// the grace time: the group expires those states on its own.
func (a *cacAgent) dropUnclaimed() {
	a.mu.Lock()
	rec := a.recovered
	a.recovered = nil
	a.mu.Unlock()
	for _, h := range rec {
		a.forget(h.Holder)
	}
	if len(rec) > 0 {
		a.log.Info("cache states not revalidated by the kernel in time; forgotten", "states", len(rec))
	}
}

// parseHolderName undoes holderName.
func parseHolderName(s string) (UUID, uint32, uint32, error) {
	id, rest, ok := strings.Cut(s, "/")
	if !ok {
		return UUID{}, 0, 0, fmt.Errorf("holder %q: no '/'", s)
	}
	u, err := ParseUUID(id)
	if err != nil {
		return UUID{}, 0, 0, fmt.Errorf("holder %q: %w", s, err)
	}
	var boot, seq uint32
	if _, err := fmt.Sscanf(rest, "%d.%d", &boot, &seq); err != nil {
		return UUID{}, 0, 0, fmt.Errorf("holder %q: %w", s, err)
	}
	return u, boot, seq, nil
}

// openStateDB opens a bbolt file of the PFS's state directory (creating
// the directory), saying plainly when another process holds it.
func openStateDB(what, path string, opt *bolt.Options) (*bolt.DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("%s: create state directory: %w", what, err)
	}
	db, err := bolt.Open(path, 0o600, opt)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%s %s: locked by another process (is a second leaf running on this PFS?): %w", what, path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: open: %w", what, path, err)
	}
	return db, nil
}
