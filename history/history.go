// Package history reads stored messages back from Postgres (SPEC §6): the
// journal of a stream by seq (Since, which the edge also replays for
// x-resume-after) and the archive of a destination by row id, and serves
// them on GET /api/history (NewHandler).
package history

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/persist"
)

// MaxLimit is the most messages one query returns.
const MaxLimit = 1000

// ErrBadLimit is returned for a limit outside 1..MaxLimit.
var ErrBadLimit = errors.New("limit must be between 1 and 1000")

// Message is one stored message. For a journaled message, Entry is exactly
// what the journal broadcast: Entry.Publishing() and Entry.AMQPHeaders()
// give the same properties and headers (x-seq, x-message-id, x-user-id
// included) as the live broadcast, so a replay can build the same MESSAGE
// frames. Seq is 0 for archived messages, which have no stream.
type Message struct {
	persist.Entry
	ID       int64  // row id, the cursor of after_id/before_id
	Exchange string // the exchange it was published (journal: broadcast) to
}

const columns = `m.id, m.exchange, coalesce(m.stream, ''), coalesce(m.seq, 0), m.message_id, m.sender,
	coalesce(m.content_type, ''), m.headers, m.body, m.published_at`

func scan(r pgx.CollectableRow) (Message, error) {
	var m Message
	err := r.Scan(&m.ID, &m.Exchange, &m.Stream, &m.Seq, &m.MessageID, &m.Sender, &m.ContentType, &m.Headers,
		&m.Body, &m.PublishedAt)
	return m, err
}

// Since returns the journaled messages of stream with seq > afterSeq, in
// seq order, at most limit (1..MaxLimit). Seqs are gapless: a result that
// does not start at afterSeq+1 means history no longer holds it.
func Since(ctx context.Context, pool *pgxpool.Pool, stream string, afterSeq int64, limit int) ([]Message, error) {
	if limit < 1 || limit > MaxLimit {
		return nil, ErrBadLimit
	}
	rows, err := pool.Query(ctx, `SELECT `+columns+` FROM stompgate_messages m
		WHERE m.stream = $1 AND m.seq > $2 ORDER BY m.seq LIMIT $3`, stream, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", stream, err)
	}
	out, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", stream, err)
	}
	return out, nil
}

// LastSeq returns the last seq committed on stream (0 when it has none).
func LastSeq(ctx context.Context, pool *pgxpool.Pool, stream string) (int64, error) {
	var n int64
	err := pool.QueryRow(ctx, `SELECT last_seq FROM stompgate_streams WHERE stream = $1`, stream).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last seq of %s: %w", stream, err)
	}
	return n, nil
}

// Cursor selects messages of a destination by row id: After > 0 returns
// ids above it (oldest first); else Before > 0 returns the newest ids
// below it; else the newest. Results are always in ascending id order.
type Cursor struct {
	After, Before int64
}

// ByID returns messages stored for exchange and routing key (archived and
// journaled alike; journal rows are stored under amq.topic), at most limit
// (1..MaxLimit), in ascending id order.
func ByID(ctx context.Context, pool *pgxpool.Pool, exchange, key string, c Cursor, limit int) ([]Message, error) {
	if limit < 1 || limit > MaxLimit {
		return nil, ErrBadLimit
	}
	q := `SELECT ` + columns + ` FROM stompgate_messages m WHERE m.exchange = $1 AND m.routing_key = $2`
	var args []any
	switch {
	case c.After > 0:
		q += ` AND m.id > $3 ORDER BY m.id LIMIT $4`
		args = []any{exchange, key, c.After, limit}
	case c.Before > 0:
		q = `SELECT * FROM (` + q + ` AND m.id < $3 ORDER BY m.id DESC LIMIT $4) m ORDER BY m.id`
		args = []any{exchange, key, c.Before, limit}
	default:
		q = `SELECT * FROM (` + q + ` ORDER BY m.id DESC LIMIT $3) m ORDER BY m.id`
		args = []any{exchange, key, limit}
	}
	rows, err := pool.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("history of %s/%s: %w", exchange, key, err)
	}
	out, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, fmt.Errorf("history of %s/%s: %w", exchange, key, err)
	}
	return out, nil
}
