package amqplink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/backoff"
	"github.com/stompgate/stompgate/relay/broker"
)

// link is one shared AMQP connection: a publish channel in confirm mode,
// and one channel per shared queue it hosts.
type link struct {
	b *Broker
	n int // 1-based, in the connection name

	// sessions publishing over this link; guarded by Broker.mu.
	sessions map[*session]struct{}

	pubMu sync.Mutex // serializes publishes: seq numbers in order

	mu      sync.Mutex
	conn    *amqp.Connection
	pub     *pubChan
	up      bool
	blocked bool
	unblock chan struct{}        // closed when the broker unblocks the link
	known   map[string]time.Time // exchanges seen to exist, until
}

// pubChan is a publish channel and its unconfirmed publishes by sequence
// number (amqp091-go numbers each channel's publishes from 1).
type pubChan struct {
	l       *link
	ch      *amqp.Channel
	pending map[uint64]pendingPub // guarded by link.mu
}

type pendingPub struct {
	s  *session
	sl *slot // nil: no receipt asked
}

func newLink(b *Broker, n int) *link {
	return &link{b: b, n: n, sessions: map[*session]struct{}{}, known: map[string]time.Time{}}
}

func (l *link) isUp() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.up
}

func (l *link) connection() *amqp.Connection {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.up {
		return nil
	}
	return l.conn
}

func (l *link) name() string {
	return fmt.Sprintf("stompgate-edge %s link %d", l.b.cfg.Name, l.n)
}

// close closes the connection (run notices and returns).
func (l *link) close() {
	l.mu.Lock()
	c := l.conn
	l.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

// run keeps the link connected until the broker is closed: dial, serve,
// and after a loss reconnect with jittered backoff.
func (l *link) run() {
	b := l.b
	defer b.wg.Done()
	bo := backoff.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}
	start := l.n
	for b.ctx.Err() == nil {
		conn, err := l.dial(start)
		start++
		if err != nil {
			b.log.Warn("shared broker link: connect failed", "link", l.n, "err", err)
			if !bo.Sleep(b.ctx) {
				return
			}
			continue
		}
		t0 := time.Now()
		err = l.serve(conn)
		if b.ctx.Err() != nil {
			return
		}
		b.log.Warn("shared broker link lost", "link", l.n, "err", err)
		if time.Since(t0) > 30*time.Second {
			bo.Reset() // it had been up a while: a new outage
		}
		if !bo.Sleep(b.ctx) {
			return
		}
	}
}

func (l *link) dial(start int) (*amqp.Connection, error) {
	cfg := l.b.cfg
	var errs []error
	for i := range cfg.URLs {
		u := cfg.URLs[(start+i)%len(cfg.URLs)]
		conn, err := amqp.DialConfig(u, amqp.Config{
			Heartbeat:  cfg.Heartbeat,
			Locale:     "en_US",
			Properties: amqp.Table{"connection_name": l.name(), "product": "stompgate"},
			Dial:       amqp.DefaultDial(cfg.Timeout),
		})
		if err == nil {
			return conn, nil
		}
		errs = append(errs, fmt.Errorf("dial %s: %w", redact(u), err))
	}
	return nil, errors.Join(errs...)
}

// redact hides the password of an amqp:// URL for logs.
func redact(u string) string {
	if at := strings.LastIndexByte(u, '@'); at > 0 {
		if i := strings.Index(u, "://"); i >= 0 && i+3 < at {
			if c := strings.IndexByte(u[i+3:at], ':'); c >= 0 {
				return u[:i+3+c+1] + "***" + u[at:]
			}
		}
	}
	return u
}

// serve runs one connection of the link until it is lost; it returns why.
func (l *link) serve(conn *amqp.Connection) error {
	b := l.b
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))
	pc, pubClosed, err := l.openPub(conn)
	if err != nil {
		_ = conn.Close()
		for range blocked {
		}
		return err
	}
	l.mu.Lock()
	l.conn, l.pub, l.up, l.blocked = conn, pc, true, false
	l.known = map[string]time.Time{}
	l.mu.Unlock()
	b.metrics.linksUp.Inc()
	b.metrics.reconnected.Inc()
	b.log.Info("shared broker link up", "link", l.n, "name", l.name())
	b.linkUp()

	var why error
