package persist

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/internal/backoff"
)

// Timeouts of single operations; Postgres and RabbitMQ are never waited on
// unboundedly.
const (
	writeTimeout   = 30 * time.Second // one attempt to write and commit a batch
	confirmTimeout = 10 * time.Second // broker confirm of a dead letter
	dialTimeout    = 10 * time.Second
	amqpHeartbeat  = 10 * time.Second
	lagInterval    = 5 * time.Second // how often the queue depth is sampled
)

// Archiver consumes the archive queue and writes what it receives to
// Postgres with a Writer (SPEC §6).
//
// Goroutines: Run owns the RabbitMQ connection (a "session", re-established
// after any loss) and one reader loop that fills batches from the consumer
// and hands each, unbuffered, to one of cfg.Writers writer goroutines. A
// writer commits its batch on its own Postgres connection, dead-letters what
// the database refused, waits until the session's previous batch is settled,
// then acks its batch (multiple=true) on the channel it came from: acks go
// out in delivery order even though batches commit concurrently. While the
// writers retry a failing database the reader blocks on the hand-off and
// RabbitMQ stops delivering once the prefetch (Writers+1 batches: one per
// writer, one filling) is unacked: consumption pauses without acks, nacks
// or busy loops.
type Archiver struct {
	cfg     config.Persister
	topo    Topology
	writer  *Writer
	metrics *Metrics
	log     *slog.Logger
}

// NewArchiver returns an Archiver for cfg that writes with w.
func NewArchiver(cfg config.Persister, w *Writer, m *Metrics, log *slog.Logger) *Archiver {
	return &Archiver{
		cfg: cfg,
		topo: Topology{Queue: cfg.Queue, Bindings: cfg.Bindings, DLX: cfg.DLX, DLQ: cfg.DLQ,
			DeliveryLimit: cfg.DeliveryLimit},
		writer:  w,
		metrics: m,
		log:     log,
	}
}

// batch is a run of deliveries from one session, in delivery-tag order.
type batch struct {
	sess       *session
	deliveries []amqp.Delivery
	rows       []Row
	prev       *batch        // the session's previous batch, acked before this one; nil for the first
	done       chan struct{} // closed by the writer when the batch is settled or abandoned
	acked      bool          // set before done is closed: every delivery up to the last was acked
}

// session is one RabbitMQ connection with its consuming and its publishing
// (confirm mode, for dead letters) channel.
type session struct {
	conn    *amqp.Connection
	consume *amqp.Channel
	publish *amqp.Channel
}

