package main

// The link engine: one dmsg link over any byte stream (a Unix socket to the
// kernel or the backbone, TCP to DragonFly's C service), or over the two
// streams of a QUIC link.
//
// Each link owns one reader and one writer goroutine per stream. Handlers
// run on a reader goroutine, one message at a time, as libdmsg dispatches.
// Sends never wait on a reader, so a handler may always answer: Send queues
// without blocking (a hard cap on queued bytes kills a link whose peer stops
// reading), and SendWait is the back-pressured form for producers on other
// goroutines.
//
// Lanes. Control messages (PINGs, span updates, results) go ahead of bulk
// (large aux). On one byte stream (the kernel, Unix and TCP links, byte for
// byte as DragonFly's libdmsg) the writer sends its control queue first,
// and while control traffic waits it holds bulk to a window of bytes in
// flight that the REPLYs to its PINGs acknowledge (bulkwindow.go), so that
// a control message finds about a window ahead of it in the sockets and
// the peer's read-ahead, not megabytes. Order on one stream is kept by
// holding to the bulk lane whatever must not overtake what is queued
// there: a transaction's later messages, a child's CREATE behind its
// parent's bulk, an ancestor's DELETE behind a descendant's bulk
// (docs/PROTOCOL.md §1). A conn that offers a second stream (dualConn:
// a QUIC link) gets the bulk lane on that stream, with a writer and a reader
// of its own, so that control messages never queue behind bulk bytes. The
// order the peer sees is then kept thus (docs/PROTOCOL.md §3):
//
//   - Each bulk-stream message is prefixed with the number of control
//     messages queued before it; the peer's bulk reader holds it until its
//     control reader has dispatched that many, and our bulk writer writes
//     it only once the control writer has written them (were it to go
//     first, its unread bytes could use up the connection's flow-control
//     window that those control messages need, and both readers would wait
//     for ever).
//   - Once a transaction has sent on the bulk stream, all its later
//     messages go there too, and so do those of children it opens after
//     its CREATE went there; the DELETE of an ancestor of a transaction on
//     the bulk stream goes there as well, so that a circuit never closes
//     ahead of what runs on it. One-way messages other than PINGs stay on
//     the bulk stream once one has used it.
//   - Both readers dispatch under one lock, so handlers still run one at
//     a time.
//
// A pacer (pacer.go) slows the bulk stream while control traffic waits.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// LinkConfig tunes one link. Zero values take the defaults noted.
type LinkConfig struct {
	// Name identifies the peer in logs and status, e.g. "kernel" or an address.
	Name string
	// PingInterval is how long the link may stay idle before we send a
	// PING. Negative disables PINGs (the kernel link). Default 1 s.
	PingInterval time.Duration
	// DeadAfter declares the peer dead after this much silence. Negative
	// disables the check (the kernel never PINGs). Default 10 s.
	DeadAfter time.Duration
	// SendQueueBytes bounds what SendWait lets queue up. Default 4 MiB.
	SendQueueBytes int
	// HardQueueBytes kills the link if Send queues more than this, which
	// only a peer that stopped reading can cause. Default 64 MiB.
	HardQueueBytes int
	// BulkBatch is how much bulk data the writer takes between two looks
	// at the control queue while no control traffic waits (while it does,
	// a one-stream link's bulk window decides, bulkwindow.go). Default
	// 256 KiB, which a local socket drains in tens of µs and which keeps
	// syscalls few; QUIC links set 64 KiB, since there a write returns
	// only as the data is packetized.
	BulkBatch int
	// NoSeqCheck skips the salt sequence check. The kernel assigns its
	// sequence when queueing and can leave gaps, so its link sets this.
	NoSeqCheck bool
	// Handler receives one-way messages and transactions the peer opens,
	// and messages of transactions without a handler of their own.
	Handler Handler
	// OnClose runs once, on the (control) reader goroutine, after the
	// link is down and every transaction has been failed.
	OnClose func(err error)
	Logger  *slog.Logger

	// Peer is who the peer is (peer.go); every log line of the link
	// names it.
	Peer PeerIdentity
	// MaxPeerTrans bounds the transactions the peer may hold open on the
	// link (it opens them; each costs us a state). Over it the link is
	// closed. Default defaultLimits().TransPerLink; negative: no bound.
	MaxPeerTrans int
	// HelloTimeout closes a link whose peer has not said who it is (the
	// owner calls Hello: an LNK_CONN, or a shell's first line) this long
	// after the start. Zero: no deadline. Until the hello, such a link
	// sends no keepalive PINGs: whether the peer answers any is known
	// only from it (SetQuietPeer).
	HelloTimeout time.Duration
	// LimitHits, if set, counts the link's closing over a limit, for
	// the owner's health and metrics (health.go).
	LimitHits *limitHits
	// OnRTT, if set, is given each PING round trip (metrics.go), on the
	// reader goroutine: it must be cheap.
	OnRTT func(time.Duration)
}

