// Package stompconn is the broker.Broker that gives every session its own
// STOMP 1.2 connection to RabbitMQ: what Spring's relay and Web-STOMP do.
// Frames are forwarded as the session hands them over; the broker's
// frames are re-encoded for the client's version and pushed to the
// session's sink by one reader goroutine per connection.
//
// # Goroutines of one connection
//
//   - the reader (started by Open) parses the broker's frames and calls the
//     sink; before each socket read it calls Sink.Idle;
//   - the heart-beat ticker, when the broker asked for heart-beats, writes
//     an EOL whenever nothing was sent for half the interval;
//   - the caller's goroutine (the relay session's reader) writes frames
//     into a buffer and flushes it.
//
// One mutex (mu) guards the write buffer; the reader owns the parser.
package stompconn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// Config says how to reach the broker.
type Config struct {
	Addrs     []string // host:port of RabbitMQ's STOMP listeners, tried in turn
	Login     string
	Passcode  string
	Vhost     string
	Heartbeat time.Duration // offered both ways on the edge↔broker leg (0: none)
	Timeout   time.Duration // dial + CONNECTED
	// MaxFrameBytes bounds a frame read from the broker; a larger one ends
	// that session with broker.ErrFrameTooLarge.
	MaxFrameBytes int
}

// Broker dials one STOMP connection per session, rotating through the
// configured addresses. Safe for concurrent use.
type Broker struct {
	cfg  Config
	next atomic.Uint32
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// New returns a Broker that dials with net.Dialer.
func New(cfg Config) *Broker {
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	return &Broker{cfg: cfg, dial: d.DialContext}
}

// Open dials the broker and starts the connection's reader.
func (b *Broker) Open(ctx context.Context, info broker.SessionInfo, sink broker.Sink) (broker.Session, error) {
	c, err := b.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.sink, c.version = sink, info.Version
	c.done = make(chan struct{})
	go c.read()
	return c, nil
}

// Probe completes a STOMP handshake and disconnects.
func (b *Broker) Probe(ctx context.Context) error {
	c, err := b.connect(ctx)
	if err != nil {
		return err
	}
	c.stopHeartbeat()
	c.disconnect()
	return nil
}

// connect tries each address once, starting at the next in turn.
func (b *Broker) connect(ctx context.Context) (*conn, error) {
	start := int(b.next.Add(1))
	var errs []error
	for i := range b.cfg.Addrs {
		addr := b.cfg.Addrs[(start+i)%len(b.cfg.Addrs)]
		c, err := b.connectOne(ctx, addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w: %w", broker.ErrUnavailable, errors.Join(errs...))
}

func (b *Broker) connectOne(ctx context.Context, addr string) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	nc, err := b.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial broker %s: %w", addr, err)
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := &conn{
		nc:     nc,
		w:      bufio.NewWriterSize(nc, 32<<10),
		parser: stomp.NewParser(stomp.Limits{MaxFrameBytes: b.cfg.MaxFrameBytes, MaxHeaders: 1000, MaxHeaderBytes: b.cfg.MaxFrameBytes}, stomp.ServerCommands),
		rbuf:   make([]byte, 32<<10),
		stop:   make(chan struct{}),
	}
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	hb := strconv.FormatInt(b.cfg.Heartbeat.Milliseconds(), 10)
	c.write(frame.New(frame.CONNECT,
		frame.AcceptVersion, "1.2",
		frame.Host, b.cfg.Vhost,
		frame.Login, b.cfg.Login,
		frame.Passcode, b.cfg.Passcode,
		frame.HeartBeat, hb+","+hb))
	err = c.Flush()
	var f *frame.Frame
	if err == nil {
		f, err = c.readFrame(nil)
	}
	if err == nil && f.Command != frame.CONNECTED {
		err = errors.New(f.Command + " " + f.Header.Get(frame.Message))
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("connect broker %s: %w", addr, err)
	}
	_ = nc.SetDeadline(time.Time{})
	sx, sy, _ := frame.ParseHeartBeat(f.Header.Get(frame.HeartBeat))
	if b.cfg.Heartbeat > 0 && sy > 0 {
		c.sendEvery = max(b.cfg.Heartbeat, sy)
		go c.heartbeat()
	}
	if b.cfg.Heartbeat > 0 && sx > 0 {
		c.readTimeout = 2 * max(b.cfg.Heartbeat, sx)
	}
	return c, nil
}

// conn is one session's STOMP 1.2 connection to the broker.
type conn struct {
	nc      net.Conn
	sink    broker.Sink
	version stomp.Version // the client's, for re-encoding deliveries

	mu        sync.Mutex // guards w, scratch, lastWrite
	w         *bufio.Writer
	scratch   []byte
	lastWrite time.Time
	werr      error // first write error, sticky

	parser      *stomp.Parser // owned by the reader
	rbuf        []byte
	readTimeout time.Duration // 0: the broker sends no heart-beats
	sendEvery   time.Duration

	// routed maps subscription ids with a Route to the destination the
	// client subscribed to: their MESSAGEs carry it back, not the
	// /exchange/ form the broker saw. Written by the session's goroutine,
	// read by the reader; nRouted skips the lock when there are none.
	routedMu sync.Mutex
	routed   map[string]string
	nRouted  atomic.Int32

	closed    atomic.Bool
	stop      chan struct{} // closed by Close: stops the heart-beat
	stopOnce  sync.Once
	closeOnce sync.Once
	done      chan struct{} // closed when the reader returns
}

func (c *conn) write(f *frame.Frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	c.scratch = stomp.AppendFrame(c.scratch[:0], f, stomp.V12)
	_, c.werr = c.w.Write(c.scratch)
	if c.werr != nil {
		c.werr = fmt.Errorf("%w: write: %w", broker.ErrUnavailable, c.werr)
	}
	return c.werr
}

// command writes a frame made of a command and header pairs; empty
// values are left out.
func (c *conn) command(cmd string, kv ...string) error {
	f := frame.New(cmd)
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			f.Header.Add(kv[i], kv[i+1])
		}
	}
	return c.write(f)
}

