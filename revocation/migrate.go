package revocation

import (
	"context"
	"embed"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/internal/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// MigrationTable is the table in which goose records the applied
// migrations of this package (persist keeps its own).
const MigrationTable = "stompgate_revocation_schema_version"

// Migrate creates stompgate_revocations and its notify trigger, or brings
// them up to date (revocation/migrations). Databases whose table persist's
// old migrations created keep it and its rows. It is safe to call from
// several processes at once: they serialise on internal/migrate's advisory
// lock, shared with persist.Migrate. Migrate uses the pool and leaves it
// open. The edge and edgectl call it before anything else touches the
// table.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	return migrate.Up(ctx, pool, migrationFiles, "migrations", MigrationTable)
}
