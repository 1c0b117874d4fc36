package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/stompgate/stompgate/stomp"
)

// writeTimeout bounds every WebSocket write.
const writeTimeout = 10 * time.Second

// stompConn is one STOMP-over-WebSocket client connection. One goroutine
// writes it (send, disconnect) and one reads it (readFrame); close may be
// called from any goroutine.
type stompConn struct {
	ws      *websocket.Conn
	parser  *stomp.Parser
	version stomp.Version
	rbuf    []byte
	wbuf    []byte
}

// ErrServerError is a STOMP ERROR frame received from the server.
var ErrServerError = errors.New("server sent ERROR")

// dial opens a WebSocket, sends CONNECT for user and waits for CONNECTED.
func dial(ctx context.Context, c options, user string, pair int) (*stompConn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	d := websocket.Dialer{
		HandshakeTimeout: c.Timeout,
		Subprotocols:     []string{"v12.stomp", "v11.stomp", "v10.stomp"},
		ReadBufferSize:   16 << 10,
		WriteBufferSize:  16 << 10,
	}
	h := http.Header{}
	if c.Origin != "" {
		h.Set("Origin", c.Origin)
	}
	ws, resp, err := d.DialContext(ctx, c.URL, h)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("dial %s: %w (HTTP %s)", c.URL, err, resp.Status)
		}
		return nil, fmt.Errorf("dial %s: %w", c.URL, err)
	}
	sc := &stompConn{
		ws:     ws,
		parser: stomp.NewParser(stomp.Limits{MaxFrameBytes: 4 << 20, MaxHeaders: 1000, MaxHeaderBytes: 64 << 10}, stomp.ServerCommands),
		rbuf:   make([]byte, 32<<10),
	}
	connect := frame.New(frame.CONNECT, frame.AcceptVersion, "1.2,1.1,1.0", frame.HeartBeat, "0,0")
	if c.Vhost != "" {
		connect.Header.Set(frame.Host, c.Vhost)
	}
	if c.TokenSecret != "" {
		tok, err := mintToken(c, user, pair)
		if err != nil {
			ws.Close()
			return nil, err
		}
		connect.Header.Set("Authorization", "Bearer "+tok)
	} else {
		connect.Header.Set(frame.Login, c.Login)
		connect.Header.Set(frame.Passcode, c.Passcode)
	}
	deadline, _ := ctx.Deadline()
	if err := sc.writeFrame(connect, deadline); err != nil {
		ws.Close()
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	f, err := sc.readFrame(deadline)
	if err != nil {
		ws.Close()
		return nil, fmt.Errorf("wait for CONNECTED: %w", err)
	}
	if f.Command != frame.CONNECTED {
		ws.Close()
		return nil, fmt.Errorf("CONNECT answered with %s: %s", f.Command, f.Header.Get(frame.Message))
	}
	switch f.Header.Get(frame.Version) {
	case "1.2":
		sc.version = stomp.V12
	case "1.1":
		sc.version = stomp.V11
	default:
		sc.version = stomp.V10
	}
	sc.parser.Version = sc.version
	_ = ws.SetReadDeadline(time.Time{})
	return sc, nil
}

func mintToken(c options, user string, pair int) (string, error) {
	claims := jwt.MapClaims{
		"sub":   user,
		"exp":   time.Now().Add(c.Warmup + c.Duration + c.Drain + time.Hour).Unix(),
		"iat":   time.Now().Unix(),
		"jti":   fmt.Sprintf("%s-%d-%d", c.RunID, pair, time.Now().UnixNano()),
		"scope": c.scope(pair),
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(c.TokenSecret))
	if err != nil {
		return "", fmt.Errorf("mint token: %w", err)
	}
	return tok, nil
}

// subscribe subscribes to dest and waits for the receipt, so that nothing
// published afterwards is missed.
func (sc *stompConn) subscribe(dest string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	sub := frame.New(frame.SUBSCRIBE, frame.Id, "0", frame.Destination, dest, frame.Ack, "auto", frame.Receipt, "sub-0")
	if err := sc.writeFrame(sub, deadline); err != nil {
		return fmt.Errorf("send SUBSCRIBE: %w", err)
	}
	for {
		f, err := sc.readFrame(deadline)
		if err != nil {
			return fmt.Errorf("wait for the SUBSCRIBE receipt: %w", err)
		}
		switch f.Command {
		case frame.RECEIPT:
			_ = sc.ws.SetReadDeadline(time.Time{})
			return nil
		case frame.ERROR:
			return fmt.Errorf("SUBSCRIBE %s: %w: %s", dest, ErrServerError, f.Header.Get(frame.Message))
		}
	}
}

func (sc *stompConn) writeFrame(f *frame.Frame, deadline time.Time) error {
	sc.wbuf = stomp.AppendFrame(sc.wbuf[:0], f, sc.version)
	return sc.write(sc.wbuf, deadline)
}

func (sc *stompConn) write(b []byte, deadline time.Time) error {
	_ = sc.ws.SetWriteDeadline(deadline)
	return sc.ws.WriteMessage(websocket.TextMessage, b)
}

// readFrame returns the next frame; its Body is valid until the next call.
// A zero deadline waits as long as the connection lives.
func (sc *stompConn) readFrame(deadline time.Time) (*frame.Frame, error) {
	_ = sc.ws.SetReadDeadline(deadline)
	for {
		f, err := sc.parser.Next()
		if err != nil || f != nil {
			return f, err
		}
		sc.parser.Compact()
		_, r, err := sc.ws.NextReader()
		if err != nil {
			return nil, err
		}
		for {
			n, err := r.Read(sc.rbuf)
			sc.parser.Feed(sc.rbuf[:n])
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, err
			}
		}
	}
}

// close sends DISCONNECT and a close message (best effort) and closes the
// socket. Only the writing goroutine, or anyone once it has stopped, may
// call it.
func (sc *stompConn) close() {
	deadline := time.Now().Add(time.Second)
	_ = sc.write([]byte("DISCONNECT\n\n\x00"), deadline)
	_ = sc.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline)
	sc.ws.Close()
}
