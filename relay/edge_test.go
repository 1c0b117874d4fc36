package relay

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/stomp"
)

func TestSubprotocolNegotiation(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	for _, tc := range []struct {
		offer []string
		want  string
	}{
		{[]string{"v10.stomp", "v11.stomp", "v12.stomp"}, "v12.stomp"},
		{[]string{"v11.stomp"}, "v11.stomp"},
		{[]string{"mqtt"}, ""},
		{[]string{}, ""},
	} {
		c := e.mustDial(nil, tc.offer...)
		if got := c.ws.Subprotocol(); got != tc.want {
			t.Errorf("offer %v: echoed %q, want %q", tc.offer, got, tc.want)
		}
	}
}

func TestConnectRelayAndStamp(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	alice, bob := e.mustDial(nil), e.mustDial(nil)
	cf := alice.connect(testenv.Token(t, "alice", nil), "heart-beat", "0,1000")
	for k, want := range map[string]string{"version": "1.2", "user-name": "alice", "server": "stompgate/test", "heart-beat": "25000,0"} {
		if got := cf.Header.Get(k); got != want {
			t.Errorf("CONNECTED %s = %q, want %q", k, got, want)
		}
	}
	if cf.Header.Get("session") == "" {
		t.Error("CONNECTED has no session header")
	}
	alice.send(frame.New(frame.SUBSCRIBE, "id", "s1", "destination", "/topic/x", "receipt", "sub-1"))
	alice.expect(frame.RECEIPT)
	bob.connect(testenv.Token(t, "bob", nil))

	// A frame split across two WebSocket messages, then two frames in one
	// message; bob tries to pass as mallory.
	send := string(stomp.AppendFrame(nil, &frame.Frame{Command: frame.SEND, Header: frame.NewHeader(
		"destination", "/topic/x", "x-user-id", "mallory", "user-id", "mallory"), Body: []byte("one")}, stomp.V12))
	bob.raw(send[:10])
	bob.raw(send[10:])
	bob.raw("SEND\ndestination:/topic/x\namqp-message-id:m-2\n\ntwo\x00\nSEND\ndestination:/topic/x\n\nthree\x00")

	for _, body := range []string{"one", "two", "three"} {
		m := alice.expect(frame.MESSAGE)
		if string(m.Body) != body {
			t.Fatalf("body %q, want %q", m.Body, body)
		}
		if got := m.Header.GetAll("x-user-id"); len(got) != 1 || got[0] != "bob" {
			t.Errorf("x-user-id = %v, want exactly [bob]", got)
		}
		if m.Header.Get("amqp-message-id") == "" {
			t.Error("no amqp-message-id on relayed SEND")
		}
		if body == "two" && m.Header.Get("amqp-message-id") != "m-2" {
			t.Errorf("client amqp-message-id not kept: %q", m.Header.Get("amqp-message-id"))
		}
	}

	// From the AMQP side the identity is a header and the id a property.
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	bob.send(frame.New(frame.SEND, "destination", "/topic/x", "x-user-id", "root"))
	d := <-deliveries
	if d.Headers["x-user-id"] != "bob" || d.MessageId == "" {
		t.Errorf("AMQP side: x-user-id=%v message_id=%q", d.Headers["x-user-id"], d.MessageId)
	}
	alice.expect(frame.MESSAGE)

	// A message published over AMQP reaches the STOMP subscriber.
	if err := ch.Publish("amq.topic", "x", false, false, amqp.Publishing{Body: []byte("from-amqp"), ContentType: "text/plain"}); err != nil {
		t.Fatal(err)
	}
	if m := alice.expect(frame.MESSAGE); string(m.Body) != "from-amqp" {
		t.Fatalf("AMQP message body %q", m.Body)
	}
}

