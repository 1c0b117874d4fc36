package pgdb_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stompgate/stompgate/internal/pgdb"
	"github.com/stompgate/stompgate/internal/testenv"
)

// The edge and the persister of `make run` start together on a fresh
// machine and both create the database: every caller must succeed, and
// exactly one reports that it created it. Postgres reports the losers of a
// concurrent CREATE DATABASE either as duplicate_database or as a unique
// violation on pg_database, so several rounds are run.
func TestEnsureConcurrently(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for range 5 {
		dbURL := testenv.DB(t) // a fresh name, dropped again when the test ends
		cc, err := pgx.ParseConfig(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		admin := cc.Copy()
		admin.Database = "postgres"
		conn, err := pgx.ConnectConfig(ctx, admin)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{cc.Database}.Sanitize()+" WITH (FORCE)")
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}

		var wg sync.WaitGroup
		created := make([]bool, 4)
		errs := make([]error, len(created))
		start := make(chan struct{})
		for i := range created {
			wg.Go(func() {
				<-start
				created[i], errs[i] = pgdb.Ensure(ctx, dbURL)
			})
		}
		close(start)
		wg.Wait()
		n := 0
		for i, err := range errs {
			if err != nil {
				t.Fatalf("caller %d: %v", i, err)
			}
			if created[i] {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d callers report creating the database, want 1", n)
		}
		c, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatalf("database not there: %v", err)
		}
		c.Close(ctx)
	}
}
