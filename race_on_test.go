//go:build race

package main

// raceEnabled: the race detector slows single-goroutine simulations ten
// times and finds nothing in them, so they run fewer seeds under -race
// (as wireguard-go does); the full runs are the plain `go test`'s.
const raceEnabled = true
