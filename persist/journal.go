package persist

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
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
	broadcastTimeout = 30 * time.Second       // from publishing a run of messages until its last confirm
	catchUpRows      = 1000                   // rows read per stream per catch-up query
	catchUpRounds    = 10                     // catch-up queries per wake-up; more waits for the next one
	markInterval     = 100 * time.Millisecond // how often confirmed broadcasts of idle streams are recorded
	batchGap         = 200 * time.Microsecond // when busy, a batch closes when no delivery follows within this
	batchWindow      = 2 * time.Millisecond   // and at the latest this long after its first delivery
)

// maxInflight is how many published runs (a batch's broadcasts, a
// catch-up) may await their confirms at once. The leader writes the next
// batch meanwhile; when this many are outstanding it takes no deliveries
// until the oldest is confirmed. The prefetch (2 × batch size) bounds the
// messages they hold as well.
const maxInflight = 8

// errLostLead is returned when the leader's Postgres connection, and with
// it the advisory lock, is gone.
var errLostLead = errors.New("journal leader connection lost")

// Journal persists, then broadcasts (SPEC §6): it consumes the journal
// queue, gives each message the next gapless seq of its stream (its
// routing key) in the transaction that stores it, commits, publishes it
// to amq.topic under publisher confirms and acks once they are in; it
// writes the next batch while confirms are outstanding (at most
// maxInflight runs). Confirmed broadcasts are recorded in
// stompgate_streams.broadcast_seq lazily (a restart hint: at-least-once
// broadcast). It also broadcasts what applications commit with
// stompgate_publish (which does not NOTIFY: notifying commits cannot
// share an fsync), in seq order with the rest: every
// cfg.JournalPollInterval it reads, in one query, the pending rows of the
// streams on which applications committed since it last took charge of
// them (last_seq > claimed_seq, a partial index) above what it has
// published itself (see poll); every cfg.JournalScanInterval it scans
// every stream as a safety net.
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
// broadcast state and both AMQP channels.
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
	// published is the highest seq per stream this leader has published
	// (confirmed or not); what it broadcasts next on a stream starts
	// above it. On one channel, in this order, so subscribers see seq
	// order.
	published map[string]int64
	// unmarked holds, per stream, the highest confirmed seq not yet
	// recorded in broadcast_seq.
	unmarked map[string]int64
	// inflight are the published runs whose confirms are outstanding,
	// oldest first; they are settled (acked) in this order.
	inflight []*flight
}

// flight is one published run awaiting its confirms, with the deliveries
// to settle once they are in.
type flight struct {
	ctx      context.Context // broadcastTimeout from publishing
	cancel   context.CancelFunc
	confirms []*amqp.DeferredConfirmation
	next     int              // confirms[:next] are in
	high     map[string]int64 // highest seq per stream in the run
	ds       []amqp.Delivery  // acked (up to the last) once confirmed
	reasons  map[int]string   // index in ds → why it is dead-lettered
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

	l := &leader{j: j, db: db, published: map[string]int64{}, unmarked: map[string]int64{}}

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
	poll := time.NewTicker(j.cfg.JournalPollInterval)
	defer poll.Stop()
	mark := time.NewTicker(markInterval)
	defer mark.Stop()
	closedErr := func(e *amqp.Error, what string) error {
		if e == nil {
			return fmt.Errorf("%s closed", what)
		}
		return fmt.Errorf("%s closed: %w", what, e)
	}
	for {
		// Wake up for the oldest run's next confirm (or its deadline);
		// take deliveries only while fewer than maxInflight are out.
		var confirmed, expired <-chan struct{}
		if len(l.inflight) > 0 {
			h := l.inflight[0]
			confirmed, expired = h.confirms[h.next].Done(), h.ctx.Done()
		}
		in := deliveries
		if len(l.inflight) >= maxInflight {
			in = nil
		}
		waiting := time.Now()
		select {
		case <-ctx.Done():
			return l.drain(ctx, tag, deliveries)
		case e := <-connClosed:
			return closedErr(e, "connection")
		case e := <-consumeClosed:
			return closedErr(e, "consume channel")
		case e := <-publishClosed:
			return closedErr(e, "publish channel")
		case <-confirmed:
			if err := l.settle(ctx, len(l.inflight)); err != nil {
				return err
			}
		case <-expired:
			return errors.New("broadcast: confirms not in within " + broadcastTimeout.String())
		// The periodic work runs to its end when ctx is cancelled meanwhile
		// (each query is bounded by writeTimeout): the poll runs every few
		// milliseconds, and a stop that cut it off would skip drain and
		// its final mark, widening the next leader's re-broadcast.
		case <-mark.C:
			if err := l.mark(context.WithoutCancel(ctx)); err != nil {
				return err
			}
		case <-poll.C:
			if err := l.poll(context.WithoutCancel(ctx)); err != nil {
				return err
			}
		case <-scan.C:
			if err := l.catchUp(context.WithoutCancel(ctx), nil); err != nil {
				return err
			}
		case d, ok := <-in:
			if !ok {
				return errors.New("journal consumer cancelled by the broker")
			}
			// A delivery that was already waiting means a backlog:
			// gather it (it trickles in one by one) instead of writing
			// one-message batches behind it.
			busy := time.Since(waiting) < batchGap
			batch := collect(d, deliveries, j.cfg.JournalBatchSize, busy)
			if err := l.process(ctx, batch); err != nil {
				return err
			}
		}
	}
}

