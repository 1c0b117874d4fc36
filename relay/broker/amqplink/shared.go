package amqplink

import (
	"fmt"
	"hash/fnv"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/go-stomp/stomp/v3/frame"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// sharedKey names a shared queue: one per distinct exchange and binding
// key per edge. dest, when set, is the destination header of its
// MESSAGEs (a routed subscription: what the client subscribed to); a
// routed and an unrouted subscription never share a queue.
type sharedKey struct{ exchange, key, dest string }

// shared is one broker queue on a shared link and its local subscribers.
type shared struct {
	b   *Broker
	key sharedKey
	id  string // in message ids: unique per edge
	l   *link

	ready chan struct{} // closed once declare has finished; then err, ch, deliveries are set
	err   error
	ch    *amqp.Channel
	queue string
	dels  <-chan amqp.Delivery

	// subs is the subscriber set the reader iterates without a lock;
	// replaced (copy on write) under Broker.mu.
	subs    atomic.Pointer[[]*localSub]
	n       int         // len(*subs), under Broker.mu
	linger  *time.Timer // running while n == 0, under Broker.mu
	removed bool        // under Broker.mu: out of the registry
}

// localSub is one session's subscription served by a shared queue.
type localSub struct {
	s    *session
	id   string // the client's subscription id
	v    stomp.Version
	sh   *shared
	mark uint64 // the reader's batch number when it last touched s
}

func (sh *shared) snapshot() []*localSub {
	if p := sh.subs.Load(); p != nil {
		return *p
	}
	return nil
}

// removeLocked takes sh out of service; the caller holds Broker.mu and
// deletes it from the registry.
func (sh *shared) removeLocked() {
	if sh.removed {
		return
	}
	sh.removed = true
	if sh.linger != nil {
		sh.linger.Stop()
	}
	sh.b.metrics.shared.Dec()
	sh.b.metrics.locals.Sub(float64(sh.n))
}

// pickLink chooses the link for a new shared queue: by hash of the key,
// the next up link when that one is down. The caller holds Broker.mu.
func (b *Broker) pickLink(k sharedKey) *link {
	h := fnv.New32a()
	h.Write([]byte(k.exchange))
	h.Write([]byte{0})
	h.Write([]byte(k.key))
	start := int(h.Sum32() % uint32(len(b.links)))
	for i := range b.links {
		if l := b.links[(start+i)%len(b.links)]; l.isUp() {
			return l
		}
	}
	return nil
}

// attach adds a local subscriber to the shared queue of (exchange, key),
// declaring the queue first when the edge has none. ready runs just before
// the subscriber can see deliveries (under Broker.mu: it must not block),
// so a SUBSCRIBE's receipt comes before its first MESSAGE.
func (b *Broker) attach(s *session, k sharedKey, id string, ready func()) (*localSub, error) {
	for {
		b.mu.Lock()
		sh := b.shared[k]
		if sh == nil {
			l := b.pickLink(k)
			if l == nil {
				b.mu.Unlock()
				return nil, fmt.Errorf("%w: no shared link to the broker is up", broker.ErrUnavailable)
			}
			b.nextID++
			sh = &shared{b: b, key: k, id: "sq" + strconv.FormatUint(b.nextID, 10), l: l, ready: make(chan struct{})}
			b.shared[k] = sh
			b.metrics.shared.Inc()
			b.mu.Unlock()
			sh.err = sh.declare()
			close(sh.ready)
			if sh.err != nil {
				b.mu.Lock()
				if b.shared[k] == sh {
					delete(b.shared, k)
				}
				if !sh.removed {
					sh.removed = true
					b.metrics.shared.Dec()
				}
				b.mu.Unlock()
				return nil, sh.err
			}
			go sh.read()
		} else {
			b.mu.Unlock()
		}
		<-sh.ready // declare is bounded by the link's heart-beat
		if sh.err != nil {
			return nil, sh.err
		}
		b.mu.Lock()
		if sh.removed {
			b.mu.Unlock()
			continue // it lingered out or its link was lost meanwhile
		}
		ls := &localSub{s: s, id: id, v: s.info.Version, sh: sh}
		old := sh.snapshot()
		next := make([]*localSub, len(old), len(old)+1)
		copy(next, old)
		next = append(next, ls)
		ready()
		sh.subs.Store(&next)
		sh.n++
		if sh.linger != nil {
			sh.linger.Stop()
			sh.linger = nil
		}
		b.metrics.locals.Inc()
		b.mu.Unlock()
		return ls, nil
	}
}

// detach removes a local subscriber; the last one starts the linger.
func (b *Broker) detach(ls *localSub) {
	sh := ls.sh
	b.mu.Lock()
	defer b.mu.Unlock()
	old := sh.snapshot()
	next := make([]*localSub, 0, len(old))
	found := false
	for _, x := range old {
		if x == ls {
			found = true
			continue
		}
		next = append(next, x)
	}
	if !found {
		return
	}
	sh.subs.Store(&next)
	sh.n--
	if sh.removed {
		return
	}
	b.metrics.locals.Dec()
	if sh.n == 0 {
		sh.linger = time.AfterFunc(b.cfg.Linger, func() { b.expire(sh) })
	}
}

// expire removes a shared queue whose linger passed with no subscriber:
// closing its channel cancels the consumer and RabbitMQ deletes the
// auto-delete queue.
func (b *Broker) expire(sh *shared) {
	b.mu.Lock()
	if sh.removed || sh.n > 0 {
		b.mu.Unlock()
		return
	}
	sh.removeLocked()
	if b.shared[sh.key] == sh {
		delete(b.shared, sh.key)
	}
	b.mu.Unlock()
	_ = sh.ch.Close()
}

// declare makes the broker side: a channel of its own (a refusal closes
// it and nothing else), prefetch, an exclusive auto-delete server-named
// queue, its binding and a manual-ack consumer.
func (sh *shared) declare() error {
	l := sh.l
	conn := l.connection()
	if conn == nil {
		return fmt.Errorf("%w: shared link %d is down", broker.ErrUnavailable, l.n)
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("%w: open channel: %w", broker.ErrUnavailable, err)
	}
	fail := func(err error) error {
		_ = ch.Close()
		return amqpError(err)
	}
	if err := ch.Qos(sh.b.cfg.Prefetch, 0, false); err != nil {
		return fail(err)
	}
	if !isAMQExchange(sh.key.exchange) {
		if err := ch.ExchangeDeclarePassive(sh.key.exchange, "topic", false, false, false, false, nil); err != nil {
			return fail(err)
		}
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return fail(err)
	}
	if err := ch.QueueBind(q.Name, sh.key.key, sh.key.exchange, false, nil); err != nil {
		// The exchange went away between the check and the bind: the
		// exclusive queue would stay until the link closes.
		if c2, err2 := conn.Channel(); err2 == nil {
			_, _ = c2.QueueDelete(q.Name, false, false, false)
			_ = c2.Close()
		}
		return fail(err)
	}
	dels, err := ch.Consume(q.Name, "stompgate-"+sh.id, false, true, false, false, nil)
	if err != nil {
		return fail(err)
	}
	sh.ch, sh.queue, sh.dels = ch, q.Name, dels
	return nil
}

// maxBatch bounds a read batch: the deliveries handed over before the
// touched sessions are flushed and the batch is acked.
const maxBatch = 256

// batchYields is how many times the reader yields to amqp091-go's
// delivery goroutine, finding nothing, before a batch ends.
const batchYields = 2

// read fans the queue's deliveries out to its local subscribers until the
// channel closes. Per batch (what amqp091-go has buffered, at most
// maxBatch) it calls Sink.Idle once for every session it touched and acks
// the batch with one multiple ack.
func (sh *shared) read() {
	var (
		batchNo uint64
		touched []*session
		enc     encoder
	)
	for {
		d, ok := <-sh.dels
		if !ok {
			sh.ended()
			return
		}
		batchNo++
		now := time.Now()
		last := d.DeliveryTag
		sh.deliver(&d, batchNo, now, &touched, &enc)
		// amqp091-go hands deliveries over an unbuffered channel from a
		// goroutine that queues what the socket brought: right after a
		// receive, that goroutine has not yet offered the next one even
		// when it holds many. Yield to it before deciding that the batch
		// is over, or every batch is one delivery and every session gets
		// a write system call per message.
		idle := 0
	drain:
		for n := 1; n < maxBatch; {
			select {
			case d, ok = <-sh.dels:
				if !ok {
					break drain
				}
				last = d.DeliveryTag
				sh.deliver(&d, batchNo, now, &touched, &enc)
				n++
				idle = 0
			default:
				if idle == batchYields {
					break drain
				}
				idle++
				runtime.Gosched()
			}
		}
		sh.b.flush(touched)
		clear(touched)
		touched = touched[:0]
		_ = sh.ch.Ack(last, true)
		if !ok {
			sh.ended()
			return
		}
	}
}

// ended runs when the consumer's channel closed: by expire, by a lost
// link (both took sh out already), or by the broker (queue deleted by an
// operator, consumer cancelled): then its subscribers are lost.
func (sh *shared) ended() {
	b := sh.b
	b.mu.Lock()
	if sh.removed {
		b.mu.Unlock()
		return
	}
	sh.removeLocked()
	if b.shared[sh.key] == sh {
		delete(b.shared, sh.key)
	}
	subs := sh.snapshot()
	b.mu.Unlock()
	err := fmt.Errorf("%w: the broker ended the shared subscription to %s", broker.ErrUnavailable, sh.destination(sh.key.exchange, sh.key.key))
	for _, ls := range subs {
		ls.s.lose(err)
	}
}

// destination is the destination header of sh's MESSAGEs for a delivery
// from exchange with routing key: the subscribed one for a routed queue,
// else RabbitMQ's.
func (sh *shared) destination(exchange, key string) string {
	if sh.key.dest != "" {
		return sh.key.dest
	}
	return formatDestination(exchange, key)
}

// deliver hands one delivery to every local subscriber.
func (sh *shared) deliver(d *amqp.Delivery, batchNo uint64, now time.Time, touched *[]*session, enc *encoder) {
	m := sh.b.metrics
	subs := sh.snapshot()
	if len(subs) == 0 {
		m.drops.WithLabelValues("no_subscriber").Inc()
		return
	}
	if len(d.Body) > sh.b.cfg.MaxFrameBytes {
		m.drops.WithLabelValues("too_large").Add(float64(len(subs)))
		err := fmt.Errorf("%w: a %d-byte message", broker.ErrFrameTooLarge, len(d.Body))
		for _, ls := range subs {
			ls.s.lose(err)
		}
		return
	}
	enc.reset(d, sh.id, sh.destination(d.Exchange, d.RoutingKey))
	n := 0
	for _, ls := range subs {
		if ls.s.dead.Load() {
			m.drops.WithLabelValues("session_closed").Inc()
			continue
		}
		data, binary := enc.frame(ls.v, ls.id)
		ls.s.sink.Deliver(broker.Frame{Data: data, Command: frame.MESSAGE, Binary: binary, Received: now})
		n++
		if ls.mark != batchNo {
			ls.mark = batchNo
			*touched = append(*touched, ls.s)
		}
	}
	m.deliveries.Add(float64(n))
}

// encoder builds a delivery's MESSAGE frames: the part after the
// per-subscription headers once per STOMP version, each whole frame once
// per (version, subscription id). Frames are shared by every session with
// the same pair, and never written to after they are handed over.
type encoder struct {
	d      *amqp.Delivery
	qid    string
	seq    uint64
	dest   string
	tails  [3][]byte          // by version (1.0, 1.1, 1.2): "redelivered:...\n<headers>content-length:N\n\n<body>\x00"
	frames []encoded          // the first few (version, id) pairs, searched in turn
	more   map[encKey]encoded // the rest, when sessions use many ids
}

type encKey struct {
	v  stomp.Version
	id string
}

type encoded struct {
	v      stomp.Version
	id     string
	data   []byte
	binary bool // not UTF-8: a binary WebSocket message
}

func (e *encoder) reset(d *amqp.Delivery, qid, dest string) {
	e.d, e.qid = d, qid
	e.seq++
	e.dest = dest
	e.tails = [3][]byte{}
	clear(e.frames)
	e.frames = e.frames[:0]
	if len(e.more) > 0 {
		e.more = nil
	}
}

// maxLinear is how many (version, id) pairs frame searches in turn before
// it keeps the rest in a map.
const maxLinear = 8

// frame returns the MESSAGE for a subscriber speaking v with subscription
// id, and whether it is not valid UTF-8 (decided here, once per encoding,
// not by every session): headers in RabbitMQ's order (subscription, destination, message-id,
// redelivered, custom headers, properties, content-length). The message
// id, "T_<id>@@<queue>@@<n>", is unique within a session as RabbitMQ's is.
func (e *encoder) frame(v stomp.Version, id string) ([]byte, bool) {
	for _, f := range e.frames {
		if f.v == v && f.id == id {
			return f.data, f.binary
		}
	}
	if f, ok := e.more[encKey{v, id}]; ok {
		return f.data, f.binary
	}
	tail := e.tail(v)
	seq := strconv.FormatUint(e.seq, 10)
	b := make([]byte, 0, 64+2*len(id)+len(e.dest)+len(e.qid)+len(seq)+len(tail))
	b = append(b, "MESSAGE\nsubscription:"...)
	b = appendValue(b, id, v)
	b = append(b, "\ndestination:"...)
	b = appendValue(b, e.dest, v)
	b = append(b, "\nmessage-id:T_"...)
	b = appendValue(b, id, v)
	b = append(b, "@@"...)
	b = append(b, e.qid...)
	b = append(b, "@@"...)
	b = append(b, seq...)
	b = append(b, '\n')
	b = append(b, tail...)
	f := encoded{v: v, id: id, data: b, binary: !utf8.Valid(b)}
	if len(e.frames) < maxLinear {
		e.frames = append(e.frames, f)
	} else {
		if e.more == nil {
			e.more = map[encKey]encoded{}
		}
		e.more[encKey{v, id}] = f
	}
	return b, f.binary
}

func (e *encoder) tail(v stomp.Version) []byte {
	i := max(0, min(int(v-stomp.V10), 2))
	if e.tails[i] != nil {
		return e.tails[i]
	}
	d := e.d
	t := make([]byte, 0, 256+len(d.Body))
	if d.Redelivered {
		t = append(t, "redelivered:true\n"...)
	} else {
		t = append(t, "redelivered:false\n"...)
	}
	t = appendMessageHeaders(t, d, v)
	t = append(t, "content-length:"...)
	t = strconv.AppendInt(t, int64(len(d.Body)), 10)
	t = append(t, "\n\n"...)
	t = append(t, d.Body...)
	t = append(t, 0)
	e.tails[i] = t
	return t
}

// flushChunk is the least number of touched sessions worth handing part
// of a flush to another goroutine.
const flushChunk = 64

// flush calls Sink.Idle for every session in touched: the in-place flush
// of each session's socket, a write system call each. With many sessions
// the calls are spread over the flushers (one per CPU but the caller's),
// so one shared queue's reader is not bound to one core; flush returns
// when all are done, so a batch is flushed before the next is read.
func (b *Broker) flush(touched []*session) {
	if len(touched) < 2*flushChunk || len(b.flushers) == 0 {
		for _, s := range touched {
			s.sink.Idle()
		}
		return
	}
	parts := min(len(b.flushers)+1, len(touched)/flushChunk)
	size := (len(touched) + parts - 1) / parts
	var wg sync.WaitGroup
	for i := 1; i < parts; i++ {
		part := touched[i*size : min((i+1)*size, len(touched))]
		wg.Add(1)
		select {
		case b.flushers[i-1] <- flushJob{sessions: part, wg: &wg}:
		case <-b.ctx.Done():
			for _, s := range part {
				s.sink.Idle()
			}
			wg.Done()
		}
	}
	for _, s := range touched[:size] {
		s.sink.Idle()
	}
	wg.Wait()
}

type flushJob struct {
	sessions []*session
	wg       *sync.WaitGroup
}

// flusher runs Idle for the jobs it is handed until the broker closes.
func (b *Broker) flusher(jobs <-chan flushJob) {
	defer b.wg.Done()
	for {
		select {
		case <-b.ctx.Done():
			return
		case j := <-jobs:
			for _, s := range j.sessions {
				s.sink.Idle()
			}
			j.wg.Done()
		}
	}
}