func (c *LinkConfig) setDefaults() {
	if c.PingInterval == 0 {
		c.PingInterval = time.Second
	}
	if c.DeadAfter == 0 {
		c.DeadAfter = 10 * time.Second
	}
	if c.SendQueueBytes <= 0 {
		c.SendQueueBytes = 4 << 20
	}
	if c.HardQueueBytes <= 0 {
		c.HardQueueBytes = 64 << 20
	}
	if c.BulkBatch <= 0 {
		c.BulkBatch = 256 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.MaxPeerTrans == 0 {
		c.MaxPeerTrans = defaultLimits().TransPerLink
	}
	if c.Peer == (PeerIdentity{}) {
		c.Peer = unknownPeer("not given")
	}
}

// Errors a link reports.
var (
	ErrLinkClosed = errors.New("dmsg link closed")
	ErrPeerSilent = errors.New("peer silent")
	ErrQueueFull  = errors.New("send queue over its hard limit: the peer stopped reading")
)

// Link is one dmsg connection.
type Link struct {
	cfg  LinkConfig
	conn io.ReadWriteCloser
	log  *slog.Logger

	mu       sync.Mutex
	tt       *transTable
	queue    []*outMsg // control: written first
	bulkq    []*outMsg // large aux, and whatever must follow it in order
	queued   int       // bytes in both queues
	writing  int       // writers holding a batch not yet written
	space    sync.Cond // signalled as the writers drain the queues
	wake     chan struct{}
	dying    chan struct{} // closed by fail
	err      error
	failOnce sync.Once
	pings    []pingReq // PINGs sent and not yet answered, oldest first

	// A two-stream link's bulk lane (nil bulk on one stream).
	bulk     io.Reader // the bulk stream's read side; writes go to bulkW
	bulkW    io.Writer
	wakeBulk chan struct{}
	pacer    *pacer
	// A one-stream link's bulk window (bulkwindow.go), under mu: the
	// writer records what it writes, pong the answers, enqueue the
	// control traffic that engages it.
	win     bulkWindow
	ctlEnq  uint64 // control messages queued so far
	ctlSent uint64 // control messages written so far

	// Dispatch: both readers run handlers under dmu, one at a time.
	dmu        sync.Mutex
	ctlRead    uint64    // control messages dispatched so far
	ctlStopped bool      // the control reader is done
	bulkWaits  bool      // the bulk reader waits for ctlRead
	readCond   sync.Cond // on dmu: ctlRead moved or ctlStopped

	done chan struct{} // closed when every goroutine of the link is gone

	lastRx  atomic.Int64  // unix nanos of the last message read
	lastTx  atomic.Int64  // unix nanos of the last write
	rtt     atomic.Int64  // nanos, last PING round trip
	started int64         // unix nanos of Start
	hello   atomic.Bool   // the peer said who it is (Hello)
	quiet   atomic.Bool   // SetQuietPeer: no keepalive, no sequence check
	heard   chan struct{} // closed when the first valid message is read
	heardOn sync.Once

	BytesIn, BytesOut atomic.Uint64
	MsgsIn, MsgsOut   atomic.Uint64
}

// outMsg is a message queued for the writer. Its header is encoded at send
// time so callers may reuse their buffers; salt and hdr_crc are filled in by
// the writer, which alone knows the sequence. Large aux is sent in place.
type outMsg struct {
	buf  []byte // header, then small aux and its padding
	hs   int    // header size within buf
	aux  []byte // large aux, sent by reference
	size int    // bytes on the wire
	t    *Trans // for the bulk lane's ordering
	bulk bool
	ping bool // one of our PINGs: its REPLY acknowledges the stream up to it
	// after is, on a two-stream link, the number of control messages
	// queued before this bulk one: the peer dispatches it after them.
	after uint64
}

// dualConn is a conn whose transport can carry the bulk lane on a second
// stream (a QUIC link). Closing the conn must end both streams.
type dualConn interface {
	io.ReadWriteCloser
	BulkStream() io.ReadWriter
}

// pingReq is a PING awaiting its REPLY. A peer answers PINGs in order, on
// the stream they came on (the control stream), so replies match the
// oldest outstanding PING.
type pingReq struct {
	sent int64                // unix nanos
	done chan<- time.Duration // for a caller waiting on this PING, or nil
}

// maxPings bounds the PINGs remembered: past it the oldest is forgotten,
// so that a peer that does not answer costs nothing, while our PINGs still
// go out to feed its silence check.
const maxPings = 8

// bulkPrefix is the size of a bulk-stream message's prefix: its after
// count, big-endian.
const bulkPrefix = 8

// auxCopyMax is the largest aux copied into the queue; larger aux is written
// from the caller's buffer, which must not change until the link is done
// with it (SendWait returns only once it is queued, not written).
const auxCopyMax = 4096

var outPool = sync.Pool{New: func() any { return &outMsg{buf: make([]byte, 0, 1024)} }}

// NewLink prepares a link over conn; nothing is read or written until
// Start, so the caller can publish the link (store it where its handlers
// look) first. Once started it runs until the peer goes away, an error, or
// Close/Shutdown; Done tells when. A link never started owns nothing:
// closing conn is then the caller's.
func NewLink(conn io.ReadWriteCloser, cfg LinkConfig) *Link {
	cfg.setDefaults()
	l := &Link{
		cfg:   cfg,
		conn:  conn,
		log:   cfg.Peer.logger(cfg.Logger.With("peer", cfg.Name)),
		wake:  make(chan struct{}, 1),
		dying: make(chan struct{}),
		done:  make(chan struct{}),
		heard: make(chan struct{}),
	}
	l.space.L = &l.mu
	l.readCond.L = &l.dmu
	l.tt = newTransTable(l, cfg.MaxPeerTrans)
	if dc, ok := conn.(dualConn); ok {
		if bs := dc.BulkStream(); bs != nil {
			l.bulk, l.bulkW = bs, bs
			l.wakeBulk = make(chan struct{}, 1)
			l.pacer = newPacer(nil)
		}
	}
	return l
}

// Start starts the link's goroutines: a reader and a writer per stream,
// and one that closes the stream when the link goes down.
// They are the link's own; Done is closed when all are gone. Messages sent
// before Start are queued and go out first.
func (l *Link) Start() {
	now := time.Now().UnixNano()
	l.started = now
	l.lastRx.Store(now)
	l.lastTx.Store(now)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); l.writer() }()
	go func() { defer wg.Done(); l.reader() }()
	// Closing the stream is what stops a reader blocked in Read. It is
	// done here, not under the lock fail holds, since closing a QUIC
	// link waits for its CONNECTION_CLOSE to go out.
	go func() { defer wg.Done(); <-l.dying; l.conn.Close() }()
	if l.bulk != nil {
		wg.Add(1)
		go func() { defer wg.Done(); l.bulkWriter() }()
	}
	go func() { wg.Wait(); close(l.done) }()
}

