package persist_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stompgate/stompgate/internal/testenv"
)

// Postgres going away while 20,000 messages flow: consumption pauses
// (no acks, no dead letters), resumes by itself when Postgres is back, and
// every message is archived exactly once. The test stops a private Postgres
// server, never the shared one.
func TestPostgresOutageLosesNothing(t *testing.T) {
	t.Parallel()
	const total = 20000
	pg := testenv.StartPrivatePostgres(t)
	vhost := testenv.Vhost(t)
	cfg := testConfig(t, vhost, testenv.DBOn(t, pg.Addr), map[string]string{
		"PERSIST_BATCH_SIZE": "500", "PERSIST_RETRY_MAX": "300ms"})
	r := startArchiver(t, cfg)

	p := newPublisher(t, vhost)
	published := make(chan error, 1) // the publisher's result
	go func() {
		for i := 0; i < total; i += 500 {
			if err := p.publishErr("outage.x", numbered(fmt.Sprintf("o%d", i), 500)...); err != nil {
				published <- err
				return
			}
		}
		published <- nil
	}()
	// Stop Postgres once part of the stream is in.
	testenv.WaitFor(t, 60*time.Second, func() error {
		if n := testutil.ToFloat64(r.metrics.RowsWritten); n < 2000 {
			return fmt.Errorf("%v rows written", n)
		}
		return nil
	})
	pg.Stop(t)
	testenv.WaitFor(t, 30*time.Second, func() error {
		if testutil.ToFloat64(r.metrics.Paused) != 1 {
			return fmt.Errorf("not paused")
		}
		return nil
	})
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	// While paused, RabbitMQ holds what is not acked.
	if ready := testenv.QueueDepth(t, vhost, cfg.Queue); ready == 0 {
		t.Error("queue is empty while Postgres is down")
	}
	pg.Start(t)
	r.waitRows(t, total, 90*time.Second)
	ctx := context.Background()
	if n, err := testenv.Count(ctx, r.pool, "SELECT count(DISTINCT message_id) FROM stompgate_messages"); err != nil || n != total {
		t.Fatalf("distinct message ids %d, %v", n, err)
	}
	if got := testutil.ToFloat64(r.metrics.Paused); got != 0 {
		t.Errorf("still paused")
	}
	if got := testutil.ToFloat64(r.metrics.DeadLetters); got != 0 {
		t.Errorf("%v dead letters", got)
	}
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := testenv.QueueDepth(t, vhost, cfg.Queue); n != 0 {
			return fmt.Errorf("%d messages left in the queue", n)
		}
		return nil
	})
}
