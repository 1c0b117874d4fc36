package history

import (
	"context"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// StompMessage is a stored journal message as RabbitMQ's STOMP adapter
// delivers its live broadcast: Header holds the STOMP headers without the
// per-subscription ones (subscription, message-id, destination, ack).
type StompMessage struct {
	Seq    int64
	Header [][2]string
	Body   []byte
}

// Journal replays journaled streams for the edge's x-resume-after.
// Safe for concurrent use.
type Journal struct{ Pool *pgxpool.Pool }

// Replay returns the messages of stream with seq > after, in seq order,
// at most limit (read in pages of MaxLimit), and the stream's last
// committed seq.
func (j Journal) Replay(ctx context.Context, stream string, after int64, limit int) ([]StompMessage, int64, error) {
	last, err := LastSeq(ctx, j.Pool, stream)
	if err != nil {
		return nil, 0, err
	}
	var out []StompMessage
	for len(out) < limit && after < last {
		page, err := Since(ctx, j.Pool, stream, after, min(limit-len(out), MaxLimit))
		if err != nil {
			return nil, 0, err
		}
		if len(page) == 0 {
			break
		}
		for i := range page {
			out = append(out, stompMessage(&page[i]))
		}
		after = page[len(page)-1].Seq
	}
	return out, last, nil
}

// stompMessage maps a stored journal message to the headers RabbitMQ's
// STOMP adapter gives the broadcast the persister published
// (Entry.Publishing): AMQP properties first, then the headers of string
// and integer types (the adapter drops the others).
func stompMessage(m *Message) StompMessage {
	p := m.Publishing()
	var h [][2]string
	add := func(k, v string) {
		if v != "" {
			h = append(h, [2]string{k, v})
		}
	}
	add("content-type", p.ContentType)
	add("content-encoding", p.ContentEncoding)
	if p.DeliveryMode == amqp.Persistent {
		add("persistent", "true")
	}
	add("correlation-id", p.CorrelationId)
	add("reply-to", p.ReplyTo)
	add("amqp-message-id", p.MessageId)
	add("type", p.Type)
	add("app-id", p.AppId)
	keys := make([]string, 0, len(p.Headers))
	for k := range p.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch v := p.Headers[k].(type) {
		case string:
			add(k, v)
		case int64:
			add(k, strconv.FormatInt(v, 10))
		case int32:
			add(k, strconv.FormatInt(int64(v), 10))
		}
	}
	return StompMessage{Seq: m.Seq, Header: h, Body: m.Body}
}
