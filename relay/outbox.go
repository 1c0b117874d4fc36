package relay

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/relay/broker"
)

// Outbox alone writes a session's WebSocket: the byte-bounded queue of
// encoded frames, heart-beats, pongs, the final ERROR frame and the close.
//
// Exactly one goroutine at a time holds the writer role (the writing flag,
// taken under mu) and writes the socket outside the lock; gorilla allows
// one writer. The role is taken either by the outbox's own goroutine (Run)
// or, in place, by a producer that calls Flush while nobody writes: that
// saves a goroutine hand-off per batch, which is most of the cost of a
// delivery. Everything queued when the role is taken is written as one
// batch into a buffer under gorilla's connection (bufConn) and flushed
// with one syscall.
//
// Overflow policy: Enqueue never waits. A frame that would take the queue
// over its byte limit is refused and the overflow hook closes the session
// (slow_consumer), so no producer, the broker reader least of all, ever
// blocks on one browser.
type Outbox struct {
	w         wire
	limit     int           // bytes queued at most (EDGE_SEND_BUFFER_BYTES)
	timeLimit time.Duration // write deadline of every batch (EDGE_SEND_TIME_LIMIT)
	metrics   *Metrics
	// overflow is called, outside mu, when Enqueue refuses a frame.
	overflow func(queued int)
	// aborted is called once, by the writer role holder, when the socket
	// failed a write and was closed.
	aborted func(CloseReason)
	// readerDone is closed when the session's reader has returned: the
	// close waits for it so the final frames are read, not reset.
	readerDone <-chan struct{}

	mu        sync.Mutex
	writing   bool // a goroutine holds the writer role
	queue     []outFrame
	spare     []outFrame // the previous batch's backing array, reused
	queued    int        // bytes in queue
	taken     int        // bytes of the batch being written
	reported  int        // queued+taken as last added to Metrics.OutboundBytes
	pongs     [][]byte
	closing   bool
	final     []byte // written after the queue, before the close frame
	closeCode int
	writeErr  error // sticky: gorilla's connection is unusable after one

	// wake tells Run that there is work. Capacity 1: signals coalesce and
	// a send never blocks (select with default).
	wake chan struct{}
	// beat hands Run the negotiated heart-beat interval, once. Capacity 1,
	// so the session's reader never waits.
	beat      chan time.Duration
	lastWrite atomic.Int64 // Unix nanoseconds of the last write to the socket
	done      chan struct{}
}

// outFrame is a queued frame: its bytes (possibly shared with other
// sessions), whether it is binary, its command (metrics) and when the
// broker side read it (zero for edge-made frames).
type outFrame = broker.Frame

func newOutbox(w wire, limit int, timeLimit time.Duration, m *Metrics, readerDone <-chan struct{}) *Outbox {
	o := &Outbox{
		w: w, limit: limit, timeLimit: timeLimit, metrics: m, readerDone: readerDone,
		wake: make(chan struct{}, 1),
		beat: make(chan time.Duration, 1),
		done: make(chan struct{}),
	}
	o.lastWrite.Store(time.Now().UnixNano())
	return o
}

var errClosing = errors.New("session closing")

// Enqueue queues an encoded frame without writing it; Flush (or Run, once
// woken) writes it. It fails with errClosing once the session is closing,
// or when the frame would overflow the queue (after calling overflow).
//
// It is the per-session, per-delivery cost of a fan-out, so it does
// nothing but append: f.Binary was decided once per encoding by the
// producer, and the shared OutboundBytes gauge is brought up to date once
// per batch (take, release), not per frame.
func (o *Outbox) Enqueue(f outFrame) error {
	o.mu.Lock()
	if o.closing {
		o.mu.Unlock()
		return errClosing
	}
	if o.queued+len(f.Data) > o.limit {
		queued := o.queued
		o.mu.Unlock()
		o.overflow(queued)
		return errClosing
	}
	o.queue = append(o.queue, f)
	o.queued += len(f.Data)
	o.mu.Unlock()
	return nil
}

// gaugeDelta is what OutboundBytes must move by to count what this outbox
// holds now; the caller holds mu and adds it after unlocking.
func (o *Outbox) gaugeDelta() int {
	cur := o.queued + o.taken
	d := cur - o.reported
	o.reported = cur
	return d
}

func (o *Outbox) addGauge(d int) {
	if d != 0 {
		o.metrics.OutboundBytes.Add(float64(d))
	}
}

// Flush writes what is queued, in place when nobody holds the writer role,
// else leaves it to the holder. Pongs and the close are left to Run.
func (o *Outbox) Flush() {
	o.mu.Lock()
	if o.writing || o.writeErr != nil || len(o.queue) == 0 {
		o.mu.Unlock()
		return
	}
	if o.closing || len(o.pongs) > 0 {
		o.mu.Unlock()
		o.signal()
		return
	}
	o.writing = true
	batch, d := o.take()
	o.mu.Unlock()
	o.addGauge(d)
	batch, err := o.writeBatch(batch, nil, time.Now().Add(inPlaceBudget))
	if isTimeout(err) {
		// The socket is full: what is left stays in bufConn and the
		// outbox's goroutine goes on with the full time limit.
		err = nil
	}
	o.release(batch, err)
}

// inPlaceBudget is how long a producer flushing in place may wait for the
// socket before it leaves the rest to the outbox's goroutine: the broker
// reader never waits on one browser for longer.
const inPlaceBudget = time.Millisecond

// Pong queues the answer to a client ping (gorilla's reader calls the
// ping handler).
func (o *Outbox) Pong(data []byte) {
	o.mu.Lock()
	o.pongs = append(o.pongs, data)
	o.mu.Unlock()
	o.signal()
}

