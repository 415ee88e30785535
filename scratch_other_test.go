//go:build !linux

package main

// scratchOnTmpfs: the tests use TMPDIR as it is (scratch_linux_test.go).
func scratchOnTmpfs() (restore func()) { return func() {} }
