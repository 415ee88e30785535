package main

// Benchmarks of the dmsg codec and the link engine (docs/BENCHMARKS.md).
//
// The link benchmarks time the same traffic on a bare socketpair inside the
// same benchmark function and report the ratio, because absolute figures on
// a shared machine move from run to run while the ratio mostly does not.
//
//	go test -run XXX -bench . -benchmem -count 3 .

import (
	"context"
	"io"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchSpanMsg is a full LNK_SPAN (448 bytes on the wire) as the kernel
// would announce a PFS.
func benchSpanMsg() (*Msg, *LnkSpan) {
	s := &LnkSpan{
		PeerID:       NewUUID(),
		PfsID:        NewUUID(),
		PfsType:      PFSMaster,
		PeerType:     PeerHammer2,
		ProtoVersion: SpanProto1,
		Dist:         3,
		RNSS:         1,
	}
	s.SetLabels("leaf-a.example.net", "ROOT")
	m := &Msg{Header: Header{Cmd: CmdLnkSpan | FlagCreate, MsgID: 42}, Ext: s.Marshal()}
	return m, s
}

func benchAux64K() []byte {
	aux := make([]byte, 64<<10)
	for i := range aux {
		aux[i] = byte(i * 7)
	}
	return aux
}

// BenchmarkEncodeSpan marshals a LNK_SPAN payload and encodes the whole
// message, header CRC included, into reused buffers. A span has no aux.
func BenchmarkEncodeSpan(b *testing.B) {
	m, s := benchSpanMsg()
	ext := make([]byte, lnkSpanAlignedExt)
	buf := make([]byte, 0, 1024)
	m.Ext = ext
	b.SetBytes(int64(m.WireHdrSize()))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.MarshalTo(ext)
		buf = m.AppendWire(buf[:0], uint32(i))
	}
	if len(buf) != 448 {
		b.Fatalf("LNK_SPAN is %d bytes on the wire, want 448", len(buf))
	}
}

// BenchmarkDecodeSpan decodes a LNK_SPAN through Decode, which runs both
// CRC checks (the header CRC over all 448 bytes; the aux check, which with
// no aux has nothing to hash), then its payload. The target is under 300 ns
// with no allocation.
func BenchmarkDecodeSpan(b *testing.B) {
	m, _ := benchSpanMsg()
	wire := m.AppendWire(nil, 0x12345600)
	if len(wire) != 448 {
		b.Fatalf("LNK_SPAN is %d bytes on the wire, want 448", len(wire))
	}
	var got Msg
	var s LnkSpan
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n, err := Decode(wire, &got)
		if err != nil || n != len(wire) {
			b.Fatalf("Decode: %d, %v", n, err)
		}
		if err := s.Unmarshal(got.Ext); err != nil {
			b.Fatal(err)
		}
	}
	if s.Dist != 3 || s.PfsLabelString() != "ROOT" {
		b.Fatalf("decoded %+v", s)
	}
}

// BenchmarkEncodeAux64K encodes a one-way message carrying 64 KiB of aux.
func BenchmarkEncodeAux64K(b *testing.B) {
	m := &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: benchAux64K()}
	buf := make([]byte, 0, HdrSize+len(m.Aux))
	b.SetBytes(int64(HdrSize + len(m.Aux)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		buf = m.AppendWire(buf[:0], uint32(i))
	}
}

// BenchmarkDecodeAux64K decodes it, verifying both CRCs.
func BenchmarkDecodeAux64K(b *testing.B) {
	m := &Msg{Header: Header{Cmd: CmdDbgShell}, Aux: benchAux64K()}
	wire := m.AppendWire(nil, 0)
	var got Msg
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Decode(wire, &got); err != nil {
			b.Fatal(err)
		}
	}
	if len(got.Aux) != len(m.Aux) {
		b.Fatalf("aux of %d bytes", len(got.Aux))
	}
}

// benchCPU is the CPU time (user and system, all threads) the test process
// has used so far. CPU per operation barely moves with the machine's load,
// so it explains a ratio that wall-clock figures blur.
func benchCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchRounds is how many slices the link and raw runs are cut into. They
// alternate, so that load from elsewhere on the machine falls on both
// alike and the ratio stays meaningful.
const benchRounds = 32

// benchCost is the wall-clock and CPU time of one side of a comparison.
type benchCost struct{ wall, cpu time.Duration }

// benchInterleave runs b.N operations through link and the same number
// through raw, in alternating slices, with the benchmark timer running
// only for link. Each function runs k operations and returns once they are
// complete.
func benchInterleave(b *testing.B, link, raw func(k int)) (l, r benchCost) {
	b.ReportAllocs()
	b.ResetTimer()
	for i := range benchRounds {
		k := b.N*(i+1)/benchRounds - b.N*i/benchRounds
		if k == 0 {
			continue
		}
		b.StartTimer()
		c0, t0 := benchCPU(b), time.Now()
		link(k)
		l.wall += time.Since(t0)
		l.cpu += benchCPU(b) - c0
		b.StopTimer()
		c0, t0 = benchCPU(b), time.Now()
		raw(k)
		r.wall += time.Since(t0)
		r.cpu += benchCPU(b) - c0
	}
	return l, r
}

