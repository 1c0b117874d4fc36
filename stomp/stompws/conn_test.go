package stompws

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/stompgate/stompgate/stomp"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is an in-process STOMP-over-WebSocket peer: CONNECT gets
// CONNECTED (version and heart-beat from its fields), SUBSCRIBE with a
// receipt gets the RECEIPT, SEND comes back as a MESSAGE on the same
// connection. Every received WebSocket message is recorded.
type server struct {
	t         testing.TB
	url       string
	version   string // CONNECTED version; default 1.2
	heartBeat string // CONNECTED heart-beat; default 0,0
	refuse    bool   // answer CONNECT with ERROR
	onConn    func(ws *websocket.Conn)

	mu       sync.Mutex
	upgrade  http.Header // headers of the last upgrade request
	messages []message   // every WebSocket message received
}

type message struct {
	typ  int
	data string
}

func startServer(t testing.TB, configure func(*server)) *server {
	t.Helper()
	s := &server{t: t, version: "1.2", heartBeat: "0,0"}
	if configure != nil {
		configure(s)
	}
	up := websocket.Upgrader{
		Subprotocols: []string{"v12.stomp", "v11.stomp", "v10.stomp"},
		CheckOrigin:  func(*http.Request) bool { return true },
	}
	var wg sync.WaitGroup
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Added before the upgrade: hs.Close waits for handlers until they
		// hijack, so wg.Wait after it sees every Add.
		wg.Add(1)
		defer wg.Done()
		if r.Header.Get("Origin") == "https://evil.example" {
			http.Error(w, "origin", http.StatusForbidden)
			return
		}
		s.mu.Lock()
		s.upgrade = r.Header.Clone()
		s.mu.Unlock()
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		if s.onConn != nil {
			s.onConn(ws)
			return
		}
		s.serve(ws)
	}))
	t.Cleanup(func() { hs.Close(); wg.Wait() })
	s.url = "ws" + strings.TrimPrefix(hs.URL, "http")
	return s
}

func (s *server) serve(ws *websocket.Conn) {
	p := stomp.NewParser(DefaultLimits, stomp.ClientCommands)
	n := 0
	for {
		mt, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.messages = append(s.messages, message{mt, string(data)})
		s.mu.Unlock()
		p.Feed(data)
		for f, err := range p.Frames() {
			if err != nil {
				s.t.Errorf("server parse: %v", err)
				return
			}
			var out *frame.Frame
			switch f.Command {
			case frame.CONNECT, frame.STOMP:
				if s.refuse {
					out = frame.New(frame.ERROR, frame.Message, "go away")
				} else {
					out = frame.New(frame.CONNECTED, frame.Version, s.version, frame.HeartBeat, s.heartBeat)
				}
			case frame.SUBSCRIBE:
				out = frame.New(frame.RECEIPT, frame.ReceiptId, f.Header.Get(frame.Receipt))
			case frame.SEND:
				n++
				out = f.Clone()
				out.Command = frame.MESSAGE
				out.Header.Set(frame.MessageId, strconv.Itoa(n))
				out.Header.Set(frame.Subscription, "0")
			case frame.DISCONNECT:
				continue
			}
			if err := ws.WriteMessage(mt, stomp.AppendFrame(nil, out, stomp.V12)); err != nil {
				return
			}
		}
	}
}

func (s *server) received() []message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]message(nil), s.messages...)
}