// Hello records that the peer said who it is, which ends HelloTimeout.
func (l *Link) Hello() { l.hello.Store(true) }

// SetQuietPeer says, once the link is running, that its peer is one that
// answers no PINGs and sends none: DragonFly's kernel, which a service
// learns from its LNK_CONN. From then on the link sends no PINGs and
// never declares the peer dead for silence (only the stream ending does),
// and the salt sequence check is off, as on the leaf's own kernel link
// (NoSeqCheck). It is safe from any goroutine, a handler included.
func (l *Link) SetQuietPeer() { l.quiet.Store(true) }

// Peer is who the peer is.
func (l *Link) Peer() PeerIdentity { return l.cfg.Peer }

// Heard is closed once the first valid message has arrived: the link is
// up then, not when the connection opened.
func (l *Link) Heard() <-chan struct{} { return l.heard }

// Name is the peer's name as configured.
func (l *Link) Name() string { return l.cfg.Name }

// Root is the pseudo-transaction for one-way messages and top-level opens.
func (l *Link) Root() *Trans { return l.tt.rootTrans() }

// Done is closed once the link is down and its transactions are failed.
func (l *Link) Done() <-chan struct{} { return l.done }

// Err tells why the link went down (nil while it is up).
func (l *Link) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// RTT is the last PING round trip, 0 before the first answer.
func (l *Link) RTT() time.Duration { return time.Duration(l.rtt.Load()) }

// Open starts a transaction under t (the root for a top-level one) by
// sending m with CREATE. h receives the peer's answers; nil leaves them to
// the link's handler.
func (t *Trans) Open(m *Msg, h Handler) (*Trans, error) {
	l := t.link
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil, fmt.Errorf("open %s on %s: %w", CmdString(m.Cmd), l.cfg.Name, ErrLinkClosed)
	}
	if t.msgid != 0 && (t.removed || t.txDone()) {
		return nil, fmt.Errorf("open %s under %v: parent is closing", CmdString(m.Cmd), t)
	}
	n := l.tt.open(t, m.Cmd)
	n.handler = h
	// A child's CREATE names its parent: it must not overtake the
	// parent's CREATE on the bulk stream.
	n.bulkLane = t.bulkCreate
	if err := l.enqueueLocked(n, m); err != nil {
		return nil, err
	}
	return n, nil
}

// RxDone and TxDone report whether the peer's DELETE was received and
// whether ours was sent.
func (t *Trans) RxDone() bool {
	t.link.mu.Lock()
	defer t.link.mu.Unlock()
	return t.rxDone()
}

func (t *Trans) TxDone() bool {
	t.link.mu.Lock()
	defer t.link.mu.Unlock()
	return t.txDone()
}

// SetHandler routes t's later messages to h.
func (t *Trans) SetHandler(h Handler) {
	t.link.mu.Lock()
	t.handler = h
	t.link.mu.Unlock()
}

// Send sends m on t (one-way if t is the root). CREATE, REPLY and the REV
// flags are set as the state requires; m.Cmd may add DELETE or ABORT. It
// never blocks: handlers use it to answer.
func (t *Trans) Send(m *Msg) error {
	l := t.link
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.enqueueLocked(t, m)
}

// SendWait is Send with back-pressure: it waits while the queue holds more
// than the configured bound. Never call it from a handler.
func (t *Trans) SendWait(ctx context.Context, m *Msg) error {
	l := t.link
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.queued > l.cfg.SendQueueBytes && ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() {
			l.mu.Lock()
			l.space.Broadcast()
			l.mu.Unlock()
		})
		defer stop()
	}
	for l.queued > l.cfg.SendQueueBytes && l.err == nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		l.space.Wait()
	}
	return l.enqueueLocked(t, m)
}

// Reply sends a result (LNK_ERROR carrying code) and keeps t open; on the
// root it answers a one-way message with a one-way LNK_ERROR|REPLY.
func (t *Trans) Reply(code uint32) error {
	cmd := CmdLnkError
	if t.IsRoot() {
		cmd |= FlagReply
	}
	return t.Send(&Msg{Header: Header{Cmd: cmd, Error: code}})
}

// Close ends our side of t with LNK_ERROR|DELETE carrying code. Closing an
// already closed side does nothing.
func (t *Trans) Close(code uint32) error {
	l := t.link
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.txDone() {
		return nil
	}
	return l.enqueueLocked(t, &Msg{Header: Header{Cmd: CmdLnkError | FlagDelete, Error: code}})
}

