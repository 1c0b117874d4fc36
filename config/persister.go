package config

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Write modes of the persister (PERSIST_WRITE_MODE).
const (
	// WriteModeCopy streams a batch with binary COPY straight into the
	// table; a batch that holds an already archived message (a
	// redelivery) fails as a whole and is redone the WriteModeInsert way.
	// The default: the faster mode on the benchmark machine, see
	// docs/BENCHMARKS.md.
	WriteModeCopy = "copy"
	// WriteModeInsert writes a batch with one INSERT … SELECT FROM
	// unnest(arrays) … ON CONFLICT DO NOTHING.
	WriteModeInsert = "insert"
)

// Persister is the configuration of cmd/persister, the AMQP → Postgres
// archiver (SPEC §6). Every field maps to one environment variable; the
// comment on each field names it, its unit and its default.
type Persister struct {
	// AMQPURL is the broker to consume from, with the vhost in the path.
	// PERSIST_AMQP_URL, default
	// amqp://stompgate-persister:stompgate-persister@127.0.0.1:5672/stompgate.
	AMQPURL string
	// AMQPURLs are the nodes of a RabbitMQ cluster to consume from, tried
	// in turn on every (re)connect starting after the one last used; the
	// archive and the journal fail over through them when a node goes.
	// PERSIST_AMQP_URLS, comma list of amqp:// or amqps:// URLs, default
	// the one PERSIST_AMQP_URL.
	AMQPURLs []string
	// DatabaseURL is the Postgres database the archive is written to. The
	// database is created at start when missing. PERSIST_DATABASE_URL,
	// default postgres://postgres@127.0.0.1:5432/stompgate?sslmode=disable.
	DatabaseURL string
	// Bindings are the routing keys binding Queue to amq.topic.
	// PERSIST_BINDINGS, comma list, default "#" (everything).
	Bindings []string
	// Queue is the archive queue (quorum). PERSIST_QUEUE, default
	// stompgate.archive.
	Queue string
	// DLX is the fanout dead-letter exchange of Queue. PERSIST_DLX, default
	// stompgate.dlx.
	DLX string
	// DLQ is the queue bound to DLX that collects dead letters. PERSIST_DLQ,
	// default stompgate.archive.dlq.
	DLQ string
	// DeliveryLimit is the x-delivery-limit of Queue: a message delivered
	// this many times without an ack is dead-lettered by RabbitMQ.
	// PERSIST_DELIVERY_LIMIT, count, default 5 (must match definitions.json).
	DeliveryLimit int
	// BatchSize is the most messages written in one transaction.
	// PERSIST_BATCH_SIZE, messages, default 500, 1 to 10000.
	BatchSize int
	// BatchWait is how long a batch waits for more messages after its first
	// one before it is written. PERSIST_BATCH_WAIT, duration, default 20ms.
	BatchWait time.Duration
	// Writers is how many batches are written concurrently, each on its own
	// Postgres connection; acks still go out in delivery order.
	// PERSIST_WRITERS, goroutines, default 2, 1 to 16.
	Writers int
	// WriteMode is "copy" (binary COPY into the table; a batch holding a
	// redelivery is redone as an insert) or "insert" (one INSERT … SELECT
	// FROM unnest … ON CONFLICT DO NOTHING). PERSIST_WRITE_MODE, default
	// copy.
	WriteMode string
	// SchedPolicy is the process's CPU scheduling policy, "batch"
	// (SCHED_BATCH: woken threads do not preempt, so deliveries are read
	// and written in larger runs on a busy machine) or "other" (the kernel
	// default). PERSIST_SCHED_POLICY, default batch.
	SchedPolicy string
	// RetryMin and RetryMax bound the capped exponential backoff (with
	// jitter) between attempts to write a batch while Postgres fails, and
	// between reconnects to RabbitMQ. PERSIST_RETRY_MIN default 100ms,
	// PERSIST_RETRY_MAX default 5s.
	RetryMin, RetryMax time.Duration
	// ShutdownTimeout bounds how long a SIGTERM waits for the batch in
	// flight to commit; what is not committed by then stays unacked and is
	// redelivered. PERSIST_SHUTDOWN_TIMEOUT, duration, default 30s.
	ShutdownTimeout time.Duration
	// ConnectionName is the connection_name client property shown in the
	// RabbitMQ management UI. PERSIST_CONNECTION_NAME, default
	// stompgate-persister.
	ConnectionName string
	// MetricsListen is the address of the /metrics and /healthz HTTP
	// server; empty disables it. PERSIST_METRICS_LISTEN, default :9091.
	MetricsListen string
	// DBMaxConns is the size of the Postgres connection pool.
	// PERSIST_DB_MAX_CONNS, connections, default 4.
	DBMaxConns int
	// LogFormat is "text" or "json". LOG_FORMAT, default text.
	LogFormat string

	// Archive turns the archive consumer (Queue) on or off.
	// PERSIST_ARCHIVE, bool, default true.
	Archive bool
	// Journal turns the journal (SPEC §6: /app/ traffic and
	// stompgate_publish, persisted then broadcast) on or off.
	// PERSIST_JOURNAL, bool, default true.
	Journal bool
	// JournalExchange is the topic exchange the edge publishes /app/<key>
	// SENDs to (routing key <key>). PERSIST_JOURNAL_EXCHANGE, default
	// stompgate.ingest.
	JournalExchange string
	// JournalQueue is the journal's quorum queue (single active consumer,
	// dead letters to DLX), bound to JournalExchange with "#".
	// PERSIST_JOURNAL_QUEUE, default stompgate.ingest.
	JournalQueue string
	// JournalBatchSize is the most journal messages written in one
	// transaction; a batch is whatever has arrived while the previous one
	// was written and broadcast (no waiting). PERSIST_JOURNAL_BATCH_SIZE,
	// messages, default 500, 1 to 10000; the prefetch is twice this.
	JournalBatchSize int
	// JournalPollInterval is how often the journal leader looks for rows
	// that applications committed with stompgate_publish (one indexed
	// query over the streams with unbroadcast rows): it bounds the delay
	// from COMMIT to broadcast. PERSIST_JOURNAL_POLL_INTERVAL, duration,
	// default 2ms, at least 1ms.
	JournalPollInterval time.Duration
	// JournalScanInterval is how often the journal leader scans every
	// stream for committed rows not yet broadcast (a safety net beside
	// the poll). PERSIST_JOURNAL_SCAN_INTERVAL, duration, default 5s.
	JournalScanInterval time.Duration
	// JournalLockPoll is how often a standby persister tries to take over
	// the journal lead. PERSIST_JOURNAL_LOCK_POLL, duration, default 250ms.
	JournalLockPoll time.Duration
}

