package revocation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Row is one row of stompgate_revocations.
type Row struct {
	ID        int64
	Subject   string    // "" when the row names a jti
	TokenID   string    // jti, "" when the row names a subject
	Until     time.Time // zero: until unrevoked
	Reason    string
	CreatedAt time.Time
}

// Active reports whether the revocation is in force at now.
func (r Row) Active(now time.Time) bool { return r.Until.IsZero() || now.Before(r.Until) }

// Queryer is what the revocation writers need: *pgxpool.Pool, *pgx.Conn and
// pgx.Tx all fit.
type Queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Revoke inserts a revocation of r.Subject or r.TokenID (exactly one) and
// notifies every edge in the same statement. It returns the row id.
func Revoke(ctx context.Context, db Queryer, r Row) (int64, error) {
	if (r.Subject == "") == (r.TokenID == "") {
		return 0, errors.New("revoke exactly one of a subject or a jti")
	}
	var until *time.Time
	if !r.Until.IsZero() {
		until = &r.Until
	}
	var id int64
	err := db.QueryRow(ctx, `WITH ins AS (
			INSERT INTO stompgate_revocations (subject, jti, until, reason)
			VALUES (nullif($1, ''), nullif($2, ''), $3, $4) RETURNING id)
		SELECT id FROM (SELECT id, pg_notify($5, 'revoke:' || id) FROM ins) notified`,
		r.Subject, r.TokenID, until, r.Reason, Channel).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("revoke: %w", err)
	}
	return id, nil
}

// Unrevoke deletes every revocation row of subject or jti (exactly one
// non-empty) and notifies every edge in the same statement. It returns how
// many rows went.
func Unrevoke(ctx context.Context, db Queryer, subject, jti string) (int64, error) {
	if (subject == "") == (jti == "") {
		return 0, errors.New("unrevoke exactly one of a subject or a jti")
	}
	var n int64
	// pg_notify is volatile: Postgres evaluates it for every deleted row
	// even though the outer query only counts them.
	err := db.QueryRow(ctx, `WITH del AS (
			DELETE FROM stompgate_revocations
			WHERE ($1 <> '' AND subject = $1) OR ($2 <> '' AND jti = $2) RETURNING id)
		SELECT count(*) FROM (SELECT pg_notify($3, 'unrevoke:' || id) FROM del) notified`,
		subject, jti, Channel).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("unrevoke: %w", err)
	}
	return n, nil
}

// List returns every row, in force or not, oldest first.
func List(ctx context.Context, db Queryer) ([]Row, error) {
	rows, err := db.Query(ctx, `SELECT id, coalesce(subject, ''), coalesce(jti, ''), until, reason, created_at
		FROM stompgate_revocations ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	defer rows.Close()
	var out []Row
	for rows.Next() {
		var r Row
		var until *time.Time
		if err := rows.Scan(&r.ID, &r.Subject, &r.TokenID, &until, &r.Reason, &r.CreatedAt); err != nil {
			return nil, fmt.Errorf("list revocations: %w", err)
		}
		if until != nil {
			r.Until = *until
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list revocations: %w", err)
	}
	return out, nil
}
