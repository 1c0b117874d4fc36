package relay

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-stomp/stomp/v3/frame"
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

type outFrame struct {
	data     []byte
	binary   bool
	command  string
	received time.Time // when the broker side read it (zero for edge-made frames)
}

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
func (o *Outbox) Enqueue(data []byte, command string, received time.Time) error {
	o.mu.Lock()
	if o.closing {
		o.mu.Unlock()
		return errClosing
	}
	if o.queued+len(data) > o.limit {
		queued := o.queued
		o.mu.Unlock()
		o.overflow(queued)
		return errClosing
	}
	o.queue = append(o.queue, outFrame{data: data, binary: !utf8.Valid(data), command: command, received: received})
	o.queued += len(data)
	o.mu.Unlock()
	o.metrics.OutboundBytes.Add(float64(len(data)))
	return nil
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
	batch, queued := o.take()
	o.mu.Unlock()
	batch, err := o.writeBatch(batch, queued, nil, time.Now().Add(inPlaceBudget))
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
		o.metrics.OutboundBytes.Sub(float64(o.queued))
		o.queue, o.queued = o.queue[:0], 0
	}
	o.mu.Unlock()
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

// take hands the queue to the writer role holder. The caller holds mu.
func (o *Outbox) take() ([]outFrame, int) {
	batch, queued := o.queue, o.queued
	o.queue, o.queued = o.spare[:0], 0
	o.spare = nil
	return batch, queued
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
	if err != nil && o.writeErr == nil {
		o.writeErr = err
	}
	more := len(o.queue) > 0 || o.closing || len(o.pongs) > 0 || o.writeErr != nil || o.w.pending()
	o.mu.Unlock()
	if more {
		o.signal()
	}
}

// Run is the outbox's goroutine: it writes what Flush left, pongs and
// heart-beats, and closes the socket. It returns once the socket is closed.
func (o *Outbox) Run() {
	defer close(o.done)
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
		batch, queued := o.take()
		pongs := o.pongs
		o.pongs = nil
		closing, final, code := o.closing, o.final, o.closeCode
		o.mu.Unlock()

		if heartbeat && len(batch) == 0 {
			batch = append(batch, outFrame{data: []byte{'\n'}})
		}
		batch, err := o.writeBatch(batch, queued, pongs, time.Now().Add(o.timeLimit))
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
func (o *Outbox) writeBatch(batch []outFrame, queued int, pongs [][]byte, deadline time.Time) ([]outFrame, error) {
	err := o.w.write(batch, pongs, deadline)
	o.metrics.OutboundBytes.Sub(float64(queued))
	if err == nil && len(batch) > 0 {
		now := time.Now()
		o.lastWrite.Store(now.UnixNano())
		for i := range batch {
			if batch[i].command != "" {
				o.metrics.frameOut(batch[i].command)
			}
			if !batch[i].received.IsZero() {
				o.metrics.RelayLatency.Observe(now.Sub(batch[i].received).Seconds())
			}
		}
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