// collect returns first and what else arrives on deliveries, at most size
// in all. When idle it does not wait: the batch is what is there now
// (amqp091 hands deliveries over one at a time from its own goroutine, so
// an empty channel gets one yield to let it offer the next). When busy it
// also takes what follows within batchGap of the previous delivery, for
// at most batchWindow: a backlog reaches the channel one by one.
func collect(first amqp.Delivery, deliveries <-chan amqp.Delivery, size int, busy bool) []amqp.Delivery {
	batch := []amqp.Delivery{first}
	var window <-chan time.Time
	if busy {
		t := time.NewTimer(batchWindow)
		defer t.Stop()
		window = t.C
	}
	for yielded := false; len(batch) < size; {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return batch // the caller sees the closed channel next
			}
			batch, yielded = append(batch, d), false
			continue
		default:
		}
		if !yielded {
			runtime.Gosched()
			yielded = true
			continue
		}
		if !busy {
			return batch
		}
		gap := time.NewTimer(batchGap)
		select {
		case d, ok := <-deliveries:
			gap.Stop()
			if !ok {
				return batch
			}
			batch, yielded = append(batch, d), false
		case <-gap.C:
			return batch
		case <-window:
			gap.Stop()
			return batch
		}
	}
	return batch
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
		if err := l.process(dctx, batch); err != nil {
			return nil
		}
	}
	if err := l.settle(dctx, 0); err != nil {
		return nil
	}
	_ = l.mark(dctx) // a mark not recorded only means a re-broadcast after a takeover
	return nil
}

