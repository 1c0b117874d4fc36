package persist

import (
	"bytes"
	"encoding/json"
	"strconv"

	amqp "github.com/rabbitmq/amqp091-go"
)

// storedDoc is the stored headers column.
type storedDoc struct {
	Properties map[string]any `json:"properties"`
	Headers    map[string]any `json:"headers"`
}

func decodeDoc(raw []byte) storedDoc {
	var d storedDoc
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	_ = dec.Decode(&d) // a row always holds an object; a bad one broadcasts without extra headers
	return d
}

// AMQPHeaders returns the headers the broadcast of e carries: the stored
// AMQP headers (numbers that are integers as int64, everything else that
// is not a string, table or array as its JSON text: RabbitMQ's STOMP
// adapter drops byte, short, bool and float headers), then x-seq (int64),
// x-message-id and x-user-id (strings), which override stored ones.
func (e *Entry) AMQPHeaders() amqp.Table {
	d := decodeDoc(e.Headers)
	h := make(amqp.Table, len(d.Headers)+3)
	for k, v := range d.Headers {
		if x, ok := amqpValue(v); ok {
			h[k] = x
		}
	}
	h[HeaderSeq] = e.Seq
	h[HeaderMessageID] = e.MessageID
	h[HeaderUserID] = e.Sender
	return h
}

func amqpValue(v any) (any, bool) {
	switch v := v.(type) {
	case nil:
		return nil, false
	case string:
		return v, true
	case json.Number:
		if n, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return n, true
		}
		return string(v), true
	case bool:
		return strconv.FormatBool(v), true
	case map[string]any:
		t := amqp.Table{}
		for k, x := range v {
			if y, ok := amqpValue(x); ok {
				t[k] = y
			}
		}
		return t, true
	case []any:
		out := make([]any, 0, len(v))
		for _, x := range v {
			if y, ok := amqpValue(x); ok {
				out = append(out, y)
			}
		}
		return out, true
	}
	return nil, false
}

// Publishing is the message the journal publishes to amq.topic for e, with
// routing key e.Stream: the body and content type as stored, AMQP
// message_id = e.MessageID, persistent, the stored correlation_id,
// reply_to, type, app_id and content_encoding properties, and AMQPHeaders.
// Live broadcasts and re-broadcasts after a crash are built the same way.
func (e *Entry) Publishing() amqp.Publishing {
	d := decodeDoc(e.Headers)
	prop := func(k string) string { s, _ := d.Properties[k].(string); return s }
	return amqp.Publishing{
		Headers:         e.AMQPHeaders(),
		ContentType:     e.ContentType,
		ContentEncoding: prop("content_encoding"),
		DeliveryMode:    amqp.Persistent,
		CorrelationId:   prop("correlation_id"),
		ReplyTo:         prop("reply_to"),
		MessageId:       e.MessageID,
		Type:            prop("type"),
		AppId:           prop("app_id"),
		Body:            e.Body,
	}
}
