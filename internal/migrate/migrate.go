// Package migrate applies a package's embedded goose migrations to Postgres.
// Every package that owns tables (persist, revocation) keeps its own files
// and its own version table and calls Up; all of them serialise on one
// advisory lock, so edges, persisters and edgectl may start at once on a
// fresh database.
package migrate

import (
	"context"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

// LockID is the key of the session advisory lock held while migrating
// ("stompgate" in ASCII). It is the same for every caller of Up, whatever
// its files: one migration runs at a time per database.
const LockID int64 = 0x73746f6d70676174

// Up applies the migrations in directory dir of fsys (goose SQL files,
// e.g. migrations/00001_x.sql in a package's embed.FS) that table does not
// record as applied yet, holding LockID on one connection of pool for the
// whole run. It uses the pool (pgx stdlib adapter) and leaves it open.
func Up(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS, dir, table string) error {
	files, err := fs.Sub(fsys, dir)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", table, err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate %s: acquire connection: %w", table, err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", LockID); err != nil {
		return fmt.Errorf("migrate %s: advisory lock: %w", table, err)
	}
	defer func() {
		// A failed unlock (lost connection) releases the lock anyway.
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", LockID)
	}()

	sqlDB := stdlib.OpenDBFromPool(pool)
	defer sqlDB.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, files,
		goose.WithTableName(table),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", table, err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate %s: %w", table, err)
	}
	return nil
}
