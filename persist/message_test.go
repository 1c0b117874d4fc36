package persist

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestRowFromDelivery(t *testing.T) {
	recv := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	ts := time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC)
	base := amqp.Delivery{Exchange: "amq.topic", RoutingKey: "room.7", Body: []byte("hi")}
	with := func(f func(d *amqp.Delivery)) amqp.Delivery { d := base; f(&d); return d }
	hash := RowFromDelivery(&base, recv).MessageID
	for _, tc := range []struct {
		name       string
		d          amqp.Delivery
		id, sender string
		published  time.Time
	}{
		{"property id and user", with(func(d *amqp.Delivery) { d.MessageId = "m1"; d.UserId = "erp" }), "m1", "amqp:erp", recv},
		{"edge sender wins", with(func(d *amqp.Delivery) {
			d.UserId = "stompgate-edge"
			d.Headers = amqp.Table{"x-user-id": "alice", "amqp-message-id": "h1", "message-id": "h2"}
		}), "h1", "alice", recv},
		{"stomp message-id header", with(func(d *amqp.Delivery) { d.Headers = amqp.Table{"message-id": "h2"} }), "h2", "amqp:unknown", recv},
		{"hash without id", base, hash, "amqp:unknown", recv},
		{"timestamp", with(func(d *amqp.Delivery) { d.MessageId = "m"; d.Timestamp = ts }), "m", "amqp:unknown", ts},
		{"empty x-user-id ignored", with(func(d *amqp.Delivery) { d.MessageId = "m"; d.Headers = amqp.Table{"x-user-id": ""} }), "m", "amqp:unknown", recv},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := RowFromDelivery(&tc.d, recv)
			if r.MessageID != tc.id || r.Sender != tc.sender || !r.PublishedAt.Equal(tc.published) ||
				r.Exchange != "amq.topic" || r.RoutingKey != "room.7" || string(r.Body) != "hi" {
				t.Fatalf("%+v", r)
			}
			if !json.Valid(r.Headers) {
				t.Fatalf("headers not JSON: %s", r.Headers)
			}
		})
	}
	if !strings.HasPrefix(hash, "sha256:") || len(hash) != 7+64 {
		t.Fatalf("hash id %q", hash)
	}
	// The derived id depends on exchange, key, timestamp and body, and on
	// nothing else (a redelivery is a duplicate).
	other := func(f func(d *amqp.Delivery)) string {
		d := with(f)
		return RowFromDelivery(&d, recv.Add(time.Hour)).MessageID
	}
	if other(func(d *amqp.Delivery) { d.Redelivered = true; d.DeliveryTag = 9 }) != hash {
		t.Error("redelivery changes the derived id")
	}
	for name, f := range map[string]func(d *amqp.Delivery){
		"exchange":  func(d *amqp.Delivery) { d.Exchange = "x" },
		"key":       func(d *amqp.Delivery) { d.RoutingKey = "room.8" },
		"body":      func(d *amqp.Delivery) { d.Body = []byte("ho") },
		"timestamp": func(d *amqp.Delivery) { d.Timestamp = ts },
		"boundary":  func(d *amqp.Delivery) { d.RoutingKey = "room.7h"; d.Body = []byte("i") },
	} {
		if other(f) == hash {
			t.Errorf("%s does not change the derived id", name)
		}
	}
}

func TestHeadersJSON(t *testing.T) {
	d := amqp.Delivery{
		ContentType: "text/plain", DeliveryMode: 2, Priority: 3, CorrelationId: "c", ReplyTo: "r",
		Expiration: "1000", MessageId: "m", Type: "t", UserId: "u", AppId: "a",
		Timestamp: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Headers: amqp.Table{
			"s": "x", "i": int64(-5), "f": 1.5, "b": true, "bytes": []byte("hi"),
			"nested": amqp.Table{"k": int32(1)}, "list": []any{"a", int16(2)},
			"dec":  amqp.Decimal{Scale: 2, Value: 1234},
			"when": time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC),
		},
	}
	r := RowFromDelivery(&d, time.Now())
	want := `{"headers":{"b":true,"bytes":"aGk=","dec":12.34,"f":1.5,"i":-5,"list":["a",2],"nested":{"k":1},"s":"x","when":"2026-02-03T04:05:06Z"},` +
		`"properties":{"app_id":"a","content_type":"text/plain","correlation_id":"c","delivery_mode":2,"expiration":"1000","message_id":"m","priority":3,"reply_to":"r","timestamp":"2026-01-01T00:00:00Z","type":"t","user_id":"u"}}`
	if string(r.Headers) != want {
		t.Fatalf("got  %s\nwant %s", r.Headers, want)
	}
}
