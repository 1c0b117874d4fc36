package relay

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/relay/broker/memory"
)

// Session tests against the in-memory broker: they run in make test-unit,
// with no service and no network. The same behaviour against RabbitMQ is
// covered by edge_test.go and attack_test.go.

// TestSessionRefusalsReachNothing runs one refused frame per check of the
// SEND/SUBSCRIBE path and asserts the ERROR code and that nothing reached
// the broker. (The order of the checks is guard_test.go's.)
func TestSessionRefusalsReachNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		claims jwt.MapClaims
		frames string
		code   string
	}{
		{"no permission", jwt.MapClaims{"scope": "send:/topic/public.#"}, "SEND\ndestination:/topic/private.x\n\nx\x00", CodeForbidden},
		{"bad destination", nil, "SEND\ndestination:/topic/a..b\n\nx\x00", CodeForbidden},
		{"unknown prefix", nil, "SEND\ndestination:/nowhere/x\n\nx\x00", CodeForbidden},
		{"declaring header", nil, "SEND\ndestination:/queue/q\nx-max-length:1\n\nx\x00", CodeForbidden},
		{"subscribe without permission", jwt.MapClaims{"scope": "send:/topic/a"}, "SUBSCRIBE\nid:1\ndestination:/topic/a\n\n\x00", CodeForbidden},
		{"wildcard wider than the grant", jwt.MapClaims{"scope": "subscribe:/topic/room.1"}, "SUBSCRIBE\nid:1\ndestination:/topic/room.*\n\n\x00", CodeForbidden},
		{"subscribe without id", nil, "SUBSCRIBE\ndestination:/topic/a\n\n\x00", CodeBadFrame},
		{"ack without id", nil, "ACK\nmessage-id:1\n\n\x00", CodeBadFrame},
		{"begin without transaction", nil, "BEGIN\n\n\x00", CodeBadFrame},
		{"bad ack mode", nil, "SUBSCRIBE\nid:1\ndestination:/topic/a\nack:sometimes\n\n\x00", CodeBadFrame},
		{"second CONNECT", nil, "CONNECT\naccept-version:1.2\n\n\x00", CodeBadFrame},
		{"frame too large", nil, "SEND\ndestination:/topic/a\n\n" + strings.Repeat("x", 70<<10) + "\x00", CodeFrameTooLarge},
		{"user destination without a grant", nil, "SEND\ndestination:/user/bob/queue/inbox\n\nx\x00", CodeForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, mb := startMemEdge(t, nil, nil)
			tapped := mb.Tap("amq.topic", "#")
			c := e.mustDial(nil)
			c.connect(testenv.Token(t, "alice", tc.claims))
			c.raw(tc.frames)
			c.expectError(tc.code)
			select {
			case d := <-tapped:
				t.Fatalf("a refused frame reached the broker: %s %q", d.Key, d.Body)
			default:
			}
			if n := counter(e.metrics.Rejections.WithLabelValues(tc.code)); n != 1 {
				t.Fatalf("rejections{%s} = %v", tc.code, n)
			}
		})
	}
}

func TestSessionRelaysAndStampsIdentity(t *testing.T) {
	t.Parallel()
	e, mb := startMemEdge(t, nil, nil)
	tapped := mb.Tap("amq.topic", "#")
	sub := e.mustDial(nil)
	sub.connect(testenv.Token(t, "bob", nil))
	sub.raw("SUBSCRIBE\nid:s\ndestination:/topic/room.*\nreceipt:sub\n\n\x00")
	if r := sub.expect(frame.RECEIPT); r.Header.Get(frame.ReceiptId) != "sub" {
		t.Fatalf("receipt-id %q", r.Header.Get(frame.ReceiptId))
	}
	pub := e.mustDial(nil)
	pub.connect(testenv.Token(t, "alice", nil))
	pub.raw("SEND\ndestination:/topic/room.1\nx-user-id:mallory\nuser-id:mallory\ncolor:blue\nreceipt:sent\n\nhello\x00")
	pub.expect(frame.RECEIPT)
	m := sub.expect(frame.MESSAGE)
	if got := m.Header.Get("x-user-id"); got != "alice" {
		t.Fatalf("x-user-id %q, want alice (stamped by the edge)", got)
	}
	if m.Header.Get("color") != "blue" || string(m.Body) != "hello" || m.Header.Get(frame.Subscription) != "s" {
		t.Fatalf("MESSAGE %v %q", m.Header, m.Body)
	}
	if _, ok := m.Header.Contains("user-id"); ok {
		t.Fatal("client user-id reached the subscriber")
	}
	if d := <-tapped; d.Header.Get("amqp-message-id") == "" {
		t.Fatal("the edge did not set amqp-message-id")
	}
}

