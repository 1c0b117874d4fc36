package stompws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/gorilla/websocket"

	"github.com/stompgate/stompgate/stomp"
)

// Subprotocols are the STOMP WebSocket subprotocols, newest first.
var Subprotocols = []string{"v12.stomp", "v11.stomp", "v10.stomp"}

// DefaultLimits bound the frames a Conn accepts from a server unless
// Options.Limits says otherwise.
var DefaultLimits = stomp.Limits{MaxFrameBytes: 16 << 20, MaxHeaders: 1000, MaxHeaderBytes: 1 << 20}

// ErrServerError is a STOMP ERROR frame where a Conn expected something
// else (Connect, Subscribe).
var ErrServerError = errors.New("server sent ERROR")

// HeartBeat is a STOMP heart-beat offer: the least interval at which this
// client sends (Send) and the interval at which it wants the server to send
// (Recv). Zero means none, for either.
type HeartBeat struct {
	Send, Recv time.Duration
}

// Options configure Dial. The zero value is usable.
type Options struct {
	// Subprotocols offered on the upgrade; default Subprotocols. The one the
	// server picks is Conn.Subprotocol.
	Subprotocols []string
	// Header is sent with the upgrade request: Origin, Authorization,
	// Cookie, ... Default none.
	Header http.Header
	// Version is the STOMP version frames are encoded and parsed with until
	// Connect learns the negotiated one (Connect also offers every version
	// up to it in accept-version). Default stomp.V12.
	Version stomp.Version
	// HeartBeat is what Connect offers; default none both ways.
	HeartBeat HeartBeat
	// Limits bound received frames; default DefaultLimits.
	Limits stomp.Limits
	// HandshakeTimeout bounds the TCP dial and the upgrade; default 10s (the
	// context passed to Dial may end it sooner).
	HandshakeTimeout time.Duration
	// WriteBufferSize is how many bytes of queued messages are held before
	// they are written out without waiting for Flush; default 64 KiB.
	WriteBufferSize int
	// ReadBufferSize is gorilla's read buffer, the most one read from the
	// socket takes in; default 16 KiB.
	ReadBufferSize int
	// AutoFlush flushes after every write; default off (call Flush).
	AutoFlush bool
	// NetDialContext dials the TCP connection; default a net.Dialer.
	NetDialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Conn is one STOMP-over-WebSocket client connection. See the package
// comment for which goroutine may call what.
type Conn struct {
	ws      *websocket.Conn
	bc      *bufConn
	parser  *stomp.Parser
	opts    Options
	version stomp.Version

	rbuf   []byte
	binary bool // the WebSocket message that completed the last frame was binary
	wbuf   []byte

	beatSend, beatRecv time.Duration // negotiated by Connect
}

// Dial opens a WebSocket to url (ws:// or wss://). The response is the
// server's answer to the upgrade, also when the upgrade was refused (for
// its status code); it is nil when no answer came.
func Dial(ctx context.Context, url string, o Options) (*Conn, *http.Response, error) {
	if o.Subprotocols == nil {
		o.Subprotocols = Subprotocols
	}
	if o.Version == 0 {
		o.Version = stomp.V12
	}
	if o.Limits == (stomp.Limits{}) {
		o.Limits = DefaultLimits
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.WriteBufferSize <= 0 {
		o.WriteBufferSize = 64 << 10
	}
	if o.ReadBufferSize <= 0 {
		o.ReadBufferSize = 16 << 10
	}
	netDial := o.NetDialContext
	if netDial == nil {
		var d net.Dialer
		netDial = d.DialContext
	}
	var bc *bufConn
	d := websocket.Dialer{
		HandshakeTimeout: o.HandshakeTimeout,
		Subprotocols:     o.Subprotocols,
		ReadBufferSize:   o.ReadBufferSize,
		// gorilla frames each message in this buffer before its one Write;
		// a message that does not fit is written as several frames.
		WriteBufferSize: 16 << 10,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := netDial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			bc = newBufConn(nc, o.WriteBufferSize)
			return bc, nil
		},
	}
	ws, resp, err := d.DialContext(ctx, url, o.Header)
	if err != nil {
		if resp != nil {
			return nil, resp, fmt.Errorf("dial %s: %w (HTTP %s)", url, err, resp.Status)
		}
		return nil, nil, fmt.Errorf("dial %s: %w", url, err)
	}
	bc.startBuffering()
	c := &Conn{
		ws:      ws,
		bc:      bc,
		parser:  stomp.NewParser(o.Limits, stomp.ServerCommands),
		opts:    o,
		version: o.Version,
		rbuf:    make([]byte, o.ReadBufferSize),
	}
	c.parser.Version = o.Version
	// Pongs and the close reply are written on the reading goroutine; they
	// must not wait in the buffer for the writer's next Flush.
	ws.SetPingHandler(func(data string) error {
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				return err
			}
		}
		return bc.Flush()
	})
	ws.SetCloseHandler(func(code int, text string) error {
		msg := websocket.FormatCloseMessage(code, "")
		_ = ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		_ = bc.Flush()
		return nil
	})
	return c, resp, nil
}

