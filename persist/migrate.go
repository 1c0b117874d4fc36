package persist

import (
	"context"
	"embed"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/internal/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// MigrationTable is the table in which goose records the applied
// migrations of persist (the revocation package keeps its own).
const MigrationTable = "stompgate_schema_version"

// Migrate applies the embedded migrations (persist/migrations: the archive
// and the journal) that are not applied yet. It is safe to call from
// several processes at once: they serialise on the advisory lock of
// internal/migrate, shared with revocation.Migrate. Migrate uses the pool
// and leaves it open.
func Migrate(ctx context.Context, db *pgxpool.Pool) error {
	return migrate.Up(ctx, db, migrationFiles, "migrations", MigrationTable)
}
