package persist

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stompgate/stompgate/config"
)

// Writer writes batches of rows to stompgate_messages, each batch in one
// transaction, ignoring rows whose (sender, message_id) or (stream, seq) is
// already there. A Writer is safe for concurrent use; each Write uses its
// own pooled connection.
type Writer struct {
	pool *pgxpool.Pool
	mode string // config.WriteModeCopy or config.WriteModeInsert
}

// NewWriter returns a Writer using mode (config.WriteModeCopy or
// config.WriteModeInsert).
func NewWriter(pool *pgxpool.Pool, mode string) *Writer {
	return &Writer{pool: pool, mode: mode}
}

// Result is the outcome of a committed batch.
type Result struct {
	Inserted   int         // new rows
	Duplicates int         // rows already archived (same sender and message id)
	Rejected   []Rejection // rows the database refused for their content
}

// Rejection is a row of a batch that the database refused for its content.
type Rejection struct {
	Index  int    // position in the batch
	Reason string // the database's error, e.g. "ERROR: unsupported Unicode escape sequence (SQLSTATE 22P05)"
}

const insertColumns = "message_id, sender, exchange, routing_key, content_type, headers, body, published_at"

// Write commits rows in one transaction and reports what happened. When the
// database refuses the batch for the content of some rows, Write finds
// them by bisection under savepoints, commits the others and lists the
// refused rows in Result.Rejected. Any other error (connection lost,
// database down, timeout) is returned and nothing is committed: the caller
// retries the same batch later.
func (w *Writer) Write(ctx context.Context, rows []Row) (Result, error) {
	if len(rows) == 0 {
		return Result{}, nil
	}
	n, err := w.writeFast(ctx, rows, w.mode)
	if w.mode == config.WriteModeCopy && isUniqueViolation(err) {
		// The batch holds a redelivery: COPY cannot skip it, the INSERT can.
		n, err = w.writeFast(ctx, rows, config.WriteModeInsert)
	}
	if err == nil {
		return Result{Inserted: n, Duplicates: len(rows) - n}, nil
	}
	if !IsContentError(err) {
		return Result{}, err
	}
	return w.writeIsolating(ctx, rows)
}

func (w *Writer) writeFast(ctx context.Context, rows []Row, mode string) (int, error) {
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	var n int
	if mode == config.WriteModeCopy {
		n, err = copyRows(ctx, tx, rows)
	} else {
		n, err = insertRows(ctx, tx, rows)
	}
	if err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	return n, nil
}

// isUniqueViolation reports whether err is Postgres refusing a row whose
// unique key is taken (SQLSTATE 23505).
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// writeIsolating writes rows in one transaction, bisecting under
// savepoints around the rows the database refuses.
func (w *Writer) writeIsolating(ctx context.Context, rows []Row) (Result, error) {
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	var res Result
	var bisect func(off int, part []Row) error
	bisect = func(off int, part []Row) error {
		sp, err := tx.Begin(ctx) // SAVEPOINT
		if err != nil {
			return fmt.Errorf("savepoint: %w", err)
		}
		n, err := insertRows(ctx, sp, part)
		if err == nil {
			if err := sp.Commit(ctx); err != nil { // RELEASE SAVEPOINT
				return fmt.Errorf("release savepoint: %w", err)
			}
			res.Inserted += n
			return nil
		}
		if rerr := sp.Rollback(ctx); rerr != nil { // ROLLBACK TO SAVEPOINT
			return fmt.Errorf("rollback to savepoint: %w", rerr)
		}
		if !IsContentError(err) {
			return err
		}
		if len(part) == 1 {
			res.Rejected = append(res.Rejected, Rejection{Index: off, Reason: err.Error()})
			return nil
		}
		mid := len(part) / 2
		if err := bisect(off, part[:mid]); err != nil {
			return err
		}
		return bisect(off+mid, part[mid:])
	}
	if err := bisect(0, rows); err != nil {
		return Result{}, err
	}
	if err := tx.Commit(ctx); err != nil {
		return Result{}, fmt.Errorf("commit: %w", err)
	}
	res.Duplicates = len(rows) - res.Inserted - len(res.Rejected)
	return res, nil
}

// IsContentError reports whether err is Postgres refusing the data itself
// (data exceptions such as invalid UTF-8 or NUL characters, integrity
// violations, program limits such as an oversized index row), as opposed
// to the database being unreachable or failing.
func IsContentError(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || len(pe.Code) < 2 {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23", "54":
		return true
	}
	return false
}

func values(r Row) []any {
	var ct any
	if r.ContentType != "" {
		ct = r.ContentType
	}
	return []any{r.MessageID, r.Sender, r.Exchange, r.RoutingKey, ct, r.Headers, r.Body, r.PublishedAt}
}

// insertRows writes rows with one INSERT … SELECT FROM unnest(arrays) …
// ON CONFLICT DO NOTHING: eight array parameters in binary format, one
// statement and one round trip whatever the batch size, and no temporary
// table. It returns how many rows were new.
func insertRows(ctx context.Context, tx pgx.Tx, rows []Row) (int, error) {
	var (
		ids, senders, exchanges, keys = make([]string, len(rows)), make([]string, len(rows)), make([]string, len(rows)), make([]string, len(rows))
		cts                           = make([]*string, len(rows))
		headers, bodies               = make([]string, len(rows)), make([][]byte, len(rows))
		published                     = make([]time.Time, len(rows))
	)
	for i := range rows {
		r := &rows[i]
		ids[i], senders[i], exchanges[i], keys[i] = r.MessageID, r.Sender, r.Exchange, r.RoutingKey
		if r.ContentType != "" {
			cts[i] = &r.ContentType
		}
		headers[i], bodies[i], published[i] = string(r.Headers), r.Body, r.PublishedAt
	}
	tag, err := tx.Exec(ctx, "INSERT INTO stompgate_messages ("+insertColumns+") "+
		"SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::bytea[], $8::timestamptz[]) "+
		"ON CONFLICT DO NOTHING",
		ids, senders, exchanges, keys, cts, headers, bodies, published)
	if err != nil {
		return 0, fmt.Errorf("insert: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// copyRows streams rows with binary COPY straight into stompgate_messages:
// the cheapest way in for Postgres (multi-row heap inserts, no speculative
// insertion), but all or nothing — a batch holding a row that is already
// archived fails with a unique violation and Write redoes it with
// insertRows. It returns how many rows were written.
func copyRows(ctx context.Context, tx pgx.Tx, rows []Row) (int, error) {
	n, err := tx.CopyFrom(ctx, pgx.Identifier{"stompgate_messages"}, copyColumns,
		pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) { return values(rows[i]), nil }))
	if err != nil {
		return 0, fmt.Errorf("copy: %w", err)
	}
	return int(n), nil
}

var copyColumns = strings.Split(insertColumns, ", ")