// Run consumes until ctx is cancelled, then stops consuming, writes and
// acks what it holds (within cfg.ShutdownTimeout) and returns nil. It
// reconnects by itself after losing RabbitMQ, and returns an error only for
// problems retrying cannot fix.
func (a *Archiver) Run(ctx context.Context) error {
	// The writer outlives ctx by at most ShutdownTimeout to settle the
	// batches in flight.
	wctx, cancelWrites := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWrites()
	stopTimer := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(a.cfg.ShutdownTimeout, cancelWrites)
		context.AfterFunc(wctx, func() { t.Stop() })
	})
	defer stopTimer()

	batches := make(chan *batch)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		var wg sync.WaitGroup
		for range a.cfg.Writers {
			wg.Go(func() { a.writeLoop(wctx, batches) })
		}
		wg.Wait()
	}()
	defer func() {
		close(batches)
		<-writerDone
	}()

	bo := backoff.Backoff{Min: a.cfg.RetryMin, Max: a.cfg.RetryMax}
	for {
		started := time.Now()
		err := a.runSession(ctx, batches)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > a.cfg.RetryMax {
			bo.Reset()
		}
		wait := bo.Next()
		a.log.Warn("rabbitmq session ended, reconnecting", "err", err, "in", wait)
		a.metrics.Reconnects.Inc()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func (a *Archiver) dial() (*session, error) {
	conn, err := dialNodes(a.cfg, amqp.Config{
		Heartbeat: amqpHeartbeat,
		Locale:    "en_US",
		Dial:      amqp.DefaultDial(dialTimeout),
		Properties: amqp.Table{
			"connection_name": a.cfg.ConnectionName,
			"product":         "stompgate-persister",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("dial rabbitmq: %w", err)
	}
	s := &session{conn: conn}
	if s.consume, err = conn.Channel(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if s.publish, err = conn.Channel(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if err := s.publish.Confirm(false); err != nil {
		conn.Close()
		return nil, fmt.Errorf("confirm mode: %w", err)
	}
	if err := a.topo.Declare(s.consume); err != nil {
		conn.Close()
		return nil, err
	}
	// One batch unacked per writer, one filling.
	if err := s.consume.Qos(a.prefetch(), 0, false); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qos: %w", err)
	}
	return s, nil
}

// runSession consumes over one connection until ctx is cancelled (returns
// nil after a clean drain) or the connection or a channel fails.
func (a *Archiver) runSession(ctx context.Context, batches chan<- *batch) error {
	s, err := a.dial()
	if err != nil {
		return err
	}
	defer s.conn.Close()
	// Each Notify channel gets at most one value and is then closed; a
	// buffer of one keeps the library from blocking on us.
	connClosed := s.conn.NotifyClose(make(chan *amqp.Error, 1))
	consumeClosed := s.consume.NotifyClose(make(chan *amqp.Error, 1))
	publishClosed := s.publish.NotifyClose(make(chan *amqp.Error, 1))

	const tag = "stompgate-persister"
	deliveries, err := s.consume.Consume(a.cfg.Queue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", a.cfg.Queue, err)
	}
	a.metrics.Consuming.Set(1)
	defer a.metrics.Consuming.Set(0)
	a.log.Info("consuming", "queue", a.cfg.Queue, "bindings", a.cfg.Bindings, "prefetch", a.prefetch(), "writers", a.cfg.Writers)

	lag := time.NewTicker(lagInterval)
	defer lag.Stop()
	a.sampleLag(s)

	var cur *batch
	var last *batch // last batch handed to the writer
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var timerC <-chan time.Time

	closedErr := func(e *amqp.Error, what string) error {
		if e == nil {
			return fmt.Errorf("%s closed", what)
		}
		return fmt.Errorf("%s closed: %w", what, e)
	}
	// handOff gives cur to the writer. It returns false when ctx is done
	// first (cur is kept for the drain).
	handOff := func() (bool, error) {
		select {
		case batches <- cur:
			last, cur, timerC = cur, nil, nil
			timer.Stop()
			return true, nil
		case <-ctx.Done():
			return false, nil
		case e := <-connClosed:
			return false, closedErr(e, "connection")
		case e := <-consumeClosed:
			return false, closedErr(e, "consume channel")
		case e := <-publishClosed:
			return false, closedErr(e, "publish channel")
		}
	}
	add := func(d amqp.Delivery) {
		if cur == nil {
			cur = &batch{sess: s, prev: last, done: make(chan struct{}),
				deliveries: make([]amqp.Delivery, 0, a.cfg.BatchSize),
				rows:       make([]Row, 0, a.cfg.BatchSize)}
			timer.Reset(a.cfg.BatchWait)
			timerC = timer.C
		}
		a.metrics.Received.Inc()
		if d.Redelivered {
			a.metrics.Redeliveries.Inc()
		}
		cur.deliveries = append(cur.deliveries, d)
		cur.rows = append(cur.rows, RowFromDelivery(&d, time.Now()))
	}

	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case e := <-connClosed:
			return closedErr(e, "connection")
		case e := <-consumeClosed:
			return closedErr(e, "consume channel")
		case e := <-publishClosed:
			return closedErr(e, "publish channel")
		case <-lag.C:
			a.sampleLag(s)
		case d, ok := <-deliveries:
			if !ok {
				if ctx.Err() != nil {
					break
				}
				return errors.New("consumer cancelled by the broker")
			}
			add(d)
			if len(cur.deliveries) >= a.cfg.BatchSize {
				if _, err := handOff(); err != nil {
					return err
				}
			}
		case <-timerC:
			if _, err := handOff(); err != nil {
				return err
			}
		}
	}

	// Shutdown: stop deliveries, take what was already delivered, hand it
	// all to the writer and wait until it is settled, then close.
	a.metrics.Consuming.Set(0)
	if err := s.consume.Cancel(tag, false); err != nil {
		a.log.Warn("cancel consumer", "err", err)
	}
	for d := range deliveries {
		add(d)
		if len(cur.deliveries) >= a.cfg.BatchSize {
			batches <- cur
			last, cur = cur, nil
		}
	}
	if cur != nil {
		batches <- cur
		last = cur
	}
	if last != nil {
		<-last.done
	}
	return nil
}

func (a *Archiver) prefetch() int { return (a.cfg.Writers + 1) * a.cfg.BatchSize }

// sampleLag records the archive queue's ready count (consumer lag).
func (a *Archiver) sampleLag(s *session) {
	q, err := s.publish.QueueDeclarePassive(a.cfg.Queue, true, false, false, false, a.topo.QueueArgs())
	if err == nil {
		a.metrics.QueueReady.Set(float64(q.Messages))
	}
}

// writeLoop settles batches until batches is closed.
func (a *Archiver) writeLoop(ctx context.Context, batches <-chan *batch) {
	for b := range batches {
		b.acked = a.settle(ctx, b)
		b.prev = nil // let settled batches be collected
		close(b.done)
	}
}

// settle writes b, retrying the same batch with capped exponential backoff
// and jitter while the database fails, then dead-letters refused rows and,
// once the previous batch is settled, acks. When ctx ends first, b stays
// unacked (RabbitMQ redelivers it). It reports whether b was acked.
func (a *Archiver) settle(ctx context.Context, b *batch) bool {
	bo := backoff.Backoff{Min: a.cfg.RetryMin, Max: a.cfg.RetryMax}
	var res Result
	for attempt := 1; ; attempt++ {
		start := time.Now()
		actx, cancel := context.WithTimeout(ctx, writeTimeout)
		r, err := a.writer.Write(actx, b.rows)
		cancel()
		if err == nil {
			res = r
			a.metrics.BatchDuration.Observe(time.Since(start).Seconds())
			break
		}
		a.metrics.WriteRetries.Inc()
		a.metrics.Paused.Set(1)
		wait := bo.Next()
		level := slog.LevelDebug // one line per outage, then one per ten attempts
		if attempt == 1 || attempt%10 == 0 {
			level = slog.LevelWarn
		}
		a.log.Log(ctx, level, "write batch failed, consumption paused", "err", err, "attempt", attempt,
			"messages", len(b.rows), "retry_in", wait)
		select {
		case <-ctx.Done():
			a.log.Warn("giving up on batch at shutdown; it will be redelivered", "messages", len(b.rows))
			return false
		case <-time.After(wait):
		}
	}
	a.metrics.Paused.Set(0)
	a.metrics.BatchSize.Observe(float64(len(b.rows)))
	a.metrics.RowsWritten.Add(float64(res.Inserted))
	a.metrics.Duplicates.Add(float64(res.Duplicates))

	nacked := map[int]bool{}
	for _, rej := range res.Rejected {
		d := &b.deliveries[rej.Index]
		if err := a.deadLetter(ctx, b.sess, d, rej.Reason); err != nil {
			// Let RabbitMQ dead-letter it instead (no reason header).
			a.log.Warn("publish dead letter failed, rejecting instead", "err", err)
			if err := d.Nack(false, false); err != nil {
				a.log.Warn("ack batch: channel gone, batch will be redelivered", "err", err)
				return false
			}
			nacked[rej.Index] = true
		}
		a.metrics.DeadLetters.Inc()
		a.log.Warn("message refused by the database, dead-lettered",
			"message_id", b.rows[rej.Index].MessageID, "routing_key", d.RoutingKey, "reason", rej.Reason)
	}
	// Acks go out in delivery order: multiple=true must not ack a previous
	// batch that is still being written.
	if b.prev != nil {
		<-b.prev.done
		if !b.prev.acked {
			// The previous batch was abandoned: ack only this one's.
			for i := range b.deliveries {
				if nacked[i] {
					continue
				}
				if err := b.deliveries[i].Ack(false); err != nil {
					a.log.Warn("ack batch: channel gone, batch will be redelivered", "err", err)
					return false
				}
			}
			return false // later batches must not ack multiple either
		}
	}
	// The highest delivery not rejected; acking a tag twice would close
	// the channel.
	last := len(b.deliveries) - 1
	for last >= 0 && nacked[last] {
		last--
	}
	if last < 0 {
		return true
	}
	if err := b.deliveries[last].Ack(true); err != nil {
		// Committed rows are skipped as duplicates on redelivery.
		a.log.Warn("ack batch: channel gone, batch will be redelivered", "err", err)
		return false
	}
	return true
}

// deadLetter publishes d to the DLX with the reason in HeaderReason and
// waits for the broker's confirm.
func (a *Archiver) deadLetter(ctx context.Context, s *session, d *amqp.Delivery, reason string) error {
	return deadLetter(ctx, s.publish, a.cfg.DLX, a.cfg.Queue, d, reason)
}

// deadLetter publishes d, consumed from queue, to dlx on ch (in confirm
// mode) with the reason in HeaderReason and waits for the broker's
// confirm.
func deadLetter(ctx context.Context, ch *amqp.Channel, dlx, queue string, d *amqp.Delivery, reason string) error {
	h := amqp.Table{}
	for k, v := range d.Headers {
		h[k] = v
	}
	h[HeaderReason] = reason
	h["x-stompgate-original-exchange"] = d.Exchange
	h["x-stompgate-original-routing-key"] = d.RoutingKey
	h["x-stompgate-original-queue"] = queue
	if d.UserId != "" {
		// RabbitMQ refuses a user_id other than our own login.
		h["x-stompgate-original-user-id"] = d.UserId
	}
	ctx, cancel := context.WithTimeout(ctx, confirmTimeout)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, dlx, d.RoutingKey, false, false, amqp.Publishing{
		Headers:         h,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	})
	if err != nil {
		return fmt.Errorf("publish to %s: %w", dlx, err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("confirm from %s: %w", dlx, err)
	}
	if !ok {
		return fmt.Errorf("publish to %s: nacked by the broker", dlx)
	}
	return nil
}
