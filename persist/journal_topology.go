package persist

import (
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// JournalTopology names the broker resources of the journal (SPEC §6). Its
// declarations use the same arguments as rabbitmq/definitions.json.
type JournalTopology struct {
	Exchange      string // topic exchange the edge publishes /app/<key> to, e.g. stompgate.ingest
	Queue         string // quorum queue, single active consumer, e.g. stompgate.ingest
	DLX           string // fanout dead-letter exchange, e.g. stompgate.dlx
	DeliveryLimit int    // x-delivery-limit of Queue
}

// BroadcastExchange is where journaled messages are broadcast, with their
// stream as routing key: subscribers of /topic/<stream> receive them.
const BroadcastExchange = "amq.topic"

// QueueArgs are the declaration arguments of the journal queue.
func (t JournalTopology) QueueArgs() amqp.Table {
	return amqp.Table{
		"x-queue-type":             "quorum",
		"x-single-active-consumer": true,
		"x-dead-letter-exchange":   t.DLX,
		"x-delivery-limit":         int64(t.DeliveryLimit),
	}
}

// Declare declares, idempotently, the DLX, the journal exchange (topic) and
// the journal queue bound to it with "#". conn is used for a second channel
// when the exchange must be migrated (see below); ch may be closed by the
// broker on the way and is returned replaced.
//
// Migration: the seed's definitions.json declared the exchange as direct,
// which cannot route every key to one queue. When the exchange exists with
// another type, Declare deletes it if it is unused (no bindings: nothing
// was routed anywhere, so nothing is lost) and declares it again as topic;
// when it has bindings, Declare fails and says what to do.
func (t JournalTopology) Declare(conn *amqp.Connection, ch *amqp.Channel) (*amqp.Channel, error) {
	if err := ch.ExchangeDeclare(t.DLX, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return ch, fmt.Errorf("declare exchange %s: %w", t.DLX, err)
	}
	err := ch.ExchangeDeclare(t.Exchange, amqp.ExchangeTopic, true, false, false, false, nil)
	var ae *amqp.Error
	if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
		// The channel is closed by the broker; use a new one.
		if ch, err = conn.Channel(); err != nil {
			return ch, fmt.Errorf("open channel: %w", err)
		}
		if err := ch.ExchangeDelete(t.Exchange, true, false); err != nil {
			return ch, fmt.Errorf("exchange %s exists with another type than topic and is in use; "+
				"delete it (management UI or rabbitmqadmin) and start again: %w", t.Exchange, err)
		}
		err = ch.ExchangeDeclare(t.Exchange, amqp.ExchangeTopic, true, false, false, false, nil)
	}
	if err != nil {
		return ch, fmt.Errorf("declare exchange %s: %w", t.Exchange, err)
	}
	if _, err := ch.QueueDeclare(t.Queue, true, false, false, false, t.QueueArgs()); err != nil {
		return ch, fmt.Errorf("declare queue %s: %w", t.Queue, err)
	}
	if err := ch.QueueBind(t.Queue, "#", t.Exchange, false, nil); err != nil {
		return ch, fmt.Errorf("bind %s to %s: %w", t.Queue, t.Exchange, err)
	}
	return ch, nil
}
