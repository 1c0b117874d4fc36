package relay

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/relay/broker/amqplink"
	"github.com/stompgate/stompgate/relay/broker/stompconn"
	"github.com/stompgate/stompgate/stomp"
	"github.com/stompgate/stompgate/stomp/stompws"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// sockjs-go forgets a closed session after its DisconnectDelay (5s).
		goleak.IgnoreTopFunction("github.com/igm/sockjs-go/v3/sockjs.(*Handler).sessionByRequest.func1"),
	)
}

// edge is an in-process edge on an httptest server, talking to the real
// RabbitMQ in a vhost of its own.
type edge struct {
	t       *testing.T
	srv     *Server
	http    *httptest.Server
	url     string // ws://.../ws
	vhost   string
	metrics *Metrics
	logs    *testenv.SyncBuffer
	// shared is the edge's broker when it runs on shared links
	// (STOMPGATE_TEST_BROKER=shared), else nil.
	shared *amqplink.Broker
}

// sharedLinks reports whether edges on RabbitMQ run on shared links
// (amqplink, what the edge ships with) instead of one STOMP connection per
// session: `make test` runs the relay suite both ways.
func sharedLinks() bool { return os.Getenv("STOMPGATE_TEST_BROKER") == "shared" }

func baseEnv(vhost string) map[string]string {
	return map[string]string{
		"EDGE_JWT_HS256_SECRET": testenv.Secret,
		"EDGE_BROKER_ADDRS":     testenv.StompAddr,
		"EDGE_BROKER_LOGIN":     "guest",
		"EDGE_BROKER_PASSCODE":  "guest",
		"EDGE_BROKER_VHOST":     vhost,
		"EDGE_ALLOWED_ORIGINS":  "https://app.example.com,http://localhost:*",
		"EDGE_LISTEN":           "127.0.0.1:0",
		"EDGE_DRAIN_DELAY":      "0s",
		"EDGE_DRAIN_PERIOD":     "0s",
	}
}

// startEdge starts an edge on a vhost of its own; env overrides the
// defaults of baseEnv.
func startEdge(t *testing.T, env map[string]string) *edge {
	t.Helper()
	return startEdgeWith(t, testenv.Vhost(t), env, nil)
}

