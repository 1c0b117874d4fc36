package relay

// The attack catalogue: one test per attack on the security boundary. Each
// asserts the ERROR a client sees and that nothing reached RabbitMQ.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/revocation"
)

// quiet asserts that the tap receives nothing but a marker published after
// the attack, proving the tap works and the attack left no message behind.
func quiet(t *testing.T, ch *amqp.Channel, deliveries <-chan amqp.Delivery) {
	t.Helper()
	if err := ch.Publish("amq.topic", "marker", false, false, amqp.Publishing{Body: []byte("marker")}); err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-deliveries:
		if string(d.Body) != "marker" {
			t.Fatalf("the attack reached the broker: %s %q", d.RoutingKey, d.Body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("tap saw nothing")
	}
}

func roomToken(t *testing.T, sub string, extra jwt.MapClaims) string {
	c := jwt.MapClaims{"scope": "subscribe:/topic/room.* send:/topic/room.*"}
	for k, v := range extra {
		c[k] = v
	}
	return testenv.Token(t, sub, c)
}

func TestAttackCrossSiteCookie(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	c, err := e.dial(http.Header{"Origin": {"https://evil.example"}, "Cookie": {"access_token=" + roomToken(t, "victim", nil)}})
	if err == nil || c.resp == nil || c.resp.StatusCode != http.StatusForbidden {
		t.Fatalf("evil Origin with a valid cookie was not refused with 403: %v", err)
	}
	if n := counter(e.metrics.BrokerConnections); n != 0 {
		t.Fatalf("%v broker connections", n)
	}
}

func TestAttackAlgNone(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "root", "exp": time.Now().Add(time.Hour).Unix(),
		"scope": "send:/topic/#"}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	c := e.mustDial(nil)
	c.raw("CONNECT\naccept-version:1.2\nAuthorization:Bearer " + none + "\n\n\x00SEND\ndestination:/topic/room.1\n\nx\x00")
	c.expectError(CodeUnauthenticated)
	quiet(t, ch, deliveries)
}

