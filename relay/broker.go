package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/stompgate/stompgate/stomp"
)

// BrokerLink is a session's broker side. Today every session gets its own
// STOMP connection (stompLink); the planned shared-link mode (SPEC §4 "Where
// the relay is going") is another implementation of this interface, so the
// session does not change.
//
// Write and Flush may be called from one goroutine at a time (the session's
// client reader); ReadLoop runs in its own goroutine; Close may be called
// from any goroutine, more than once.
type BrokerLink interface {
	// Write queues a frame for the broker; Flush sends what is queued.
	Write(f *frame.Frame) error
	Flush() error
	// ReadLoop delivers broker frames (MESSAGE, RECEIPT, ERROR) to handle
	// until the link fails or is closed, and calls idle whenever it has
	// handled everything received so far (before it may block). A frame's
	// Body is valid only during the call.
	ReadLoop(idle func(), handle func(*frame.Frame) error) error
	// Close ends the link; unacked messages are redelivered by the broker.
	Close() error
}

// BrokerConfig says how to reach the broker.
type BrokerConfig struct {
	Addrs     []string
	Login     string
	Passcode  string
	Vhost     string
	Heartbeat time.Duration // offered both ways on the edge↔broker leg
	Timeout   time.Duration // dial + CONNECTED
	// MaxFrameBytes bounds frames read from the broker.
	MaxFrameBytes int
}

// ErrBrokerUnavailable wraps every failure to reach or keep the broker.
var ErrBrokerUnavailable = errors.New("broker unavailable")

// BrokerDialer opens STOMP connections to the broker, rotating through the
// configured addresses. Safe for concurrent use.
type BrokerDialer struct {
	cfg  BrokerConfig
	next atomic.Uint32
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// NewBrokerDialer returns a dialer using net.Dialer.
func NewBrokerDialer(cfg BrokerConfig) *BrokerDialer {
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	return &BrokerDialer{cfg: cfg, dial: d.DialContext}
}

// Dial connects and completes the STOMP handshake, trying each address once.
func (d *BrokerDialer) Dial(ctx context.Context) (BrokerLink, error) {
	start := int(d.next.Add(1))
	var errs []error
	for i := range d.cfg.Addrs {
		addr := d.cfg.Addrs[(start+i)%len(d.cfg.Addrs)]
		l, err := d.dialOne(ctx, addr)
		if err == nil {
			return l, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w: %w", ErrBrokerUnavailable, errors.Join(errs...))
}

func (d *BrokerDialer) dialOne(ctx context.Context, addr string) (*stompLink, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	conn, err := d.dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial broker %s: %w", addr, err)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	l := &stompLink{
		conn:   conn,
		w:      bufio.NewWriterSize(conn, 32<<10),
		parser: stomp.NewParser(stomp.Limits{MaxFrameBytes: d.cfg.MaxFrameBytes, MaxHeaders: 1000, MaxHeaderBytes: d.cfg.MaxFrameBytes}, stomp.ServerCommands),
		rbuf:   make([]byte, 32<<10),
		stop:   make(chan struct{}),
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	hb := strconv.FormatInt(d.cfg.Heartbeat.Milliseconds(), 10)
	connect := frame.New(frame.CONNECT,
		frame.AcceptVersion, "1.2",
		frame.Host, d.cfg.Vhost,
		frame.Login, d.cfg.Login,
		frame.Passcode, d.cfg.Passcode,
		frame.HeartBeat, hb+","+hb)
	if err := l.Write(connect); err == nil {
		err = l.Flush()
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect broker %s: %w", addr, err)
	}
	f, err := l.readFrame(nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect broker %s: %w", addr, err)
	}
	if f.Command != frame.CONNECTED {
		conn.Close()
		return nil, fmt.Errorf("connect broker %s: %s %s", addr, f.Command, f.Header.Get(frame.Message))
	}
	_ = conn.SetDeadline(time.Time{})
	sx, sy, _ := frame.ParseHeartBeat(f.Header.Get(frame.HeartBeat))
	if d.cfg.Heartbeat > 0 && sy > 0 {
		l.sendEvery = max(d.cfg.Heartbeat, sy)
		go l.heartbeat()
	}
	if d.cfg.Heartbeat > 0 && sx > 0 {
		l.readTimeout = 2 * max(d.cfg.Heartbeat, sx)
	}
	l.server = f.Header.Get(frame.Server)
	return l, nil
}

// stompLink is a dedicated STOMP 1.2 connection to the broker.
type stompLink struct {
	conn   net.Conn
	server string

	mu        sync.Mutex // guards w and lastWrite
	w         *bufio.Writer
	lastWrite time.Time
	scratch   []byte

	parser      *stomp.Parser // owned by the reading goroutine
	rbuf        []byte
	readTimeout time.Duration // 0 = broker sends no heart-beats
	sendEvery   time.Duration

	stop      chan struct{}
	closeOnce sync.Once
}

func (l *stompLink) Write(f *frame.Frame) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.scratch = stomp.AppendFrame(l.scratch[:0], f, stomp.V12)
	_, err := l.w.Write(l.scratch)
	return err
}

func (l *stompLink) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w.Buffered() == 0 {
		return nil
	}
	l.lastWrite = time.Now()
	_ = l.conn.SetWriteDeadline(l.lastWrite.Add(10 * time.Second))
	return l.w.Flush()
}

// heartbeat sends an EOL whenever nothing was sent for half the negotiated
// interval, checking at that half period, so the broker never waits longer
// than the interval.
func (l *stompLink) heartbeat() {
	t := time.NewTicker(l.sendEvery / 2)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case now := <-t.C:
			l.mu.Lock()
			if now.Sub(l.lastWrite) >= l.sendEvery/2 {
				l.lastWrite = now
				_ = l.conn.SetWriteDeadline(now.Add(10 * time.Second))
				_, _ = l.w.Write([]byte{'\n'})
				_ = l.w.Flush()
			}
			l.mu.Unlock()
		}
	}
}

func (l *stompLink) readFrame(idle func()) (*frame.Frame, error) {
	for {
		f, err := l.parser.Next()
		if err != nil || f != nil {
			return f, err
		}
		l.parser.Compact()
		if idle != nil {
			idle()
		}
		if l.readTimeout > 0 {
			_ = l.conn.SetReadDeadline(time.Now().Add(l.readTimeout))
		}
		n, err := l.conn.Read(l.rbuf)
		if n > 0 {
			l.parser.Feed(l.rbuf[:n])
		}
		if err != nil && n == 0 {
			if errors.Is(err, io.EOF) {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

func (l *stompLink) ReadLoop(idle func(), handle func(*frame.Frame) error) error {
	for {
		f, err := l.readFrame(idle)
		if err != nil {
			return fmt.Errorf("%w: read: %w", ErrBrokerUnavailable, err)
		}
		if err := handle(f); err != nil {
			return err
		}
	}
}

func (l *stompLink) Close() error {
	l.closeOnce.Do(func() {
		close(l.stop)
		// A clean DISCONNECT when the writer is free; the broker redelivers
		// unacked messages either way once the socket closes.
		if l.mu.TryLock() {
			_ = l.conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = l.w.WriteString("DISCONNECT\n\n\x00")
			_ = l.w.Flush()
			l.mu.Unlock()
		}
		l.conn.Close()
	})
	return nil
}
