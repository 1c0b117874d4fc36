package revocation

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stompgate/stompgate/internal/migrate"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
)

// Several edges start at once on a fresh database: all succeed, the table
// and its trigger exist once, applying again is a no-op.
func TestMigrateConcurrently(t *testing.T) {
	t.Parallel()
	dbURL := testenv.DB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		pool := testenv.Pool(t, dbURL)
		wg.Go(func() { errs[i] = Migrate(ctx, pool) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	pool := testenv.Pool(t, dbURL)
	if err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	files, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("migration files: %v %v", files, err)
	}
	n, err := testenv.Count(ctx, pool, `SELECT count(*) FROM `+MigrationTable+` WHERE version_id > 0`)
	if err != nil || n != len(files) {
		t.Fatalf("applied migrations: %d, want %d (%v)", n, len(files), err)
	}
	if n, err := testenv.Count(ctx, pool, `SELECT count(*) FROM pg_trigger WHERE tgname = 'stompgate_revocations_notify'`); err != nil || n != 1 {
		t.Fatalf("notify triggers: %d, %v", n, err)
	}
	// A row names a subject or a jti.
	if _, err := pool.Exec(ctx, `INSERT INTO stompgate_revocations (reason) VALUES ('neither')`); err == nil {
		t.Fatal("revocation without subject or jti accepted")
	}
	if _, err := Revoke(ctx, pool, Row{Subject: "alice", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
}

// A database that persist's migrations 00001 and 00002 set up before this
// package owned the table (testdata/persist_v2 are those files as they
// were) keeps its rows and its one trigger through persist.Migrate and
// Migrate of today, and a store on it hears rows written by hand.
func TestMigrateOverPersistSchema(t *testing.T) {
	t.Parallel()
	e := newRevEnv(t) // migrated already: start again from an empty database
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, sql := range []string{
		`DROP TABLE stompgate_revocations`,
		`DROP FUNCTION stompgate_revocations_notify()`,
		`DROP TABLE ` + MigrationTable,
	} {
		if _, err := e.admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := migrate.Up(ctx, e.admin, os.DirFS("testdata"), "persist_v2", "stompgate_schema_version"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Exec(ctx, `INSERT INTO stompgate_revocations (subject, reason) VALUES ('before', 'old schema')`); err != nil {
		t.Fatal(err)
	}
	// The upgraded binaries: the persister and the edge migrate.
	if err := persist.Migrate(ctx, e.admin); err != nil {
		t.Fatal(err)
	}
	if err := Migrate(ctx, e.admin); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Exec(ctx, "GRANT SELECT ON stompgate_revocations TO "+e.role); err != nil {
		t.Fatal(err)
	}
	if n, err := testenv.Count(ctx, e.admin, `SELECT count(*) FROM pg_trigger WHERE tgname = 'stompgate_revocations_notify'`); err != nil || n != 1 {
		t.Fatalf("notify triggers: %d, %v", n, err)
	}
	s := NewStore(e.store, Config{Resync: time.Hour})
	var sink changes
	defer s.OnRevoke(&sink)()
	runStore(t, s)
	if ok, reason := s.IsRevoked("before", ""); !ok || reason != "old schema" {
		t.Fatal("row of the old schema lost")
	}
	if _, err := e.admin.Exec(ctx, `INSERT INTO stompgate_revocations (jti) VALUES ('after')`); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 2*time.Second, func() error {
		if !sink.has("", "after") {
			return errors.New("row by hand not pushed")
		}
		return nil
	})
}