// TestSessionDisconnectReceiptBeforeClose: the RECEIPT for DISCONNECT, and
// everything queued before it, arrive before the close.
func TestSessionDisconnectReceiptBeforeClose(t *testing.T) {
	t.Parallel()
	e, _ := startMemEdge(t, nil, nil)
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil))
	c.raw("SUBSCRIBE\nid:1\ndestination:/topic/x\n\n\x00SEND\ndestination:/topic/x\n\nlast words\x00DISCONNECT\nreceipt:bye\n\n\x00")
	if m := c.expect(frame.MESSAGE); string(m.Body) != "last words" {
		t.Fatalf("body %q", m.Body)
	}
	if r := c.expect(frame.RECEIPT); r.Header.Get(frame.ReceiptId) != "bye" {
		t.Fatalf("receipt-id %q", r.Header.Get(frame.ReceiptId))
	}
	c.expectClosed(5 * time.Second)
	testenv.WaitFor(t, 5*time.Second, func() error {
		if n := counter(e.metrics.SessionsClosed.WithLabelValues("client_disconnect")); n != 1 {
			return fmt.Errorf("client_disconnect closes = %v", n)
		}
		return nil
	})
}

// TestSessionBrokerErrorEndsOnlyThatSession: RabbitMQ's ERROR (here: an
// unknown /amq/queue/) is relayed with x-error-code broker, and the broker
// stays up for everyone else.
func TestSessionBrokerErrorEndsOnlyThatSession(t *testing.T) {
	t.Parallel()
	e, _ := startMemEdge(t, nil, nil)
	other := e.mustDial(nil)
	other.connect(testenv.Token(t, "b", nil))
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil))
	c.raw("SUBSCRIBE\nid:1\ndestination:/amq/queue/missing\nreceipt:r1\n\n\x00")
	f := c.expectError(CodeBroker)
	if !strings.Contains(f.Header.Get(frame.Message), "not_found") || f.Header.Get(frame.ReceiptId) != "r1" {
		t.Fatalf("ERROR %v", f.Header)
	}
	other.raw("SUBSCRIBE\nid:1\ndestination:/topic/a\nreceipt:ok\n\n\x00")
	other.expect(frame.RECEIPT)
	if !e.srv.brokerUp.Load() {
		t.Fatal("a broker ERROR for one session marked the broker down")
	}
}

func TestSessionBrokerLossClosesAndReadiness(t *testing.T) {
	t.Parallel()
	e, mb := startMemEdge(t, nil, nil)
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil))
	mb.SetDown(true)
	mb.Drop()
	c.expectError(CodeBrokerUnavailable)
	if got := e.readyz(); got != http.StatusServiceUnavailable {
		t.Fatalf("/readyz %d while the broker is down", got)
	}
	refused := e.mustDial(nil)
	refused.send(frame.New(frame.CONNECT, "accept-version", "1.2", "Authorization", "Bearer "+testenv.Token(t, "a", nil)))
	refused.expectError(CodeBrokerUnavailable)
	mb.SetDown(false)
	e.srv.brokerFailed(nil) // ask the prober to look again; it is not running in tests
	if err := mb.Probe(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestSessionHeartbeatNegotiation checks the CONNECTED heart-beat for each
// client offer, and that the edge's EOLs arrive.
func TestSessionHeartbeatNegotiation(t *testing.T) {
	t.Parallel()
	tests := []struct{ edge, client, want string }{
		{"100ms", "0,0", "0,0"},
		{"100ms", "200,0", "0,100"},   // client sends every 200ms; wants none
		{"100ms", "0,300", "300,0"},   // client wants one every 300ms, sends none
		{"100ms", "50,50", "100,100"}, // the edge never goes below its own interval
		{"0s", "1000,1000", "0,0"},    // heart-beats off at the edge
		{"100ms", "", "0,0"},          // no header: none
		{"200ms", "1000,150", "200,200"},
	}
	for _, tc := range tests {
		t.Run(tc.edge+"/"+tc.client, func(t *testing.T) {
			t.Parallel()
			e, _ := startMemEdge(t, map[string]string{"EDGE_HEARTBEAT": tc.edge}, nil)
			ws, _, err := websocket.DefaultDialer.Dial(e.url, http.Header{"Origin": {"https://app.example.com"}})
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			hb := ""
			if tc.client != "" {
				hb = "heart-beat:" + tc.client + "\n"
			}
			_ = ws.WriteMessage(websocket.TextMessage, []byte("CONNECT\naccept-version:1.2\n"+hb+"Authorization:Bearer "+testenv.Token(t, "a", nil)+"\n\n\x00"))
			_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, msg, err := ws.ReadMessage()
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(msg), "\nheart-beat:"+tc.want+"\n") {
				t.Fatalf("CONNECTED %q, want heart-beat:%s", msg, tc.want)
			}
			if !strings.HasPrefix(tc.want, "0,") {
				_, beat, err := ws.ReadMessage()
				if err != nil || string(beat) != "\n" {
					t.Fatalf("heart-beat %q, %v; want an EOL", beat, err)
				}
			}
		})
	}
}

