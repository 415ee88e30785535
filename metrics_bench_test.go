package main

import (
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkMetricsHooks: what the metrics' hooks cost where they run,
// against a bare atomic add (the baseline, measured in the same run): a
// span update, a PING round trip into the RTT histogram, and a proposal's
// counting and commit timing. docs/BENCHMARKS.md has the figures.
func BenchmarkMetricsHooks(b *testing.B) {
	o := newObserver()
	b.Run("baseline-atomic-add", func(b *testing.B) {
		var n atomic.Uint64
		for b.Loop() {
			n.Add(1)
		}
	})
	b.Run("span-update", func(b *testing.B) {
		for b.Loop() {
			o.spanUpdated()
		}
	})
	b.Run("ping-rtt", func(b *testing.B) {
		obs := o.rttObserver("authenticated-node")
		for b.Loop() {
			obs(250 * time.Microsecond)
		}
	})
	b.Run("proposal", func(b *testing.B) {
		done := func(quorumResult, error) {}
		for b.Loop() {
			o.proposal(done)(quorumResult{}, nil)
		}
	})
}

// BenchmarkMetricsScrape: one scrape of a service's registry, all of it
// (the Go runtime's and process's metrics included), into the text format.
func BenchmarkMetricsScrape(b *testing.B) {
	s := NewService(ServiceConfig{}, nil, discardLogger())
	for b.Loop() {
		if _, err := s.obs.text(); err != nil {
			b.Fatal(err)
		}
	}
}