func TestVersionEscaping(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	v10, v11 := e.mustDial(nil, "v10.stomp"), e.mustDial(nil, "v11.stomp")
	v10.send(frame.New(frame.CONNECT, "accept-version", "1.0", "Authorization", "Bearer "+testenv.Token(t, "a", nil)))
	if cf := v10.expect(frame.CONNECTED); cf.Header.Get("version") != "1.0" {
		t.Errorf("1.0 CONNECTED version %q, want 1.0 (as RabbitMQ says it)", cf.Header.Get("version"))
	}
	v11.send(frame.New(frame.CONNECT, "accept-version", "1.1", "Authorization", "Bearer "+testenv.Token(t, "b", nil)))
	if cf := v11.expect(frame.CONNECTED); cf.Header.Get("version") != "1.1" {
		t.Errorf("1.1 CONNECTED version %q", cf.Header.Get("version"))
	}
	v10.raw("SUBSCRIBE\ndestination:/topic/esc\nreceipt:r\n\n\x00")
	v10.expect(frame.RECEIPT)
	v11.raw("SUBSCRIBE\nid:1\ndestination:/topic/esc\nreceipt:r\n\n\x00")
	v11.expect(frame.RECEIPT)
	// 1.1 escapes: colon and newline in a value.
	v11.raw("SEND\ndestination:/topic/esc\nnote:a\\cb\\nc\n\nx\x00")
	if m := v11.expect(frame.MESSAGE); m.Header.Get("note") != "a:b\nc" {
		t.Errorf("1.1 client sees note=%q", m.Header.Get("note"))
	}
	// The 1.0 client gets the colon raw and the line break dropped, never a
	// header injected by it.
	m := v10.expect(frame.MESSAGE)
	if got := m.Header.Get("note"); got != "a:bc" {
		t.Errorf("1.0 client sees note=%q, want %q", got, "a:bc")
	}
}

func TestBinaryBodyGoesOutAsBinaryMessage(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil))
	c.raw("SUBSCRIBE\nid:1\ndestination:/topic/bin\nreceipt:r\n\n\x00")
	c.expect(frame.RECEIPT)
	body := []byte{0xff, 0x00, 0xfe, 'a'}
	c.send(&frame.Frame{Command: frame.SEND, Header: frame.NewHeader("destination", "/topic/bin", "content-length", "4"), Body: body})
	r := c.next(5 * time.Second)
	if r.f.Command != frame.MESSAGE || string(r.f.Body) != string(body) {
		t.Fatalf("got %s %q", r.f.Command, r.f.Body)
	}
	if !r.binary {
		t.Fatal("non-UTF-8 body sent as a text WebSocket message")
	}
	c.send(frame.New(frame.SEND, "destination", "/topic/bin"))
	if r := c.next(5 * time.Second); r.binary {
		t.Fatal("UTF-8 frame sent as binary")
	}
}

func TestDisconnectReceiptArrivesBeforeClose(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil))
	c.raw("DISCONNECT\nreceipt:bye-1\n\n\x00")
	if r := c.expect(frame.RECEIPT); r.Header.Get("receipt-id") != "bye-1" {
		t.Fatalf("receipt-id %q", r.Header.Get("receipt-id"))
	}
	c.expectClosed(5 * time.Second)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := counter(e.metrics.BrokerConnections); n != 0 {
			return fmt.Errorf("%v broker connections open", n)
		}
		return nil
	})
}

