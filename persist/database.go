package persist

import (
	"context"

	"github.com/stompgate/stompgate/internal/pgdb"
)

// EnsureDatabase creates the database named in dbURL when it does not
// exist and reports whether it did: see pgdb.Ensure, which the edge and
// edgectl call directly.
func EnsureDatabase(ctx context.Context, dbURL string) (bool, error) {
	return pgdb.Ensure(ctx, dbURL)
}
