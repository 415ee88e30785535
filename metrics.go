package main

// observer is one daemon's counters for health and metrics.
type observer struct {
	limits limitHits
}

func newObserver() *observer { return &observer{} }
