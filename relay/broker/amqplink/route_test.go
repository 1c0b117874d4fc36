package amqplink

import (
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// TestRoutesRideSharedLinks: a Subscription with a Route is a shared
// binding of Route.Key (any characters: '/', ':', the text %2F, spaces,
// unicode) whose MESSAGEs carry the subscribed destination; a Message with
// a Route is published to Route.Exchange with Route.Key over the shared
// link. Neither opens a dedicated connection.
func TestRoutesRideSharedLinks(t *testing.T) {
	r := newRig(t, nil)
	ch, err := testenv.Dial(t, r.vhost).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(broker.UserExchange, "direct", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(broker.JournalExchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	const subject = "eve%2Fann/x:y é #*.%2f\\n"
	key := subject + "/inbox"
	route := &broker.Route{Exchange: broker.UserExchange, Key: key}

	var recs []*recorder
	for _, v := range []stomp.Version{stomp.V10, stomp.V12} { // two sessions of the subject: one shared queue
		s, rec := r.open(v)
		h := hdr(frame.Id, "in", frame.Destination, "/user/queue/inbox", frame.Receipt, "r")
		if err := s.Subscribe(broker.Subscription{ID: "in", Destination: "/user/queue/inbox", Route: route, Ack: broker.AckAuto, Receipt: "r", Header: h}); err != nil {
			t.Fatal(err)
		}
		rec.receipt(t, "r")
		recs = append(recs, rec)
	}
	if n := r.b.SharedSubscriptions(); n != 1 {
		t.Fatalf("%d shared subscriptions, want 1", n)
	}

	// From a session over the shared link, and from AMQP.
	alice, arec := r.open(stomp.V12)
	h := hdr(frame.Destination, "/user/"+subject+"/queue/inbox", frame.Receipt, "sent", "k", "v")
	if err := alice.Send(broker.Message{Destination: "/user/" + subject + "/queue/inbox", Route: route, Receipt: "sent", Header: h, Body: []byte("from stomp")}); err != nil {
		t.Fatal(err)
	}
	arec.receipt(t, "sent")
	amqpPublish(t, r.vhost, broker.UserExchange, key, amqp.Publishing{Body: []byte("from amqp")})
	for i, rec := range recs {
		ms := rec.messages(t, 2)
		for j, want := range []string{"from stomp", "from amqp"} {
			if got := ms[j].Header.Get(frame.Destination); got != "/user/queue/inbox" {
				t.Fatalf("session %d message %d: destination %q", i, j, got)
			}
			if string(ms[j].Body) != want {
				t.Fatalf("session %d message %d: body %q, want %q", i, j, ms[j].Body, want)
			}
		}
		if ms[0].Header.Get("k") != "v" {
			t.Fatalf("session %d: headers %v", i, ms[0].Header)
		}
	}

	// The journal's exchange: /app/<key> SENDs go to stompgate.ingest.
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "#", broker.JournalExchange, false, nil); err != nil {
		t.Fatal(err)
	}
	dels, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	h = hdr(frame.Destination, "/app/chat.room 1", frame.Receipt, "j")
	if err := alice.Send(broker.Message{Destination: "/app/chat.room 1", Route: &broker.Route{Exchange: broker.JournalExchange, Key: "chat.room 1"}, Receipt: "j", Header: h, Body: []byte("journal me")}); err != nil {
		t.Fatal(err)
	}
	arec.receipt(t, "j")
	select {
	case d := <-dels:
		if d.RoutingKey != "chat.room 1" || string(d.Body) != "journal me" {
			t.Fatalf("journal got %q %q", d.RoutingKey, d.Body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing reached stompgate.ingest")
	}
	if n := r.b.Dedicated(); n != 0 {
		t.Fatalf("%d dedicated connections, want 0", n)
	}
}
