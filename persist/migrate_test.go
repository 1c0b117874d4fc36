package persist_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
)

// Two processes starting at once both succeed and the schema is applied
// once; applying again is a no-op.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		pool := testenv.Pool(t, dbURL)
		wg.Go(func() { errs[i] = persist.Migrate(ctx, pool) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
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
	for _, table := range []string{"stompgate_messages", "stompgate_streams", "stompgate_revocations"} {
		if n, err := testenv.Count(ctx, pool, "SELECT count(*) FROM "+table); err != nil || n != 0 {
			t.Fatalf("%s: %d, %v", table, n, err)
		}
	}
	// The revocation check: a subject or a jti.
	if _, err := pool.Exec(ctx, `INSERT INTO stompgate_revocations (reason) VALUES ('neither')`); err == nil {
		t.Fatal("revocation without subject or jti accepted")
	}
	if _, err := pool.Exec(ctx, `INSERT INTO stompgate_revocations (subject, reason) VALUES ('alice', 'test')`); err != nil {
		t.Fatal(err)
	}
}