// startEdgeWith starts an edge on vhost; deps, when set, adjusts its
// dependencies before the server is built.
func startEdgeWith(t *testing.T, vhost string, env map[string]string, deps func(*Deps)) *edge {
	t.Helper()
	vars := baseEnv(vhost)
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.LoadEdge(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	origins, err := auth.NewOriginPolicy(cfg.AllowedOrigins, cfg.AllowMissingOrigin)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: []byte(cfg.JWTSecret), PublicKeyFiles: cfg.JWTPublicKeys, Leeway: cfg.JWTLeeway}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.SyncBuffer{}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dedicated := stompconn.New(stompconn.Config{Addrs: cfg.BrokerAddrs, Login: cfg.BrokerLogin, Passcode: cfg.BrokerPasscode,
		Vhost: cfg.BrokerVhost, Heartbeat: cfg.BrokerHeartbeat, Timeout: cfg.BrokerTimeout, MaxFrameBytes: cfg.BrokerMaxFrameBytes})
	d := Deps{
		Config: cfg, Verifier: verifier, Origins: origins, Metrics: m,
		Broker:  dedicated,
		Logger:  log,
		Version: "test",
	}
	var shared *amqplink.Broker
	// EDGE_BROKER_MODE=shared in env makes a test's edge use shared links
	// in both passes.
	if (sharedLinks() || env["EDGE_BROKER_MODE"] == "shared") && vhost != "memory" {
		// The URLs derive from EDGE_BROKER_ADDRS as the edge's do.
		shared, err = amqplink.New(amqplink.Config{
			URLs: cfg.BrokerAMQPURLs, Links: cfg.BrokerLinks, MaxDedicated: cfg.MaxDedicated, Dedicated: dedicated,
			Name: t.Name(), Linger: cfg.BrokerLinger, Timeout: cfg.BrokerTimeout, Heartbeat: cfg.BrokerHeartbeat,
			MaxFrameBytes: cfg.BrokerMaxFrameBytes, Registerer: reg, Logger: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		d.Broker = shared
	}
	if deps != nil {
		deps(&d)
	}
	if shared != nil && d.Broker != shared {
		shared.Close() // the test brought its own broker
		shared = nil
	}
	srv := NewServer(context.Background(), d)
	mux := http.NewServeMux()
	srv.Routes(mux)
	hs := httptest.NewServer(mux)
	e := &edge{t: t, srv: srv, http: hs, url: "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws", vhost: vhost, metrics: m, logs: logs, shared: shared}
	t.Cleanup(func() {
		srv.Close()
		hs.Close()
		if shared != nil {
			shared.Close()
		}
		if t.Failed() {
			t.Logf("edge log:\n%s", logs.String())
		}
	})
	return e
}

// client is a raw STOMP-over-WebSocket test client: a thin wrapper over
// stompws.Conn that flushes every write and hands frames over on a channel.
type client struct {
	t      *testing.T
	ws     *stompws.Conn
	resp   *http.Response
	frames chan recvFrame // filled by a reader goroutine; capacity large enough for test bursts
	closed chan struct{}
}

type recvFrame struct {
	f      *frame.Frame
	binary bool
}

func (e *edge) dial(hdr http.Header, protocols ...string) (*client, error) {
	if hdr == nil {
		hdr = http.Header{}
	}
	if _, ok := hdr["Origin"]; !ok {
		hdr.Set("Origin", "https://app.example.com")
	}
	if protocols == nil {
		protocols = []string{"v12.stomp", "v11.stomp", "v10.stomp"}
	}
	// Frames are parsed as STOMP 1.2 unless only 1.0 was offered; send
	// encodes for 1.2 whatever was negotiated.
	version := stomp.V12
	if len(protocols) == 1 && protocols[0] == "v10.stomp" {
		version = stomp.V10
	}
	ws, resp, err := stompws.Dial(context.Background(), e.url, stompws.Options{
		Subprotocols: protocols, Header: hdr, Version: version, HandshakeTimeout: 5 * time.Second, AutoFlush: true,
		Limits: stomp.Limits{MaxFrameBytes: 16 << 20, MaxHeaders: 1000, MaxHeaderBytes: 1 << 20},
	})
	if err != nil {
		return &client{resp: resp}, err
	}
	c := &client{t: e.t, ws: ws, resp: resp, frames: make(chan recvFrame, 100000), closed: make(chan struct{})}
	go c.readLoop()
	e.t.Cleanup(func() { ws.Close(); <-c.closed })
	return c, nil
}

func (e *edge) mustDial(hdr http.Header, protocols ...string) *client {
	e.t.Helper()
	c, err := e.dial(hdr, protocols...)
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	return c
}

func (c *client) readLoop() {
	defer close(c.closed)
	defer close(c.frames)
	err := c.ws.ReadLoop(func(f *frame.Frame, binary bool) error {
		f.Body = append([]byte(nil), f.Body...)
		c.frames <- recvFrame{f: f, binary: binary}
		return nil
	}, nil)
	var fe *stomp.FrameError
	if errors.As(err, &fe) {
		c.t.Errorf("client parse: %v", err)
	}
}

func (c *client) raw(s string) {
	c.t.Helper()
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *client) send(f *frame.Frame) {
	c.t.Helper()
	mt := websocket.TextMessage
	if bytes.ContainsRune(f.Body, 0xFFFD) || !isUTF8(f.Body) {
		mt = websocket.BinaryMessage
	}
	if err := c.ws.WriteMessage(mt, stomp.AppendFrame(nil, f, stomp.V12)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func isUTF8(b []byte) bool { return strings.ToValidUTF8(string(b), "\uFFFD") == string(b) }

// next returns the next frame, failing the test after timeout.
func (c *client) next(timeout time.Duration) recvFrame {
	c.t.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			c.t.Fatalf("connection closed while waiting for a frame")
		}
		return f
	case <-time.After(timeout):
		c.t.Fatalf("no frame within %s", timeout)
	}
	return recvFrame{}
}

// expect reads the next frame and checks its command.
func (c *client) expect(cmd string) *frame.Frame {
	c.t.Helper()
	f := c.next(5 * time.Second).f
	if f.Command != cmd {
		c.t.Fatalf("got %s (%v %q), want %s", f.Command, f.Header, f.Body, cmd)
	}
	return f
}

// expectError reads an ERROR with the given code, then the close.
func (c *client) expectError(code string) *frame.Frame {
	c.t.Helper()
	f := c.expect(frame.ERROR)
	if got := f.Header.Get("x-error-code"); got != code {
		c.t.Fatalf("x-error-code = %q (%s), want %q", got, f.Header.Get("message"), code)
	}
	c.expectClosed(5 * time.Second)
	return f
}

func (c *client) expectClosed(timeout time.Duration) {
	c.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case f, ok := <-c.frames:
			if !ok {
				return
			}
			c.t.Fatalf("unexpected frame before close: %s %v", f.f.Command, f.f.Header)
		case <-deadline:
			c.t.Fatalf("connection not closed within %s", timeout)
		}
	}
}

func (c *client) connect(token string, extra ...string) *frame.Frame {
	c.t.Helper()
	// extra comes first: the first occurrence of a header wins.
	h := append(append([]string{}, extra...), "accept-version", "1.0,1.1,1.2", "host", "/", "heart-beat", "0,0")
	if token != "" {
		h = append(h, "Authorization", "Bearer "+token)
	}
	c.send(frame.New(frame.CONNECT, h...))
	return c.expect(frame.CONNECTED)
}

// amqpChannel opens an AMQP channel on vhost, closed with the test.
func amqpChannel(t *testing.T, vhost string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(testenv.AMQPURL(vhost))
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ch
}

// tap binds a queue to amq.topic with "#" so a test can see everything that
// reaches the broker through topics.
func tap(t *testing.T, ch *amqp.Channel) <-chan amqp.Delivery {
	t.Helper()
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "#", "amq.topic", false, nil); err != nil {
		t.Fatal(err)
	}
	d, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func counter(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

func readAll(r io.Reader) string { b, _ := io.ReadAll(r); return string(b) }

func copyConn(dst, src net.Conn) (int64, error) {
	defer dst.Close()
	return io.Copy(dst, src)
}

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}