// Subprotocol is the subprotocol the server chose, "" if none.
func (c *Conn) Subprotocol() string { return c.ws.Subprotocol() }

// Version is the STOMP version frames are encoded and parsed with.
func (c *Conn) Version() stomp.Version { return c.version }

// SetVersion changes the STOMP version frames are encoded and parsed with
// (Connect does it from CONNECTED). Call it while neither goroutine runs.
func (c *Conn) SetVersion(v stomp.Version) {
	c.version = v
	c.parser.Version = v
}

// HeartBeats are the intervals Connect negotiated: the writer should send
// something (WriteHeartBeat will do) at least every send, and the server
// is expected to send at least every recv, zero meaning none. While recv
// is set, a read from the socket fails after 1.5×recv of silence.
func (c *Conn) HeartBeats() (send, recv time.Duration) { return c.beatSend, c.beatRecv }

// NetConn is the connection under the WebSocket.
func (c *Conn) NetConn() net.Conn { return c.bc.Conn }

// Send queues f as one WebSocket message, encoded for Version: a text
// message, or a binary one when the body is not valid UTF-8 (browsers and
// strict servers drop a connection on invalid UTF-8 in a text message).
func (c *Conn) Send(f *frame.Frame) error {
	c.wbuf = stomp.AppendFrame(c.wbuf[:0], f, c.version)
	mt := websocket.TextMessage
	if !utf8.Valid(f.Body) {
		mt = websocket.BinaryMessage
	}
	return c.WriteMessage(mt, c.wbuf)
}

// WriteFrame queues b, one or more encoded frames, as one text message.
// b may be reused once WriteFrame returns.
func (c *Conn) WriteFrame(b []byte) error {
	return c.WriteMessage(websocket.TextMessage, b)
}

// WriteHeartBeat queues a heart-beat (an EOL).
func (c *Conn) WriteHeartBeat() error {
	return c.WriteMessage(websocket.TextMessage, eol)
}

var eol = []byte{'\n'}

// WriteMessage queues one WebSocket message of type mt
// (websocket.TextMessage or BinaryMessage) holding b as it is.
func (c *Conn) WriteMessage(mt int, b []byte) error {
	if err := c.ws.WriteMessage(mt, b); err != nil {
		return err
	}
	if c.opts.AutoFlush {
		return c.bc.Flush()
	}
	return nil
}

// Flush writes everything queued to the socket, in one write.
func (c *Conn) Flush() error { return c.bc.Flush() }

// Buffered is how many bytes are queued and not yet flushed.
func (c *Conn) Buffered() int { return c.bc.buffered() }

// SetWriteDeadline bounds the writes to the socket from now on; zero means
// none.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }

// SetReadDeadline bounds the reads from the socket from now on; zero means
// none.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

