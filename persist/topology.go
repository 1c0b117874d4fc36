package persist

import (
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Topology names the broker resources of the archive. Its declarations use
// the same arguments as rabbitmq/definitions.json: RabbitMQ refuses a
// redeclaration whose arguments differ (PRECONDITION_FAILED).
type Topology struct {
	Queue         string   // archive queue (quorum), e.g. stompgate.archive
	Bindings      []string // routing keys binding Queue to amq.topic
	DLX           string   // fanout dead-letter exchange, e.g. stompgate.dlx
	DLQ           string   // queue bound to DLX, e.g. stompgate.archive.dlq
	DeliveryLimit int      // x-delivery-limit of Queue
}

// SourceExchange is the exchange the archive queue is bound to.
const SourceExchange = "amq.topic"

// QueueArgs are the declaration arguments of the archive queue.
func (t Topology) QueueArgs() amqp.Table {
	return amqp.Table{
		"x-queue-type":           "quorum",
		"x-dead-letter-exchange": t.DLX,
		"x-delivery-limit":       int64(t.DeliveryLimit),
	}
}

// Declare declares, idempotently, the DLX, the DLQ bound to it, and the
// archive queue bound to amq.topic with every key of Bindings. Bindings that
// exist but are not listed are left alone.
func (t Topology) Declare(ch *amqp.Channel) error {
	if err := ch.ExchangeDeclare(t.DLX, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %s: %w", t.DLX, err)
	}
	if _, err := ch.QueueDeclare(t.DLQ, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		return fmt.Errorf("declare queue %s: %w", t.DLQ, err)
	}
	if err := ch.QueueBind(t.DLQ, "", t.DLX, false, nil); err != nil {
		return fmt.Errorf("bind %s to %s: %w", t.DLQ, t.DLX, err)
	}
	if _, err := ch.QueueDeclare(t.Queue, true, false, false, false, t.QueueArgs()); err != nil {
		return fmt.Errorf("declare queue %s: %w", t.Queue, err)
	}
	for _, key := range t.Bindings {
		if err := ch.QueueBind(t.Queue, key, SourceExchange, false, nil); err != nil {
			return fmt.Errorf("bind %s to %s with %q: %w", t.Queue, SourceExchange, key, err)
		}
	}
	return nil
}
