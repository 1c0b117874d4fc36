package relay

import (
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/golang-jwt/jwt/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/relay/broker"
)

// userScopes: one's own personal queues, and sending to anyone's inbox.
var userScopes = jwt.MapClaims{"scope": "subscribe:/user/queue/* send:/user/*/queue/inbox"}

// userFlow: two sessions of subject sub (on edges a and b) subscribe to
// /user/queue/inbox; alice SENDs to /user/<sub>/queue/inbox on edge a;
// both of sub's sessions get it, with the destination they subscribed to,
// and alice's own inbox gets nothing.
func userFlow(t *testing.T, a, b *edge, sub string) {
	t.Helper()
	var mine []*client
	for _, e := range []*edge{a, b} {
		c := e.mustDial(nil)
		c.connect(testenv.Token(t, sub, userScopes))
		c.raw("SUBSCRIBE\nid:in\ndestination:/user/queue/inbox\nreceipt:r\n\n\x00")
		c.expect(frame.RECEIPT)
		mine = append(mine, c)
	}
	alice := a.mustDial(nil)
	alice.connect(testenv.Token(t, "alice", userScopes))
	alice.raw("SUBSCRIBE\nid:in\ndestination:/user/queue/inbox\nreceipt:r\n\n\x00")
	alice.expect(frame.RECEIPT)
	alice.send(frame.New(frame.SEND, frame.Destination, "/user/"+sub+"/queue/inbox", frame.Receipt, "sent", "k", "v"))
	alice.expect(frame.RECEIPT)
	for i, c := range mine {
		m := c.expect(frame.MESSAGE)
		if m.Header.Get(frame.Destination) != "/user/queue/inbox" || m.Header.Get("x-user-id") != "alice" || m.Header.Get("k") != "v" {
			t.Fatalf("session %d of %q got %v", i, sub, m.Header)
		}
	}
	alice.raw("DISCONNECT\nreceipt:bye\n\n\x00")
	if f := alice.next(5e9).f; f.Command != frame.RECEIPT {
		t.Fatalf("alice got %s %v before her DISCONNECT receipt", f.Command, f.Header)
	}
}

func TestUserDestinationsMemory(t *testing.T) {
	t.Parallel()
	e, mb := startMemEdge(t, nil, nil)
	userFlow(t, e, e, "bob")
	// From AMQP: stompgate.user with routing key <S>/<name>.
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "bob", userScopes))
	c.raw("SUBSCRIBE\nid:in\ndestination:/user/queue/inbox\nreceipt:r\n\n\x00")
	c.expect(frame.RECEIPT)
	if err := mb.Publish(broker.UserExchange, "bob/inbox", []byte("from amqp")); err != nil {
		t.Fatal(err)
	}
	if m := c.expect(frame.MESSAGE); string(m.Body) != "from amqp" {
		t.Fatalf("body %q", m.Body)
	}
}

// TestUserDestinationsRabbitMQ: on two edges sharing a broker, with a
// subject made of characters that mean something in STOMP destinations
// and AMQP keys, and from an AMQP publisher.
func TestUserDestinationsRabbitMQ(t *testing.T) {
	t.Parallel()
	vhost := testenv.Vhost(t)
	ch := amqpChannel(t, vhost)
	if err := ch.ExchangeDeclare(broker.UserExchange, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	a, b := startEdgeWith(t, vhost, nil, nil), startEdgeWith(t, vhost, nil, nil)
	const odd = "ann/x:y é #*.%2f\\n"
	userFlow(t, a, b, odd)

	c := b.mustDial(nil)
	c.connect(testenv.Token(t, odd, userScopes))
	c.raw("SUBSCRIBE\nid:in\ndestination:/user/queue/inbox\nreceipt:r\n\n\x00")
	c.expect(frame.RECEIPT)
	if err := ch.Publish(broker.UserExchange, odd+"/inbox", false, false, amqp.Publishing{Body: []byte("from amqp")}); err != nil {
		t.Fatal(err)
	}
	if m := c.expect(frame.MESSAGE); string(m.Body) != "from amqp" {
		t.Fatalf("body %q", m.Body)
	}

	// A subject holding the text %2F cannot be routed over a STOMP broker
	// connection (RabbitMQ's adapter decodes it): refused, never misrouted.
	// Shared links speak AMQP, where a routing key is any string.
	const pct = "eve%2Fann/x:y é #*.%2f\\n"
	if a.shared == nil {
		bad := a.mustDial(nil)
		bad.connect(testenv.Token(t, pct, userScopes))
		bad.raw("SUBSCRIBE\nid:in\ndestination:/user/queue/inbox\n\n\x00")
		bad.expectError(CodeForbidden)
		return
	}
	userFlow(t, a, b, pct)
	if n := a.shared.Dedicated() + b.shared.Dedicated(); n != 0 {
		t.Fatalf("%d dedicated broker connections for user destinations", n)
	}
}

// TestAppAndUserSendsRideSharedLinks: on shared links, /app/ SENDs (the
// journal's exchange) and user destinations (both ways) open no dedicated
// broker connection.
func TestAppAndUserSendsRideSharedLinks(t *testing.T) {
	t.Parallel()
	vhost := testenv.Vhost(t)
	ch := amqpChannel(t, vhost)
	if err := ch.ExchangeDeclare(broker.UserExchange, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(broker.JournalExchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "#", broker.JournalExchange, false, nil); err != nil {
		t.Fatal(err)
	}
	journal, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := startEdgeWith(t, vhost, map[string]string{"EDGE_BROKER_MODE": "shared"}, nil)
	userFlow(t, e, e, "bob/x:y é %2F")
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "carol", nil))
	c.send(frame.New(frame.SEND, frame.Destination, "/app/room.1", frame.Receipt, "j"))
	c.expect(frame.RECEIPT)
	var d amqp.Delivery
	select {
	case d = <-journal:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing reached stompgate.ingest")
	}
	if d.RoutingKey != "room.1" || d.Headers["x-user-id"] != "carol" {
		t.Fatalf("journal got key %q headers %v", d.RoutingKey, d.Headers)
	}
	if n := e.shared.Dedicated(); n != 0 {
		t.Fatalf("%d dedicated broker connections, want 0", n)
	}
}
