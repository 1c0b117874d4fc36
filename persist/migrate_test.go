package persist_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
	"github.com/stompgate/stompgate/revocation"
)

// migrateAtOnce runs each migrate func on a pool of its own, all at once,
// as processes starting together would, and fails t if any fails.
func migrateAtOnce(t *testing.T, ctx context.Context, dbURL string, migrate ...func(context.Context, *pgxpool.Pool) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(migrate))
	for i, m := range migrate {
		pool := testenv.Pool(t, dbURL)
		wg.Go(func() { errs[i] = m(ctx, pool) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Several processes starting at once both succeed and the schema is applied
// once; applying again is a no-op.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	migrateAtOnce(t, ctx, dbURL, persist.Migrate, persist.Migrate, persist.Migrate)
	pool := testenv.Pool(t, dbURL)
	if err := persist.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("migrations/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("migration files: %v %v", files, err)
	}
	n, err := testenv.Count(ctx, pool, `SELECT count(*) FROM `+persist.MigrationTable+` WHERE version_id > 0`)
	if err != nil || n != len(files) {
		t.Fatalf("applied migrations: %d, want %d (%v)", n, len(files), err)
	}
	for _, table := range []string{"stompgate_messages", "stompgate_streams"} {
		if n, err := testenv.Count(ctx, pool, "SELECT count(*) FROM "+table); err != nil || n != 0 {
			t.Fatalf("%s: %d, %v", table, n, err)
		}
	}
	// stompgate_revocations belongs to the revocation package.
	if n, err := testenv.Count(ctx, pool, `SELECT count(*) FROM pg_tables WHERE tablename = 'stompgate_revocations'`); err != nil || n != 0 {
		t.Fatalf("persist created stompgate_revocations: %d, %v", n, err)
	}
}

// The persister and the edge (or edgectl) migrate a fresh database at the
// same moment, each its own tables with its own version table, one after
// the other on the shared advisory lock.
func TestMigrateBesideRevocation(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	migrateAtOnce(t, ctx, dbURL, persist.Migrate, revocation.Migrate, persist.Migrate, revocation.Migrate)
	pool := testenv.Pool(t, dbURL)
	for _, table := range []string{"stompgate_messages", "stompgate_streams", "stompgate_revocations"} {
		if n, err := testenv.Count(ctx, pool, "SELECT count(*) FROM "+table); err != nil || n != 0 {
			t.Fatalf("%s: %d, %v", table, n, err)
		}
	}
	for _, table := range []string{persist.MigrationTable, revocation.MigrationTable} {
		if n, err := testenv.Count(ctx, pool, `SELECT count(*) FROM `+table+` WHERE version_id > 0`); err != nil || n == 0 {
			t.Fatalf("%s: %d applied, %v", table, n, err)
		}
	}
}
