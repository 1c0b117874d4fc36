// Package memory is an in-memory broker.Broker with RabbitMQ's STOMP
// semantics for what the relay's tests need: topic routing with '*' and
// '#', exchanges, shared and temporary queues, receipts, client and
// client-individual acks with redelivery on NACK and on close,
// transactions, and RabbitMQ's ERRORs for unknown destinations. It is a
// test double, not a product mode: nothing persists and there is no flow
// control.
//
// One mutex guards all state; sinks are called with it held (the Sink
// contract says they never block) so every session sees deliveries in the
// order the broker made them.
package memory

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// Broker is the in-memory broker. Safe for concurrent use.
type Broker struct {
	mu          sync.Mutex
	down        bool
	maxSessions int
	sessions    map[*session]struct{}
	exchanges   map[string]string // name → "topic", "direct" or "fanout"
	queues      map[string]*queue
	bindings    []*binding
	idle        map[*session]struct{} // sessions delivered to since the last Idle round
	opened      int
}

// New returns an empty broker with RabbitMQ's predeclared exchanges.
// maxSessions > 0 makes Open fail with broker.ErrBusy past that many.
func New(maxSessions int) *Broker {
	return &Broker{
		maxSessions: maxSessions,
		sessions:    map[*session]struct{}{},
		exchanges: map[string]string{"amq.topic": "topic", "amq.direct": "direct", "amq.fanout": "fanout",
			broker.JournalExchange: "topic", broker.UserExchange: "direct"}, // as rabbitmq/definitions.json
		queues: map[string]*queue{},
		idle:   map[*session]struct{}{},
	}
}

type queue struct {
	name      string
	msgs      []*message
	consumers []*consumer
	next      int      // round-robin position
	owner     *session // exclusive to this session (subscription or temp queue), nil if shared
}

type binding struct {
	exchange, pattern string
	q                 *queue
	tap               chan Delivery // a Tap instead of a queue
}

type message struct {
	dest        string // the destination the publisher used
	header      [][2]string
	body        []byte
	redelivered bool
}

type consumer struct {
	s      *session
	id     string
	ack    broker.AckMode
	q      *queue
	dest   string
	routed bool // MESSAGEs carry dest, the client's destination
}

type pending struct {
	c  *consumer
	id string
	m  *message
}

type session struct {
	b       *Broker
	info    broker.SessionInfo
	sink    broker.Sink
	subs    map[string]*consumer
	unacked []pending
	txs     map[string][]func()
	n       int
	dead    bool
}

// Delivery is what a Tap sees.
type Delivery struct {
	Exchange, Key string
	Header        *frame.Header
	Body          []byte
}

// Open attaches a session.
func (b *Broker) Open(_ context.Context, info broker.SessionInfo, sink broker.Sink) (broker.Session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.down {
		return nil, fmt.Errorf("%w: memory broker is down", broker.ErrUnavailable)
	}
	if b.maxSessions > 0 && len(b.sessions) >= b.maxSessions {
		return nil, broker.ErrBusy
	}
	s := &session{b: b, info: info, sink: sink, subs: map[string]*consumer{}, txs: map[string][]func(){}}
	b.sessions[s] = struct{}{}
	b.opened++
	return s, nil
}

// Probe fails while the broker is down.
func (b *Broker) Probe(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.down {
		return fmt.Errorf("%w: memory broker is down", broker.ErrUnavailable)
	}
	return nil
}

// SetDown makes Open and Probe fail (true) or succeed again (false).
func (b *Broker) SetDown(down bool) {
	b.mu.Lock()
	b.down = down
	b.mu.Unlock()
}

// Drop loses every open session, as a broker restart would.
func (b *Broker) Drop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.sessions {
		s.lose(fmt.Errorf("%w: connection dropped", broker.ErrUnavailable))
	}
}

// Sessions is the number of open sessions; Opened counts every Open.
func (b *Broker) Sessions() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.sessions)
}

// DeclareExchange adds an exchange of kind topic, direct or fanout.
func (b *Broker) DeclareExchange(name, kind string) {
	b.mu.Lock()
	b.exchanges[name] = kind
	b.mu.Unlock()
}

// DeclareQueue adds a shared queue (what /amq/queue/ needs to exist).
func (b *Broker) DeclareQueue(name string) {
	b.mu.Lock()
	b.queue(name)
	b.mu.Unlock()
}

// Depth is the number of ready messages in queue name.
func (b *Broker) Depth(name string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q := b.queues[name]; q != nil {
		return len(q.msgs)
	}
	return 0
}