func (l *Link) enqueueLocked(t *Trans, m *Msg) error {
	if l.err != nil {
		return fmt.Errorf("send %s to %s: %w", CmdString(m.Cmd), l.cfg.Name, ErrLinkClosed)
	}
	if err := m.checkSend(); err != nil {
		return fmt.Errorf("send to %s: %w", l.cfg.Name, err)
	}
	if err := l.tt.prepSend(t, m); err != nil {
		return err
	}
	o := outPool.Get().(*outMsg)
	o.buf = m.AppendHeader(o.buf[:0], 0)
	o.hs = len(o.buf)
	o.aux = nil
	if len(m.Aux) <= auxCopyMax {
		o.buf = append(o.buf, m.Aux...)
		o.buf = append(o.buf, zeroPad[:align64(len(m.Aux))-len(m.Aux)]...)
	} else {
		o.aux = m.Aux
	}
	o.size = o.hs + align64(len(m.Aux))
	// Large aux goes to the bulk lane, and so does anything a transaction
	// sends after its own bulk message, so that nothing overtakes within a
	// transaction. PINGs always stay in front: they measure the link.
	ping := t.IsRoot() && m.Cmd&maskBaseCmd == CmdLnkPing
	o.t = t
	if l.bulk == nil {
		// One stream: in order once written, so a transaction is held
		// to the bulk lane only while its bulk is queued, and so are a
		// child's CREATE while its parent's is (Open), and an
		// ancestor's DELETE while a descendant's bulk is.
		o.bulk = !ping && (o.aux != nil || t.pendingBulk > 0 ||
			m.Cmd&FlagCreate != 0 && t.parent != nil && t.parent.pendingBulk > 0 ||
			m.Cmd&FlagDelete != 0 && t.pendingBelow > 0)
	} else {
		o.bulk = !ping && (o.aux != nil || t.bulkLane || m.Cmd&FlagDelete != 0 && t.bulkBelow)
	}
	wake := l.wake
	o.ping = ping && m.Cmd&FlagReply == 0
	if o.bulk {
		t.pendingBulk++
		if l.bulk == nil {
			for p := t.parent; p != nil; p = p.parent {
				p.pendingBelow++
			}
		}
		if l.bulk != nil {
			l.markBulkLocked(t, m)
			o.after = l.ctlEnq
			wake = l.wakeBulk
		}
		l.bulkq = append(l.bulkq, o)
	} else {
		l.queue = append(l.queue, o)
		switch {
		case l.bulk != nil:
			l.ctlEnq++
			if !ping {
				l.pacer.Demand()
			}
		case !ping:
			// Control traffic: hold bulk to the window from now on
			// (it costs nothing on a link that carries no bulk). Not
			// only while bulk is queued: a writer that drained the
			// queue just before would otherwise miss the busy spell.
			l.win.Demand(time.Now())
		}
	}
	l.queued += o.size
	if l.queued > l.cfg.HardQueueBytes {
		l.failLocked(ErrQueueFull)
		return fmt.Errorf("send to %s: %w", l.cfg.Name, ErrQueueFull)
	}
	select {
	case wake <- struct{}{}:
	default:
	}
	return nil
}

// markBulkLocked records that t sent m on the bulk stream: t stays there,
// and its ancestors' DELETEs follow it there.
func (l *Link) markBulkLocked(t *Trans, m *Msg) {
	t.bulkLane = true
	if m.Cmd&FlagCreate != 0 {
		t.bulkCreate = true
	}
	for p := t.parent; p != nil && !p.bulkBelow; p = p.parent {
		p.bulkBelow = true
	}
}

// fail takes the link down once: the first error is the reason.
func (l *Link) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failLocked(err)
}

func (l *Link) failLocked(err error) {
	l.failOnce.Do(func() {
		l.err = err
		close(l.dying) // the closer goroutine (Start) closes the stream
		l.space.Broadcast()
	})
}

// Abort drops the link at once for err, which the link logs (a
// *LimitError or *WireError names the peer's fault). It does not wait,
// so a handler may call it.
func (l *Link) Abort(err error) { l.fail(err) }

// Close drops the link at once, sending nothing more.
func (l *Link) Close() error {
	l.fail(ErrLinkClosed)
	<-l.done
	return nil
}