func dial(t *testing.T, url string, o Options) *Conn {
	t.Helper()
	c, _, err := Dial(context.Background(), url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestConnectNegotiates(t *testing.T) {
	s := startServer(t, func(s *server) { s.version = "1.1"; s.heartBeat = "500,3000" })
	hdr := http.Header{"Origin": {"https://app.example.com"}, "Authorization": {"Bearer t0k"}}
	c := dial(t, s.url, Options{Header: hdr, Subprotocols: []string{"v11.stomp"}, HeartBeat: HeartBeat{Send: time.Millisecond, Recv: 2000 * time.Millisecond}})
	if got := c.Subprotocol(); got != "v11.stomp" {
		t.Errorf("subprotocol %q, want v11.stomp", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	f, err := c.Connect(ctx, frame.Login, "guest", frame.Passcode, "guest")
	if err != nil {
		t.Fatal(err)
	}
	if f.Command != frame.CONNECTED || c.Version() != stomp.V11 {
		t.Errorf("got %s, version %s; want CONNECTED, 1.1", f.Command, c.Version())
	}
	// Client offered 1ms,2000ms; server 500ms,3000ms: client sends every
	// max(1ms, 3000ms), expects the server every max(2000ms, 500ms).
	if send, recv := c.HeartBeats(); send != 3*time.Second || recv != 2*time.Second {
		t.Errorf("heart-beats %v,%v; want 3s,2s", send, recv)
	}
	s.mu.Lock()
	up := s.upgrade
	s.mu.Unlock()
	if up.Get("Origin") != "https://app.example.com" || up.Get("Authorization") != "Bearer t0k" {
		t.Errorf("upgrade headers %v", up)
	}
	connect := s.received()[0].data
	for _, want := range []string{"CONNECT\n", "login:guest\n", "accept-version:1.2,1.1,1.0\n", "heart-beat:1,2000\n"} {
		if !strings.Contains(connect, want) {
			t.Errorf("CONNECT %q lacks %q", connect, want)
		}
	}
}

func TestConnectRefused(t *testing.T) {
	s := startServer(t, func(s *server) { s.refuse = true })
	c := dial(t, s.url, Options{})
	_, err := c.Connect(context.Background())
	if !errors.Is(err, ErrServerError) || !strings.Contains(err.Error(), "go away") {
		t.Fatalf("err = %v, want ErrServerError with the message", err)
	}
}

func TestUpgradeRefusedKeepsResponse(t *testing.T) {
	s := startServer(t, nil)
	_, resp, err := Dial(context.Background(), s.url, Options{Header: http.Header{"Origin": {"https://evil.example"}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("err %v, resp %v; want a 403", err, resp)
	}
}

func TestConnectCancelled(t *testing.T) {
	release := make(chan struct{})
	s := startServer(t, func(s *server) {
		s.onConn = func(ws *websocket.Conn) { <-release } // never answers
	})
	defer close(release)
	c := dial(t, s.url, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	if _, err := c.Connect(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

func TestWritesCoalesceUntilFlush(t *testing.T) {
	s := startServer(t, nil)
	var cc *countingConn
	c := dial(t, s.url, Options{NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		cc = &countingConn{Conn: nc}
		return cc, err
	}})
	if _, err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	before := cc.writes.Load()
	const n = 100
	for i := range n {
		if err := c.Send(frame.New(frame.SEND, frame.Destination, "/topic/x", "n", strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if got := cc.writes.Load() - before; got != 0 {
		t.Errorf("%d socket writes before Flush, want 0", got)
	}
	if c.Buffered() == 0 {
		t.Error("nothing buffered before Flush")
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := cc.writes.Load() - before; got != 1 {
		t.Errorf("%d socket writes for %d frames, want 1", got, n)
	}
	for i := range n {
		f, _, err := c.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Header.Get("n"); f.Command != frame.MESSAGE || got != strconv.Itoa(i) {
			t.Fatalf("frame %d: %s n=%s", i, f.Command, got)
		}
	}
	// One frame per WebSocket message on the wire.
	if got := len(s.received()); got != n+1 {
		t.Errorf("server got %d messages, want %d", got, n+1)
	}
}

func TestAutoFlush(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s.url, Options{AutoFlush: true})
	if _, err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(frame.New(frame.SEND, frame.Destination, "/topic/x")); err != nil {
		t.Fatal(err)
	}
	if c.Buffered() != 0 {
		t.Error("bytes left in the buffer with AutoFlush")
	}
	if f, _, err := c.ReadFrame(); err != nil || f.Command != frame.MESSAGE {
		t.Fatalf("got %v, %v; want the MESSAGE", f, err)
	}
}

func TestSubscribeWaitsForItsReceipt(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s.url, Options{})
	ctx := context.Background()
	if _, err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(ctx, "7", "/topic/a"); err != nil {
		t.Fatal(err)
	}
	sub := s.received()[1].data
	for _, want := range []string{"SUBSCRIBE\n", "id:7\n", "destination:/topic/a\n", "ack:auto\n", "receipt:sub-7\n"} {
		if !strings.Contains(sub, want) {
			t.Errorf("SUBSCRIBE %q lacks %q", sub, want)
		}
	}
}

func TestBinaryBodies(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s.url, Options{})
	if _, err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	f := frame.New(frame.SEND, frame.Destination, "/topic/b", frame.ContentLength, "3")
	f.Body = []byte{0xff, 0x00, 'x'}
	if err := c.Send(f); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	got, binary, err := c.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if !binary || string(got.Body) != string(f.Body) {
		t.Errorf("binary=%v body=%q; want a binary message with %q", binary, got.Body, f.Body)
	}
	if m := s.received()[1]; m.typ != websocket.BinaryMessage {
		t.Errorf("SEND went out as message type %d, want binary", m.typ)
	}
}

// rawFrames is n STOMP MESSAGE frames, each in its own unmasked WebSocket
// text message, in one byte slice: written at once, they arrive together.
func rawFrames(n int, split bool) []byte {
	var out []byte
	for i := range n {
		f := stomp.AppendFrame(nil, frame.New(frame.MESSAGE, frame.Destination, "/topic/t", frame.MessageId, strconv.Itoa(i), frame.Subscription, "0"), stomp.V12)
		parts := [][]byte{f}
		if split {
			parts = [][]byte{f[:7], f[7:]} // a frame over two messages
		}
		for _, p := range parts {
			out = append(out, 0x81, byte(len(p)))
			out = append(out, p...)
		}
	}
	return out
}

func TestReadLoopDrainsOncePerBatch(t *testing.T) {
	for _, split := range []bool{false, true} {
		t.Run("split="+strconv.FormatBool(split), func(t *testing.T) {
			const n = 50
			s := startServer(t, func(s *server) {
				s.onConn = func(ws *websocket.Conn) {
					_, _, _ = ws.ReadMessage() // CONNECT
					_ = ws.WriteMessage(websocket.TextMessage, []byte("CONNECTED\nversion:1.2\n\n\x00"))
					_, _ = ws.NetConn().Write(rawFrames(n, split))
					_ = ws.WriteMessage(websocket.TextMessage, []byte("\n")) // a heart-beat
					_, _, _ = ws.ReadMessage()                               // the client has them all
					_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
					_, _, _ = ws.ReadMessage() // the close reply
				}
			})
			c := dial(t, s.url, Options{})
			if _, err := c.Connect(context.Background()); err != nil {
				t.Fatal(err)
			}
			var frames, drained, sinceDrain int
			err := c.ReadLoop(func(f *frame.Frame, binary bool) error {
				if f.Command != frame.MESSAGE || f.Header.Get(frame.MessageId) != strconv.Itoa(frames) || binary {
					t.Errorf("frame %d: %s %v binary=%v", frames, f.Command, f.Header, binary)
				}
				frames++
				sinceDrain++
				return nil
			}, func() {
				if sinceDrain > 0 {
					drained++
				}
				sinceDrain = 0
				if frames == n {
					// The reading goroutine is the only one using c here.
					_ = c.WriteFrame(disconnect)
					_ = c.Flush()
				}
			})
			if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
				t.Errorf("ReadLoop ended with %v, want the normal close", err)
			}
			if frames != n {
				t.Errorf("%d frames, want %d", frames, n)
			}
			if drained < 1 || drained >= n {
				t.Errorf("onDrained after %d batches of frames for %d frames that arrived together", drained, n)
			}
		})
	}
}

func TestPingAnsweredWithoutFlush(t *testing.T) {
	pong := make(chan string, 1)
	s := startServer(t, func(s *server) {
		s.onConn = func(ws *websocket.Conn) {
			ws.SetPongHandler(func(data string) error { pong <- data; return nil })
			_ = ws.WriteControl(websocket.PingMessage, []byte("p1"), time.Now().Add(time.Second))
			_, _, _ = ws.ReadMessage() // reads control frames until the client goes
		}
	})
	c := dial(t, s.url, Options{})
	done := make(chan error, 1)
	go func() { _, _, err := c.ReadFrame(); done <- err }()
	select {
	case got := <-pong:
		if got != "p1" {
			t.Errorf("pong %q, want p1", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no pong")
	}
	c.Close()
	<-done
}

func TestForwardCopiesAndEnds(t *testing.T) {
	s := startServer(t, nil)
	c := dial(t, s.url, Options{AutoFlush: true})
	ctx := context.Background()
	if _, err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	ch := make(chan Received, 10)
	done := make(chan error, 1)
	go func() { done <- c.Forward(ch) }()
	for _, body := range []string{"one", "two"} {
		f := frame.New(frame.SEND, frame.Destination, "/topic/f")
		f.Body = []byte(body)
		if err := c.Send(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"one", "two"} {
		r := <-ch
		if string(r.Frame.Body) != want || r.Binary {
			t.Errorf("got %q binary=%v, want %q", r.Frame.Body, r.Binary, want)
		}
	}
	if err := c.Disconnect(time.Second); err != nil {
		t.Errorf("Disconnect: %v", err)
	}
	if err := <-done; err == nil {
		t.Error("Forward returned nil after the connection closed")
	}
	waitFor(t, func() bool {
		last := s.received()
		return strings.HasPrefix(last[len(last)-1].data, "DISCONNECT\n")
	})
}

func TestServerSilenceEndsReadsWithHeartBeats(t *testing.T) {
	s := startServer(t, func(s *server) {
		s.heartBeat = "20,0"
		s.onConn = func(ws *websocket.Conn) {
			_, _, _ = ws.ReadMessage()
			_ = ws.WriteMessage(websocket.TextMessage, []byte("CONNECTED\nversion:1.2\nheart-beat:20,0\n\n\x00"))
			_, _, _ = ws.ReadMessage() // then silence until the client goes
		}
	})
	c := dial(t, s.url, Options{HeartBeat: HeartBeat{Recv: 20 * time.Millisecond}})
	if _, err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, _, err := c.ReadFrame()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("err = %v, want a timeout", err)
	}
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
