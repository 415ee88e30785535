//go:build !dragonfly

package main

// standInRoles are the roles (testrole_test.go) of the tests that run
// leaves on the stand-in PFS or in Linux network namespaces: the fault
// campaign's forwarder, echo and probe (faults_net_test.go) and the rc.d
// script's init (contrib_test.go).
func standInRoles() map[string]func() error {
	return map[string]func() error{
		"fault-forwarder": roleFaultForwarder,
		"fault-echo":      roleFaultEcho,
		"fault-probe":     roleFaultProbe,
		"rc-init":         roleRCInit,
	}
}