// Tap returns a channel that receives a copy of everything published to
// exchange with a routing key matching pattern (topic rules). Capacity
// 10000; a full tap drops (tests read it).
func (b *Broker) Tap(exchange, pattern string) <-chan Delivery {
	ch := make(chan Delivery, 10000)
	b.mu.Lock()
	b.bindings = append(b.bindings, &binding{exchange: exchange, pattern: pattern, tap: ch})
	b.mu.Unlock()
	return ch
}

// Publish routes a message as an AMQP publisher would; header is
// name/value pairs.
func (b *Broker) Publish(exchange, key string, body []byte, header ...string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := &message{dest: "/exchange/" + exchange + "/" + key, body: append([]byte(nil), body...)}
	for i := 0; i+1 < len(header); i += 2 {
		m.header = append(m.header, [2]string{header[i], header[i+1]})
	}
	if exchange == "amq.topic" {
		m.dest = "/topic/" + key
	}
	err := b.route(exchange, key, m)
	b.flushIdle()
	return err
}

func (b *Broker) queue(name string) *queue {
	q := b.queues[name]
	if q == nil {
		q = &queue{name: name}
		b.queues[name] = q
	}
	return q
}

// route delivers m through exchange ("" is the default exchange: key is
// a queue name).
func (b *Broker) route(exchange, key string, m *message) error {
	if exchange == "" {
		if q := b.queues[key]; q != nil {
			b.enqueue(q, m)
		}
		return nil
	}
	kind, ok := b.exchanges[exchange]
	if !ok {
		return fmt.Errorf("no exchange '%s' in vhost", exchange)
	}
	for _, bd := range b.bindings {
		if bd.exchange != exchange {
			continue
		}
		var hit bool
		switch kind {
		case "topic":
			hit = MatchTopic(bd.pattern, key)
		case "direct":
			hit = bd.pattern == key
		default:
			hit = true
		}
		if !hit {
			continue
		}
		if bd.tap != nil {
			h := frame.NewHeader()
			for _, kv := range m.header {
				h.Add(kv[0], kv[1])
			}
			select {
			case bd.tap <- Delivery{Exchange: exchange, Key: key, Header: h, Body: m.body}:
			default:
			}
			continue
		}
		cp := *m
		b.enqueue(bd.q, &cp)
	}
	return nil
}

// enqueue hands m to the queue's next consumer, or keeps it.
func (b *Broker) enqueue(q *queue, m *message) {
	if len(q.consumers) == 0 {
		q.msgs = append(q.msgs, m)
		return
	}
	c := q.consumers[q.next%len(q.consumers)]
	q.next++
	c.s.deliver(c, m)
}

func (b *Broker) flushIdle() {
	for s := range b.idle {
		delete(b.idle, s)
		if !s.dead {
			s.sink.Idle()
		}
	}
}

// MatchTopic reports whether routing key matches a topic binding pattern
// the way RabbitMQ's topic exchange does: '.'-separated words, '*' exactly
// one word, '#' zero or more.
func MatchTopic(pattern, key string) bool {
	return matchWords(strings.Split(pattern, "."), strings.Split(key, "."))
}

func matchWords(p, k []string) bool {
	for len(p) > 0 {
		switch p[0] {
		case "#":
			for i := 0; i <= len(k); i++ {
				if matchWords(p[1:], k[i:]) {
					return true
				}
			}
			return false
		case "*":
			if len(k) == 0 {
				return false
			}
		default:
			if len(k) == 0 || k[0] != p[0] {
				return false
			}
		}
		p, k = p[1:], k[1:]
	}
	return len(k) == 0
}

// ---- the session side ----

// do runs one operation under the broker's lock and ends with an Idle
// round, as a broker reader would after a read.
func (s *session) do(receipt string, op func() error) error {
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.dead {
		return nil
	}
	if err := op(); err != nil {
		s.lose(&broker.Error{Message: err.Error(), ContentType: "text/plain", ReceiptID: receipt, Body: []byte(err.Error())})
	} else if receipt != "" {
		s.sink.Receipt(receipt)
		b.idle[s] = struct{}{}
	}
	b.flushIdle()
	return nil
}

func (s *session) lose(err error) {
	if s.dead {
		return
	}
	s.dead = true
	s.sink.Lost(err)
	s.detach()
}

// inTx runs f now, or at COMMIT when tx is set.
func (s *session) inTx(tx string, f func() error) error {
	if tx == "" {
		return f()
	}
	ops, ok := s.txs[tx]
	if !ok {
		return fmt.Errorf("transaction %q is not open", tx)
	}
	s.txs[tx] = append(ops, func() { _ = f() })
	return nil
}