func TestAttackHS256WithRSAPublicKey(t *testing.T) {
	t.Parallel()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	path := filepath.Join(t.TempDir(), "pub.pem")
	if err := os.WriteFile(path, pubPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	e := startEdge(t, map[string]string{"EDGE_JWT_HS256_SECRET": "", "EDGE_JWT_PUBLIC_KEYS": path})
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	claims := jwt.MapClaims{"sub": "root", "exp": time.Now().Add(time.Hour).Unix(), "scope": "send:/topic/#"}
	confused, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(pubPEM)
	c := e.mustDial(nil)
	c.raw("CONNECT\naccept-version:1.2\nAuthorization:Bearer " + confused + "\n\n\x00SEND\ndestination:/topic/room.1\n\nx\x00")
	c.expectError(CodeUnauthenticated)
	quiet(t, ch, deliveries)

	// The genuine RS256 token works, so the refusal above is the confusion.
	good, _ := jwt.NewWithClaims(jwt.SigningMethodRS256, claims).SignedString(key)
	ok := e.mustDial(nil)
	ok.connect(good)
}

func TestAttackExpiredTokenMidSession(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	e := startEdgeWith(t, testenv.Vhost(t), map[string]string{"EDGE_JWT_LEEWAY": "0s", "EDGE_TOKEN_EXPIRY_GRACE": "1m"}, func(d *Deps) { d.Clock = clock })
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	c := e.mustDial(nil)
	c.connect(roomToken(t, "a", jwt.MapClaims{"exp": clock.Now().Add(time.Minute).Unix()}))
	clock.Advance(time.Minute + time.Second) // past exp, within the grace
	c.raw("SEND\ndestination:/topic/room.1\n\nafter-exp\x00")
	c.expectError(CodeTokenExpired)
	quiet(t, ch, deliveries)
}

func TestAttackRefreshForAnotherSubject(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	e := startEdgeWith(t, testenv.Vhost(t), map[string]string{"EDGE_JWT_LEEWAY": "0s", "EDGE_TOKEN_EXPIRY_GRACE": "1m"}, func(d *Deps) { d.Clock = clock })
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	c := e.mustDial(nil)
	c.connect(roomToken(t, "alice", jwt.MapClaims{"exp": clock.Now().Add(time.Minute).Unix()}))
	// A legitimate refresh for the same subject extends the session…
	c.raw("SEND\ndestination:/edge/refresh\nreceipt:r1\n\n" + roomToken(t, "alice", nil) + "\x00")
	if r := c.expect(frame.RECEIPT); r.Header.Get("receipt-id") != "r1" {
		t.Fatalf("refresh receipt %v", r.Header)
	}
	clock.Advance(time.Minute + time.Second) // past the first token's exp
	c.raw("SEND\ndestination:/topic/room.1\nreceipt:r2\n\nstill-here\x00")
	c.expect(frame.RECEIPT)
	if d := <-deliveries; string(d.Body) != "still-here" {
		t.Fatalf("after refresh the broker got %q", d.Body)
	}
	// …a token for someone else does not take the session over.
	c.raw("SEND\ndestination:/edge/refresh\n\n" + roomToken(t, "admin", jwt.MapClaims{"scope": "send:/topic/#"}) + "\x00SEND\ndestination:/topic/admin\n\nx\x00")
	c.expectError(CodeForbidden)
	quiet(t, ch, deliveries)
}

func TestAttackSpoofedUserID(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	c := e.mustDial(nil)
	c.connect(roomToken(t, "mallory", nil))
	c.raw("SEND\ndestination:/topic/room.1\nx-user-id:admin\nX-User-Id:admin\nuser-id:admin\napp-id:billing\n\nhi\x00")
	d := <-deliveries
	if d.Headers["x-user-id"] != "mallory" || d.UserId != "" || d.AppId != "" {
		t.Fatalf("spoof survived: x-user-id=%v user_id=%q app_id=%q headers=%v", d.Headers["x-user-id"], d.UserId, d.AppId, d.Headers)
	}
	for k := range d.Headers {
		if strings.EqualFold(k, "x-user-id") && k != "x-user-id" {
			t.Fatalf("a case variant of x-user-id reached the broker: %q", k)
		}
	}
}

func TestAttackWildcardEscalation(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	for _, attack := range []string{
		"SUBSCRIBE\nid:1\ndestination:/topic/#\n\n\x00",
		"SUBSCRIBE\nid:1\ndestination:/topic/*.secret\n\n\x00",
		"SUBSCRIBE\nid:1\ndestination:/exchange/amq.topic/#\n\n\x00",
		"SUBSCRIBE\nid:1\ndestination:/exchange/amq.direct/admin\n\n\x00",
		"SEND\ndestination:/topic/admin.cmd\n\nx\x00",
		"SEND\ndestination:/exchange/amq.topic/admin.cmd\n\nx\x00",
		"SEND\ndestination:/topic/room.1.extra\n\nx\x00",
		"SEND\ndestination:/topic/room..1\n\nx\x00",
		"SEND\ndestination:/edge/admin\n\nx\x00",
		"SEND\ndestination:/nowhere/x\n\nx\x00",
	} {
		c := e.mustDial(nil)
		c.connect(roomToken(t, "user", nil))
		c.raw(attack)
		c.expectError(CodeForbidden)
	}
	// Allowed: the user's own pattern, also through /exchange/amq.topic.
	c := e.mustDial(nil)
	c.connect(roomToken(t, "user", nil))
	c.raw("SUBSCRIBE\nid:1\ndestination:/topic/room.*\nreceipt:ok\n\n\x00")
	c.expect(frame.RECEIPT)
	quiet(t, ch, deliveries)
}

func TestAttackSomeoneElsesQueue(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	ch := amqpChannel(t, e.vhost)
	if _, err := ch.QueueDeclare("bob.private", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.Publish("", "bob.private", false, false, amqp.Publishing{Body: []byte("for bob")}); err != nil {
		t.Fatal(err)
	}
	c := e.mustDial(nil)
	c.connect(roomToken(t, "mallory", nil))
	c.raw("SUBSCRIBE\nid:1\ndestination:/amq/queue/bob.private\n\n\x00")
	c.expectError(CodeForbidden)
	c2 := e.mustDial(nil)
	c2.connect(roomToken(t, "mallory", nil))
	c2.raw("SUBSCRIBE\nid:1\ndestination:/queue/bob.private\n\n\x00")
	c2.expectError(CodeForbidden)
	msg, ok, err := ch.Get("bob.private", true)
	if err != nil || !ok || string(msg.Body) != "for bob" {
		t.Fatalf("bob's message is gone: ok=%v err=%v", ok, err)
	}
}

func TestAttackDeclareWithoutScope(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	tok := testenv.Token(t, "u", jwt.MapClaims{"scope": "subscribe:/queue/jobs.* send:/queue/jobs.*"})
	for _, attack := range []string{
		"SUBSCRIBE\nid:1\ndestination:/queue/jobs.a\ndurable:true\nx-queue-type:quorum\n\n\x00",
		"SUBSCRIBE\nid:1\ndestination:/queue/jobs.b\nauto-delete:false\n\n\x00",
		"SEND\ndestination:/queue/jobs.c\nx-max-length:1\n\nx\x00",
		"SEND\ndestination:/queue/jobs.d\nx-dead-letter-exchange:amq.topic\n\nx\x00",
		"SEND\ndestination:/queue/jobs.e\nX-Message-TTL:1\n\nx\x00",
	} {
		c := e.mustDial(nil)
		c.connect(tok)
		c.raw(attack)
		c.expectError(CodeForbidden)
	}
	qs, err := testenv.Queues(e.vhost)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 0 {
		t.Fatalf("queues were declared by refused frames: %+v", qs)
	}
	// With declare:/queue/jobs.* the same headers pass.
	ok := e.mustDial(nil)
	ok.connect(testenv.Token(t, "u", jwt.MapClaims{"scope": "subscribe:/queue/jobs.* declare:/queue/jobs.*"}))
	ok.raw("SUBSCRIBE\nid:1\ndestination:/queue/jobs.ok\ndurable:true\nauto-delete:false\nx-queue-type:quorum\nreceipt:r\n\n\x00")
	ok.expect(frame.RECEIPT)
}

func TestAttackHeaderInjection(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	for _, tc := range []struct{ frame, code string }{
		// An escaped line break must not smuggle a second destination.
		{"SEND\ndestination:/topic/room.1\\ndestination:/topic/admin\n\nx\x00", CodeForbidden},
		{"SEND\ndestination:/topic/room.1\\c/topic/admin\n\nx\x00", CodeForbidden},
		{"SEND\ndestination:/topic/room.1\nx:a\x00b\n\nx\x00", CodeBadFrame},
		{"SEND\ndestination:/topic/room.1\x00\n\nx\x00", CodeBadFrame},
		{"SEND\ndestination:/topic/room.1\nreply-to:/queue/admin\n\nx\x00", CodeForbidden},
	} {
		c := e.mustDial(nil)
		c.connect(roomToken(t, "u", nil))
		c.raw(tc.frame)
		c.expectError(tc.code)
	}
	quiet(t, ch, deliveries)
}

func TestAttackSubscriptionFlood(t *testing.T) {
	t.Parallel()
	e := startEdge(t, nil)
	c := e.mustDial(nil)
	c.connect(roomToken(t, "u", nil))
	var b strings.Builder
	for i := 0; i < 150; i++ {
		fmt.Fprintf(&b, "SUBSCRIBE\nid:%d\ndestination:/topic/room.%d\n\n\x00", i, i)
	}
	c.raw(b.String())
	c.expectError(CodeTooManySubscriptions)
}

func TestAttackFloodFromThreeTabsSharesOneBudget(t *testing.T) {
	t.Parallel()
	e := startEdge(t, map[string]string{"EDGE_RATE_USER": "10", "EDGE_RATE_SESSION": "100", "EDGE_RATE_MAX_WAIT": "150ms"})
	ch := amqpChannel(t, e.vhost)
	deliveries := tap(t, ch)
	tok := roomToken(t, "flooder", nil)
	var tabs []*client
	for i := 0; i < 3; i++ {
		c := e.mustDial(nil)
		c.connect(tok)
		tabs = append(tabs, c)
	}
	start := time.Now()
	for _, c := range tabs {
		var b strings.Builder
		for i := 0; i < 40; i++ {
			b.WriteString("SEND\ndestination:/topic/room.1\n\nflood\x00")
		}
		b.WriteString("SEND\ndestination:/topic/room.1\nreceipt:last\n\nflood\x00")
		c.raw(b.String())
	}
	// Each tab ends either cut off (its wait exceeded EDGE_RATE_MAX_WAIT
	// while sharing the budget) or, once alone, slowed to the rate
	// (backpressure) until its last receipt.
	limited := 0
	for _, c := range tabs {
		f := c.next(15 * time.Second).f
		switch {
		case f.Command == frame.ERROR && f.Header.Get("x-error-code") == CodeRateLimited:
			limited++
		case f.Command == frame.RECEIPT:
		default:
			t.Fatalf("unexpected %s %v", f.Command, f.Header)
		}
	}
	elapsed := time.Since(start)
	if limited < 1 {
		t.Fatalf("%d of 3 tabs were cut off with rate_limited", limited)
	}
	// One shared budget: burst 20 plus 10/s, whatever the number of tabs.
	got := 0
	for drained := false; !drained; {
		select {
		case <-deliveries:
			got++
		case <-time.After(500 * time.Millisecond):
			drained = true
		}
	}
	if max := 21 + int(10*elapsed.Seconds()) + 1; got > max || got < 20 {
		t.Fatalf("broker received %d messages in %s; one shared budget allows at most %d", got, elapsed, max)
	}
}

func TestAttackRevokedMidSessionOnTwoEdges(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := revocation.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	vhost := testenv.Vhost(t)
	var edges []*edge
	var clients []*client
	for i := 0; i < 2; i++ {
		store := revocation.NewStore(pool, revocation.Config{})
		runCtx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = store.Run(runCtx); close(done) }()
		t.Cleanup(func() { stop(); <-done })
		<-store.Ready()
		e := startEdgeWith(t, vhost, nil, func(d *Deps) { d.Revocations = store })
		unregister := store.OnRevoke(e.srv)
		t.Cleanup(unregister)
		c := e.mustDial(nil)
		c.connect(roomToken(t, "eve", nil))
		edges, clients = append(edges, e), append(clients, c)
	}
	ch := amqpChannel(t, vhost)
	deliveries := tap(t, ch)
	if _, err := revocation.Revoke(ctx, pool, revocation.Row{Subject: "eve", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, c := range clients {
		f := c.next(2 * time.Second).f
		if f.Command != frame.ERROR || f.Header.Get("x-error-code") != CodeRevoked {
			t.Fatalf("got %s %v, want ERROR revoked", f.Command, f.Header)
		}
	}
	t.Logf("both sessions revoked within %s", time.Since(start))
	again := edges[0].mustDial(nil)
	again.raw("CONNECT\naccept-version:1.2\nAuthorization:Bearer " + roomToken(t, "eve", nil) + "\n\n\x00SEND\ndestination:/topic/room.1\n\nx\x00")
	again.expectError(CodeRevoked)
	quiet(t, ch, deliveries)
}
