package amqplink

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/relay/broker"
)

// session is one relay session's broker side: shared until an operation
// needs per-consumer broker state, then (for every later operation) its
// dedicated connection.
//
// Receipts leave in the order their frames came, whichever path did the
// work: each frame with a receipt takes a slot; a slot is done when its
// publish is confirmed, its shared subscription attached, or the dedicated
// connection sent its RECEIPT; done slots at the head are handed to the
// sink.
type session struct {
	b    *Broker
	ctx  context.Context // the relay session's: ends with it
	info broker.SessionInfo
	sink broker.Sink
	home *link // publishes go here
	dead atomic.Bool

	opMu sync.Mutex // held by every operation and Close (ops come from one goroutine; Close may not)
	subs map[string]*localSub
	ded  broker.Session // nil until needed; then every later operation goes there
	done bool           // Close ran

	mu       sync.Mutex // leaf: receipt slots and the in-flight count
	slots    []*slot
	inflight int           // shared publishes not yet confirmed
	drained  chan struct{} // closed when inflight drops to 0 (nil: nobody waits)
}

type slot struct {
	id   string
	done bool
	ded  bool // the dedicated connection answers it
}

func newSession(b *Broker, ctx context.Context, info broker.SessionInfo, sink broker.Sink, home *link) *session {
	return &session{b: b, ctx: ctx, info: info, sink: sink, home: home}
}

// queueHeaders are the SUBSCRIBE/SEND headers that declare or shape a
// broker queue (SPEC §3's header firewall): they need per-consumer broker
// state, so the frame goes to the dedicated connection.
func queueHeader(k string) bool {
	switch k {
	case "durable", "auto-delete", "exclusive", "x-queue-name", "x-queue-type", "x-max-priority",
		"x-message-ttl", "x-expires", "x-overflow", "x-max-age", "x-single-active-consumer", "persistent":
		return true
	}
	return strings.HasPrefix(k, "x-max-length") || strings.HasPrefix(k, "x-dead-letter-") || strings.HasPrefix(k, "x-stream-")
}

func hasQueueHeader(h *frame.Header) bool {
	for i := 0; i < h.Len(); i++ {
		if k, _ := h.GetAt(i); queueHeader(k) {
			return true
		}
	}
	return false
}

// sharedSubscription reports whether a SUBSCRIBE can ride a shared queue:
// auto ack, a /topic/ or /exchange/ destination, nothing that declares.
//
// A Subscription with a Route (user destinations) is shared the same way:
// a binding of Route.Key (any characters) on Route.Exchange.
func sharedSubscription(sub broker.Subscription) bool {
	if sub.Ack != broker.AckAuto && sub.Ack != "" {
		return false
	}
	if _, _, ok := subscriptionRoute(sub); !ok {
		return false
	}
	return sub.Header == nil || !hasQueueHeader(sub.Header)
}

// subscriptionRoute is the exchange and binding key a shared subscription
// binds: its Route when set, else what its destination means to RabbitMQ.
func subscriptionRoute(sub broker.Subscription) (exchange, key string, ok bool) {
	if sub.Route != nil {
		return sub.Route.Exchange, sub.Route.Key, true
	}
	return route(sub.Destination)
}

// messageRoute is where a SEND is published: its Route when set (the
// journal, user destinations), else what its destination means to
// RabbitMQ.
func messageRoute(m broker.Message) (exchange, key string, ok bool) {
	if m.Route != nil {
		return m.Route.Exchange, m.Route.Key, true
	}
	return route(m.Destination)
}

// sharedSend reports whether a SEND can go over a shared link: a /topic/
// or /exchange/ destination or a Route, no transaction, no reply-to (RabbitMQ makes
// a temporary queue for some), nothing that declares. persistent is a
// message property on a SEND, not a queue header.
func sharedSend(m broker.Message) bool {
	if m.Transaction != "" {
		return false
	}
	if _, _, ok := messageRoute(m); !ok {
		return false
	}
	if m.Header == nil {
		return true
	}
	for i := 0; i < m.Header.Len(); i++ {
		k, _ := m.Header.GetAt(i)
		if k == "reply-to" || (k != "persistent" && queueHeader(k)) {
			return false
		}
	}
	return true
}

func (s *session) Send(m broker.Message) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.ded == nil && sharedSend(m) {
		ex, key, _ := messageRoute(m)
		if err := s.home.checkExchange(ex); err != nil {
			return err
		}
		var sl *slot
		if m.Receipt != "" {
			sl = s.addSlot(m.Receipt, false)
		}
		h := m.Header
		if h == nil {
			h = frame.NewHeader()
		}
		return s.home.publish(s.ctx, s, ex, key, publishing(h, m.Body), sl)
	}
	d, err := s.dedicated()
	if err != nil {
		return err
	}
	if m.Receipt != "" {
		s.addSlot(m.Receipt, true)
	}
	return d.Send(m)
}

