package persist

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/internal/backoff"
)

// journalLockID is the key of the session advisory lock held by the
// journal leader ("stompjrn" in ASCII). Advisory locks are per database.
const journalLockID int64 = 0x73746f6d706a726e

// Bounds of the journal's single operations.
const (
	broadcastTimeout = 30 * time.Second       // publishing a run of messages until every confirm is in
	catchUpRows      = 1000                   // rows read per stream per catch-up query
	catchUpRounds    = 10                     // catch-up queries per wake-up; more waits for the next one
	batchGap         = 200 * time.Microsecond // a batch closes when no delivery follows within this
	batchWindow      = 2 * time.Millisecond   // and at the latest this long after its first delivery
)

// notifyBuffer is how many stream notifications wait for the leader while
// it writes a batch. When full, the listener drops them and asks for a
// scan of every stream instead, so it never blocks and nothing is missed.
const notifyBuffer = 4096

// errLostLead is returned when the leader's Postgres connection, and with
// it the advisory lock, is gone.
var errLostLead = errors.New("journal leader connection lost")

// Journal persists, then broadcasts (SPEC §6): it consumes the journal
// queue, gives each message the next gapless seq of its stream (its
// routing key) in the transaction that stores it, commits, publishes it
// to amq.topic under publisher confirms, records the broadcast
// (stompgate_streams.broadcast_seq) and only then acks. It also
// broadcasts what applications commit with stompgate_publish (on NOTIFY
// stompgate_journal, and a periodic scan), in seq order with the rest.
//
// Leadership: of several persisters on one database, exactly one leads:
// the one holding a session advisory lock on its own Postgres connection,
// on which it also writes every journal batch. Only the leader consumes
// (the queue is single-active-consumer as well) and broadcasts. A standby
// polls the lock every cfg.JournalLockPoll; when the leader dies its
// connection and lock go, its unacked messages return to the queue, and
// the standby takes over: it first broadcasts every committed row not yet
// marked broadcast (in seq order), then consumes; redelivered messages
// already stored are duplicates and get no new seq.
//
// Goroutines: Run runs one leadership at a time in its own goroutine; a
// leadership has one goroutine that owns the Postgres connection, the
// broadcast state and both AMQP channels, plus one listener goroutine
// that reads notifications on a second connection and hands them over on
// a bounded channel.
type Journal struct {
	cfg     config.Persister
	topo    JournalTopology
	metrics *JournalMetrics
	log     *slog.Logger
}

// NewJournal returns a Journal for cfg.
func NewJournal(cfg config.Persister, m *JournalMetrics, log *slog.Logger) *Journal {
	return &Journal{
		cfg: cfg,
		topo: JournalTopology{Exchange: cfg.JournalExchange, Queue: cfg.JournalQueue, DLX: cfg.DLX,
			DeliveryLimit: cfg.DeliveryLimit},
		metrics: m,
		log:     log,
	}
}

