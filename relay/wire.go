package relay

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// wire is a session's client transport: a WebSocket (wsWire) or a SockJS
// session (sockjsWire). next is called by the session's reader only; write,
// pending and finish by the Outbox's writer role holder only; close by
// either, more than once.
type wire interface {
	// next returns the next client message. With a non-zero deadline a
	// silent client gives an error for which isTimeout holds; a client
	// that closed gives errPeerClosed.
	next(deadline time.Time) (io.Reader, error)
	// write writes pongs and the batch and flushes by deadline; after a
	// timeout what was not written stays for the next write.
	write(batch []outFrame, pongs [][]byte, deadline time.Time) error
	// pending reports bytes left by a write that timed out.
	pending() bool
	// finish writes the final frame (if any) and a close with code; it
	// reports whether the final frame was written.
	finish(final []byte, code int, deadline time.Time) bool
	close()
}

// errPeerClosed is a normal close by the client.
var errPeerClosed = errors.New("client closed the connection")

// wsWire is a gorilla WebSocket with a bufConn under it.
type wsWire struct {
	ws *websocket.Conn
	bc *bufConn
}

func (w wsWire) next(deadline time.Time) (io.Reader, error) {
	_ = w.ws.SetReadDeadline(deadline)
	_, r, err := w.ws.NextReader()
	if err != nil && (websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)) {
		return nil, errPeerClosed
	}
	return r, err
}

// write appends each frame of the batch to bufConn as one WebSocket
// message (one unfragmented, unmasked server frame: gorilla's own writer
// would take a lock, a channel hand-off, a socket deadline and a copy per
// message, for bytes that only go to bufConn anyway; no compression is
// negotiated) and flushes them in one write. Pongs go through gorilla.
func (w wsWire) write(batch []outFrame, pongs [][]byte, deadline time.Time) error {
	for _, p := range pongs {
		if err := w.ws.WriteControl(websocket.PongMessage, p, deadline); err != nil {
			return err
		}
	}
	for i := range batch {
		w.bc.appendMessage(batch[i].Binary, batch[i].Data)
	}
	return w.bc.flush(deadline)
}

func (w wsWire) pending() bool { return w.bc.pending() }

func (w wsWire) finish(final []byte, code int, deadline time.Time) bool {
	if len(final) > 0 {
		w.bc.appendMessage(!utf8.Valid(final), final)
	}
	_ = w.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), deadline)
	return w.bc.flush(deadline) == nil && len(final) > 0
}

func (w wsWire) close() { w.bc.Close() }

// bufConn puts a buffer between gorilla/websocket and the socket, so the
// writer role holder writes a whole batch and makes one syscall. Only the
// holder writes (gorilla's own control replies are disabled by the
// session's ping and close handlers), so buf needs no lock.
//
// Unlike a bufio.Writer, a flush that times out keeps what it could not
// write, and the next flush goes on from there: a producer flushing in
// place gives up after inPlaceBudget and leaves the rest to the outbox's
// goroutine, without breaking gorilla's framing.
//
// Reads go through too: beforeRead runs in the reading goroutine whenever
// gorilla's read buffer is empty and it is about to read the socket (and
// possibly block). The session flushes its broker side there, so all the
// frames that arrived together leave in one write.
//
// Between batches buf goes back to a pool: an idle session holds no write
// buffer.
type bufConn struct {
	net.Conn
	buf        []byte
	beforeRead func()
}

// writeBuffers are bufConn's buffers between batches.
var writeBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

func (c *bufConn) grab() {
	if c.buf == nil {
		c.buf = (*writeBuffers.Get().(*[]byte))[:0]
	}
}

func (c *bufConn) Write(p []byte) (int, error) {
	c.grab()
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// SetWriteDeadline is a no-op: gorilla calls it before every message it
// writes, but writes only reach buf; flush sets the socket's deadline,
// once per batch.
func (c *bufConn) SetWriteDeadline(time.Time) error { return nil }

// appendMessage appends data as one final, unmasked WebSocket frame
// (RFC 6455 §5.2): opcode text, or binary when data is not UTF-8.
func (c *bufConn) appendMessage(binary bool, data []byte) {
	c.grab()
	op := byte(0x81) // FIN | text
	if binary {
		op = 0x82 // FIN | binary
	}
	n := len(data)
	switch {
	case n < 126:
		c.buf = append(c.buf, op, byte(n))
	case n <= 0xFFFF:
		c.buf = append(c.buf, op, 126, byte(n>>8), byte(n))
	default:
		c.buf = append(c.buf, op, 127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	c.buf = append(c.buf, data...)
}

// pending reports whether bytes wait for a flush.
func (c *bufConn) pending() bool { return len(c.buf) > 0 }

// flush writes the buffer to the socket by deadline. On error the unwritten
// rest stays buffered.
func (c *bufConn) flush(deadline time.Time) error {
	if len(c.buf) == 0 {
		return nil
	}
	_ = c.Conn.SetWriteDeadline(deadline)
	n, err := c.Conn.Write(c.buf)
	if err != nil {
		c.buf = c.buf[:copy(c.buf, c.buf[n:])]
		return err
	}
	if cap(c.buf) <= maxPooledWriteBuffer {
		b := c.buf[:0]
		writeBuffers.Put(&b)
	} // else a burst grew it: let the GC have it
	c.buf = nil
	return nil
}

// maxPooledWriteBuffer is the largest write buffer kept in the pool.
const maxPooledWriteBuffer = 64 << 10

func (c *bufConn) Read(p []byte) (int, error) {
	if c.beforeRead != nil {
		c.beforeRead()
	}
	return c.Conn.Read(p)
}