func TestUnauthenticatedNothingReachesBroker(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	other := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "x", "exp": time.Now().Add(time.Hour).Unix()})
	forged, _ := other.SignedString([]byte("some-other-secret-some-other-secret-00"))
	cases := map[string]string{
		"no token":   "",
		"expired":    testenv.Token(t, "a", jwt.MapClaims{"exp": time.Now().Add(-time.Hour).Unix()}),
		"forged":     forged,
		"alg none":   "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo0MTAyNDQ0ODAwfQ.",
		"no sub":     testenv.Token(t, "", jwt.MapClaims{"sub": nil}),
		"no exp":     testenv.Token(t, "a", jwt.MapClaims{"exp": nil}),
		"garbage":    "not.a.jwt",
		"in passcod": "passcode",
	}
	for name, tok := range cases {
		c := e.mustDial(nil)
		connect := "CONNECT\naccept-version:1.2\n"
		switch {
		case name == "in passcod":
			connect += "login:guest\npasscode:guest\n"
		case tok != "":
			connect += "Authorization:Bearer " + tok + "\n"
		}
		// CONNECT and a SEND in the same message: the SEND must never be relayed.
		c.raw(connect + "\n\x00SEND\ndestination:/topic/leak\n\nleak\x00")
		f := c.expectError(CodeUnauthenticated)
		if strings.Contains(f.Header.Get("message"), tok) && tok != "" {
			t.Errorf("%s: ERROR echoes the token", name)
		}
	}
	// A SEND before any CONNECT is refused too.
	c := e.mustDial(nil)
	c.raw("SEND\ndestination:/topic/leak\n\nleak\x00")
	c.expectError(CodeBadFrame)

	// Prove the tap works, then that it saw nothing before.
	if err := ch.Publish("amq.topic", "marker", false, false, amqp.Publishing{Body: []byte("marker")}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-deliveries:
		if string(d.Body) != "marker" {
			t.Fatalf("an unauthenticated SEND reached the broker: %q", d.Body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("tap saw nothing")
	}
	if n := counter(e.metrics.BrokerConnections); n != 0 {
		t.Fatalf("%v broker connections were opened for unauthenticated clients", n)
	}
}

func TestOriginPolicy(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	for origin, want := range map[string]int{
		"https://evil.example.com":     http.StatusForbidden,
		"http://localhost:3000":        http.StatusSwitchingProtocols,
		"https://app.example.com":      http.StatusSwitchingProtocols,
		"https://app.example.com.evil": http.StatusForbidden,
	} {
		c, err := e.dial(http.Header{"Origin": {origin}})
		if c.resp == nil {
			t.Fatalf("%s: no response: %v", origin, err)
		}
		if c.resp.StatusCode != want {
			t.Errorf("Origin %s: status %d, want %d", origin, c.resp.StatusCode, want)
		}
	}
	// A cookie-authenticated upgrade needs an allowed Origin, not a missing one.
	tok := testenv.Token(t, "a", nil)
	req, _ := http.NewRequest("GET", e.http.URL+"/ws", nil)
	req.Header = http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}, "Cookie": {"access_token=" + tok}}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cookie upgrade without Origin: %d, want 403", resp.StatusCode)
	}
	// With an allowed Origin the cookie authenticates the session.
	c := e.mustDial(http.Header{"Cookie": {"access_token=" + tok}})
	c.raw("CONNECT\naccept-version:1.2\n\n\x00")
	if cf := c.expect(frame.CONNECTED); cf.Header.Get("user-name") != "a" {
		t.Fatalf("cookie session user-name %q", cf.Header.Get("user-name"))
	}
}

func TestTokenSources(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	upgrade := e.mustDial(http.Header{"Authorization": {"Bearer " + testenv.Token(t, "hdr", nil)}})
	upgrade.raw("CONNECT\naccept-version:1.2\nAuthorization:Bearer " + testenv.Token(t, "frame", nil) + "\n\n\x00")
	if got := upgrade.expect(frame.CONNECTED).Header.Get("user-name"); got != "hdr" {
		t.Errorf("upgrade header should win over CONNECT, got %q", got)
	}
	pass := e.mustDial(nil)
	pass.raw("CONNECT\naccept-version:1.2\nlogin:x\npasscode:" + testenv.Token(t, "pc", nil) + "\n\n\x00")
	if got := pass.expect(frame.CONNECTED).Header.Get("user-name"); got != "pc" {
		t.Errorf("passcode token: user-name %q", got)
	}
	saved := e.url
	e.url += "?access_token=" + testenv.Token(t, "q", nil)
	query := e.mustDial(nil)
	e.url = saved
	query.raw("CONNECT\naccept-version:1.2\n\n\x00")
	if got := query.expect(frame.CONNECTED).Header.Get("user-name"); got != "q" {
		t.Errorf("query token: user-name %q", got)
	}
}