loop:
	for {
		select {
		case <-b.ctx.Done():
			why = errors.New("broker closed")
			break loop
		case e, ok := <-closed:
			if ok && e != nil {
				why = e
			} else {
				why = errors.New("connection closed")
			}
			break loop
		case bl, ok := <-blocked:
			if !ok {
				blocked = nil
				continue
			}
			l.setBlocked(bl.Active)
			if bl.Active {
				b.log.Warn("broker blocked the shared link (resource alarm); publishers wait", "link", l.n, "reason", bl.Reason)
			}
		case e := <-pubClosed:
			// The publish channel alone failed (a publish to an exchange
			// deleted meanwhile): its unconfirmed publishes are lost,
			// a new channel takes the next ones.
			if conn.IsClosed() {
				why = e
				break loop
			}
			npc, nclosed, err := l.openPub(conn)
			if err != nil {
				why = err
				_ = conn.Close()
				break loop
			}
			l.pubMu.Lock()
			l.mu.Lock()
			old := l.pub
			l.pub = npc
			l.mu.Unlock()
			l.pubMu.Unlock()
			pubClosed = nclosed
			failPending(old, fmt.Errorf("%w: publish channel of link %d closed: %v", broker.ErrUnavailable, l.n, e))
		}
	}
	_ = conn.Close()
	if blocked != nil {
		for range blocked {
		}
	}
	l.lost(why)
	return why
}

// openPub opens a confirm-mode channel and starts its confirm reader.
func (l *link) openPub(conn *amqp.Connection) (*pubChan, <-chan *amqp.Error, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, err
	}
	if err := ch.Confirm(false); err != nil {
		return nil, nil, err
	}
	pc := &pubChan{l: l, ch: ch, pending: map[uint64]pendingPub{}}
	// Confirms and closes are always drained (amqp091-go blocks its
	// reader on a full notification channel): the reader below never
	// waits on anything but l.mu.
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 1024))
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	go l.confirms(pc, confirms)
	return pc, closed, nil
}

// confirms turns publisher confirms into receipts until the channel
// closes; what it never confirmed fails then.
func (l *link) confirms(pc *pubChan, confirms <-chan amqp.Confirmation) {
	var touched []*session // got a receipt since the last flush
	for c := range confirms {
		l.mu.Lock()
		p, ok := pc.pending[c.DeliveryTag]
		delete(pc.pending, c.DeliveryTag)
		l.mu.Unlock()
		if ok && p.s.confirmed(p.sl, c.Ack) && !slices.Contains(touched, p.s) {
			touched = append(touched, p.s)
		}
		if len(confirms) == 0 || len(touched) >= 64 {
			// A read batch ends: the producer flushes what it touched.
			for i, s := range touched {
				s.sink.Idle()
				touched[i] = nil
			}
			touched = touched[:0]
		}
	}
	failPending(pc, fmt.Errorf("%w: publish channel of link %d closed", broker.ErrUnavailable, l.n))
}

func failPending(pc *pubChan, err error) {
	if pc == nil {
		return
	}
	pc.ch.Close()
	// Only sessions with unconfirmed publishes on this channel lose.
	var lost []*session
	for _, p := range pc.takePending() {
		lost = append(lost, p.s)
	}
	for _, s := range lost {
		s.lose(err)
	}
}

func (pc *pubChan) takePending() map[uint64]pendingPub {
	pc.l.mu.Lock()
	defer pc.l.mu.Unlock()
	p := pc.pending
	pc.pending = map[uint64]pendingPub{}
	return p
}

func (l *link) setBlocked(active bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case active && !l.blocked:
		l.blocked = true
		l.unblock = make(chan struct{})
		l.b.metrics.blocked.Inc()
	case !active && l.blocked:
		l.blocked = false
		close(l.unblock)
		l.b.metrics.blocked.Dec()
	}
}

// lost marks the link down and loses every session that depends on it:
// those publishing over it and the subscribers of its shared queues
// (exclusive queues die with the connection).
func (l *link) lost(why error) {
	b := l.b
	l.mu.Lock()
	wasUp := l.up
	l.up, l.conn = false, nil
	pc := l.pub
	l.pub = nil
	if l.blocked {
		l.blocked = false
		close(l.unblock)
		b.metrics.blocked.Dec()
	}
	l.mu.Unlock()
	if wasUp {
		b.metrics.linksUp.Dec()
	}
	if pc != nil {
		pc.takePending()
	}
	err := fmt.Errorf("%w: shared link %d lost: %v", broker.ErrUnavailable, l.n, why)
	victims := map[*session]struct{}{}
	b.mu.Lock()
	for s := range l.sessions {
		victims[s] = struct{}{}
	}
	l.sessions = map[*session]struct{}{}
	for k, sh := range b.shared {
		if sh.l != l {
			continue
		}
		sh.removeLocked()
		delete(b.shared, k)
		for _, ls := range sh.snapshot() {
			victims[ls.s] = struct{}{}
		}
	}
	b.mu.Unlock()
	for s := range victims {
		s.lose(err)
	}
}

