// Package amqplink is the edge's broker.Broker: a few shared AMQP 0-9-1
// links per edge carry every session's auto-ack /topic/ and /exchange/
// subscriptions, its routed ones (broker.Route: /user/queue/<name>) and
// its SENDs (routed ones included: /app/<key>, /user/<S>/queue/<name>); a session that needs per-consumer broker
// state (ack:client, /queue/, /amq/queue/, /temp-queue/, reply-to,
// queue-declaring headers, transactions) gets a dedicated STOMP connection
// from another broker.Broker (package stompconn), opened lazily at the
// first such frame. See docs/LINKS.md for the design.
//
// # Shared subscriptions
//
// One broker queue per distinct (exchange, binding key) per edge: exclusive
// to the link's connection, auto-delete, server-named, bound to the
// exchange, consumed with manual acks (one multiple ack per read batch) and
// a prefetch for flow control, on a channel of its own (a refused bind or
// a deleted exchange closes that channel only). Local subscribers are
// refcounted; the queue is removed Config.Linger after the last one left.
// Each delivery is encoded once per (STOMP version, subscription id) seen
// among its subscribers; browsers using the same client library share the
// subscription id (stompjs: sub-0), so they share the bytes.
//
// # Goroutines
//
//   - per link: run (dial, reconnect with backoff, notice a lost link),
//     confirms (publisher confirms → receipts), blocked (connection.blocked
//     → publishers wait);
//   - per shared subscription: its reader, which fans deliveries out,
//     calls Sink.Idle once per read batch for every session it touched and
//     acks the batch; it never waits on a browser (Sink.Deliver never
//     blocks). A read batch is everything amqp091-go holds (up to
//     maxBatch): the reader yields to amqp091-go's delivery goroutine
//     before it ends one, so a session gets one write per batch, not per
//     message;
//   - flushers (one per CPU but one): parts of a large batch's Sink.Idle
//     calls;
//   - the relay session's reader calls the Session's operations.
//
// # Locks
//
// Broker.mu (links' session sets, the shared-subscription registry,
// dedicated count) → shared.mu (subscriber set) → session.mu (receipt
// order). link.pubMu (publish order) → link.mu (pending confirms, channel,
// blocked). session.mu and link.mu are leaves; sinks are called under
// session.mu (they never block) or under no lock.
package amqplink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stompgate/stompgate/relay/broker"
)

// Config says how to reach RabbitMQ over AMQP and how to share links.
type Config struct {
	// URLs are amqp:// URLs (credentials and vhost included), tried in
	// turn when a link (re)connects.
	URLs []string
	// Links is the number of shared AMQP connections (EDGE_BROKER_LINKS).
	Links int
	// MaxDedicated caps the dedicated STOMP connections of the edge
	// (EDGE_MAX_DEDICATED); past it the operation fails with an error
	// wrapping broker.ErrBusy.
	MaxDedicated int
	// Dedicated opens the per-session connections (stompconn.Broker).
	Dedicated broker.Broker
	// Name identifies the edge in connection names: "stompgate-edge
	// <Name> link <n>" in the management UI.
	Name string
	// Linger is how long a shared queue outlives its last local
	// subscriber (default 2s): a page reload causes no churn.
	Linger time.Duration
	// Prefetch is the unacked deliveries per shared queue (default 1000).
	Prefetch int
	// Timeout bounds dial, declares and every wait on the broker
	// (EDGE_BROKER_TIMEOUT), blocked publishers included.
	Timeout time.Duration
	// Heartbeat is the AMQP heart-beat (EDGE_BROKER_HEARTBEAT; 0: 10s).
	Heartbeat time.Duration
	// MaxFrameBytes bounds a delivery's body; a larger one ends the
	// sessions it was for with broker.ErrFrameTooLarge, as on a dedicated
	// connection.
	MaxFrameBytes int
	// Registerer receives the metrics (nil: not registered).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

func (c *Config) defaults() {
	if c.Links <= 0 {
		c.Links = 2
	}
	if c.Linger <= 0 {
		c.Linger = 2 * time.Second
	}
	if c.Prefetch <= 0 {
		c.Prefetch = 1000
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 10 * time.Second
	}
	if c.MaxFrameBytes <= 0 {
		c.MaxFrameBytes = 16 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Broker is the shared-link broker. Safe for concurrent use; Close stops it.
type Broker struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	links   []*link
	// flushers take parts of a large flush off a shared queue's reader;
	// unbuffered: a reader hands over a part only when a flusher is free
	// to take it (and waits for the parts it handed over).
	flushers []chan flushJob

	mu        sync.Mutex
	shared    map[sharedKey]*shared
	upSignal  chan struct{} // closed (and replaced) when a link comes up
	dedicated int
	nextID    uint64
}

// New starts the links (they connect in the background; Probe says when
// they are up).
func New(cfg Config) (*Broker, error) {
	cfg.defaults()
	if len(cfg.URLs) == 0 {
		return nil, errors.New("amqplink: no AMQP URL")
	}
	for _, u := range cfg.URLs {
		if _, err := url.Parse(u); err != nil {
			return nil, fmt.Errorf("amqplink: %w", err)
		}
	}
	if cfg.Dedicated == nil {
		return nil, errors.New("amqplink: no broker for dedicated connections")
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{cfg: cfg, log: cfg.Logger, metrics: newMetrics(cfg.Registerer), ctx: ctx, cancel: cancel,
		shared: map[sharedKey]*shared{}, upSignal: make(chan struct{})}
	for range runtime.GOMAXPROCS(0) - 1 {
		ch := make(chan flushJob)
		b.flushers = append(b.flushers, ch)
		b.wg.Add(1)
		go b.flusher(ch)
	}
	for i := range cfg.Links {
		l := newLink(b, i+1)
		b.links = append(b.links, l)
		b.wg.Add(1)
		go l.run()
	}
	return b, nil
}

// Close closes the links and waits for their goroutines. Sessions still
// open are lost (broker.ErrUnavailable).
func (b *Broker) Close() error {
	b.cancel()
	for _, l := range b.links {
		l.close()
	}
	b.wg.Wait()
	return nil
}

// Open attaches a session to the up link with the fewest sessions. It
// makes no broker round-trip.
//
// While no link is up (the edge just started, or every link is
// reconnecting) it waits up to Config.Timeout for one.
func (b *Broker) Open(ctx context.Context, info broker.SessionInfo, sink broker.Sink) (broker.Session, error) {
	var timeout <-chan time.Time
	for {
		b.mu.Lock()
		var best *link
		for _, l := range b.links {
			if !l.isUp() {
				continue
			}
			if best == nil || len(l.sessions) < len(best.sessions) {
				best = l
			}
		}
		if best != nil {
			s := newSession(b, ctx, info, sink, best)
			best.sessions[s] = struct{}{}
			b.mu.Unlock()
			return s, nil
		}
		up := b.upSignal
		b.mu.Unlock()
		if timeout == nil {
			t := time.NewTimer(b.cfg.Timeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-up:
		case <-timeout:
			return nil, fmt.Errorf("%w: no shared link to the broker is up", broker.ErrUnavailable)
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", broker.ErrUnavailable, ctx.Err())
		case <-b.ctx.Done():
			return nil, fmt.Errorf("%w: closed", broker.ErrUnavailable)
		}
	}
}

// linkUp wakes the Opens waiting for a link.
func (b *Broker) linkUp() {
	b.mu.Lock()
	close(b.upSignal)
	b.upSignal = make(chan struct{})
	b.mu.Unlock()
}

// Probe fails while a shared link is down or the dedicated path fails its
// own probe.
func (b *Broker) Probe(ctx context.Context) error {
	for _, l := range b.links {
		if !l.isUp() {
			return fmt.Errorf("%w: shared link %d is down", broker.ErrUnavailable, l.n)
		}
	}
	return b.cfg.Dedicated.Probe(ctx)
}

// LinksUp is the number of shared links connected now.
func (b *Broker) LinksUp() int {
	n := 0
	for _, l := range b.links {
		if l.isUp() {
			n++
		}
	}
	return n
}

// SharedSubscriptions is the number of broker queues the edge holds on
// its shared links now (lingering ones included).
func (b *Broker) SharedSubscriptions() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.shared)
}

// Dedicated is the number of dedicated connections open now.
func (b *Broker) Dedicated() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dedicated
}

func (b *Broker) acquireDedicated() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cfg.MaxDedicated > 0 && b.dedicated >= b.cfg.MaxDedicated {
		return false
	}
	b.dedicated++
	b.metrics.dedicated.Set(float64(b.dedicated))
	return true
}