// Run leads, or waits to lead, until ctx is cancelled; then it stops
// consuming, settles what it holds and returns nil. It returns an error
// only for problems retrying cannot fix.
func (j *Journal) Run(ctx context.Context) error {
	bo := backoff.Backoff{Min: j.cfg.RetryMin, Max: j.cfg.RetryMax}
	for {
		started := time.Now()
		err := j.lead(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > j.cfg.RetryMax {
			bo.Reset()
		}
		wait := bo.Next()
		j.log.Warn("journal lead ended, trying again", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// leader is the state of one leadership, owned by its goroutine.
type leader struct {
	j       *Journal
	db      *pgx.Conn
	amqp    *amqp.Connection
	consume *amqp.Channel
	publish *amqp.Channel
	// marked is the highest seq per stream this leader saw confirmed;
	// unmarked holds those not yet recorded in broadcast_seq.
	marked, unmarked map[string]int64
	rescan           atomic.Bool // set by the listener when notes overflowed
}

func (j *Journal) connectDB(ctx context.Context, app string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(j.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("PERSIST_DATABASE_URL: %w", err)
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = j.cfg.ConnectionName + "-" + app
	}
	cctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect postgres: %w", err)
	}
	return conn, nil
}

// lead waits for the lock, then leads until ctx ends or something fails.
func (j *Journal) lead(ctx context.Context) error {
	db, err := j.connectDB(ctx, "journal")
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	waiting := time.Now()
	for logged := false; ; {
		var ok bool
		qctx, cancel := context.WithTimeout(ctx, dialTimeout)
		err := db.QueryRow(qctx, `SELECT pg_try_advisory_lock($1)`, journalLockID).Scan(&ok)
		cancel()
		if err != nil {
			return fmt.Errorf("journal lock: %w", err)
		}
		if ok {
			break
		}
		if !logged {
			j.log.Info("journal standby: another persister leads")
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(j.cfg.JournalLockPoll):
		}
	}
	j.log.Info("journal leader", "waited", time.Since(waiting).Round(time.Millisecond))
	j.metrics.Leader.Set(1)
	defer j.metrics.Leader.Set(0)

	l := &leader{j: j, db: db, marked: map[string]int64{}, unmarked: map[string]int64{}}

	// LISTEN before the first scan, so that nothing committed in between
	// is missed.
	ldb, err := j.connectDB(ctx, "journal-listen")
	if err != nil {
		return err
	}
	defer ldb.Close(context.WithoutCancel(ctx))
	if _, err := ldb.Exec(ctx, `LISTEN `+JournalChannel); err != nil {
		return fmt.Errorf("listen %s: %w", JournalChannel, err)
	}
	lctx, stopListen := context.WithCancel(ctx)
	notes := make(chan string, notifyBuffer)
	listenErr := make(chan error, 1) // the listener's single result
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			n, err := ldb.WaitForNotification(lctx)
			if err != nil {
				listenErr <- err
				return
			}
			select {
			case notes <- n.Payload:
			default:
				l.rescan.Store(true)
			}
		}
	})
	defer func() { stopListen(); wg.Wait() }()

	if err := l.dial(); err != nil {
		return err
	}
	defer l.amqp.Close()
	connClosed := l.amqp.NotifyClose(make(chan *amqp.Error, 1))
	consumeClosed := l.consume.NotifyClose(make(chan *amqp.Error, 1))
	publishClosed := l.publish.NotifyClose(make(chan *amqp.Error, 1))

	if err := l.catchUp(ctx, nil); err != nil {
		return err
	}
	const tag = "stompgate-journal"
	deliveries, err := l.consume.Consume(j.cfg.JournalQueue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", j.cfg.JournalQueue, err)
	}
	j.log.Info("journal consuming", "queue", j.cfg.JournalQueue, "exchange", j.cfg.JournalExchange)
	scan := time.NewTicker(j.cfg.JournalScanInterval)
	defer scan.Stop()
	closedErr := func(e *amqp.Error, what string) error {
		if e == nil {
			return fmt.Errorf("%s closed", what)
		}
		return fmt.Errorf("%s closed: %w", what, e)
	}
	for {
		select {
		case <-ctx.Done():
			return l.drain(ctx, tag, deliveries)
		case e := <-connClosed:
			return closedErr(e, "connection")
		case e := <-consumeClosed:
			return closedErr(e, "consume channel")
		case e := <-publishClosed:
			return closedErr(e, "publish channel")
		case err := <-listenErr:
			return fmt.Errorf("journal listener: %w", err)
		case s := <-notes:
			set := map[string]bool{s: true}
			for more := true; more && len(set) < notifyBuffer; {
				select {
				case s := <-notes:
					set[s] = true
				default:
					more = false
				}
			}
			var streams []string
			if !l.rescan.Swap(false) {
				for s := range set {
					streams = append(streams, s)
				}
			}
			if err := l.catchUp(ctx, streams); err != nil {
				return err
			}
		case <-scan.C:
			l.rescan.Store(false)
			if err := l.catchUp(ctx, nil); err != nil {
				return err
			}
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("journal consumer cancelled by the broker")
			}
			// Take what follows within batchGap of the previous one (at
			// most batchWindow in all): deliveries trickle in one by one.
			batch := []amqp.Delivery{d}
			window := time.NewTimer(batchWindow)
			for more := true; more && len(batch) < j.cfg.JournalBatchSize; {
				gap := time.NewTimer(batchGap)
				select {
				case d, ok := <-deliveries:
					if !ok {
						more = false
						break
					}
					batch = append(batch, d)
				case <-gap.C:
					more = false
				case <-window.C:
					more = false
				}
				gap.Stop()
			}
			window.Stop()
			if err := l.process(ctx, batch); err != nil {
				return err
			}
		}
	}
}