// ReadFrame returns the next frame and whether the WebSocket message that
// completed it was binary. The frame's Body is valid only until the next
// read.
func (c *Conn) ReadFrame() (*frame.Frame, bool, error) {
	for {
		f, err := c.parser.Next()
		if err != nil {
			return nil, false, err
		}
		if f != nil {
			return f, c.binary, nil
		}
		c.parser.Compact()
		if err := c.fill(); err != nil {
			return nil, false, err
		}
	}
}

// ReadLoop reads until the connection fails or onFrame returns an error,
// and returns that error. onFrame runs on the calling goroutine for every
// frame, heart-beats skipped; the frame's Body is valid only until it
// returns. onDrained, if not nil, runs each time every frame received so
// far has been handed to onFrame and the loop is about to wait on the
// socket: once per batch of frames that arrived together.
func (c *Conn) ReadLoop(onFrame func(f *frame.Frame, binary bool) error, onDrained func()) error {
	c.bc.beforeRead = onDrained
	defer func() { c.bc.beforeRead = nil }()
	for {
		for f, err := range c.parser.Frames() {
			if err != nil {
				return err
			}
			if err := onFrame(f, c.binary); err != nil {
				return err
			}
		}
		if err := c.fill(); err != nil {
			return err
		}
	}
}

// Received is a frame handed over by Forward; it owns its Body.
type Received struct {
	Frame  *frame.Frame
	Binary bool // it arrived in a binary WebSocket message
}

// Forward is ReadLoop sending a copy of every frame on ch, waiting while ch
// is full. It returns the error that ended the connection and does not
// close ch.
func (c *Conn) Forward(ch chan<- Received) error {
	return c.ReadLoop(func(f *frame.Frame, binary bool) error {
		f.Body = append([]byte(nil), f.Body...)
		ch <- Received{Frame: f, Binary: binary}
		return nil
	}, nil)
}

