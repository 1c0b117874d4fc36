package relay

import (
	"net/http"
	"strings"
	"testing"

	"github.com/go-stomp/stomp/v3/frame"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/testenv"
)

// STOMP version fidelity against the real RabbitMQ: a client of any
// version behaves through the edge as it would against RabbitMQ directly.

// TestFidelityAckVersionsRabbitMQ: 1.0 and 1.1 clients ack by message-id,
// 1.2 by id; the edge speaks 1.2 to RabbitMQ and translates. Before the
// broker seam, RabbitMQ answered a 1.0/1.1 ACK with "ACK must include the
// id header" and the session died.
func TestFidelityAckVersionsRabbitMQ(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"1.0", "1.1", "1.2"} {
		for _, mode := range []string{"client", "client-individual"} {
			t.Run(v+"/"+mode, func(t *testing.T) {
				t.Parallel()
				ackFlow(t, startEdge(t, nil), v, mode)
			})
		}
	}
}

// TestFidelityOversizedBrokerFrame: a message larger than
// EDGE_BROKER_MAX_FRAME_BYTES ends only the session it was for, with
// frame_too_large; the broker is not marked down and other sessions go on.
func TestFidelityOversizedBrokerFrame(t *testing.T) {
	t.Parallel()
	e := startEdge(t, map[string]string{"EDGE_BROKER_MAX_FRAME_BYTES": "64KiB"})
	big := e.mustDial(nil)
	big.connect(testenv.Token(t, "big", nil))
	big.raw("SUBSCRIBE\nid:1\ndestination:/topic/large\nreceipt:r\n\n\x00")
	big.expect(frame.RECEIPT)
	small := e.mustDial(nil)
	small.connect(testenv.Token(t, "small", nil))
	small.raw("SUBSCRIBE\nid:1\ndestination:/topic/small\nreceipt:r\n\n\x00")
	small.expect(frame.RECEIPT)

	ch := amqpChannel(t, e.vhost)
	if err := ch.Publish("amq.topic", "large", false, false, amqp.Publishing{Body: []byte(strings.Repeat("x", 256<<10))}); err != nil {
		t.Fatal(err)
	}
	f := big.expectError(CodeFrameTooLarge)
	if !strings.Contains(f.Header.Get(frame.Message), "EDGE_BROKER_MAX_FRAME_BYTES") {
		t.Fatalf("message %q does not name the setting", f.Header.Get(frame.Message))
	}
	if !e.srv.brokerUp.Load() {
		t.Fatal("an oversized message marked the broker down")
	}
	if s := e.readyz(); s != http.StatusOK {
		t.Fatalf("/readyz %d after an oversized message", s)
	}
	if err := ch.Publish("amq.topic", "small", false, false, amqp.Publishing{Body: []byte("fine")}); err != nil {
		t.Fatal(err)
	}
	if m := small.expect(frame.MESSAGE); string(m.Body) != "fine" {
		t.Fatalf("body %q", m.Body)
	}
	if n := counter(e.metrics.SessionsClosed.WithLabelValues(CodeFrameTooLarge)); n != 1 {
		t.Fatalf("frame_too_large closes = %v", n)
	}
}