// target resolves a destination the way RabbitMQ's STOMP adapter does:
// an exchange and routing key for publishing.
func (s *session) target(dest string) (exchange, key string, err error) {
	b := s.b
	switch {
	case strings.HasPrefix(dest, "/topic/"):
		return "amq.topic", dest[len("/topic/"):], nil
	case strings.HasPrefix(dest, "/exchange/"):
		ex, k, _ := strings.Cut(dest[len("/exchange/"):], "/")
		if _, ok := b.exchanges[ex]; !ok {
			return "", "", fmt.Errorf("not_found: no exchange '%s'", ex)
		}
		return ex, k, nil
	case strings.HasPrefix(dest, "/queue/"):
		b.queue(dest[len("/queue/"):])
		return "", dest[len("/queue/"):], nil
	case strings.HasPrefix(dest, "/amq/queue/"):
		name := dest[len("/amq/queue/"):]
		if b.queues[name] == nil {
			return "", "", fmt.Errorf("not_found: no queue '%s'", name)
		}
		return "", name, nil
	case strings.HasPrefix(dest, "/temp-queue/"):
		name := s.tempQueue(dest)
		return "", name, nil
	}
	return "", "", fmt.Errorf("unknown destination '%s'", dest)
}

func (s *session) tempQueue(dest string) string {
	name := "amq.gen-" + s.info.ID + "-" + dest[len("/temp-queue/"):]
	q := s.b.queue(name)
	q.owner = s
	return name
}

// dropOnPublish are the SEND headers that do not reach the MESSAGE.
var dropOnPublish = map[string]bool{
	frame.Destination: true, frame.Receipt: true, frame.Transaction: true, frame.ContentLength: true,
}

func (s *session) Send(m broker.Message) error {
	msg := &message{dest: m.Destination, body: append([]byte(nil), m.Body...)}
	for i := 0; i < m.Header.Len(); i++ {
		k, v := m.Header.GetAt(i)
		if !dropOnPublish[k] {
			msg.header = append(msg.header, [2]string{k, v})
		}
	}
	return s.do(m.Receipt, func() error {
		return s.inTx(m.Transaction, func() error {
			if m.Route != nil {
				return s.b.route(m.Route.Exchange, m.Route.Key, msg)
			}
			ex, key, err := s.target(m.Destination)
			if err != nil {
				return err
			}
			return s.b.route(ex, key, msg)
		})
	})
}

func (s *session) Subscribe(sub broker.Subscription) error {
	return s.do(sub.Receipt, func() error {
		b := s.b
		if _, dup := s.subs[sub.ID]; dup {
			return fmt.Errorf("duplicated subscription identifier '%s'", sub.ID)
		}
		var q *queue
		d := sub.Destination
		switch {
		case sub.Route != nil || strings.HasPrefix(d, "/topic/") || strings.HasPrefix(d, "/exchange/"):
			var ex, key string
			var err error
			if sub.Route != nil {
				ex, key = sub.Route.Exchange, sub.Route.Key
				if _, ok := b.exchanges[ex]; !ok {
					return fmt.Errorf("not_found: no exchange '%s'", ex)
				}
			} else if ex, key, err = s.target(d); err != nil {
				return err
			}
			if key == "" {
				key = "#"
			}
			q = &queue{name: "stomp-subscription-" + s.info.ID + "-" + sub.ID, owner: s}
			b.queues[q.name] = q
			b.bindings = append(b.bindings, &binding{exchange: ex, pattern: key, q: q})
		default:
			_, name, err := s.target(d)
			if err != nil {
				return err
			}
			q = b.queues[name]
		}
		c := &consumer{s: s, id: sub.ID, ack: sub.Ack, q: q, dest: d, routed: sub.Route != nil}
		s.subs[sub.ID] = c
		q.consumers = append(q.consumers, c)
		for len(q.msgs) > 0 && len(q.consumers) > 0 {
			m := q.msgs[0]
			q.msgs = q.msgs[1:]
			b.enqueue(q, m)
		}
		return nil
	})
}

