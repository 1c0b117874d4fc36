package migrate_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/stompgate/stompgate/internal/migrate"
	"github.com/stompgate/stompgate/internal/testenv"
)

// files are two migrations, in directory m, of one table.
func files(table string) fstest.MapFS {
	return fstest.MapFS{
		"m/00001_create.sql": {Data: []byte("-- +goose Up\nCREATE TABLE " + table + " (id int);\n-- +goose Down\nDROP TABLE " + table + ";\n")},
		"m/00002_insert.sql": {Data: []byte("-- +goose Up\nINSERT INTO " + table + " VALUES (1);\n-- +goose Down\nDELETE FROM " + table + ";\n")},
	}
}

// Two owners of tables, several processes each, on one fresh database:
// every call succeeds, each set of files is applied exactly once and
// recorded in its own version table.
func TestUpConcurrently(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		pool := testenv.Pool(t, dbURL)
		owner := []string{"a", "b"}[i%2]
		wg.Go(func() { errs[i] = migrate.Up(ctx, pool, files("t_"+owner), "m", "v_"+owner) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	pool := testenv.Pool(t, dbURL)
	for _, owner := range []string{"a", "b"} {
		if err := migrate.Up(ctx, pool, files("t_"+owner), "m", "v_"+owner); err != nil {
			t.Fatal(err)
		}
		if n, err := testenv.Count(ctx, pool, "SELECT count(*) FROM t_"+owner); err != nil || n != 1 {
			t.Fatalf("t_%s: %d rows, %v", owner, n, err)
		}
		if n, err := testenv.Count(ctx, pool, "SELECT count(*) FROM v_"+owner+" WHERE version_id > 0"); err != nil || n != 2 {
			t.Fatalf("v_%s: %d versions, %v", owner, n, err)
		}
	}
}

// Up waits for LockID, whoever holds it, and migrates once it is free.
func TestUpWaitsForTheLock(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	holder, err := testenv.Pool(t, dbURL).Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_lock($1)", migrate.LockID); err != nil {
		t.Fatal(err)
	}
	pool := testenv.Pool(t, dbURL)
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err = migrate.Up(wctx, pool, files("t"), "m", "v")
	wcancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Up while the lock is held: %v, want a deadline", err)
	}
	if n, err := testenv.Count(ctx, pool, "SELECT count(*) FROM pg_tables WHERE tablename = 't'"); err != nil || n != 0 {
		t.Fatalf("migrated while the lock was held: %d, %v", n, err)
	}
	if _, err := holder.Exec(ctx, "SELECT pg_advisory_unlock($1)", migrate.LockID); err != nil {
		t.Fatal(err)
	}
	if err := migrate.Up(ctx, pool, files("t"), "m", "v"); err != nil {
		t.Fatal(err)
	}
}