func duplicated(id string) error {
	return &broker.Error{Message: "Duplicated subscription identifier", ContentType: "text/plain",
		Body: []byte("A subscription identified by 'T_" + id + "' already exists.")}
}

func (s *session) Subscribe(sub broker.Subscription) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if _, dup := s.subs[sub.ID]; dup {
		return duplicated(sub.ID)
	}
	if s.ded == nil && sharedSubscription(sub) {
		ex, key, _ := subscriptionRoute(sub)
		// A routed subscription's MESSAGEs carry the destination the
		// client subscribed to (/user/queue/<name>), not the binding.
		dest := ""
		if sub.Route != nil {
			dest = sub.Destination
		}
		ls, err := s.b.attach(s, sharedKey{exchange: ex, key: key, dest: dest}, sub.ID, func() {
			if sub.Receipt != "" {
				s.receipt(sub.Receipt)
			}
		})
		if err != nil {
			return err
		}
		if s.subs == nil {
			s.subs = map[string]*localSub{}
		}
		s.subs[sub.ID] = ls
		if sub.Receipt != "" {
			s.sink.Idle()
		}
		return nil
	}
	d, err := s.dedicated()
	if err != nil {
		return err
	}
	if sub.Receipt != "" {
		s.addSlot(sub.Receipt, true)
	}
	return d.Subscribe(sub)
}

func (s *session) Unsubscribe(id, receipt string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if ls := s.subs[id]; ls != nil {
		delete(s.subs, id)
		s.b.detach(ls)
		if receipt != "" {
			s.receipt(receipt)
			s.sink.Idle()
		}
		return nil
	}
	if s.ded != nil {
		if receipt != "" {
			s.addSlot(receipt, true)
		}
		return s.ded.Unsubscribe(id, receipt)
	}
	return &broker.Error{Message: "No subscription found", ContentType: "text/plain",
		Body: []byte("UNSUBSCRIBE must refer to an existing subscription.\nSubscription to \"id='" + id + "'\" not found.\n")}
}

func (s *session) Ack(a broker.Ack) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.ded == nil {
		// Only shared (auto-ack) subscriptions: nothing to acknowledge,
		// which RabbitMQ answers with this ERROR.
		cmd := frame.ACK
		if a.Nack {
			cmd = frame.NACK
		}
		return &broker.Error{Message: "Invalid header", ContentType: "text/plain",
			Body: []byte("\"" + cmd + "\" must include a valid \"id\" header\n")}
	}
	if a.Receipt != "" {
		s.addSlot(a.Receipt, true)
	}
	return s.ded.Ack(a)
}

func (s *session) Begin(tx, receipt string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	d, err := s.dedicated()
	if err != nil {
		return err
	}
	if receipt != "" {
		s.addSlot(receipt, true)
	}
	return d.Begin(tx, receipt)
}

func badTransaction(tx string) error {
	return &broker.Error{Message: "Bad transaction", ContentType: "text/plain",
		Body: []byte("Invalid transaction identifier: \"" + tx + "\"\n")}
}

func (s *session) Commit(tx, receipt string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.ded == nil {
		return badTransaction(tx) // BEGIN would have opened the dedicated connection
	}
	if receipt != "" {
		s.addSlot(receipt, true)
	}
	return s.ded.Commit(tx, receipt)
}

func (s *session) Abort(tx, receipt string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.ded == nil {
		return badTransaction(tx)
	}
	if receipt != "" {
		s.addSlot(receipt, true)
	}
	return s.ded.Abort(tx, receipt)
}

func (s *session) Disconnect(receipt string) error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.ded != nil {
		if receipt != "" {
			s.addSlot(receipt, true)
		}
		return s.ded.Disconnect(receipt)
	}
	if receipt != "" {
		s.receipt(receipt) // after every receipt asked before it
		s.sink.Idle()
	}
	return nil
}

func (s *session) Flush() error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.ded != nil {
		return s.ded.Flush()
	}
	return nil
}

// Close detaches the session's shared subscriptions (their queues linger)
// and closes its dedicated connection. Unconfirmed publishes still reach
// RabbitMQ; their receipts are dropped.
func (s *session) Close() error {
	s.opMu.Lock()
	defer s.opMu.Unlock()
	if s.done {
		return nil
	}
	s.done = true
	s.dead.Store(true)
	for id, ls := range s.subs {
		delete(s.subs, id)
		s.b.detach(ls)
	}
	s.b.mu.Lock()
	delete(s.home.sessions, s)
	s.b.mu.Unlock()
	if s.ded != nil {
		_ = s.ded.Close()
		s.ded = nil
		s.b.releaseDedicated()
	}
	return nil
}