// drain stops the consumer and settles what was already delivered.
func (l *leader) drain(ctx context.Context, tag string, deliveries <-chan amqp.Delivery) error {
	if err := l.consume.Cancel(tag, false); err != nil {
		return nil // the channel is gone; unacked messages are redelivered
	}
	// The shutdown timeout bounds the drain; what is not settled by then
	// is redelivered.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.j.cfg.ShutdownTimeout)
	defer cancel()
	var batch []amqp.Delivery
	for d := range deliveries {
		batch = append(batch, d)
		if len(batch) >= l.j.cfg.JournalBatchSize {
			if err := l.process(dctx, batch); err != nil {
				return nil
			}
			batch = nil
		}
	}
	if len(batch) > 0 {
		_ = l.process(dctx, batch)
	}
	return nil
}

func (l *leader) dial() error {
	j := l.j
	conn, err := amqp.DialConfig(j.cfg.AMQPURL, amqp.Config{
		Heartbeat: amqpHeartbeat,
		Locale:    "en_US",
		Dial:      amqp.DefaultDial(dialTimeout),
		Properties: amqp.Table{
			"connection_name": j.cfg.ConnectionName + "-journal",
			"product":         "stompgate-persister",
		},
	})
	if err != nil {
		return fmt.Errorf("dial rabbitmq: %w", err)
	}
	fail := func(what string, err error) error {
		conn.Close()
		return fmt.Errorf("%s: %w", what, err)
	}
	ch, err := conn.Channel()
	if err != nil {
		return fail("open channel", err)
	}
	if ch, err = j.topo.Declare(conn, ch); err != nil {
		conn.Close()
		return err
	}
	if err := ch.Qos(2*j.cfg.JournalBatchSize, 0, false); err != nil {
		return fail("qos", err)
	}
	pub, err := conn.Channel()
	if err != nil {
		return fail("open channel", err)
	}
	if err := pub.Confirm(false); err != nil {
		return fail("confirm mode", err)
	}
	l.amqp, l.consume, l.publish = conn, ch, pub
	return nil
}

// dbFailed turns an error of the leader's connection into errLostLead
// when the connection (and with it the lock) is gone.
func (l *leader) dbFailed(err error) error {
	if l.db.IsClosed() {
		return fmt.Errorf("%w: %w", errLostLead, err)
	}
	return err
}