func (c *conn) Send(m broker.Message) error {
	if m.Route != nil {
		dest, err := routeDestination(m.Route)
		if err != nil {
			return err
		}
		m.Header.Set(frame.Destination, dest)
	}
	return c.write(&frame.Frame{Command: frame.SEND, Header: m.Header, Body: m.Body})
}

func (c *conn) Subscribe(s broker.Subscription) error {
	if s.Route != nil {
		dest, err := routeDestination(s.Route)
		if err != nil {
			return err
		}
		s.Header.Set(frame.Destination, dest)
		c.routedMu.Lock()
		if c.routed == nil {
			c.routed = map[string]string{}
		}
		c.routed[s.ID] = s.Destination
		c.nRouted.Store(int32(len(c.routed)))
		c.routedMu.Unlock()
	}
	return c.write(&frame.Frame{Command: frame.SUBSCRIBE, Header: s.Header})
}

// routeDestination is a Route as a STOMP destination for RabbitMQ's
// adapter, which decodes "%2F" (and nothing else) in a routing key: '/'
// is sent as %2F, and a key that holds the text %2F itself cannot be
// expressed.
func routeDestination(r *broker.Route) (string, error) {
	if strings.Contains(r.Key, "%2F") {
		return "", fmt.Errorf("%w: a routing key containing the text %%2F cannot be reached over a STOMP broker connection: %q", broker.ErrRefused, r.Key)
	}
	return "/exchange/" + r.Exchange + "/" + strings.ReplaceAll(r.Key, "/", "%2F"), nil
}

func (c *conn) Unsubscribe(id, receipt string) error {
	if c.nRouted.Load() > 0 {
		c.routedMu.Lock()
		delete(c.routed, id)
		c.nRouted.Store(int32(len(c.routed)))
		c.routedMu.Unlock()
	}
	return c.command(frame.UNSUBSCRIBE, frame.Id, id, frame.Receipt, receipt)
}

// clientDestination is the destination a routed subscription's client
// subscribed to ("" for others).
func (c *conn) clientDestination(sub string) string {
	if c.nRouted.Load() == 0 {
		return ""
	}
	c.routedMu.Lock()
	defer c.routedMu.Unlock()
	return c.routed[sub]
}

func (c *conn) Ack(a broker.Ack) error {
	cmd := frame.ACK
	if a.Nack {
		cmd = frame.NACK
	}
	return c.command(cmd, frame.Id, a.ID, frame.Subscription, a.Subscription, frame.Transaction, a.Transaction, frame.Receipt, a.Receipt)
}