func TestFrameAndHeaderLimits(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	big := e.mustDial(nil)
	big.connect(testenv.Token(t, "a", nil))
	big.raw("SEND\ndestination:/topic/big\n\n" + strings.Repeat("x", 70<<10) + "\x00")
	big.expectError(CodeFrameTooLarge)

	// The same 70 KiB split over many WebSocket messages is refused too.
	split := e.mustDial(nil)
	split.connect(testenv.Token(t, "a", nil))
	split.raw("SEND\ndestination:/topic/big\n\n")
	for i := 0; i < 70; i++ {
		if err := split.ws.WriteMessage(websocket.TextMessage, []byte(strings.Repeat("y", 1024))); err != nil {
			break // the edge may already have closed
		}
	}
	split.expectError(CodeFrameTooLarge)

	many := e.mustDial(nil)
	many.connect(testenv.Token(t, "a", nil))
	many.raw("SEND\ndestination:/topic/big\n" + strings.Repeat("h:v\n", 70) + "\nz\x00")
	many.expectError(CodeFrameTooLarge)

	select {
	case d := <-deliveries:
		t.Fatalf("an oversized frame reached the broker: %d bytes", len(d.Body))
	case <-time.After(300 * time.Millisecond):
	}
	// 64 KiB in all is still fine.
	ok := e.mustDial(nil)
	ok.connect(testenv.Token(t, "a", nil))
	ok.raw("SEND\ndestination:/topic/big\n\n" + strings.Repeat("x", 60<<10) + "\x00")
	if d := <-deliveries; len(d.Body) != 60<<10 {
		t.Fatalf("60 KiB body arrived with %d bytes", len(d.Body))
	}
}

func TestSubscriptionLimit(t *testing.T) {
	t.Parallel()
	e := startEdge(t, map[string]string{"EDGE_MAX_SUBSCRIPTIONS": "2"})
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil))
	c.raw("SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\x00SUBSCRIBE\nid:2\ndestination:/topic/b\n\n\x00UNSUBSCRIBE\nid:2\n\n\x00SUBSCRIBE\nid:3\ndestination:/topic/c\nreceipt:ok\n\n\x00")
	c.expect(frame.RECEIPT)
	c.raw("SUBSCRIBE\nid:4\ndestination:/topic/d\n\n\x00")
	c.expectError(CodeTooManySubscriptions)
}

func TestZombieClientIsClosed(t *testing.T) {
	t.Parallel()
	e := startEdge(t, map[string]string{"EDGE_HEARTBEAT": "200ms"})
	c := e.mustDial(nil)
	cf := c.connect(testenv.Token(t, "a", nil), "heart-beat", "200,200")
	if got := cf.Header.Get("heart-beat"); got != "200,200" {
		t.Fatalf("heart-beat %q, want 200,200", got)
	}
	if counter(e.metrics.BrokerConnections) != 1 {
		t.Fatal("no broker connection")
	}
	// The client now sends nothing: within 1.5 × 200ms (plus scheduling) the
	// edge must close it and release the broker connection. The edge's own
	// heart-beats keep arriving meanwhile.
	// 1.5 × 200ms = 300ms; the bound leaves scheduling slack but fails a
	// read limit of 4× or more.
	start := time.Now()
	c.expectClosed(1200 * time.Millisecond)
	t.Logf("zombie closed after %s", time.Since(start))
	testenv.WaitFor(t, 3*time.Second, func() error {
		if n := counter(e.metrics.BrokerConnections); n != 0 {
			return fmt.Errorf("%v broker connections", n)
		}
		if n := counter(e.metrics.SessionsClosed.WithLabelValues("heart-beat_timeout")); n != 1 {
			return fmt.Errorf("heart-beat timeouts = %v", n)
		}
		return nil
	})

	// A client that does heart-beat stays connected (its own edge with a
	// wider interval: on a loaded machine a 100 ms ticker against a 300 ms
	// limit is a race the test would lose, not the edge).
	e = startEdge(t, map[string]string{"EDGE_HEARTBEAT": "1s"})
	live := e.mustDial(nil)
	live.connect(testenv.Token(t, "b", nil), "heart-beat", "1000,1000")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				_ = live.ws.WriteMessage(websocket.TextMessage, []byte("\n"))
			}
		}
	}()
	time.Sleep(3 * time.Second) // real time must pass: twice the 1.5 s limit
	close(stop)
	wg.Wait()
	live.raw("SUBSCRIBE\nid:1\ndestination:/topic/a\nreceipt:alive\n\n\x00")
	live.expect(frame.RECEIPT)
}