// dedicated returns the session's dedicated connection, opening it at the
// first call: after the session's shared publishes are confirmed, so that
// RabbitMQ sees its frames in order across the two connections. Past
// EDGE_MAX_DEDICATED it fails with an error wrapping broker.ErrBusy.
func (s *session) dedicated() (broker.Session, error) {
	if s.ded != nil {
		return s.ded, nil
	}
	if !s.b.acquireDedicated() {
		s.b.metrics.busy.Inc()
		return nil, fmt.Errorf("%w: %d dedicated broker connections are open (EDGE_MAX_DEDICATED)", broker.ErrBusy, s.b.cfg.MaxDedicated)
	}
	if err := s.waitInflight(); err != nil {
		s.b.releaseDedicated()
		return nil, err
	}
	d, err := s.b.cfg.Dedicated.Open(s.ctx, s.info, dedicatedSink{s})
	if err != nil {
		s.b.releaseDedicated()
		return nil, err
	}
	s.ded = d
	return d, nil
}

// waitInflight waits, at most Config.Timeout, until every shared publish
// of the session is confirmed.
func (s *session) waitInflight() error {
	s.mu.Lock()
	if s.inflight == 0 {
		s.mu.Unlock()
		return nil
	}
	if s.drained == nil {
		s.drained = make(chan struct{})
	}
	ch := s.drained
	s.mu.Unlock()
	t := time.NewTimer(s.b.cfg.Timeout)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return fmt.Errorf("%w: publishes not confirmed within %s", broker.ErrUnavailable, s.b.cfg.Timeout)
	case <-s.ctx.Done():
		return fmt.Errorf("%w: %w", broker.ErrUnavailable, s.ctx.Err())
	}
}

func (s *session) addInflight(d int) {
	s.mu.Lock()
	s.inflight += d
	if s.inflight == 0 && s.drained != nil {
		close(s.drained)
		s.drained = nil
	}
	s.mu.Unlock()
}

func (s *session) addSlot(id string, ded bool) *slot {
	sl := &slot{id: id, ded: ded}
	s.mu.Lock()
	s.slots = append(s.slots, sl)
	s.mu.Unlock()
	return sl
}

// receipt queues a receipt that is due now (behind those still pending).
func (s *session) receipt(id string) {
	s.mu.Lock()
	s.slots = append(s.slots, &slot{id: id, done: true})
	s.emitLocked()
	s.mu.Unlock()
}

// confirmed is the publisher confirm of one of the session's publishes.
// It reports whether a receipt went to the sink (the caller flushes).
func (s *session) confirmed(sl *slot, ack bool) bool {
	s.addInflight(-1)
	if !ack {
		s.lose(&broker.Error{Message: "message rejected", ContentType: "text/plain",
			Body: []byte("the broker did not accept a message (basic.nack)")})
		return false
	}
	if sl == nil {
		return false
	}
	s.mu.Lock()
	sl.done = true
	n := s.emitLocked()
	s.mu.Unlock()
	return n > 0
}

// emitLocked hands the done slots at the head to the sink; the caller
// holds s.mu (sinks never block).
func (s *session) emitLocked() int {
	n := 0
	for len(s.slots) > 0 && s.slots[0].done {
		id := s.slots[0].id
		s.slots[0] = nil
		s.slots = s.slots[1:]
		if !s.dead.Load() {
			s.sink.Receipt(id)
			n++
		}
	}
	if len(s.slots) == 0 {
		s.slots = nil
	}
	return n
}

// lose ends the session for err, once; later deliveries are dropped.
func (s *session) lose(err error) {
	if s.dead.Swap(true) {
		return
	}
	s.sink.Lost(err)
}

// dedicatedSink is the Sink of the session's dedicated connection: its
// receipts complete their slots, the rest passes through.
type dedicatedSink struct{ s *session }

func (k dedicatedSink) Deliver(f broker.Frame) {
	if !k.s.dead.Load() {
		k.s.sink.Deliver(f)
	}
}

func (k dedicatedSink) Receipt(id string) {
	s := k.s
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sl := range s.slots {
		if sl.ded && !sl.done && sl.id == id {
			sl.done = true
			s.emitLocked()
			return
		}
	}
	if !s.dead.Load() {
		s.sink.Receipt(id)
	}
}

func (k dedicatedSink) Lost(err error) { k.s.lose(err) }

func (k dedicatedSink) Idle() { k.s.sink.Idle() }