// isAMQExchange reports the exchanges every vhost has and nobody can
// delete: no need to check that they exist.
func isAMQExchange(name string) bool {
	switch name {
	case "amq.topic", "amq.direct", "amq.fanout", "amq.headers", "amq.match":
		return true
	}
	return false
}

// checkExchange makes sure exchange exists before the link publishes to
// it: a publish to a missing exchange would close the publish channel
// that every session of the link uses. A passive declare runs on a
// channel of its own; results are kept for a few seconds.
func (l *link) checkExchange(exchange string) error {
	if exchange == "" || isAMQExchange(exchange) {
		return nil
	}
	now := time.Now()
	l.mu.Lock()
	until, ok := l.known[exchange]
	conn := l.conn
	up := l.up
	l.mu.Unlock()
	if ok && now.Before(until) {
		return nil
	}
	if !up {
		return fmt.Errorf("%w: shared link %d is down", broker.ErrUnavailable, l.n)
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("%w: open channel: %w", broker.ErrUnavailable, err)
	}
	err = ch.ExchangeDeclarePassive(exchange, "topic", false, false, false, false, nil)
	if err != nil {
		return amqpError(err)
	}
	_ = ch.Close()
	l.mu.Lock()
	l.known[exchange] = now.Add(5 * time.Second)
	l.mu.Unlock()
	return nil
}

// amqpError turns a channel exception into the ERROR RabbitMQ's STOMP
// adapter sends for it (message: the lower-case code name, body: the
// reason), other failures into broker.ErrUnavailable.
func amqpError(err error) error {
	var ae *amqp.Error
	if errors.As(err, &ae) && !ae.Server {
		return fmt.Errorf("%w: %w", broker.ErrUnavailable, err)
	}
	if errors.As(err, &ae) && (ae.Code == amqp.NotFound || ae.Code == amqp.AccessRefused || ae.Code == amqp.PreconditionFailed || ae.Code == amqp.ResourceLocked) {
		msg, _, _ := strings.Cut(ae.Reason, " - ")
		return &broker.Error{Message: strings.ToLower(msg), ContentType: "text/plain", Body: []byte(ae.Reason)}
	}
	return fmt.Errorf("%w: %w", broker.ErrUnavailable, err)
}

// errBlocked is returned when the broker kept a link blocked for longer
// than the timeout.
var errBlocked = errors.New("the broker blocks publishers (memory or disk alarm)")

// publish sends one message over the link's publish channel; with sl the
// session's receipt slot completes when RabbitMQ confirms. While the
// broker blocks the link, publish waits (the session stops reading its
// socket: backpressure) up to Config.Timeout, then fails with an error
// wrapping broker.ErrBusy.
func (l *link) publish(ctx context.Context, s *session, exchange, key string, p amqp.Publishing, sl *slot) error {
	timeout := time.NewTimer(l.b.cfg.Timeout)
	defer timeout.Stop()
	for {
		l.mu.Lock()
		up, blocked, unblock := l.up, l.blocked, l.unblock
		l.mu.Unlock()
		if !up {
			return fmt.Errorf("%w: shared link %d is down", broker.ErrUnavailable, l.n)
		}
		if blocked {
			select {
			case <-unblock:
				continue
			case <-timeout.C:
				return fmt.Errorf("%w: %w", broker.ErrBusy, errBlocked)
			case <-ctx.Done():
				return fmt.Errorf("%w: %w", broker.ErrUnavailable, ctx.Err())
			}
		}
		l.pubMu.Lock()
		l.mu.Lock()
		if l.blocked || !l.up || l.pub == nil {
			l.mu.Unlock()
			l.pubMu.Unlock()
			continue
		}
		pc := l.pub
		seq := pc.ch.GetNextPublishSeqNo()
		pc.pending[seq] = pendingPub{s: s, sl: sl}
		s.addInflight(1)
		l.mu.Unlock()
		err := pc.ch.PublishWithContext(ctx, exchange, key, false, false, p)
		l.pubMu.Unlock()
		if err != nil {
			l.mu.Lock()
			_, still := pc.pending[seq]
			delete(pc.pending, seq)
			l.mu.Unlock()
			if still {
				s.addInflight(-1)
			}
			return fmt.Errorf("%w: publish on link %d: %w", broker.ErrUnavailable, l.n, err)
		}
		l.b.metrics.publishes.Inc()
		return nil
	}
}