func TestSlowConsumerDoesNotStallOthers(t *testing.T) {
	t.Parallel()
	e := startEdge(t, map[string]string{
		"EDGE_MAX_FRAME_BYTES": "16KiB", "EDGE_SEND_BUFFER_BYTES": "256KiB", "EDGE_SEND_TIME_LIMIT": "3s",
	})
	fast := e.mustDial(nil)
	fast.connect(testenv.Token(t, "fast", nil))
	fast.raw("SUBSCRIBE\nid:1\ndestination:/topic/flood\nreceipt:r\n\n\x00")
	fast.expect(frame.RECEIPT)
	// The slow client subscribes, then never reads its socket again.
	slow, _, err := websocket.DefaultDialer.Dial(e.url, http.Header{"Origin": {"https://app.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slow.Close() })
	_ = slow.NetConn().(*net.TCPConn).SetReadBuffer(4096)
	_ = slow.WriteMessage(websocket.TextMessage, []byte("CONNECT\naccept-version:1.2\nAuthorization:Bearer "+testenv.Token(t, "slow", nil)+"\n\n\x00"))
	_ = slow.WriteMessage(websocket.TextMessage, []byte("SUBSCRIBE\nid:1\ndestination:/topic/flood\nreceipt:r\n\n\x00"))
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := counter(e.metrics.FramesIn.WithLabelValues(frame.SUBSCRIBE)); n != 2 {
			return fmt.Errorf("%v SUBSCRIBEs seen", n)
		}
		return nil
	})
	// Both subscriptions bound at the broker: one queue each on dedicated
	// connections, one shared queue on shared links.
	want := 2
	if e.shared != nil {
		want = 1
	}
	testenv.WaitFor(t, 5*time.Second, func() error {
		qs, err := testenv.Queues(e.vhost)
		if err != nil {
			return err
		}
		if len(qs) != want {
			return fmt.Errorf("%d queues, want %d", len(qs), want)
		}
		return nil
	})

	// 20 MB in all: more than the kernel buffers between the edge and the
	// slow client can hold. The publisher waits whenever the fast client is
	// more than 100 messages behind, so the fast client is never the slow one.
	const n = 20000
	body := strings.Repeat("z", 1024)
	ch := amqpChannel(t, e.vhost)
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for got.Load() < n {
			r, ok := <-fast.frames
			if !ok {
				return
			}
			if r.f.Command == frame.MESSAGE {
				got.Add(1)
			}
		}
	}()
	for i := 0; i < n; i++ {
		for int64(i)-got.Load() > 100 {
			select {
			case <-done:
				t.Fatalf("fast client stopped after %d of %d", got.Load(), n)
			case <-time.After(time.Millisecond):
			}
		}
		if err := ch.Publish("amq.topic", "flood", false, false, amqp.Publishing{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("fast client received %d of %d", got.Load(), n)
	}
	if got.Load() != n {
		t.Fatalf("fast client received %d of %d", got.Load(), n)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if v := counter(e.metrics.SessionsClosed.WithLabelValues(CodeSlowConsumer)); v != 1 {
			return fmt.Errorf("slow_consumer closes = %v", v)
		}
		return nil
	})
}

func TestBrokerErrorIsRelayed(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil))
	c.raw("SUBSCRIBE\nid:1\ndestination:/amq/queue/does-not-exist\n\n\x00")
	f := c.expectError(CodeBroker)
	if f.Header.Get("message") == "" {
		t.Error("broker ERROR lost its message header")
	}
}

