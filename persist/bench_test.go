package persist_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/internal/sched"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
)

// Benchmarks of the archive against the real local RabbitMQ and Postgres;
// docs/BENCHMARKS.md has the command and the numbers. Each run
// preloads b.N messages of 256 bytes into the archive queue, then times
// draining them: BenchmarkRawConsume with a plain amqp091 consumer that
// only acks (the ceiling the broker gives one consumer), BenchmarkArchive
// with the Archiver writing them to Postgres. Both report msgs/s.

const benchBody = 256

func benchTopology() persist.Topology {
	return persist.Topology{Queue: "stompgate.archive", DLX: "stompgate.dlx", DLQ: "stompgate.archive.dlq",
		Bindings: []string{"#"}, DeliveryLimit: 5}
}

// preload declares the archive topology in vhost and publishes n messages
// of benchBody bytes to it (confirmed).
func preload(b *testing.B, vhost string, n int) {
	b.Helper()
	conn := testenv.Dial(b, vhost)
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := benchTopology().Declare(ch); err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	body := make([]byte, benchBody)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	var dcs []*amqp.DeferredConfirmation
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "amq.topic", "bench.room", false, false,
			amqp.Publishing{MessageId: "bench-" + strconv.Itoa(i), ContentType: "text/plain", Body: body})
		if err != nil {
			b.Fatal(err)
		}
		dcs = append(dcs, dc)
		if len(dcs) == 1000 || i == n-1 {
			for _, dc := range dcs {
				if !dc.Wait() {
					b.Fatal("publish nacked")
				}
			}
			dcs = dcs[:0]
		}
	}
}

// BenchmarkRawConsume drains the queue without Postgres, the reference the
// issue names ("a plain amqp091 consumer that only acks"), in three shapes:
//
//   - ack=each/policy=other: the plain consumer as a user writes it — every
//     delivery acked on its own, the persister's default prefetch (1,500),
//     the kernel's default scheduling policy;
//   - ack=each/policy=batch: the same under SCHED_BATCH, the policy the
//     persister ships with (the control: what the policy alone gives);
//   - ack=multiple500/policy=other: the persister's own pattern minus
//     Postgres — one ack (multiple=true) per 500 deliveries, the strictest
//     ceiling.
func BenchmarkRawConsume(b *testing.B) {
	for _, c := range []struct {
		name          string
		prefetch, per int
		policy        sched.Policy
	}{
		{"ack=each/policy=other", 1500, 1, sched.Other},
		{"ack=each/policy=batch", 1500, 1, sched.Batch},
		{"ack=multiple500/policy=other", 1500, 500, sched.Other},
	} {
		b.Run(c.name, func(b *testing.B) {
			setPolicy(b, c.policy)
			benchRawConsume(b, c.prefetch, c.per)
		})
	}
}

// setPolicy puts the whole benchmark process under p.
func setPolicy(b *testing.B, p sched.Policy) {
	b.Helper()
	if err := sched.Apply(p); err != nil {
		b.Fatal(err)
	}
}

// benchRawConsume consumes b.N preloaded messages with prefetch, acking
// (multiple) every per-th delivery and the last.
func benchRawConsume(b *testing.B, prefetch, per int) {
	vhost := testenv.Vhost(b)
	preload(b, vhost, b.N)
	conn := testenv.Dial(b, vhost)
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	deliveries, err := ch.Consume("stompgate.archive", "bench", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i <= b.N; i++ {
		d := <-deliveries
		if i%per == 0 || i == b.N {
			if err := d.Ack(per > 1); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	ch.Close()
}

// BenchmarkArchive drains the queue into Postgres with the Archiver, for
// both write modes and several batch sizes, under the scheduling policy the
// persister ships with (batch) and, for the default batch size, under the
// kernel's default as well.
func BenchmarkArchive(b *testing.B) {
	for _, mode := range []string{config.WriteModeCopy, config.WriteModeInsert} {
		for _, c := range []struct {
			size, writers int
			policy        sched.Policy
		}{
			{1, 2, sched.Batch}, {100, 2, sched.Batch}, {500, 1, sched.Batch}, {500, 2, sched.Batch},
			{500, 2, sched.Other}, {500, 3, sched.Batch}, {500, 4, sched.Batch}, {1000, 3, sched.Batch},
		} {
			b.Run(fmt.Sprintf("mode=%s/batch=%d/writers=%d/policy=%s", mode, c.size, c.writers, c.policy), func(b *testing.B) {
				setPolicy(b, c.policy)
				benchArchive(b, mode, c.size, c.writers)
			})
		}
	}
}

func benchArchive(b *testing.B, mode string, size, writers int) {
	vhost := testenv.Vhost(b)
	dbURL := testenv.DB(b)
	cfg, err := config.LoadPersister(testenv.Env(map[string]string{
		"PERSIST_AMQP_URL":     testenv.AMQPURL(vhost),
		"PERSIST_DATABASE_URL": dbURL,
		"PERSIST_BATCH_SIZE":   strconv.Itoa(size),
		"PERSIST_WRITE_MODE":   mode,
		"PERSIST_WRITERS":      strconv.Itoa(writers),
	}))
	if err != nil {
		b.Fatal(err)
	}
	pool := testenv.Pool(b, dbURL)
	ctx := context.Background()
	if err := persist.Migrate(ctx, pool); err != nil {
		b.Fatal(err)
	}
	preload(b, vhost, b.N)
	m := persist.NewMetrics(prometheus.NewRegistry(), pool)
	a := persist.NewArchiver(cfg, persist.NewWriter(pool, mode), m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1) // Run's result
	b.ResetTimer()
	start := time.Now()
	go func() { done <- a.Run(rctx) }()
	for testutil.ToFloat64(m.RowsWritten) < float64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	if n, err := testenv.Count(ctx, pool, "SELECT count(*) FROM stompgate_messages"); err != nil || n != b.N {
		b.Fatalf("%d rows, want %d (%v)", n, b.N, err)
	}
}
