package stompws

import (
	"net"
	"sync"
	"time"
)

// bufConn sits under gorilla's Conn and coalesces its writes. gorilla makes
// one Write call (one system call on a plain socket) per WebSocket message,
// whatever its buffer size; bufConn collects those calls once buffering is
// on and hands them to the socket in one write when Flush is called or the
// buffer fills up.
//
// gorilla serializes its own writes (WriteMessage, WriteControl) but Flush
// runs outside its lock, and the reading goroutine writes pongs and close
// replies: mu makes Write, Flush and SetWriteDeadline safe to call
// concurrently.
//
// Reads pass straight through. gorilla reads through a bufio.Reader, so
// Read is called here only once everything received so far has been
// consumed: beforeRead, when set, runs on the reading goroutine just before
// it waits on the socket again.
type bufConn struct {
	net.Conn

	beforeRead func() // read side only; set while a read loop runs

	mu        sync.Mutex
	buffering bool // off during the handshake (TLS and the upgrade write through)
	buf       []byte
	deadline  time.Time // the latest write deadline gorilla asked for
	applied   time.Time // the write deadline the socket has
	err       error     // the first write error; every later write returns it
}

func newBufConn(c net.Conn, size int) *bufConn {
	return &bufConn{Conn: c, buf: make([]byte, 0, size)}
}

func (c *bufConn) Read(p []byte) (int, error) {
	if c.beforeRead != nil {
		c.beforeRead()
	}
	return c.Conn.Read(p)
}

// Write queues p, writing the queue out first when p does not fit.
func (c *bufConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.buffering {
		if err := c.applyDeadline(); err != nil {
			return 0, err
		}
		n, err := c.Conn.Write(p)
		c.err = err
		return n, err
	}
	if len(c.buf)+len(p) > cap(c.buf) {
		if err := c.flush(); err != nil {
			return 0, err
		}
		if len(p) >= cap(c.buf) {
			n, err := c.Conn.Write(p)
			c.err = err
			return n, err
		}
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// SetWriteDeadline records the deadline for the next write to the socket;
// gorilla calls it before every message, and changing the socket's
// deadline is not free, so it is applied only when bytes go out.
func (c *bufConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

// Flush writes out everything queued.
func (c *bufConn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	return c.flush()
}

// buffered reports the number of queued bytes.
func (c *bufConn) buffered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buf)
}

func (c *bufConn) startBuffering() {
	c.mu.Lock()
	c.buffering = true
	c.mu.Unlock()
}

func (c *bufConn) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	if err := c.applyDeadline(); err != nil {
		return err
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	c.err = err
	return err
}

func (c *bufConn) applyDeadline() error {
	if c.deadline.Equal(c.applied) {
		return nil
	}
	if err := c.Conn.SetWriteDeadline(c.deadline); err != nil {
		c.err = err
		return err
	}
	c.applied = c.deadline
	return nil
}