func TestAckNackAndTransactions(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil))
	c.raw("SUBSCRIBE\nid:q\ndestination:/queue/work\nack:client-individual\nreceipt:r\n\n\x00")
	c.expect(frame.RECEIPT)
	c.raw("SEND\ndestination:/queue/work\n\njob-1\x00")
	m := c.expect(frame.MESSAGE)
	c.raw("NACK\nid:" + m.Header.Get("ack") + "\n\n\x00")
	again := c.expect(frame.MESSAGE)
	if string(again.Body) != "job-1" || again.Header.Get("redelivered") != "true" {
		t.Fatalf("after NACK got %q redelivered=%q", again.Body, again.Header.Get("redelivered"))
	}
	c.raw("ACK\nid:" + again.Header.Get("ack") + "\nreceipt:acked\n\n\x00")
	c.expect(frame.RECEIPT)

	// A transaction: nothing is delivered before COMMIT; ABORT discards.
	c.raw("BEGIN\ntransaction:t1\n\n\x00SEND\ndestination:/queue/work\ntransaction:t1\n\ntx-1\x00")
	c.raw("BEGIN\ntransaction:t2\n\n\x00SEND\ndestination:/queue/work\ntransaction:t2\n\naborted\x00ABORT\ntransaction:t2\n\n\x00")
	select {
	case r := <-c.frames:
		t.Fatalf("delivered before COMMIT: %s %q", r.f.Command, r.f.Body)
	case <-time.After(300 * time.Millisecond):
	}
	c.raw("COMMIT\ntransaction:t1\n\n\x00")
	m = c.expect(frame.MESSAGE)
	if string(m.Body) != "tx-1" {
		t.Fatalf("after COMMIT got %q", m.Body)
	}
	c.raw("ACK\nid:" + m.Header.Get("ack") + "\n\n\x00")

	// Durable queue survives the session: close and check the queue is empty
	// of acked work (management stats lag, so poll).
	c.raw("DISCONNECT\nreceipt:bye\n\n\x00")
	c.expect(frame.RECEIPT)
	testenv.WaitFor(t, 15*time.Second, func() error {
		qs, err := testenv.Queues(e.vhost)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.Name == "work" && q.Messages == 0 {
				return nil
			}
		}
		return fmt.Errorf("queue work not empty yet: %+v", qs)
	})
}

func TestTempQueueReplyTo(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	server, caller := e.mustDial(nil), e.mustDial(nil)
	server.connect(testenv.Token(t, "svc", nil))
	caller.connect(testenv.Token(t, "caller", nil))
	server.raw("SUBSCRIBE\nid:1\ndestination:/queue/rpc\nreceipt:r\n\n\x00")
	server.expect(frame.RECEIPT)
	caller.raw("SEND\ndestination:/queue/rpc\nreply-to:/temp-queue/answers\n\nping\x00")
	req := server.expect(frame.MESSAGE)
	replyTo := req.Header.Get("reply-to")
	if !strings.HasPrefix(replyTo, "/reply-queue/") {
		t.Fatalf("reply-to %q", replyTo)
	}
	server.send(&frame.Frame{Command: frame.SEND, Header: frame.NewHeader("destination", replyTo), Body: []byte("pong")})
	if m := caller.expect(frame.MESSAGE); string(m.Body) != "pong" {
		t.Fatalf("reply body %q", m.Body)
	}
}