func (b *Broker) releaseDedicated() {
	b.mu.Lock()
	b.dedicated--
	b.metrics.dedicated.Set(float64(b.dedicated))
	b.mu.Unlock()
}

// metrics of the shared links; names are prefixed stompgate_.
type metrics struct {
	linksUp     prometheus.Gauge
	shared      prometheus.Gauge
	locals      prometheus.Gauge
	deliveries  prometheus.Counter
	drops       *prometheus.CounterVec
	publishes   prometheus.Counter
	blocked     prometheus.Gauge
	dedicated   prometheus.Gauge
	busy        prometheus.Counter
	reconnected prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		linksUp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stompgate_broker_links_up",
			Help: "Shared AMQP links to the broker that are connected."}),
		shared: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stompgate_shared_subscriptions",
			Help: "Broker queues held on shared links (one per distinct exchange and binding key), lingering ones included."}),
		locals: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stompgate_shared_local_subscribers",
			Help: "Session subscriptions served by shared broker queues."}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{Name: "stompgate_fanout_deliveries_total",
			Help: "MESSAGE frames handed to sessions from shared broker queues."}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "stompgate_fanout_drops_total",
			Help: "Shared deliveries not handed to a session, by reason (no_subscriber: lingering queue; session_closed; too_large)."}, []string{"reason"}),
		publishes: prometheus.NewCounter(prometheus.CounterOpts{Name: "stompgate_shared_publishes_total",
			Help: "SENDs published over shared links."}),
		blocked: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stompgate_broker_links_blocked",
			Help: "Shared links the broker has blocked (connection.blocked: memory or disk alarm)."}),
		dedicated: prometheus.NewGauge(prometheus.GaugeOpts{Name: "stompgate_broker_dedicated_connections",
			Help: "Dedicated per-session broker connections open (capped by EDGE_MAX_DEDICATED)."}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{Name: "stompgate_broker_dedicated_refused_total",
			Help: "Frames refused with broker_busy because EDGE_MAX_DEDICATED dedicated connections were open."}),
		reconnected: prometheus.NewCounter(prometheus.CounterOpts{Name: "stompgate_broker_link_connects_total",
			Help: "Successful connects of shared links (the first ones included)."}),
	}
	for _, r := range []string{"no_subscriber", "session_closed", "too_large"} {
		m.drops.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.linksUp, m.shared, m.locals, m.deliveries, m.drops, m.publishes, m.blocked, m.dedicated, m.busy, m.reconnected)
	}
	return m
}
