package main

// standInRoles: DragonFly builds have no stand-in PFS, nor the tests
// whose roles need it (testrole_standin_test.go).
func standInRoles() map[string]func() error { return nil }
