package persist

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Row is one archived message, a row of stompgate_messages.
type Row struct {
	MessageID   string
	Sender      string
	Exchange    string
	RoutingKey  string
	ContentType string // "" is stored as NULL
	Headers     []byte // JSON object, see RowFromDelivery
	Body        []byte
	PublishedAt time.Time
}

// Header names that carry identity and idempotency keys.
const (
	// HeaderUserID is set by the edge on every SEND it relays to the subject
	// of the sender's token (SPEC §3).
	HeaderUserID = "x-user-id"
	// HeaderReason is set on dead letters the persister publishes to the
	// DLX: why the database refused the message.
	HeaderReason = "x-stompgate-reason"
)

// RowFromDelivery maps a delivery to its archive row.
//
// message_id is, first found: the AMQP message_id property (RabbitMQ's STOMP
// adapter fills it from a STOMP amqp-message-id header); an amqp-message-id or
// message-id header; else "sha256:" + hex SHA-256 of (exchange, routing key,
// AMQP timestamp, body). The hash makes a redelivery of a message without
// any id a duplicate, as wanted, at the price that two identical bodies
// published to the same key within the same second (AMQP timestamps have
// one-second resolution; 0 when unset) without an id are archived once.
//
// sender is, first found: the x-user-id header (set by the edge, which
// deletes any client-supplied value); "amqp:" + the AMQP user_id property
// (RabbitMQ rejects a user_id that is not the publishing connection's user);
// "amqp:unknown".
//
// headers is a JSON object {"properties": {...}, "headers": {...}}: the AMQP
// properties that are set (content_encoding, delivery_mode, priority,
// correlation_id, reply_to, expiration, message_id, timestamp, type, user_id,
// app_id) and the AMQP headers table. Byte-array header values are stored as
// base64 strings, timestamps as RFC 3339, decimals as numbers.
//
// published_at is the AMQP timestamp when set, else received.
func RowFromDelivery(d *amqp.Delivery, received time.Time) Row {
	r := Row{
		MessageID:   messageID(d),
		Sender:      sender(d),
		Exchange:    d.Exchange,
		RoutingKey:  d.RoutingKey,
		ContentType: d.ContentType,
		Body:        d.Body,
		PublishedAt: received,
	}
	if r.Body == nil {
		r.Body = []byte{}
	}
	if !d.Timestamp.IsZero() {
		r.PublishedAt = d.Timestamp
	}
	props := map[string]any{}
	set := func(k, v string) {
		if v != "" {
			props[k] = v
		}
	}
	set("content_type", d.ContentType)
	set("content_encoding", d.ContentEncoding)
	set("correlation_id", d.CorrelationId)
	set("reply_to", d.ReplyTo)
	set("expiration", d.Expiration)
	set("message_id", d.MessageId)
	set("type", d.Type)
	set("user_id", d.UserId)
	set("app_id", d.AppId)
	if d.DeliveryMode != 0 {
		props["delivery_mode"] = d.DeliveryMode
	}
	if d.Priority != 0 {
		props["priority"] = d.Priority
	}
	if !d.Timestamp.IsZero() {
		props["timestamp"] = d.Timestamp.UTC().Format(time.RFC3339)
	}
	doc := map[string]any{"properties": props, "headers": jsonValue(d.Headers)}
	if d.Headers == nil {
		doc["headers"] = map[string]any{}
	}
	b, err := json.Marshal(doc)
	if err != nil {
		// jsonValue yields only marshalable values; keep the row anyway.
		b = []byte(`{}`)
	}
	r.Headers = b
	return r
}

func messageID(d *amqp.Delivery) string {
	if d.MessageId != "" {
		return d.MessageId
	}
	for _, h := range []string{"amqp-message-id", "message-id"} {
		if v, ok := d.Headers[h].(string); ok && v != "" {
			return v
		}
	}
	h := sha256.New()
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte(d.Exchange))
	field([]byte(d.RoutingKey))
	var ts [8]byte
	if !d.Timestamp.IsZero() {
		binary.BigEndian.PutUint64(ts[:], uint64(d.Timestamp.Unix()))
	}
	field(ts[:])
	field(d.Body)
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func sender(d *amqp.Delivery) string {
	switch v := d.Headers[HeaderUserID].(type) {
	case string:
		if v != "" {
			return v
		}
	case []byte:
		if len(v) > 0 {
			return string(v)
		}
	}
	if d.UserId != "" {
		return "amqp:" + d.UserId
	}
	return "amqp:unknown"
}

// jsonValue converts an AMQP field value to something encoding/json
// marshals faithfully.
func jsonValue(v any) any {
	switch v := v.(type) {
	case amqp.Table:
		m := make(map[string]any, len(v))
		for k, x := range v {
			m[k] = jsonValue(x)
		}
		return m
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = jsonValue(x)
		}
		return out
	case []byte:
		return base64.StdEncoding.EncodeToString(v)
	case time.Time:
		return v.UTC().Format(time.RFC3339)
	case amqp.Decimal:
		return json.Number(fmt.Sprintf("%g", float64(v.Value)/math.Pow10(int(v.Scale))))
	case float32:
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Sprint(v)
		}
		return v
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Sprint(v)
		}
		return v
	default:
		return v
	}
}