// SetHeartbeat starts edge→client heart-beats every d. Call once.
func (o *Outbox) SetHeartbeat(d time.Duration) { o.beat <- d }

// Close starts the close, once: Run writes what is queued (unless drop),
// then final (an encoded ERROR frame, or nil), then a close frame with
// code, and closes the socket. It reports whether this call started it.
func (o *Outbox) Close(final []byte, code int, drop bool) bool {
	o.mu.Lock()
	if o.closing {
		o.mu.Unlock()
		return false
	}
	o.closing, o.final, o.closeCode = true, final, code
	if drop {
		o.queue, o.queued = o.queue[:0], 0
	}
	d := o.gaugeDelta()
	o.mu.Unlock()
	o.addGauge(d)
	o.signal()
	return true
}

// Closing reports whether Close was called.
func (o *Outbox) Closing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.closing
}

// Done is closed when Run has returned (the socket is closed).
func (o *Outbox) Done() <-chan struct{} { return o.done }

func (o *Outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// take hands the queue to the writer role holder and returns how much
// OutboundBytes must move (see gaugeDelta). The caller holds mu.
func (o *Outbox) take() ([]outFrame, int) {
	batch := o.queue
	o.taken += o.queued
	o.queue, o.queued = o.spare[:0], 0
	o.spare = nil
	return batch, o.gaugeDelta()
}

// release gives the writer role back after a batch and wakes Run when
// more work arrived meanwhile.
func (o *Outbox) release(batch []outFrame, err error) {
	for i := range batch {
		batch[i] = outFrame{}
	}
	o.mu.Lock()
	o.writing = false
	o.spare = batch[:0]
	o.taken = 0
	if err != nil && o.writeErr == nil {
		o.writeErr = err
	}
	more := len(o.queue) > 0 || o.closing || len(o.pongs) > 0 || o.writeErr != nil || o.w.pending()
	d := o.gaugeDelta()
	o.mu.Unlock()
	o.addGauge(d)
	if more {
		o.signal()
	}
}

// Run is the outbox's goroutine: it writes what Flush left, pongs and
// heart-beats, and closes the socket. It returns once the socket is closed.
func (o *Outbox) Run() {
	defer close(o.done)
	defer func() {
		// The socket is closed: nothing this outbox holds will leave.
		o.mu.Lock()
		o.queue, o.queued, o.taken = nil, 0, 0
		d := o.gaugeDelta()
		o.mu.Unlock()
		o.addGauge(d)
	}()
	var (
		tick  <-chan time.Time
		every time.Duration
	)
	for {
		heartbeat := false
		select {
		case <-o.wake:
		case every = <-o.beat:
			t := time.NewTicker(every / 2)
			defer t.Stop()
			tick = t.C
			continue
		case now := <-tick:
			// Send an EOL when nothing was written for half the interval,
			// so the client never waits longer than it was promised.
			if now.Sub(time.Unix(0, o.lastWrite.Load())) < every/2 {
				continue
			}
			heartbeat = true
		}
		o.mu.Lock()
		if o.writing {
			o.mu.Unlock() // the holder signals when it is done
			continue
		}
		if o.writeErr != nil {
			err := o.writeErr
			o.mu.Unlock()
			o.abort(err)
			return
		}
		o.writing = true
		batch, d := o.take()
		pongs := o.pongs
		o.pongs = nil
		closing, final, code := o.closing, o.final, o.closeCode
		o.mu.Unlock()
		o.addGauge(d)

		if heartbeat && len(batch) == 0 {
			batch = append(batch, outFrame{Data: []byte{'\n'}})
		}
		batch, err := o.writeBatch(batch, pongs, time.Now().Add(o.timeLimit))
		if err == nil && closing {
			o.finish(final, code)
			return
		}
		o.release(batch, err)
		if err != nil {
			o.abort(err)
			return
		}
	}
}

// writeBatch writes pongs and batch and flushes them (with what an
// earlier flush left) by deadline.
//
// Metrics are shared by every session, so they are updated per batch: one
// FramesOut add per run of frames with the same command, one RelayLatency
// observation per distinct read time (the frames one broker read batch
// brought share it, and their latency).
func (o *Outbox) writeBatch(batch []outFrame, pongs [][]byte, deadline time.Time) ([]outFrame, error) {
	err := o.w.write(batch, pongs, deadline)
	if err == nil && len(batch) > 0 {
		now := time.Now()
		o.lastWrite.Store(now.UnixNano())
		var (
			cmd  string
			n    int
			seen time.Time
		)
		for i := range batch {
			f := &batch[i]
			if f.Command != cmd {
				o.metrics.framesOutN(cmd, n)
				cmd, n = f.Command, 0
			}
			n++
			if !f.Received.IsZero() && !f.Received.Equal(seen) {
				seen = f.Received
				o.metrics.RelayLatency.Observe(now.Sub(f.Received).Seconds())
			}
		}
		o.metrics.framesOutN(cmd, n)
	}
	return batch, err
}

// finish writes the final frame and the close, then gives the client a
// moment to answer the close before the connection is closed, so the
// final frames are read rather than lost to a TCP reset.
func (o *Outbox) finish(final []byte, code int) {
	if o.w.finish(final, code, time.Now().Add(o.timeLimit)) && len(final) > 0 {
		o.metrics.frameOut(frame.ERROR)
	}
	select {
	case <-o.readerDone:
	case <-time.After(2 * time.Second):
	}
	o.w.close()
}

// abort closes the connection at once: it cannot be written to.
func (o *Outbox) abort(err error) {
	reason := ReasonWriteFailed
	if isTimeout(err) {
		reason = ReasonSendTimeout
	}
	o.aborted(reason) // marks the session closing before its reader sees the socket go
	o.w.close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded)
}