// Shutdown closes the link cleanly: every transaction still open in our
// direction gets DELETE (children first), the queue is flushed, then the
// stream is closed. If ctx ends first the link is dropped as by Close.
func (l *Link) Shutdown(ctx context.Context) error {
	l.mu.Lock()
	if l.err == nil {
		for _, m := range l.tt.lostLinkOrder() {
			if !m.txDone() {
				_ = l.enqueueLocked(m, &Msg{Header: Header{Cmd: CmdLnkError | FlagDelete}})
			}
		}
	}
	l.mu.Unlock()
	flushed := make(chan struct{})
	go func() {
		l.mu.Lock()
		for (len(l.queue) > 0 || len(l.bulkq) > 0 || l.writing > 0) && l.err == nil {
			l.space.Wait()
		}
		l.mu.Unlock()
		close(flushed)
	}()
	select {
	case <-flushed:
	case <-ctx.Done():
	}
	l.fail(ErrLinkClosed)
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writer writes the control lane, and on one stream the bulk lane too,
// and runs the keepalive.
func (l *Link) writer() {
	w := newLaneWriter(l.conn, false)
	var batch []*outMsg
	var tick *time.Ticker
	var tickC <-chan time.Time
	if p, d, h := l.cfg.PingInterval, l.cfg.DeadAfter, l.cfg.HelloTimeout; p > 0 || d > 0 || h > 0 {
		// Tick fast enough to PING within 1.5 intervals and to notice
		// silence (or a missing hello) within a quarter of its bound.
		iv := time.Duration(1<<63 - 1)
		if p > 0 {
			iv = p / 2
		}
		if d > 0 {
			iv = min(iv, d/4)
		}
		if h > 0 {
			iv = min(iv, h/4)
		}
		tick = time.NewTicker(max(iv, time.Millisecond))
		defer tick.Stop()
		tickC = tick.C
	}
	// stall wakes the writer when a full bulk window gives up waiting
	// for its answer (bulkwindow.go).
	stall := time.NewTimer(time.Hour)
	stall.Stop()
	defer stall.Stop()
	for {
		select {
		case <-l.dying:
			l.dropQueue()
			return
		case now := <-tickC:
			l.keepalive(now)
			continue
		case <-l.wake:
		case <-stall.C:
		}
		l.mu.Lock()
		batch, l.queue = l.queue, batch[:0]
		if l.bulk == nil {
			var wait time.Duration
			batch, wait = l.takeOneStreamLocked(batch)
			if wait > 0 {
				stall.Reset(wait)
			}
		}
		if len(batch) > 0 {
			l.writing++
		}
		l.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		err := w.write(l, batch, nil)
		l.mu.Lock()
		if l.bulk != nil {
			l.ctlSent += uint64(len(batch))
		}
		l.doneLocked(batch, l.wake)
		l.mu.Unlock()
		if err != nil {
			l.fail(fmt.Errorf("write: %w", err))
		}
	}
}

// bulkWriter writes a two-stream link's bulk lane, paced.
func (l *Link) bulkWriter() {
	w := newLaneWriter(l.bulkW, true)
	var batch []*outMsg
	for {
		select {
		case <-l.dying:
			return
		case <-l.wakeBulk:
		}
		l.mu.Lock()
		batch = l.takeBulkLocked(batch[:0], l.cfg.BulkBatch)
		if len(batch) == 0 {
			l.mu.Unlock()
			continue
		}
		l.writing++
		// What the batch follows on the control stream goes out first
		// (see the top of this file).
		for after := batch[len(batch)-1].after; l.ctlSent < after && l.err == nil; {
			l.space.Wait()
		}
		if l.err != nil {
			l.doneLocked(batch, l.wakeBulk)
			l.mu.Unlock()
			return
		}
		l.mu.Unlock()
		err := w.write(l, batch, l.pacer)
		l.mu.Lock()
		l.doneLocked(batch, l.wakeBulk)
		l.mu.Unlock()
		if err != nil {
			l.fail(fmt.Errorf("write bulk: %w", err))
		}
	}
}

// takeOneStreamLocked adds to a one-stream link's batch, which holds the
// control queue already, the bulk that may follow it: a turn of BulkBatch,
// or while control traffic waits what the bulk window allows, and then a
// probe PING if the window wants one. It records the batch as written in
// the window (the write follows at once; a failed write ends the link).
// wait, if not zero, is when to look again at a full window that has had
// no answer.
func (l *Link) takeOneStreamLocked(batch []*outMsg) (_ []*outMsg, wait time.Duration) {
	now := time.Now()
	budget := l.win.Budget(now)
	if budget < 0 {
		budget = l.cfg.BulkBatch
	}
	ctl := len(batch)
	batch = l.takeBulkLocked(batch, budget)
	var bulkBytes int
	for _, o := range batch[ctl:] {
		bulkBytes += o.size
	}
	if l.win.ProbeDue(now, bulkBytes, len(l.bulkq) > 0) {
		// The probe goes last: its answer covers the whole batch.
		if l.pingLocked(nil, false) {
			batch = append(batch, l.queue...)
			clear(l.queue)
			l.queue = l.queue[:0]
		}
	}
	for _, o := range batch {
		l.win.Wrote(o.size, o.ping, o.bulk)
	}
	if len(l.bulkq) > 0 {
		wait = l.win.StallIn(now)
	}
	return batch, wait
}

// takeBulkLocked moves up to budget bytes from the bulk queue to batch (at
// least one message if budget is positive: a message is never split).
func (l *Link) takeBulkLocked(batch []*outMsg, budget int) []*outMsg {
	for n := 0; len(l.bulkq) > 0 && n < budget; {
		o := l.bulkq[0]
		l.bulkq[0] = nil
		l.bulkq = l.bulkq[1:]
		batch = append(batch, o)
		n += o.size
	}
	return batch
}

// doneLocked releases a written batch and wakes its writer again if its
// queue is not empty.
func (l *Link) doneLocked(batch []*outMsg, wake chan struct{}) {
	total := 0
	for i, o := range batch {
		if o.bulk {
			o.t.pendingBulk--
			if l.bulk == nil {
				for p := o.t.parent; p != nil; p = p.parent {
					p.pendingBelow--
				}
			}
		}
		total += o.size
		o.aux, o.t = nil, nil
		outPool.Put(o)
		batch[i] = nil
	}
	l.queued -= total
	l.writing--
	l.space.Broadcast()
	var more bool
	switch {
	case l.bulk == nil:
		more = len(l.queue) > 0 || len(l.bulkq) > 0
	case wake == l.wakeBulk:
		more = len(l.bulkq) > 0
	default:
		more = len(l.queue) > 0
	}
	if more {
		select {
		case wake <- struct{}{}:
		default:
		}
	}
}

// buffersWriter is a stream that writes a whole batch of buffers itself,
// better than net.Buffers.WriteTo's fallback of one Write per buffer:
// dmsgCryptoConn encrypts the batch into one syscall.
type buffersWriter interface {
	WriteBuffers(net.Buffers) (int64, error)
}

// laneWriter writes batches of messages to one stream, with the stream's
// own salt sequence.
type laneWriter struct {
	w      io.Writer
	prefix bool // bulk stream: each message is prefixed with its after count
	rng    *rand.Rand
	seq    uint32
	bufs   net.Buffers
	pre    []byte
}

func newLaneWriter(w io.Writer, prefix bool) *laneWriter {
	return &laneWriter{w: w, prefix: prefix, rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
}

func (lw *laneWriter) write(l *Link, batch []*outMsg, p *pacer) error {
	lw.bufs = lw.bufs[:0]
	lw.pre = lw.pre[:0]
	total := 0
	for _, o := range batch {
		// The salt's low byte is the per-direction sequence; libdmsg puts
		// random bits above it.
		salt := lw.rng.Uint32()&^0xFF | lw.seq&0xFF
		lw.seq++
		putSaltAndCRC(o.buf[:o.hs], salt)
		if lw.prefix {
			// The prefix and the header go in one write.
			lw.pre = binary.BigEndian.AppendUint64(lw.pre, o.after)
			lw.pre = append(lw.pre, o.buf...)
		}
	}
	off := 0
	for _, o := range batch {
		if lw.prefix {
			n := bulkPrefix + len(o.buf)
			lw.bufs = append(lw.bufs, lw.pre[off:off+n])
			off += n
		} else {
			lw.bufs = append(lw.bufs, o.buf)
		}
		if o.aux != nil {
			lw.bufs = append(lw.bufs, o.aux)
			if pad := align64(len(o.aux)) - len(o.aux); pad > 0 {
				lw.bufs = append(lw.bufs, zeroPad[:pad])
			}
		}
		total += o.size
	}
	var err error
	if p == nil {
		// WriteTo consumes the slice it is given; writing from a copy
		// of the header keeps bufs' backing array for the next batch.
		wb := lw.bufs
		if bw, ok := lw.w.(buffersWriter); ok {
			_, err = bw.WriteBuffers(wb)
		} else {
			_, err = wb.WriteTo(lw.w)
		}
	} else {
		err = l.pacedWrite(lw.w, lw.bufs, p)
	}
	l.BytesOut.Add(uint64(total))
	l.MsgsOut.Add(uint64(len(batch)))
	l.lastTx.Store(time.Now().UnixNano())
	return err
}

// pacedWrite writes bufs as the pacer allows, PINGing to give it round
// trips while it holds the bulk back.
func (l *Link) pacedWrite(w io.Writer, bufs net.Buffers, p *pacer) error {
	var timer *time.Timer
	for _, b := range bufs {
		for len(b) > 0 {
			if p.ProbeDue() {
				l.probe()
			}
			k, wait := p.Take(len(b))
			if k == 0 {
				if timer == nil {
					timer = time.NewTimer(wait)
					defer timer.Stop()
				} else {
					timer.Reset(wait)
				}
				select {
				case <-timer.C:
				case <-l.dying:
					return l.Err()
				}
				continue
			}
			if _, err := w.Write(b[:k]); err != nil {
				return err
			}
			b = b[k:]
		}
	}
	return nil
}

// dropQueue drops what is queued; a batch the bulk writer still holds is
// its own to release.
func (l *Link) dropQueue() {
	l.mu.Lock()
	for _, q := range [][]*outMsg{l.queue, l.bulkq} {
		for _, o := range q {
			l.queued -= o.size
		}
	}
	l.queue, l.bulkq = nil, nil
	l.space.Broadcast()
	l.mu.Unlock()
}

// keepalive declares the peer dead after DeadAfter of hearing nothing, and
// sends a PING when either direction has been quiet for PingInterval. A
// DragonFly peer never PINGs by itself but answers ours, so our PINGs are
// what keep its side of the silence check fed.
func (l *Link) keepalive(now time.Time) {
	n := now.UnixNano()
	if h := l.cfg.HelloTimeout; h > 0 && !l.hello.Load() && n-l.started > int64(h) {
		l.fail(&LimitError{Limit: "hello_timeout", Value: uint64(time.Duration(n - l.started).Milliseconds()),
			Max: uint64(h.Milliseconds()), Unit: "ms", Reason: "no LNK_CONN (or shell line) since the link started"})
		return
	}
	if l.quiet.Load() {
		return
	}
	if d := l.cfg.DeadAfter; d > 0 && n-l.lastRx.Load() > int64(d) {
		l.fail(fmt.Errorf("%w for %v", ErrPeerSilent, d))
		return
	}
	if l.cfg.HelloTimeout > 0 && !l.hello.Load() {
		// Whether the peer answers PINGs at all is known only from its
		// hello (DragonFly's kernel answers none): a service slow to
		// read a kernel's LNK_CONN sent it one.
		return
	}
	p := int64(l.cfg.PingInterval)
	if p <= 0 || n-l.lastTx.Load() < p && n-l.lastRx.Load() < p {
		return
	}
	l.mu.Lock()
	recent := len(l.pings) > 0 && n-l.pings[len(l.pings)-1].sent < p
	l.mu.Unlock()
	if !recent {
		l.ping(nil, false)
	}
}

// ping sends a PING, whose round trip sets RTT and, on a two-stream link,
// feeds the pacer; done, if not nil, receives it too. demand says whether
// the PING stands for control traffic waiting (and so engages the pacer),
// as a keepalive or the pacer's own probe does not. It returns false if the
// link is down.
func (l *Link) ping(done chan<- time.Duration, demand bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pingLocked(done, demand)
}

func (l *Link) pingLocked(done chan<- time.Duration, demand bool) bool {
	if len(l.pings) >= maxPings {
		l.pings = append(l.pings[:0], l.pings[1:]...)
	}
	l.pings = append(l.pings, pingReq{sent: time.Now().UnixNano(), done: done})
	if err := l.enqueueLocked(l.Root(), &Msg{Header: Header{Cmd: CmdLnkPing}}); err != nil {
		l.pings = l.pings[:len(l.pings)-1]
		return false
	}
	if demand {
		if l.pacer != nil {
			l.pacer.Demand()
		} else {
			l.win.Demand(time.Now())
		}
	}
	return true
}

// Ping sends a PING and waits for its answer: the link's round trip.
func (l *Link) Ping(ctx context.Context) (time.Duration, error) {
	done := make(chan time.Duration, 1)
	if !l.ping(done, false) {
		return 0, fmt.Errorf("ping %s: %w", l.cfg.Name, ErrLinkClosed)
	}
	select {
	case rtt := <-done:
		return rtt, nil
	case <-l.done:
		return 0, fmt.Errorf("ping %s: %w", l.cfg.Name, ErrLinkClosed)
	case <-ctx.Done():
		return 0, fmt.Errorf("ping %s: no answer: %w", l.cfg.Name, ctx.Err())
	}
}

// probe PINGs for the pacer unless a PING is already out: one at a time,
// so that a long path does not pile up probes.
func (l *Link) probe() {
	l.mu.Lock()
	idle := len(l.pings) == 0
	l.mu.Unlock()
	if idle {
		l.ping(nil, false)
	}
}

// pong matches a PING's REPLY to the oldest PING outstanding.
func (l *Link) pong() {
	now := time.Now().UnixNano()
	l.mu.Lock()
	if l.bulk == nil {
		l.win.Answer()
		if len(l.bulkq) > 0 {
			// The window may have opened.
			select {
			case l.wake <- struct{}{}:
			default:
			}
		}
	}
	if len(l.pings) == 0 {
		l.mu.Unlock()
		return
	}
	pr := l.pings[0]
	l.pings = append(l.pings[:0], l.pings[1:]...)
	l.mu.Unlock()
	rtt := time.Duration(now - pr.sent)
	l.rtt.Store(int64(rtt))
	if l.cfg.OnRTT != nil {
		l.cfg.OnRTT(rtt)
	}
	if l.pacer != nil {
		l.pacer.Sample(rtt)
	}
	if pr.done != nil {
		select {
		case pr.done <- rtt:
		default:
		}
	}
}

func putSaltAndCRC(hdr []byte, salt uint32) {
	hdr[offSalt] = byte(salt)
	hdr[offSalt+1] = byte(salt >> 8)
	hdr[offSalt+2] = byte(salt >> 16)
	hdr[offSalt+3] = byte(salt >> 24)
	c := hdrCRC(hdr)
	hdr[offHdrCRC] = byte(c)
	hdr[offHdrCRC+1] = byte(c >> 8)
	hdr[offHdrCRC+2] = byte(c >> 16)
	hdr[offHdrCRC+3] = byte(c >> 24)
}

// reader reads and dispatches until the stream fails, then fails every
// open transaction with LOSTLINK, children first, and runs OnClose.
func (l *Link) reader() {
	var bulkDone chan struct{}
	if l.bulk != nil {
		bulkDone = make(chan struct{})
		go func() {
			defer close(bulkDone)
			l.fail(l.readLoop(l.bulk, true))
		}()
	}
	err := l.readLoop(l.conn, false)
	l.fail(err)
	l.dmu.Lock()
	l.ctlStopped = true
	l.readCond.Broadcast()
	l.dmu.Unlock()
	if bulkDone != nil {
		<-bulkDone
	}
	l.logDown(l.Err())
	l.mu.Lock()
	lost := l.tt.lostLink()
	l.mu.Unlock()
	l.dmu.Lock()
	for i := range lost {
		l.dispatch(&lost[i])
	}
	l.dmu.Unlock()
	if l.cfg.OnClose != nil {
		l.cfg.OnClose(l.Err())
	}
}

func (l *Link) logDown(err error) {
	var we *WireError
	var le *LimitError
	var ie *ioqError
	switch {
	case errors.As(err, &ie):
		// DragonFly's link errors (a bad GCM tag, an exhausted counter):
		// named as libdmsg names them.
		l.log.Warn("dmsg link closed: "+ie.name, "error", ie.name, "err", err)
	case errors.As(err, &we):
		l.log.Warn("dmsg link closed: bad message from peer", "field", we.Field, "value", fmt.Sprintf("%#x", we.Value), "reason", we.Reason)
	case errors.As(err, &le):
		l.cfg.LimitHits.hit(le.Limit, time.Now())
		args := []any{"limit", le.Limit, "value", le.Value, "max", le.Max, "reason", le.Reason}
		if le.Unit != "" {
			args = append(args, "unit", le.Unit)
		}
		l.log.Warn("dmsg link closed: over a limit", args...)
	case errors.Is(err, ErrLinkClosed):
		l.log.Debug("dmsg link closed")
	case errors.Is(err, io.EOF):
		l.log.Info("dmsg link closed by peer")
	case errors.Is(err, ErrQueueFull):
		l.cfg.LimitHits.hit("queue_bytes", time.Now())
		l.log.Warn("dmsg link lost", "err", err)
	default:
		l.log.Warn("dmsg link lost", "err", err)
	}
}

// readBufSize is the stream buffer. Reading ahead this far takes several
// 64 KiB messages per read syscall; on a 2-core VM that beat reading aux
// straight into place (more, smaller syscalls) by ~10 points of raw
// throughput, and 1 MiB was worse again (cache). It costs 256 KiB per link.
const readBufSize = 256 << 10

// readLoop reads one stream; on the bulk stream each message comes after
// its prefix.
func (l *Link) readLoop(r io.Reader, bulk bool) error {
	br := bufio.NewReaderSize(r, readBufSize)
	var hdr [HdrMax]byte
	var pre [bulkPrefix]byte
	var aux []byte
	var seq uint32
	var m Msg
	for {
		var after uint64
		if bulk {
			if _, err := io.ReadFull(br, pre[:]); err != nil {
				return l.readErr(err, "bulk prefix")
			}
			after = binary.BigEndian.Uint64(pre[:])
		}
		if _, err := io.ReadFull(br, hdr[:HdrSize]); err != nil {
			return l.readErr(err, "header")
		}
		hs, ap, err := PeekSizes(hdr[:HdrSize])
		if err != nil {
			return err
		}
		if _, err := io.ReadFull(br, hdr[HdrSize:hs]); err != nil {
			return l.readErr(err, "extended header")
		}
		if err := DecodeHeader(hdr[:hs], &m); err != nil {
			return err
		}
		if cap(aux) < ap {
			aux = make([]byte, ap)
		}
		if err := readAux(br, r, aux[:ap]); err != nil {
			return l.readErr(err, "aux data")
		}
		if err := DecodeAux(aux[:ap], &m); err != nil {
			return err
		}
		if !l.cfg.NoSeqCheck && !l.quiet.Load() && m.Salt&0xFF != seq&0xFF {
			return wireErr("salt", uint64(m.Salt), "sequence byte %#x, want %#x", m.Salt&0xFF, seq&0xFF)
		}
		seq++
		l.heardOn.Do(func() { close(l.heard) })
		l.lastRx.Store(time.Now().UnixNano())
		l.BytesIn.Add(uint64(hs + ap))
		l.MsgsIn.Add(1)
		if err := l.dispatchRead(&m, bulk, after); err != nil {
			return err
		}
		select {
		case <-l.dying:
			return l.Err()
		default:
		}
	}
}

// readAux fills p: what the buffer already holds is copied, and a large
// remainder is read straight from the stream into p, saving a copy of
// bulk data through the buffer.
func readAux(br *bufio.Reader, r io.Reader, p []byte) error {
	n := min(br.Buffered(), len(p))
	if len(p)-n < readBufSize/4 {
		_, err := io.ReadFull(br, p)
		return err
	}
	if _, err := io.ReadFull(br, p[:n]); err != nil {
		return err
	}
	_, err := io.ReadFull(r, p[n:])
	return err
}

func (l *Link) readErr(err error, what string) error {
	select {
	case <-l.dying:
		return l.Err()
	default:
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return wireErr("length", 0, "stream ended inside a message's %s", what)
	}
	if errors.Is(err, io.EOF) {
		return io.EOF
	}
	return fmt.Errorf("read %s: %w", what, err)
}

// dispatchRead runs a message read from a stream, one at a time across
// both readers. A bulk-stream message first waits until the control reader
// has dispatched the control messages it follows.
func (l *Link) dispatchRead(m *Msg, bulk bool, after uint64) error {
	l.dmu.Lock()
	defer l.dmu.Unlock()
	if bulk {
		for l.ctlRead < after && !l.ctlStopped {
			l.bulkWaits = true
			l.readCond.Wait()
		}
		if l.ctlRead < after {
			return ErrLinkClosed
		}
	}
	err := l.receive(m)
	if !bulk {
		l.ctlRead++
		if l.bulkWaits {
			l.bulkWaits = false
			l.readCond.Broadcast()
		}
	}
	return err
}

// receive runs one message through the state machine and its handler.
func (l *Link) receive(m *Msg) error {
	l.mu.Lock()
	r, err := l.tt.recv(&m.Header)
	l.mu.Unlock()
	if err != nil || r.discard {
		return err
	}
	if r.t.IsRoot() {
		l.oneWay(m)
		return nil
	}
	if r.isNew && r.t.orphan {
		// Its circuit is unknown (already closed, say); refuse it so that
		// the peer's state does not hang.
		_ = r.t.Close(ErrCantCirc)
		return nil
	}
	l.deliver(r.t, m, r.isNew)
	return nil
}

// dispatch delivers a simulated message; it cannot fail the link.
func (l *Link) dispatch(m *Msg) {
	l.mu.Lock()
	r, err := l.tt.recv(&m.Header)
	l.mu.Unlock()
	if err == nil && !r.discard && !r.t.IsRoot() {
		l.deliver(r.t, m, r.isNew)
	}
}

func (l *Link) deliver(t *Trans, m *Msg, isNew bool) {
	l.mu.Lock()
	h := t.handler
	l.mu.Unlock()
	if h == nil {
		h = l.cfg.Handler
	}
	if h != nil {
		h(t, m)
	}
	l.mu.Lock()
	unanswered := isNew && t.handler == nil && t.tx == 0
	// Once the peer has closed a transaction we opened there is nothing
	// left to say; one it opened stays open while a handler owns it, which
	// may answer later (a commit waits for the quorum).
	autoClose := t.rxDone() && !t.txDone() && (t.mine || t.handler == nil)
	l.mu.Unlock()
	switch {
	case unanswered:
		// Nobody took the transaction: refuse it as DragonFly does.
		_ = t.Close(ErrNoSupp)
	case autoClose:
		_ = t.Close(ErrOK)
	}
}

// oneWay handles a message outside any transaction.
func (l *Link) oneWay(m *Msg) {
	switch m.Cmd & (maskBaseCmd | FlagReply) {
	case CmdLnkPad:
		return
	case CmdLnkPing:
		_ = l.Root().Send(&Msg{Header: Header{Cmd: CmdLnkPing | FlagReply}})
		return
	case CmdLnkPing | FlagReply:
		l.pong()
		return
	}
	if l.cfg.Handler != nil {
		l.cfg.Handler(l.Root(), m)
	}
}

// OpenCount is the number of transactions open on the link.
func (l *Link) OpenCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.tt.count()
}