// benchReport adds the comparison metrics: rate and raw rate in unit (per
// second, scaled by scale), their ratio, and CPU per operation of each.
func benchReport(b *testing.B, l, r benchCost, scale float64, unit string) {
	lr := float64(b.N) * scale / l.wall.Seconds()
	rr := float64(b.N) * scale / r.wall.Seconds()
	b.ReportMetric(lr, unit)
	b.ReportMetric(rr, "raw-"+unit)
	b.ReportMetric(lr/rr, "ratio-vs-raw")
	b.ReportMetric(float64(l.cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(r.cpu.Nanoseconds())/float64(b.N), "raw-cpu-ns/op")
}

// benchCounter counts bytes on a receiving goroutine and signals once the
// count reaches the target set for the current slice.
type benchCounter struct {
	got, target atomic.Int64
	reached     chan struct{}
}

func newBenchCounter() *benchCounter { return &benchCounter{reached: make(chan struct{}, 1)} }

func (c *benchCounter) add(n int) {
	if c.got.Add(int64(n)) == c.target.Load() {
		c.reached <- struct{}{}
	}
}

// BenchmarkThroughput64K sends one-way 64 KiB DBG_SHELL messages from one
// link to another over a socketpair, the sender back-pressured by SendWait,
// and reports the rate against raw writes and reads of the same bytes on
// another socketpair.
func BenchmarkThroughput64K(b *testing.B) {
	const auxSize = 64 << 10
	const msgBytes = HdrSize + auxSize

	lc := newBenchCounter()
	ca, cb := socketPair(b)
	rx := startLink(cb, quietConfig("rx", func(t *Trans, m *Msg) {
		lc.add(m.WireHdrSize() + len(m.Aux))
	}))
	tx := startLink(ca, quietConfig("tx", nil))
	defer rx.Close()
	defer tx.Close()
	// The link sends large aux by reference and the content does not
	// matter, so every message shares one read-only buffer.
	aux := benchAux64K()
	ctx := context.Background()
	root := tx.Root()
	// The header is encoded when the message is queued, so one Msg serves
	// every send and what the benchmark allocates is the link's own.
	var m Msg
	link := func(k int) {
		lc.target.Add(int64(k) * msgBytes)
		for range k {
			m = Msg{Header: Header{Cmd: CmdDbgShell}, Aux: aux}
			if err := root.SendWait(ctx, &m); err != nil {
				b.Fatal(err)
			}
		}
		select {
		case <-lc.reached:
		case <-rx.Done():
			b.Fatalf("receiving link down: %v", rx.Err())
		}
	}

	// Raw: the same bytes, one write per message, read with the link's
	// own read size (readBufSize) at a time.
	rc := newBenchCounter()
	ra, rb := socketPair(b)
	go func() {
		buf := make([]byte, readBufSize)
		for {
			n, err := rb.Read(buf)
			if err != nil {
				return
			}
			rc.add(n)
		}
	}()
	chunk := make([]byte, msgBytes)
	copy(chunk[HdrSize:], aux)
	raw := func(k int) {
		rc.target.Add(int64(k) * msgBytes)
		for range k {
			if _, err := ra.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		<-rc.reached
	}

	l, r := benchInterleave(b, link, raw)
	benchReport(b, l, r, msgBytes/1e6, "MB/s")
}

// BenchmarkRoundTrip opens a one-message transaction (CREATE|DELETE) that
// the peer's handler closes at once (REPLY|CREATE|DELETE), waiting for the
// answer each time, and reports the rate against a raw 64-byte ping-pong
// on another socketpair.
func BenchmarkRoundTrip(b *testing.B) {
	ca, cb := socketPair(b)
	srv := startLink(cb, quietConfig("srv", func(t *Trans, m *Msg) {
		if m.Cmd&FlagCreate != 0 && !t.IsRoot() {
			_ = t.Close(ErrOK)
		}
	}))
	cli := startLink(ca, quietConfig("cli", nil))
	defer srv.Close()
	defer cli.Close()
	answered := make(chan struct{}, 1)
	h := func(t *Trans, m *Msg) {
		if m.Cmd&FlagDelete != 0 {
			answered <- struct{}{}
		}
	}
	root := cli.Root()
	link := func(k int) {
		for range k {
			if _, err := root.Open(&Msg{Header: Header{Cmd: CmdDbgShell | FlagDelete}}, h); err != nil {
				b.Fatal(err)
			}
			select {
			case <-answered:
			case <-cli.Done():
				b.Fatalf("link down: %v", cli.Err())
			}
		}
	}

	ra, rb := socketPair(b)
	go func() {
		var buf [HdrSize]byte
		for {
			if _, err := io.ReadFull(rb, buf[:]); err != nil {
				return
			}
			if _, err := rb.Write(buf[:]); err != nil {
				return
			}
		}
	}()
	var buf [HdrSize]byte
	raw := func(k int) {
		for range k {
			if _, err := ra.Write(buf[:]); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(ra, buf[:]); err != nil {
				b.Fatal(err)
			}
		}
	}

	l, r := benchInterleave(b, link, raw)
	if n := cli.OpenCount() + srv.OpenCount(); n != 0 {
		b.Fatalf("%d transactions left open", n)
	}
	benchReport(b, l, r, 1, "rt/s")
}