func TestAdmissionControl(t *testing.T) {
	t.Parallel()
	e := startEdge(t, map[string]string{"EDGE_MAX_CONNECTIONS": "1"})
	e.mustDial(nil)
	_, err := e.dial(nil)
	c, _ := e.dial(nil)
	if err == nil || c.resp == nil || c.resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("second connection over EDGE_MAX_CONNECTIONS=1: %v", err)
	}
	if ra := c.resp.Header.Get("Retry-After"); ra == "" {
		t.Fatal("503 without Retry-After")
	}

	r := startEdge(t, map[string]string{"EDGE_ACCEPT_RATE": "0.5"}) // burst 1
	r.mustDial(nil)
	c, err = r.dial(nil)
	if err == nil || c.resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("connection over EDGE_ACCEPT_RATE: %v", err)
	}

	u := startEdge(t, map[string]string{"EDGE_MAX_SESSIONS_PER_USER": "2"})
	tok := testenv.Token(t, "tabs", nil)
	u.mustDial(nil).connect(tok)
	u.mustDial(nil).connect(tok)
	third := u.mustDial(nil)
	third.raw("CONNECT\naccept-version:1.2\nAuthorization:Bearer " + tok + "\n\n\x00")
	third.expectError(CodeTooManySessions)
}

func TestDrainClosesSessionsWithShuttingDown(t *testing.T) {
	t.Parallel()
	e := startEdge(t, map[string]string{"EDGE_DRAIN_DELAY": "100ms", "EDGE_DRAIN_PERIOD": "300ms"})
	var cs []*client
	for i := 0; i < 3; i++ {
		c := e.mustDial(nil)
		c.connect(testenv.Token(t, fmt.Sprint("u", i), nil))
		cs = append(cs, c)
	}
	drained := make(chan error, 1)
	go func() { drained <- e.srv.Drain(t.Context()) }()
	testenv.WaitFor(t, 2*time.Second, func() error {
		if s := e.readyz(); s != http.StatusServiceUnavailable {
			return fmt.Errorf("readyz %d while draining", s)
		}
		return nil
	})
	if _, err := e.dial(nil); err == nil {
		t.Fatal("new session admitted while draining")
	}
	for _, c := range cs {
		c.expectError(CodeShuttingDown)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}

func TestBrokerLossAndReadiness(t *testing.T) {
	t.Parallel()
	// TCP proxies between edge and broker (its STOMP port and, for shared
	// links, its AMQP port) let the test cut the broker off.
	var mu sync.Mutex
	var conns []net.Conn
	var refuse atomic.Bool
	proxy := func(target string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if refuse.Load() {
					c.Close()
					continue
				}
				b, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					continue
				}
				mu.Lock()
				conns = append(conns, c, b)
				mu.Unlock()
				go func() { _, _ = copyConn(b, c) }()
				go func() { _, _ = copyConn(c, b) }()
			}
		}()
		t.Cleanup(func() { ln.Close() })
		return ln.Addr().String()
	}
	t.Cleanup(func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	vhost := testenv.Vhost(t)
	env := map[string]string{"EDGE_BROKER_ADDRS": proxy(testenv.StompAddr)}
	if sharedLinks() {
		env["EDGE_BROKER_AMQP_URLS"] = "amqp://guest:guest@" + proxy(testenv.AMQPHost) + "/" + url.PathEscape(vhost)
		// A CONNECT waits this long for a link to come back before it
		// gets broker_unavailable.
		env["EDGE_BROKER_TIMEOUT"] = "1s"
	}
	e := startEdgeWith(t, vhost, env, nil)
	probeCtx, stopProbe := contextWithCancel(t)
	probeDone := make(chan struct{})
	go func() { e.srv.ProbeBroker(probeCtx, 100*time.Millisecond); close(probeDone) }()
	t.Cleanup(func() { stopProbe(); <-probeDone })
	readyz := e.readyz
	testenv.WaitFor(t, 5*time.Second, func() error {
		if s := readyz(); s != 200 {
			return fmt.Errorf("readyz %d", s)
		}
		return nil
	})
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil))
	refuse.Store(true)
	mu.Lock()
	for _, cn := range conns {
		cn.Close()
	}
	mu.Unlock()
	c.expectError(CodeBrokerUnavailable)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if s := readyz(); s != 503 {
			return fmt.Errorf("readyz %d with the broker gone", s)
		}
		return nil
	})
	again := e.mustDial(nil)
	again.raw("CONNECT\naccept-version:1.2\nAuthorization:Bearer " + testenv.Token(t, "a", nil) + "\n\n\x00")
	again.expectError(CodeBrokerUnavailable)
	refuse.Store(false)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if s := readyz(); s != 200 {
			return fmt.Errorf("readyz %d after the broker came back", s)
		}
		return nil
	})
}

