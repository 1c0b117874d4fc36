package relay

import (
	"errors"
	"io"
	"net"
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

func (w wsWire) write(batch []outFrame, pongs [][]byte, deadline time.Time) error {
	_ = w.ws.SetWriteDeadline(deadline)
	for _, p := range pongs {
		if err := w.ws.WriteControl(websocket.PongMessage, p, deadline); err != nil {
			return err
		}
	}
	for i := range batch {
		mt := websocket.TextMessage
		if batch[i].binary {
			mt = websocket.BinaryMessage
		}
		if err := w.ws.WriteMessage(mt, batch[i].data); err != nil {
			return err
		}
	}
	return w.bc.flush(deadline)
}

func (w wsWire) pending() bool { return w.bc.pending() }

func (w wsWire) finish(final []byte, code int, deadline time.Time) bool {
	written := false
	if len(final) > 0 {
		mt := websocket.TextMessage
		if !utf8.Valid(final) {
			mt = websocket.BinaryMessage
		}
		_ = w.ws.SetWriteDeadline(deadline)
		written = w.ws.WriteMessage(mt, final) == nil
	}
	_ = w.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), deadline)
	_ = w.bc.flush(deadline)
	return written
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
type bufConn struct {
	net.Conn
	buf        []byte
	beforeRead func()
}

func (c *bufConn) Write(p []byte) (int, error) {
	c.buf = append(c.buf, p...)
	return len(p), nil
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
	if cap(c.buf) > maxIdleWriteBuffer {
		c.buf = nil // a burst grew it: give the memory back
	} else {
		c.buf = c.buf[:0]
	}
	return nil
}

// maxIdleWriteBuffer is the most write buffer a session keeps between
// batches.
const maxIdleWriteBuffer = 64 << 10

func (c *bufConn) Read(p []byte) (int, error) {
	if c.beforeRead != nil {
		c.beforeRead()
	}
	return c.Conn.Read(p)
}