func (s *session) deliver(c *consumer, m *message) {
	s.n++
	id := "T_" + c.id + "@@" + s.info.ID + "@@" + strconv.Itoa(s.n)
	dest := m.dest
	if c.routed {
		dest = c.dest
	}
	f := frame.New(frame.MESSAGE,
		frame.Subscription, c.id,
		frame.Destination, dest,
		frame.MessageId, id,
		"redelivered", strconv.FormatBool(m.redelivered))
	if c.ack != broker.AckAuto {
		f.Header.Add(frame.Ack, id)
		s.unacked = append(s.unacked, pending{c: c, id: id, m: m})
	}
	for _, kv := range m.header {
		f.Header.Add(kv[0], kv[1])
	}
	f.Header.Add(frame.ContentLength, strconv.Itoa(len(m.body)))
	f.Body = m.body
	s.sink.Deliver(broker.NewFrame(stomp.AppendMessage(nil, f, s.info.Version), frame.MESSAGE, time.Now()))
	s.b.idle[s] = struct{}{}
}

func (s *session) Unsubscribe(id, receipt string) error {
	return s.do(receipt, func() error {
		c := s.subs[id]
		if c == nil {
			return nil // RabbitMQ ignores an unknown id
		}
		s.removeConsumer(c)
		return nil
	})
}

func (s *session) removeConsumer(c *consumer) {
	delete(s.subs, c.id)
	q := c.q
	for i, x := range q.consumers {
		if x == c {
			q.consumers = append(q.consumers[:i], q.consumers[i+1:]...)
			break
		}
	}
	// Unacked messages of this consumer go back to its queue.
	kept := s.unacked[:0]
	var back []*message
	for _, p := range s.unacked {
		if p.c == c {
			back = append(back, p.m)
		} else {
			kept = append(kept, p)
		}
	}
	s.unacked = kept
	if q.owner == s && strings.HasPrefix(q.name, "stomp-subscription-") {
		s.b.dropQueue(q)
		return
	}
	for _, m := range back {
		cp := *m
		cp.redelivered = true
		s.b.enqueue(q, &cp)
	}
}

func (b *Broker) dropQueue(q *queue) {
	delete(b.queues, q.name)
	kept := b.bindings[:0]
	for _, bd := range b.bindings {
		if bd.q != q {
			kept = append(kept, bd)
		}
	}
	b.bindings = kept
}

func (s *session) Ack(a broker.Ack) error {
	return s.do(a.Receipt, func() error {
		return s.inTx(a.Transaction, func() error {
			s.settle(a.ID, a.Nack)
			return nil
		})
	})
}

// settle acks (or nacks, requeueing) the delivery id: with ack:client,
// every earlier unacked delivery of the same subscription too.
func (s *session) settle(id string, nack bool) {
	at := -1
	for i, p := range s.unacked {
		if p.id == id {
			at = i
			break
		}
	}
	if at < 0 {
		return
	}
	target := s.unacked[at]
	kept := s.unacked[:0]
	var settled []pending
	for i, p := range s.unacked {
		if i == at || (target.c.ack == broker.AckClient && p.c == target.c && i < at) {
			settled = append(settled, p)
		} else {
			kept = append(kept, p)
		}
	}
	s.unacked = kept
	if !nack {
		return
	}
	for _, p := range settled {
		cp := *p.m
		cp.redelivered = true
		s.b.enqueue(p.c.q, &cp)
	}
}

func (s *session) Begin(tx, receipt string) error {
	return s.do(receipt, func() error {
		if _, open := s.txs[tx]; open {
			return fmt.Errorf("transaction %q is already open", tx)
		}
		s.txs[tx] = nil
		return nil
	})
}

func (s *session) Commit(tx, receipt string) error {
	return s.do(receipt, func() error {
		ops, open := s.txs[tx]
		if !open {
			return fmt.Errorf("transaction %q is not open", tx)
		}
		delete(s.txs, tx)
		for _, op := range ops {
			op()
		}
		return nil
	})
}

func (s *session) Abort(tx, receipt string) error {
	return s.do(receipt, func() error {
		if _, open := s.txs[tx]; !open {
			return fmt.Errorf("transaction %q is not open", tx)
		}
		delete(s.txs, tx)
		return nil
	})
}

func (s *session) Disconnect(receipt string) error {
	return s.do(receipt, func() error { return nil })
}

func (s *session) Flush() error { return nil }

// Close detaches the session; unacked messages of shared queues are
// redelivered to their other consumers.
func (s *session) Close() error {
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	s.dead = true
	s.detach()
	b.flushIdle()
	return nil
}

func (s *session) detach() {
	b := s.b
	if _, ok := b.sessions[s]; !ok {
		return
	}
	delete(b.sessions, s)
	delete(b.idle, s)
	for _, c := range s.subs {
		s.removeConsumer(c)
	}
	for name, q := range b.queues {
		if q.owner == s {
			delete(b.queues, name)
		}
	}
}