// TestSessionZombieClosedWithinHeartbeat: a client that stops sending is
// closed after 1.5× the negotiated interval, not later; a client that
// heart-beats stays.
func TestSessionZombieClosedWithinHeartbeat(t *testing.T) {
	t.Parallel()
	e, mb := startMemEdge(t, map[string]string{"EDGE_HEARTBEAT": "200ms"}, nil)
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "a", nil), "heart-beat", "200,200")
	// 1.5 × 200ms = 300ms; allow scheduling slack but less than 4× the
	// limit, so a wrong multiplier fails here.
	c.expectClosed(1200 * time.Millisecond)
	testenv.WaitFor(t, 3*time.Second, func() error {
		if n := mb.Sessions(); n != 0 {
			return fmt.Errorf("%d broker sessions still open", n)
		}
		if n := counter(e.metrics.SessionsClosed.WithLabelValues("heart-beat_timeout")); n != 1 {
			return fmt.Errorf("heart-beat timeouts = %v", n)
		}
		return nil
	})
}

// TestSessionSlowConsumerCutOff: a client whose queue overflows the send
// buffer is closed with slow_consumer; the broker side never waits on it.
func TestSessionSlowConsumerCutOff(t *testing.T) {
	t.Parallel()
	e, mb := startMemEdge(t, map[string]string{"EDGE_SEND_BUFFER_BYTES": "64KiB", "EDGE_SEND_TIME_LIMIT": "2s"}, nil)
	slow, _, err := websocket.DefaultDialer.Dial(e.url, http.Header{"Origin": {"https://app.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	_ = slow.WriteMessage(websocket.TextMessage, []byte("CONNECT\naccept-version:1.2\nAuthorization:Bearer "+testenv.Token(t, "slow", nil)+"\n\n\x00SUBSCRIBE\nid:1\ndestination:/topic/flood\nreceipt:r\n\n\x00"))
	_ = slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	for got := 0; got < 2; got++ { // CONNECTED, RECEIPT; then it never reads again
		if _, _, err := slow.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}
	body := []byte(strings.Repeat("z", 16<<10))
	start := time.Now()
	for i := 0; i < 2000 && counter(e.metrics.SessionsClosed.WithLabelValues(CodeSlowConsumer)) == 0; i++ {
		if err := mb.Publish("amq.topic", "flood", body); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if v := counter(e.metrics.SessionsClosed.WithLabelValues(CodeSlowConsumer)); v != 1 {
			return fmt.Errorf("slow_consumer closes = %v", v)
		}
		return nil
	})
	t.Logf("cut off after %s", time.Since(start))
}

// TestSessionRateLimitBackpressure: over the session budget the edge stops
// reading (the messages arrive later, none lost); a wait longer than
// EDGE_RATE_MAX_WAIT closes with rate_limited.
func TestSessionRateLimitBackpressure(t *testing.T) {
	t.Parallel()
	t.Run("backpressure", func(t *testing.T) {
		t.Parallel()
		e, mb := startMemEdge(t, map[string]string{"EDGE_RATE_SESSION": "20", "EDGE_RATE_MAX_WAIT": "5s"}, nil)
		tapped := mb.Tap("amq.topic", "#")
		c := e.mustDial(nil)
		c.connect(testenv.Token(t, "a", nil))
		var b strings.Builder
		for i := 0; i < 60; i++ { // burst 40, then 20/s: ~1s of backpressure
			fmt.Fprintf(&b, "SEND\ndestination:/topic/r\n\n%d\x00", i)
		}
		b.WriteString("SEND\ndestination:/topic/r\nreceipt:done\n\nend\x00")
		c.raw(b.String())
		c.expect(frame.RECEIPT)
		for i := 0; i <= 60; i++ {
			select {
			case <-tapped:
			default:
				t.Fatalf("only %d of 61 messages reached the broker", i)
			}
		}
	})
	t.Run("over max wait", func(t *testing.T) {
		t.Parallel()
		e, _ := startMemEdge(t, map[string]string{"EDGE_RATE_SESSION": "1", "EDGE_RATE_MAX_WAIT": "100ms"}, nil)
		c := e.mustDial(nil)
		c.connect(testenv.Token(t, "a", nil))
		c.raw(strings.Repeat("SEND\ndestination:/topic/r\n\nx\x00", 5))
		c.expectError(CodeRateLimited)
	})
}

// TestSessionExpiryAndRefresh moves the session clock instead of sleeping.
func TestSessionExpiryAndRefresh(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	e, _ := startMemEdge(t, map[string]string{"EDGE_TOKEN_EXPIRY_GRACE": "30s"}, func(d *Deps) { d.Clock = clock })
	exp := clock.Now().Add(time.Hour)
	token := func(sub string, exp time.Time) string {
		return testenv.Token(t, sub, jwt.MapClaims{"exp": exp.Unix()})
	}

	idle := e.mustDial(nil)
	idle.connect(token("idle", exp))
	active := e.mustDial(nil)
	active.connect(token("active", exp))
	refreshed := e.mustDial(nil)
	refreshed.connect(token("refreshed", exp))
	refreshed.raw("SEND\ndestination:/edge/refresh\nreceipt:new\n\n" + token("refreshed", exp.Add(time.Hour)) + "\x00")
	refreshed.expect(frame.RECEIPT)

	clock.Advance(time.Hour + 10*time.Second) // past exp, within the grace
	active.raw("SEND\ndestination:/topic/a\n\nx\x00")
	active.expectError(CodeTokenExpired)

	clock.Advance(25 * time.Second) // past exp + grace: the idle one is closed
	idle.expectError(CodeTokenExpired)
	refreshed.raw("SUBSCRIBE\nid:1\ndestination:/topic/a\nreceipt:still\n\n\x00")
	refreshed.expect(frame.RECEIPT)

	clock.Advance(time.Hour) // past the refreshed token's exp + grace
	refreshed.expectError(CodeTokenExpired)
}

// TestSessionAckVersions: each client version acks and nacks as it would
// against RabbitMQ directly (1.2 by id, 1.0 and 1.1 by message-id), in
// client and client-individual mode, and in a transaction.
func TestSessionAckVersions(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"1.0", "1.1", "1.2"} {
		for _, mode := range []string{"client", "client-individual"} {
			t.Run(v+"/"+mode, func(t *testing.T) {
				t.Parallel()
				e, _ := startMemEdge(t, nil, nil)
				ackFlow(t, e, v, mode)
			})
		}
	}
}

// ackFlow: three messages on /queue/work; NACK the first (redelivered),
// ACK it inside a transaction that is aborted (still unacked), then ACK
// all in a committed transaction; a reconnect then finds the queue empty.
func ackFlow(t *testing.T, e *edge, version, mode string) {
	t.Helper()
	proto := map[string]string{"1.0": "v10.stomp", "1.1": "v11.stomp", "1.2": "v12.stomp"}[version]
	c := e.mustDial(nil, proto)
	c.send(frame.New(frame.CONNECT, "accept-version", version, "host", "/", "Authorization", "Bearer "+testenv.Token(t, "worker", nil)))
	if cf := c.expect(frame.CONNECTED); cf.Header.Get("version") != version {
		t.Fatalf("CONNECTED version %q, want %s", cf.Header.Get("version"), version)
	}
	c.raw("SUBSCRIBE\nid:w\ndestination:/queue/work\nack:" + mode + "\nreceipt:sub\n\n\x00")
	c.expect(frame.RECEIPT)
	for i := 1; i <= 3; i++ {
		c.raw(fmt.Sprintf("SEND\ndestination:/queue/work\n\nm%d\x00", i))
	}
	ackHeader := func(m *frame.Frame) string {
		if version == "1.2" {
			if _, has := m.Header.Contains("ack"); !has {
				t.Fatalf("1.2 MESSAGE without ack header: %v", m.Header)
			}
			return "id:" + m.Header.Get("ack")
		}
		if _, has := m.Header.Contains("ack"); has {
			t.Fatalf("%s MESSAGE carries a 1.2 ack header: %v", version, m.Header)
		}
		return "message-id:" + m.Header.Get("message-id")
	}
	var msgs []*frame.Frame
	for i := 0; i < 3; i++ {
		msgs = append(msgs, c.expect(frame.MESSAGE))
	}
	if version != "1.0" {
		c.raw("NACK\n" + ackHeader(msgs[0]) + "\nsubscription:w\nreceipt:n\n\n\x00")
		re := expectEach(c, frame.RECEIPT, frame.MESSAGE)[frame.MESSAGE]
		if string(re.Body) != "m1" || re.Header.Get("redelivered") != "true" {
			t.Fatalf("after NACK got %q redelivered=%s", re.Body, re.Header.Get("redelivered"))
		}
		msgs[0] = re
	}
	c.raw("BEGIN\ntransaction:t1\n\n\x00ACK\n" + ackHeader(msgs[0]) + "\nsubscription:w\ntransaction:t1\n\n\x00ABORT\ntransaction:t1\nreceipt:aborted\n\n\x00")
	c.expect(frame.RECEIPT)
	var acks strings.Builder
	acks.WriteString("BEGIN\ntransaction:t2\n\n\x00")
	if mode == "client" {
		// Cumulative: the latest delivery acks everything before it (a
		// second ACK of an acked delivery is a channel error in RabbitMQ).
		latest := msgs[2]
		if version != "1.0" {
			latest = msgs[0] // the redelivered one came last
		}
		acks.WriteString("ACK\n" + ackHeader(latest) + "\nsubscription:w\ntransaction:t2\n\n\x00")
	} else {
		for _, m := range msgs {
			acks.WriteString("ACK\n" + ackHeader(m) + "\nsubscription:w\ntransaction:t2\n\n\x00")
		}
	}
	acks.WriteString("COMMIT\ntransaction:t2\nreceipt:committed\n\n\x00DISCONNECT\nreceipt:bye\n\n\x00")
	c.raw(acks.String())
	c.expect(frame.RECEIPT)
	c.expect(frame.RECEIPT)
	c.expectClosed(5 * time.Second)

	again := e.mustDial(nil)
	again.connect(testenv.Token(t, "worker", nil))
	again.raw("SUBSCRIBE\nid:w\ndestination:/queue/work\nack:client\nreceipt:sub\n\n\x00")
	again.expect(frame.RECEIPT)
	again.raw("SEND\ndestination:/queue/work\n\nsentinel\x00")
	if m := again.expect(frame.MESSAGE); string(m.Body) != "sentinel" {
		t.Fatalf("an acked message came back: %q", m.Body)
	}
}

// TestSessionBrokerBusy: when the broker side has no capacity left, CONNECT
// gets broker_busy, not a dial.
func TestSessionBrokerBusy(t *testing.T) {
	t.Parallel()
	mb := memory.New(1)
	e := startEdgeWith(t, "memory", nil, func(d *Deps) { d.Broker = mb })
	first := e.mustDial(nil)
	first.connect(testenv.Token(t, "a", nil))
	second := e.mustDial(nil)
	second.send(frame.New(frame.CONNECT, "accept-version", "1.2", "Authorization", "Bearer "+testenv.Token(t, "b", nil)))
	second.expectError(CodeBrokerBusy)
}

// expectEach reads one frame of each command, in any order (a broker may
// redeliver before or after it confirms).
func expectEach(c *client, cmds ...string) map[string]*frame.Frame {
	c.t.Helper()
	got := map[string]*frame.Frame{}
	for range cmds {
		f := c.next(5 * time.Second).f
		if _, dup := got[f.Command]; dup || !slices.Contains(cmds, f.Command) {
			c.t.Fatalf("unexpected %s %v while waiting for %v", f.Command, f.Header, cmds)
		}
		got[f.Command] = f
	}
	return got
}
