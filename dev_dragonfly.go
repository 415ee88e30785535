//go:build dragonfly

package main

import "errors"

// Run: on DragonFly the PFSs are real mounts, which dev cannot make up;
// make them with pfs-create and run a leaf on each.
func (c *DevCmd) Run(env *Env) error {
	return errors.New("dev: not on DragonFly: its PFSs are mounts (hammer2 pfs-create, then hammer2-leaf on each)")
}