// fill reads the next WebSocket message into the parser.
func (c *Conn) fill() error {
	if c.beatRecv > 0 {
		// Refreshed per message, not per frame: a server that sends
		// nothing at all for 1.5 intervals is gone.
		if err := c.ws.SetReadDeadline(time.Now().Add(c.beatRecv * 3 / 2)); err != nil {
			return err
		}
	}
	mt, r, err := c.ws.NextReader()
	if err != nil {
		return err
	}
	c.binary = mt == websocket.BinaryMessage
	for {
		n, err := r.Read(c.rbuf)
		c.parser.Feed(c.rbuf[:n])
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Connect sends CONNECT with the options' credentials-free defaults
// (accept-version up to Options.Version, heart-beat from Options.HeartBeat)
// and headers (name, value, ...; they come first, and the first occurrence
// of a header wins), waits for CONNECTED until ctx ends, and switches to
// the version the server chose. An ERROR answer is returned as an error
// wrapping ErrServerError.
func (c *Conn) Connect(ctx context.Context, headers ...string) (*frame.Frame, error) {
	accept := "1.2,1.1,1.0"
	switch c.opts.Version {
	case stomp.V10:
		accept = "1.0"
	case stomp.V11:
		accept = "1.1,1.0"
	}
	hb := c.opts.HeartBeat
	h := append(append([]string{}, headers...),
		frame.AcceptVersion, accept,
		frame.HeartBeat, millis(hb.Send)+","+millis(hb.Recv))
	f, err := c.roundTrip(ctx, frame.New(frame.CONNECT, h...), frame.CONNECTED, "")
	if err != nil {
		return nil, err
	}
	switch f.Header.Get(frame.Version) {
	case "1.2":
		c.SetVersion(stomp.V12)
	case "1.1":
		c.SetVersion(stomp.V11)
	default:
		c.SetVersion(stomp.V10)
	}
	if sx, sy, ok := parseHeartBeat(f.Header.Get(frame.HeartBeat)); ok {
		c.beatSend = negotiate(hb.Send, sy)
		c.beatRecv = negotiate(hb.Recv, sx)
	}
	return f, nil
}

// Subscribe subscribes to dest with subscription id and ack:auto unless
// headers (name, value, ...) say otherwise, and waits until ctx ends for
// the receipt, so that nothing published after it returns is missed.
// Frames other than the receipt that arrive meanwhile are dropped.
func (c *Conn) Subscribe(ctx context.Context, id, dest string, headers ...string) error {
	receipt := "sub-" + id
	h := append(append([]string{}, headers...), frame.Id, id, frame.Destination, dest, frame.Ack, "auto", frame.Receipt, receipt)
	if _, err := c.roundTrip(ctx, frame.New(frame.SUBSCRIBE, h...), frame.RECEIPT, receipt); err != nil {
		return fmt.Errorf("SUBSCRIBE %s: %w", dest, err)
	}
	return nil
}

// roundTrip sends f, flushes, and reads until a frame with command want
// (and receipt-id receipt, if set) arrives, an ERROR arrives, or ctx ends.
func (c *Conn) roundTrip(ctx context.Context, f *frame.Frame, want, receipt string) (*frame.Frame, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Time{}
	}
	_ = c.ws.SetWriteDeadline(deadline)
	_ = c.ws.SetReadDeadline(deadline)
	// A cancelled ctx ends a read in progress.
	stop := context.AfterFunc(ctx, func() { _ = c.bc.Conn.SetReadDeadline(time.Unix(1, 0)) })
	defer func() {
		stop()
		_ = c.ws.SetWriteDeadline(time.Time{})
		_ = c.ws.SetReadDeadline(time.Time{})
	}()
	if err := c.Send(f); err != nil {
		return nil, fmt.Errorf("send %s: %w", f.Command, err)
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("send %s: %w", f.Command, err)
	}
	for {
		r, _, err := c.ReadFrame()
		if err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (%w)", ctx.Err(), err)
			}
			return nil, fmt.Errorf("wait for %s: %w", want, err)
		}
		switch {
		case r.Command == want && (receipt == "" || r.Header.Get(frame.ReceiptId) == receipt):
			return r, nil
		case r.Command == frame.ERROR:
			return nil, fmt.Errorf("%s answered: %w: %s", f.Command, ErrServerError, r.Header.Get(frame.Message))
		}
	}
}

// Disconnect queues DISCONNECT and a WebSocket close message, flushes them
// (waiting at most timeout) and closes the socket, without waiting for a
// receipt or the server's close.
func (c *Conn) Disconnect(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	_ = c.ws.SetWriteDeadline(deadline)
	err := c.WriteFrame(disconnect)
	if err == nil {
		err = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline)
	}
	if ferr := c.bc.Flush(); err == nil {
		err = ferr
	}
	if cerr := c.ws.Close(); err == nil {
		err = cerr
	}
	return err
}

var disconnect = []byte("DISCONNECT\n\n\x00")

// Close closes the socket at once, dropping anything not flushed; any
// goroutine may call it, more than once.
func (c *Conn) Close() error { return c.ws.Close() }

func parseHeartBeat(s string) (x, y time.Duration, ok bool) {
	a, b, found := strings.Cut(s, ",")
	if !found {
		return 0, 0, false
	}
	ax, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 31)
	by, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 31)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return time.Duration(ax) * time.Millisecond, time.Duration(by) * time.Millisecond, true
}

// millis is d in whole milliseconds for a heart-beat header, rounded up so
// that a positive interval never becomes "none".
func millis(d time.Duration) string {
	return strconv.FormatInt(int64((d+time.Millisecond-1)/time.Millisecond), 10)
}

// negotiate is STOMP's heart-beat rule: none if either side wants none,
// otherwise the larger of the two.
func negotiate(mine, theirs time.Duration) time.Duration {
	if mine == 0 || theirs == 0 {
		return 0
	}
	return max(mine, theirs)
}