// MaxBatchSize is the largest PERSIST_BATCH_SIZE accepted.
const MaxBatchSize = 10000

// LoadPersister reads and validates the persister configuration, reporting
// every problem together.
func LoadPersister(getenv Getenv) (Persister, error) {
	e := env{get: getenv}
	c := Persister{
		AMQPURL:         e.String("PERSIST_AMQP_URL", "amqp://stompgate-persister:stompgate-persister@127.0.0.1:5672/stompgate"),
		AMQPURLs:        e.List("PERSIST_AMQP_URLS", ""),
		DatabaseURL:     e.String("PERSIST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/stompgate?sslmode=disable"),
		Bindings:        e.List("PERSIST_BINDINGS", "#"),
		Queue:           e.String("PERSIST_QUEUE", "stompgate.archive"),
		DLX:             e.String("PERSIST_DLX", "stompgate.dlx"),
		DLQ:             e.String("PERSIST_DLQ", "stompgate.archive.dlq"),
		DeliveryLimit:   e.Int("PERSIST_DELIVERY_LIMIT", 5, 1),
		BatchSize:       e.Int("PERSIST_BATCH_SIZE", 500, 1),
		BatchWait:       e.Duration("PERSIST_BATCH_WAIT", 20*time.Millisecond, 0),
		Writers:         e.Int("PERSIST_WRITERS", 2, 1),
		WriteMode:       strings.ToLower(e.String("PERSIST_WRITE_MODE", WriteModeCopy)),
		SchedPolicy:     e.SchedPolicy("PERSIST_SCHED_POLICY"),
		RetryMin:        e.Duration("PERSIST_RETRY_MIN", 100*time.Millisecond, time.Millisecond),
		RetryMax:        e.Duration("PERSIST_RETRY_MAX", 5*time.Second, time.Millisecond),
		ShutdownTimeout: e.Duration("PERSIST_SHUTDOWN_TIMEOUT", 30*time.Second, 0),
		ConnectionName:  e.String("PERSIST_CONNECTION_NAME", "stompgate-persister"),
		MetricsListen:   e.String("PERSIST_METRICS_LISTEN", ":9091"),
		DBMaxConns:      e.Int("PERSIST_DB_MAX_CONNS", 4, 1),
		LogFormat:       strings.ToLower(e.String("LOG_FORMAT", "text")),

		Archive:             e.Bool("PERSIST_ARCHIVE", true),
		Journal:             e.Bool("PERSIST_JOURNAL", true),
		JournalExchange:     e.String("PERSIST_JOURNAL_EXCHANGE", "stompgate.ingest"),
		JournalQueue:        e.String("PERSIST_JOURNAL_QUEUE", "stompgate.ingest"),
		JournalBatchSize:    e.Int("PERSIST_JOURNAL_BATCH_SIZE", 500, 1),
		JournalPollInterval: e.Duration("PERSIST_JOURNAL_POLL_INTERVAL", 2*time.Millisecond, time.Millisecond),
		JournalScanInterval: e.Duration("PERSIST_JOURNAL_SCAN_INTERVAL", 5*time.Second, 10*time.Millisecond),
		JournalLockPoll:     e.Duration("PERSIST_JOURNAL_LOCK_POLL", 250*time.Millisecond, time.Millisecond),
	}
	if u, err := url.Parse(c.AMQPURL); err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") {
		e.fail("PERSIST_AMQP_URL", "%q is not an amqp:// or amqps:// URL", redactURL(c.AMQPURL))
	}
	for _, s := range c.AMQPURLs {
		if u, err := url.Parse(s); err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") {
			e.fail("PERSIST_AMQP_URLS", "%q is not an amqp:// or amqps:// URL", redactURL(s))
		}
	}
	if len(c.AMQPURLs) == 0 {
		c.AMQPURLs = []string{c.AMQPURL}
	}
	if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		e.fail("PERSIST_DATABASE_URL", "%q is not a postgres:// URL", redactURL(c.DatabaseURL))
	} else if strings.TrimPrefix(u.Path, "/") == "" {
		e.fail("PERSIST_DATABASE_URL", "names no database")
	}
	if len(c.Bindings) == 0 {
		e.fail("PERSIST_BINDINGS", "needs at least one routing key (\"#\" for everything)")
	}
	if c.BatchSize > MaxBatchSize {
		e.fail("PERSIST_BATCH_SIZE", "%d is above the maximum %d", c.BatchSize, MaxBatchSize)
	}
	if c.Writers > 16 {
		e.fail("PERSIST_WRITERS", "%d is above the maximum 16", c.Writers)
	}
	if c.DBMaxConns < c.Writers {
		e.fail("PERSIST_DB_MAX_CONNS", "%d is below PERSIST_WRITERS %d", c.DBMaxConns, c.Writers)
	}
	if c.WriteMode != WriteModeCopy && c.WriteMode != WriteModeInsert {
		e.fail("PERSIST_WRITE_MODE", "%q is neither %q nor %q", c.WriteMode, WriteModeCopy, WriteModeInsert)
	}
	if c.RetryMax < c.RetryMin {
		e.fail("PERSIST_RETRY_MAX", "%s is below PERSIST_RETRY_MIN %s", c.RetryMax, c.RetryMin)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		e.fail("LOG_FORMAT", "%q is neither text nor json", c.LogFormat)
	}
	for _, q := range []struct{ name, v string }{{"PERSIST_QUEUE", c.Queue}, {"PERSIST_DLX", c.DLX}, {"PERSIST_DLQ", c.DLQ}} {
		if strings.HasPrefix(q.v, "amq.") {
			e.fail(q.name, "%q uses the reserved amq. prefix", q.v)
		}
	}
	if c.JournalBatchSize > MaxBatchSize {
		e.fail("PERSIST_JOURNAL_BATCH_SIZE", "%d is above the maximum %d", c.JournalBatchSize, MaxBatchSize)
	}
	if !c.Archive && !c.Journal {
		e.fail("PERSIST_JOURNAL", "and PERSIST_ARCHIVE are both false: nothing to do")
	}
	for _, q := range []struct{ name, v string }{{"PERSIST_JOURNAL_EXCHANGE", c.JournalExchange}, {"PERSIST_JOURNAL_QUEUE", c.JournalQueue}} {
		if q.v == "" || strings.HasPrefix(q.v, "amq.") {
			e.fail(q.name, "%q is empty or uses the reserved amq. prefix", q.v)
		}
	}
	if c.Journal && (c.JournalQueue == c.Queue || c.JournalQueue == c.DLQ) {
		e.fail("PERSIST_JOURNAL_QUEUE", "must differ from PERSIST_QUEUE and PERSIST_DLQ")
	}
	if c.Queue == c.DLQ {
		e.fail("PERSIST_DLQ", "must differ from PERSIST_QUEUE")
	}
	if err := e.err(); err != nil {
		return Persister{}, fmt.Errorf("persister configuration: %w", err)
	}
	return c, nil
}

// redactURL hides the password of a URL for error messages.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
