//go:build !dragonfly

package main