func (c *conn) Begin(tx, receipt string) error {
	return c.command(frame.BEGIN, frame.Transaction, tx, frame.Receipt, receipt)
}

func (c *conn) Commit(tx, receipt string) error {
	return c.command(frame.COMMIT, frame.Transaction, tx, frame.Receipt, receipt)
}

func (c *conn) Abort(tx, receipt string) error {
	return c.command(frame.ABORT, frame.Transaction, tx, frame.Receipt, receipt)
}

func (c *conn) Disconnect(receipt string) error {
	return c.command(frame.DISCONNECT, frame.Receipt, receipt)
}

func (c *conn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.werr != nil || c.w.Buffered() == 0 {
		return c.werr
	}
	c.lastWrite = time.Now()
	_ = c.nc.SetWriteDeadline(c.lastWrite.Add(10 * time.Second))
	if err := c.w.Flush(); err != nil {
		c.werr = fmt.Errorf("%w: write: %w", broker.ErrUnavailable, err)
	}
	return c.werr
}

// heartbeat sends an EOL whenever nothing was sent for half the
// negotiated interval, checking at that half period, so the broker never
// waits longer than the interval.
func (c *conn) heartbeat() {
	t := time.NewTicker(c.sendEvery / 2)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			c.mu.Lock()
			if c.werr == nil && now.Sub(c.lastWrite) >= c.sendEvery/2 {
				c.lastWrite = now
				_ = c.nc.SetWriteDeadline(now.Add(10 * time.Second))
				_, _ = c.w.Write([]byte{'\n'})
				_ = c.w.Flush()
			}
			c.mu.Unlock()
		}
	}
}

func (c *conn) readFrame(idle func()) (*frame.Frame, error) {
	for {
		f, err := c.parser.Next()
		if err != nil || f != nil {
			return f, err
		}
		c.parser.Compact()
		if idle != nil {
			idle()
		}
		if c.readTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.readTimeout))
		}
		n, err := c.nc.Read(c.rbuf)
		if n > 0 {
			c.parser.Feed(c.rbuf[:n])
		}
		if err != nil && n == 0 {
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// read pushes the broker's frames to the sink until the connection ends.
func (c *conn) read() {
	defer close(c.done)
	for {
		f, err := c.readFrame(c.sink.Idle)
		if err != nil {
			if c.closed.Load() {
				return
			}
			var fe *stomp.FrameError
			if errors.As(err, &fe) && fe.Code == stomp.CodeFrameTooLarge {
				c.sink.Lost(fmt.Errorf("%w: %s", broker.ErrFrameTooLarge, fe.Msg))
			} else {
				c.sink.Lost(fmt.Errorf("%w: read: %w", broker.ErrUnavailable, err))
			}
			return
		}
		received := time.Now()
		switch f.Command {
		case frame.MESSAGE:
			if d := c.clientDestination(f.Header.Get(frame.Subscription)); d != "" {
				f.Header.Set(frame.Destination, d)
			}
			c.sink.Deliver(broker.NewFrame(stomp.AppendMessage(make([]byte, 0, 128+len(f.Body)+32*f.Header.Len()), f, c.version), frame.MESSAGE, received))
		case frame.RECEIPT:
			c.sink.Receipt(f.Header.Get(frame.ReceiptId))
		case frame.ERROR:
			c.sink.Lost(&broker.Error{
				Message:     f.Header.Get(frame.Message),
				ContentType: f.Header.Get(frame.ContentType),
				ReceiptID:   f.Header.Get(frame.ReceiptId),
				Body:        append([]byte(nil), f.Body...),
			})
			return
		}
	}
}

func (c *conn) stopHeartbeat() { c.stopOnce.Do(func() { close(c.stop) }) }

// disconnect sends DISCONNECT when the writer is free and closes the
// socket; the broker redelivers unacked messages either way.
func (c *conn) disconnect() {
	if c.mu.TryLock() {
		_ = c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.w.WriteString("DISCONNECT\n\n\x00")
		_ = c.w.Flush()
		c.mu.Unlock()
	}
	c.nc.Close()
}

// Close ends the connection and waits for its reader. It must not be
// called from a Sink method (the reader would wait for itself).
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.stopHeartbeat()
		c.disconnect()
	})
	<-c.done
	return nil
}