func TestFrameTraceRedactsTokens(t *testing.T) {
	t.Parallel()
	e := startEdge(t, map[string]string{"EDGE_LOG_FRAMES": "true"})
	tok := testenv.Token(t, "a", nil)
	c := e.mustDial(nil)
	c.connect(tok, "passcode", "secret-passcode")
	c.raw("SEND\ndestination:/topic/t\n\n" + strings.Repeat("b", 1000) + "\x00")
	c.raw("DISCONNECT\nreceipt:x\n\n\x00")
	c.expect(frame.RECEIPT)
	testenv.WaitFor(t, 2*time.Second, func() error {
		if !strings.Contains(e.logs.String(), "command=SEND") {
			return fmt.Errorf("no SEND in the frame trace")
		}
		return nil
	})
	logs := e.logs.String()
	if strings.Contains(logs, tok) || strings.Contains(logs, "secret-passcode") {
		t.Fatal("frame trace leaks a token or passcode")
	}
	if strings.Contains(logs, strings.Repeat("b", 257)) {
		t.Fatal("frame trace body not cut to 256 bytes")
	}
}

func TestTokenExpiryClosesIdleSession(t *testing.T) {
	t.Parallel()
	e := startEdge(t, map[string]string{"EDGE_TOKEN_EXPIRY_GRACE": "200ms", "EDGE_JWT_LEEWAY": "0s"})
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", jwt.MapClaims{"exp": time.Now().Add(1500 * time.Millisecond).Unix()}))
	c.raw("SUBSCRIBE\nid:1\ndestination:/topic/a\nreceipt:r\n\n\x00")
	c.expect(frame.RECEIPT)
	// Idle: the edge closes at exp + grace without any client frame.
	f := c.next(5 * time.Second).f
	if f.Command != frame.ERROR || f.Header.Get("x-error-code") != CodeTokenExpired {
		t.Fatalf("got %s %v, want ERROR token_expired", f.Command, f.Header)
	}
}

// staleRevocations is a revocation list whose database is unreachable: the
// edge keeps enforcing the last known list and says so in /readyz.
type staleRevocations struct{}

func (staleRevocations) IsRevoked(sub, _ string) (bool, string) {
	return sub == "banned", "last known list"
}
func (staleRevocations) Healthy() bool { return false }

func TestReadyzReportsStaleRevocations(t *testing.T) {
	t.Parallel()
	e := startEdgeWith(t, testenv.Vhost(t), nil, func(d *Deps) { d.Revocations = staleRevocations{} })
	resp, err := http.Get(e.http.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"revocations":"stale"`) {
		t.Fatalf("readyz %d %s: want 200 with revocations stale", resp.StatusCode, body)
	}
	c := e.mustDial(nil)
	c.raw("CONNECT\naccept-version:1.2\nAuthorization:Bearer " + testenv.Token(t, "banned", nil) + "\n\n\x00")
	c.expectError(CodeRevoked)

	off := startEdge(t, nil)
	resp, err = http.Get(off.http.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(resp.Body); !strings.Contains(body, `"revocations":"off"`) {
		t.Fatalf("readyz without a database: %s", body)
	}
	resp.Body.Close()
}
