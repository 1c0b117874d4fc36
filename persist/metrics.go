package persist

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the persister's Prometheus metrics (SPEC §8), registered on a
// registry the caller owns. Safe for concurrent use.
type Metrics struct {
	BatchSize     prometheus.Histogram
	BatchDuration prometheus.Histogram
	RowsWritten   prometheus.Counter
	Duplicates    prometheus.Counter
	DeadLetters   prometheus.Counter
	Received      prometheus.Counter
	Redeliveries  prometheus.Counter
	WriteRetries  prometheus.Counter
	Reconnects    prometheus.Counter
	Paused        prometheus.Gauge
	Consuming     prometheus.Gauge
	QueueReady    prometheus.Gauge
}

// NewMetrics creates the metrics and registers them, and gauges of pool's
// usage when pool is not nil, on reg.
func NewMetrics(reg prometheus.Registerer, pool *pgxpool.Pool) *Metrics {
	const ns, sub = "stompgate", "persister"
	m := &Metrics{
		BatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "batch_size_messages",
			Help:    "Messages per committed batch.",
			Buckets: []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000},
		}),
		BatchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "batch_duration_seconds",
			Help:    "Time to write and commit one batch (successful attempt), seconds.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		RowsWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "rows_written_total",
			Help: "Rows inserted into stompgate_messages.",
		}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "duplicates_total",
			Help: "Messages skipped because (sender, message_id) was already archived.",
		}),
		DeadLetters: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "dead_letters_total",
			Help: "Messages the database refused, sent to the dead-letter queue.",
		}),
		Received: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "messages_received_total",
			Help: "Deliveries received from the archive queue.",
		}),
		Redeliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "redeliveries_total",
			Help: "Deliveries flagged as redelivered by RabbitMQ.",
		}),
		WriteRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "write_retries_total",
			Help: "Failed attempts to write a batch that will be retried.",
		}),
		Reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "amqp_reconnects_total",
			Help: "RabbitMQ connections lost and re-established.",
		}),
		Paused: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "paused",
			Help: "1 while writes to Postgres fail and consumption is paused.",
		}),
		Consuming: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "consuming",
			Help: "1 while a consumer is attached to the archive queue.",
		}),
		QueueReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "queue_messages_ready",
			Help: "Messages ready in the archive queue at the last check (consumer lag).",
		}),
	}
	reg.MustRegister(m.BatchSize, m.BatchDuration, m.RowsWritten, m.Duplicates, m.DeadLetters,
		m.Received, m.Redeliveries, m.WriteRetries, m.Reconnects, m.Paused, m.Consuming, m.QueueReady)
	if pool != nil {
		stat := func(f func(*pgxpool.Stat) float64) func() float64 {
			return func() float64 { return f(pool.Stat()) }
		}
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "db_pool_acquired_conns",
				Help: "Postgres connections in use."}, stat(func(s *pgxpool.Stat) float64 { return float64(s.AcquiredConns()) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "db_pool_total_conns",
				Help: "Postgres connections open."}, stat(func(s *pgxpool.Stat) float64 { return float64(s.TotalConns()) })),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "db_pool_max_conns",
				Help: "Size of the Postgres connection pool."}, stat(func(s *pgxpool.Stat) float64 { return float64(s.MaxConns()) })),
		)
	}
	return m
}