func (l *leader) dial() error {
	j := l.j
	conn, err := dialNodes(j.cfg, amqp.Config{
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
		res, err = writeJournal(wctx, l.db, rows, l.unmarked)
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
	for s := range res.streams {
		delete(l.unmarked, s) // recorded by the batch's transaction
	}
	for _, rj := range res.rejected {
		reasons[idx[rj.Index]] = rj.Reason
	}
	j.metrics.BatchSize.Observe(float64(len(ds)))
	j.metrics.Duplicates.Add(float64(res.dups))

	// Broadcast, per stream in seq order: first what was committed
	// before this batch and is not published yet (stompgate_publish rows,
	// a crashed leader's rows, duplicates' rows), then this batch's rows.
	var older []pendingRange
	for s, st := range res.streams {
		if b := max(st.broadcast, l.published[s]); b < st.last {
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
	// Published now, acked once confirmed (settle); the next batch is
	// written meanwhile.
	return l.broadcast(ctx, entries, ds, reasons)
}

// poll broadcasts what applications committed with stompgate_publish
// since the last poll, in one query: the pending rows of the streams
// whose last_seq is above their claimed_seq (the partial index
// stompgate_streams_pending; the leader's own batches advance claimed_seq
// with last_seq, its marks with broadcast_seq). What this leader has
// published is compared with its own record, not only the table's,
// because marks are recorded lazily: a stream it has just caught up stays
// dirty in the table until its mark is written and must not be broadcast
// again. Only the streams whose published position the table may not
// show yet are passed along: a seq this leader published is in a flight
// (unconfirmed), in unmarked (confirmed, not recorded) or recorded in
// broadcast_seq.
func (l *leader) poll(ctx context.Context) error {
	ahead := make(map[string]int64, len(l.unmarked))
	for s := range l.unmarked {
		ahead[s] = l.published[s]
	}
	for _, f := range l.inflight {
		for s := range f.high {
			ahead[s] = l.published[s]
		}
	}
	qctx, cancel := context.WithTimeout(ctx, writeTimeout)
	entries, err := pendingEntries(qctx, l.db, nil, ahead, catchUpRows, true)
	cancel()
	if err != nil {
		return l.dbFailed(err)
	}
	if len(entries) == 0 {
		return nil
	}
	l.j.metrics.CatchUp.Add(float64(len(entries)))
	if err := l.broadcast(ctx, entries, nil, nil); err != nil {
		return err
	}
	var more []string // streams that filled the limit may hold more
	n := map[string]int{}
	for _, e := range entries {
		if n[e.Stream]++; n[e.Stream] == catchUpRows {
			more = append(more, e.Stream)
		}
	}
	if len(more) == 0 {
		return nil
	}
	return l.catchUp(ctx, more)
}

// catchUp broadcasts what is committed but not broadcast yet on streams
// (every stream when nil), in seq order.
func (l *leader) catchUp(ctx context.Context, streams []string) error {
	for range catchUpRounds {
		qctx, cancel := context.WithTimeout(ctx, writeTimeout)
		entries, err := pendingEntries(qctx, l.db, streams, l.published, catchUpRows, false)
		cancel()
		if err != nil {
			return l.dbFailed(err)
		}
		if len(entries) == 0 {
			return nil
		}
		l.j.metrics.CatchUp.Add(float64(len(entries)))
		if err := l.broadcast(ctx, entries, nil, nil); err != nil {
			return err
		}
		// Streams that filled the limit may hold more.
		n := map[string]int{}
		streams = streams[:0:0]
		for _, e := range entries {
			if n[e.Stream]++; n[e.Stream] == catchUpRows {
				streams = append(streams, e.Stream)
			}
		}
		if len(streams) == 0 {
			return nil
		}
	}
	return nil
}

// broadcast publishes entries (in order) and queues them, with the
// deliveries ds to settle after their confirms, as a flight. It does not
// wait for the confirms unless maxInflight flights are out already.
func (l *leader) broadcast(ctx context.Context, entries []Entry, ds []amqp.Delivery, reasons map[int]string) error {
	if err := l.settle(ctx, maxInflight-1); err != nil {
		return err
	}
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), broadcastTimeout)
	f := &flight{ctx: fctx, cancel: cancel, confirms: make([]*amqp.DeferredConfirmation, 0, len(entries)),
		high: map[string]int64{}, ds: ds, reasons: reasons}
	for i := range entries {
		e := &entries[i]
		dc, err := l.publish.PublishWithDeferredConfirmWithContext(fctx, BroadcastExchange, e.Stream, false, false, e.Publishing())
		if err != nil {
			cancel()
			return fmt.Errorf("broadcast: %w", err)
		}
		f.confirms = append(f.confirms, dc)
		if e.Seq > f.high[e.Stream] {
			f.high[e.Stream] = e.Seq
		}
		if e.Seq > l.published[e.Stream] {
			l.published[e.Stream] = e.Seq
		}
	}
	l.inflight = append(l.inflight, f)
	return l.settle(ctx, len(l.inflight))
}

// settle completes flights in order whose confirms are in: it records
// their seqs as confirmed, dead-letters what they refused and acks their
// deliveries. It waits until at most keep flights are left, then settles
// whatever else is ready without waiting.
func (l *leader) settle(ctx context.Context, keep int) error {
	for len(l.inflight) > 0 {
		h := l.inflight[0]
		wait := len(l.inflight) > keep
		for h.next < len(h.confirms) {
			dc := h.confirms[h.next]
			if wait {
				select {
				case <-dc.Done():
				case <-h.ctx.Done():
					return errors.New("broadcast: confirms not in within " + broadcastTimeout.String())
				case <-ctx.Done():
					return ctx.Err()
				}
			} else {
				select {
				case <-dc.Done():
				default:
					return nil
				}
			}
			if !dc.Acked() {
				return errors.New("broadcast nacked by the broker")
			}
			h.next++
		}
		h.cancel()
		l.inflight = l.inflight[1:]
		for s, q := range h.high {
			if q > l.unmarked[s] {
				l.unmarked[s] = q
			}
		}
		l.j.metrics.Broadcasts.Add(float64(len(h.confirms)))
		if err := l.ack(ctx, h.ds, h.reasons); err != nil {
			return err
		}
	}
	return nil
}

// ack dead-letters the refused deliveries of ds, then acks the others
// with one multiple ack.
func (l *leader) ack(ctx context.Context, ds []amqp.Delivery, reasons map[int]string) error {
	j := l.j
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

// mark records the confirmed broadcasts in broadcast_seq. Batches record
// those of their own streams in their transaction; this catches the rest
// (every markInterval, and at the end).
func (l *leader) mark(ctx context.Context) error {
	if len(l.unmarked) == 0 {
		return nil
	}
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