// process stores, broadcasts and acks one batch of deliveries.
func (l *leader) process(ctx context.Context, ds []amqp.Delivery) error {
	j := l.j
	now := time.Now()
	rows := make([]Row, 0, len(ds))
	idx := make([]int, 0, len(ds)) // delivery index of each row
	reasons := map[int]string{}    // delivery index → why it is dead-lettered
	for i := range ds {
		j.metrics.Received.Inc()
		if ds[i].Redelivered {
			j.metrics.Redeliveries.Inc()
		}
		r := RowFromDelivery(&ds[i], now)
		if err := checkJournalRow(&r); err != nil {
			reasons[i] = err.Error()
			continue
		}
		rows, idx = append(rows, r), append(idx, i)
	}

	bo := backoff.Backoff{Min: j.cfg.RetryMin, Max: j.cfg.RetryMax}
	var res journalResult
	for attempt := 1; ; attempt++ {
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, writeTimeout)
		var err error
		res, err = writeJournal(wctx, l.db, rows)
		cancel()
		if err == nil {
			j.metrics.BatchDuration.Observe(time.Since(start).Seconds())
			break
		}
		if err := l.dbFailed(err); errors.Is(err, errLostLead) || ctx.Err() != nil {
			return err // unacked: redelivered to the next leader
		}
		j.metrics.WriteRetries.Inc()
		wait := bo.Next()
		if attempt == 1 || attempt%10 == 0 {
			j.log.Warn("journal write failed, retrying", "err", err, "attempt", attempt, "messages", len(rows), "retry_in", wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	for _, rj := range res.rejected {
		reasons[idx[rj.Index]] = rj.Reason
	}
	j.metrics.BatchSize.Observe(float64(len(ds)))
	j.metrics.Duplicates.Add(float64(res.dups))

	// Broadcast, per stream in seq order: first what was committed
	// before this batch and is not broadcast yet (stompgate_publish rows,
	// a crashed leader's rows, duplicates' rows), then this batch's rows.
	var older []pendingRange
	for s, st := range res.streams {
		if b := max(st.broadcast, l.marked[s]); b < st.last {
			older = append(older, pendingRange{stream: s, after: b, upto: st.last})
		}
	}
	var entries []Entry
	for len(older) > 0 {
		fctx, cancel := context.WithTimeout(ctx, writeTimeout)
		got, err := fetchRanges(fctx, l.db, older, catchUpRows)
		cancel()
		if err != nil {
			return l.dbFailed(err)
		}
		entries = append(entries, got...)
		last := map[string]int64{}
		for _, e := range got {
			last[e.Stream] = e.Seq
		}
		rest := older[:0]
		for _, r := range older {
			if q, ok := last[r.stream]; ok && q < r.upto {
				rest = append(rest, pendingRange{stream: r.stream, after: q, upto: r.upto})
			}
		}
		older = rest
	}
	inserted := 0
	for i := range rows {
		if res.seqs[i] == 0 {
			continue
		}
		inserted++
		r := &rows[i]
		entries = append(entries, Entry{Stream: r.RoutingKey, Seq: res.seqs[i], MessageID: r.MessageID, Sender: r.Sender,
			ContentType: r.ContentType, Headers: r.Headers, Body: r.Body, PublishedAt: r.PublishedAt})
	}
	j.metrics.RowsWritten.Add(float64(inserted))
	if err := l.broadcast(ctx, entries); err != nil {
		return err
	}
	if err := l.mark(ctx); err != nil {
		return err
	}

	// Dead letters, then one ack for the batch.
	nacked := map[int]bool{}
	for i, reason := range reasons {
		d := &ds[i]
		if err := deadLetter(ctx, l.publish, j.cfg.DLX, j.cfg.JournalQueue, d, reason); err != nil {
			j.log.Warn("publish dead letter failed, rejecting instead", "err", err)
			if err := d.Nack(false, false); err != nil {
				return fmt.Errorf("nack: %w", err)
			}
			nacked[i] = true
		}
		j.metrics.DeadLetters.Inc()
		j.log.Warn("journal message refused, dead-lettered", "routing_key", d.RoutingKey, "reason", reason)
	}
	last := len(ds) - 1
	for last >= 0 && nacked[last] {
		last--
	}
	if last >= 0 {
		if err := ds[last].Ack(true); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
	}
	return nil
}

// catchUp broadcasts what is committed but not broadcast yet on streams
// (every stream when nil), in seq order.
func (l *leader) catchUp(ctx context.Context, streams []string) error {
	for range catchUpRounds {
		qctx, cancel := context.WithTimeout(ctx, writeTimeout)
		ranges, err := pendingStreams(qctx, l.db, streams)
		cancel()
		if err != nil {
			return l.dbFailed(err)
		}
		todo := ranges[:0]
		for _, r := range ranges {
			r.after = max(r.after, l.marked[r.stream])
			if r.after < r.upto {
				todo = append(todo, r)
			}
		}
		if len(todo) == 0 {
			break
		}
		qctx, cancel = context.WithTimeout(ctx, writeTimeout)
		entries, err := fetchRanges(qctx, l.db, todo, catchUpRows)
		cancel()
		if err != nil {
			return l.dbFailed(err)
		}
		l.j.metrics.CatchUp.Add(float64(len(entries)))
		if err := l.broadcast(ctx, entries); err != nil {
			return err
		}
	}
	return l.mark(ctx)
}

// broadcast publishes entries (in order) and waits for every confirm.
func (l *leader) broadcast(ctx context.Context, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	bctx, cancel := context.WithTimeout(ctx, broadcastTimeout)
	defer cancel()
	confirms := make([]*amqp.DeferredConfirmation, len(entries))
	for i := range entries {
		e := &entries[i]
		dc, err := l.publish.PublishWithDeferredConfirmWithContext(bctx, BroadcastExchange, e.Stream, false, false, e.Publishing())
		if err != nil {
			return fmt.Errorf("broadcast: %w", err)
		}
		confirms[i] = dc
	}
	for _, dc := range confirms {
		ok, err := dc.WaitContext(bctx)
		if err != nil {
			return fmt.Errorf("broadcast confirm: %w", err)
		}
		if !ok {
			return errors.New("broadcast nacked by the broker")
		}
	}
	for i := range entries {
		e := &entries[i]
		if e.Seq > l.marked[e.Stream] {
			l.marked[e.Stream] = e.Seq
			l.unmarked[e.Stream] = e.Seq
		}
	}
	l.j.metrics.Broadcasts.Add(float64(len(entries)))
	return nil
}

// mark records the confirmed broadcasts in broadcast_seq.
func (l *leader) mark(ctx context.Context) error {
	mctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := markBroadcast(mctx, l.db, l.unmarked); err != nil {
		return l.dbFailed(err)
	}
	return nil
}

// JournalMetrics are the journal's Prometheus metrics. Safe for
// concurrent use.
type JournalMetrics struct {
	Leader        prometheus.Gauge
	BatchSize     prometheus.Histogram
	BatchDuration prometheus.Histogram
	RowsWritten   prometheus.Counter
	Duplicates    prometheus.Counter
	DeadLetters   prometheus.Counter
	Received      prometheus.Counter
	Redeliveries  prometheus.Counter
	WriteRetries  prometheus.Counter
	Broadcasts    prometheus.Counter
	CatchUp       prometheus.Counter
}

// NewJournalMetrics creates the journal metrics and registers them on reg.
func NewJournalMetrics(reg prometheus.Registerer) *JournalMetrics {
	const ns, sub = "stompgate", "journal"
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m := &JournalMetrics{
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "leader",
			Help: "1 while this persister leads the journal (holds its lock)."}),
		BatchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "batch_size_messages",
			Help: "Deliveries per journal batch.", Buckets: []float64{1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000}}),
		BatchDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "batch_duration_seconds",
			Help: "Time to store and commit one journal batch, seconds.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		RowsWritten:  c("rows_written_total", "Journal rows inserted (each with a new seq)."),
		Duplicates:   c("duplicates_total", "Journal deliveries already stored (same sender and message id)."),
		DeadLetters:  c("dead_letters_total", "Journal messages refused and sent to the dead-letter exchange."),
		Received:     c("messages_received_total", "Deliveries received from the journal queue."),
		Redeliveries: c("redeliveries_total", "Journal deliveries flagged as redelivered."),
		WriteRetries: c("write_retries_total", "Failed journal batch writes that will be retried."),
		Broadcasts:   c("broadcasts_total", "Messages broadcast to amq.topic and confirmed."),
		CatchUp:      c("catch_up_broadcasts_total", "Broadcasts of rows committed earlier (stompgate_publish, after a takeover)."),
	}
	reg.MustRegister(m.Leader, m.BatchSize, m.BatchDuration, m.RowsWritten, m.Duplicates, m.DeadLetters,
		m.Received, m.Redeliveries, m.WriteRetries, m.Broadcasts, m.CatchUp)
	return m
}
