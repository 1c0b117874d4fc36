package faults

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/backoff"
	"github.com/stompgate/stompgate/internal/testenv"
)

// Scenario 1: the broker restarts (rabbitmqctl stop_app / start_app) while
// a producer sends persistent messages to a durable queue and a consumer
// reads it with ack:client-individual, holding 10 deliveries unacked. On a
// private RabbitMQ node, so that it can run in make test.
//
//   - both clients get ERROR broker_unavailable (the producer rides a shared
//     AMQP link, the consumer a dedicated STOMP connection);
//   - /readyz turns 503, then 200 once the broker is back;
//   - both reconnect with jittered backoff (internal/backoff), the consumer
//     resubscribes;
//   - every SEND that got a RECEIPT is delivered to the consumer, the 10
//     held deliveries are delivered again, and the queue ends empty.
func TestBrokerRestartMidTraffic(t *testing.T) {
	testenv.Integration(t)
	const (
		queue    = "sg.restart"
		dest     = "/queue/" + queue
		first    = 50 // sent before the restart and delivered
		held     = 10 // of those, the last ones the consumer does not ack
		downtime = 3 * time.Second
	)
	rq := startPrivateRabbit(t)
	conn, err := amqp.Dial(rq.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	e := startEdgeProc(t, "edge", "/", map[string]string{
		"EDGE_BROKER_ADDRS": rq.StompAddr, "EDGE_BROKER_AMQP_URLS": rq.AMQPURL, "EDGE_BROKER_TIMEOUT": "2s",
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	cons := &restartConsumer{url: e.url, token: testenv.Token(t, "consumer", nil), dest: dest,
		hold: func(body string) bool {
			n, _ := strconv.Atoi(strings.TrimPrefix(body, "m-"))
			return n >= first-held && n < first
		},
		got: map[string]int{}, redelivered: map[string]bool{}, codes: map[string]int{}}
	prod := &restartProducer{url: e.url, token: testenv.Token(t, "producer", nil), dest: dest,
		receipted: map[string]bool{}, codes: map[string]int{}}
	consDone, prodDone := make(chan struct{}), make(chan struct{})
	stopCons, stopProd := make(chan struct{}), make(chan struct{})
	go func() { defer close(consDone); cons.run(ctx, stopCons) }()
	testenv.WaitFor(t, 20*time.Second, func() error {
		if cons.sessions() == 0 {
			return fmt.Errorf("consumer not subscribed")
		}
		return nil
	})
	go func() { defer close(prodDone); prod.run(ctx, stopProd, first) }()
	testenv.WaitFor(t, 20*time.Second, func() error {
		if n := cons.distinct(); n < first {
			return fmt.Errorf("consumer has %d of the first %d", n, first)
		}
		return nil
	})
	prod.unpause()
	time.Sleep(500 * time.Millisecond) // traffic flowing when the broker goes
	sentBefore := prod.receiptedCount()

	t0 := time.Now()
	rq.stopApp(t)
	stopped := time.Since(t0)
	testenv.WaitFor(t, 15*time.Second, func() error {
		if code, _ := e.ready(); code != 503 {
			return fmt.Errorf("/readyz %d while the broker is stopped", code)
		}
		return nil
	})
	readyDown := time.Since(t0)
	time.Sleep(downtime)
	t1 := time.Now()
	rq.startApp(t)
	started := time.Since(t1)
	testenv.WaitFor(t, 30*time.Second, func() error {
		if code, body := e.ready(); code != 200 {
			return fmt.Errorf("/readyz %d %s after the broker came back", code, body)
		}
		return nil
	})
	readyUp := time.Since(t1)
	testenv.WaitFor(t, 30*time.Second, func() error {
		if cons.sessions() < 2 || prod.receiptedCount() < sentBefore+20 {
			return fmt.Errorf("consumer sessions %d, producer receipts %d", cons.sessions(), prod.receiptedCount())
		}
		return nil
	})
	reconnected := time.Since(t1)
	close(stopProd)
	<-prodDone

	receipted := prod.receiptedIDs()
	testenv.WaitFor(t, 30*time.Second, func() error {
		missing := 0
		for _, id := range receipted {
			if cons.count(id) == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d receipted messages not delivered", missing, len(receipted))
		}
		for i := first - held; i < first; i++ {
			if cons.count("m-"+strconv.Itoa(i)) < 2 {
				return fmt.Errorf("held m-%d not redelivered", i)
			}
		}
		return nil
	})
	close(stopCons)
	<-consDone
	testenv.WaitFor(t, 10*time.Second, func() error {
		conn, err := amqp.Dial(rq.AMQPURL)
		if err != nil {
			return err
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		if err != nil {
			return err
		}
		if q.Messages != 0 {
			return fmt.Errorf("%d messages left in %s", q.Messages, queue)
		}
		return nil
	})

	cons.mu.Lock()
	defer cons.mu.Unlock()
	prod.mu.Lock()
	defer prod.mu.Unlock()
	if cons.codes["broker_unavailable"] == 0 || prod.codes["broker_unavailable"] == 0 {
		t.Errorf("ERROR codes seen: consumer %v, producer %v; want broker_unavailable for both", cons.codes, prod.codes)
	}
	for code := range cons.codes {
		if code != "broker_unavailable" && code != "closed" {
			t.Errorf("consumer saw %q", code)
		}
	}
	for code := range prod.codes {
		if code != "broker_unavailable" && code != "closed" {
			t.Errorf("producer saw %q", code)
		}
	}
	heldRedelivered := 0
	for i := first - held; i < first; i++ {
		if cons.redelivered["m-"+strconv.Itoa(i)] {
			heldRedelivered++
		}
	}
	dups := 0
	for _, n := range cons.got {
		dups += n - 1
	}
	lostUnreceipted := 0
	for i := 0; i < prod.sent; i++ {
		if id := "m-" + strconv.Itoa(i); !prod.receipted[id] && cons.got[id] == 0 {
			lostUnreceipted++
		}
	}
	t.Logf("stop_app took %s, /readyz 503 %s after it began; down %s; start_app took %s, /readyz 200 %s and both clients back %s after it began",
		stopped.Round(10*time.Millisecond), readyDown.Round(10*time.Millisecond), downtime,
		started.Round(10*time.Millisecond), readyUp.Round(10*time.Millisecond), reconnected.Round(10*time.Millisecond))
	t.Logf("producer: %d SENDs, %d receipted, %d unreceipted (in flight at the stop; %d of them never delivered), errors %v",
		prod.sent, len(prod.receipted), prod.sent-len(prod.receipted), lostUnreceipted, prod.codes)
	t.Logf("consumer: %d sessions, %d distinct messages (every receipted one), %d deliveries more than once (%d held, %d of them flagged redelivered), errors %v",
		cons.nSessions, len(cons.got), dups, held, heldRedelivered, cons.codes)
}

// restartConsumer reads dest with ack:client-individual across
// reconnections, acking everything but the first delivery of messages
// hold selects.
type restartConsumer struct {
	url, token, dest string
	hold             func(body string) bool

	mu          sync.Mutex
	nSessions   int
	got         map[string]int // body → deliveries
	redelivered map[string]bool
	codes       map[string]int // ERROR codes and "closed" for a socket that ended without one
}

func (c *restartConsumer) sessions() int { c.mu.Lock(); defer c.mu.Unlock(); return c.nSessions }
func (c *restartConsumer) distinct() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.got) }
func (c *restartConsumer) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[id]
}

func (c *restartConsumer) run(ctx context.Context, stop <-chan struct{}) {
	bo := backoff.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	for {
		select {
		case <-stop:
			return
		default:
		}
		if c.session(ctx, stop) {
			bo.Reset()
		}
		if !bo.Sleep(ctx) {
			return
		}
	}
}

// session runs one connection; it reports whether it got subscribed.
func (c *restartConsumer) session(ctx context.Context, stop <-chan struct{}) bool {
	cl, err := dial(ctx, c.url, c.token, dialOpts{})
	if err == nil {
		err = cl.subscribe("q", c.dest, "ack", "client-individual")
		if err != nil {
			cl.close()
		}
	}
	if err != nil {
		c.note(err)
		return false
	}
	defer cl.close()
	c.mu.Lock()
	c.nSessions++
	c.mu.Unlock()
	for {
		select {
		case <-stop:
			return true
		case f, ok := <-cl.frames:
			if !ok {
				c.note(nil)
				return true
			}
			switch f.Command {
			case frame.ERROR:
				c.note(&dialErr{code: errorCode(f)})
				return true
			case frame.MESSAGE:
				body := string(f.Body)
				c.mu.Lock()
				c.got[body]++
				n := c.got[body]
				if f.Header.Get("redelivered") == "true" {
					c.redelivered[body] = true
				}
				c.mu.Unlock()
				if n == 1 && c.hold(body) {
					continue
				}
				_ = cl.send(frame.ACK, frame.Id, f.Header.Get(frame.Ack))
			}
		}
	}
}

func (c *restartConsumer) note(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.codes[codeOf(err)]++
}

// codeOf names a session's end: its x-error-code, or "closed".
func codeOf(err error) string {
	if de, ok := err.(*dialErr); ok && de.code != "" {
		return de.code
	}
	if de, ok := err.(*dialErr); ok && de.status != 0 {
		return "http_" + strconv.Itoa(de.status)
	}
	return "closed"
}

// restartProducer sends persistent messages m-0, m-1, ... to dest, each
// with a receipt awaited before the next, reconnecting with backoff. It
// sends `first` messages, waits for unpause, then goes on until stopped.
type restartProducer struct {
	url, token, dest string

	mu        sync.Mutex
	sent      int
	receipted map[string]bool
	codes     map[string]int
	resume    chan struct{}
	once      sync.Once
}

func (p *restartProducer) unpause() { p.init(); p.once.Do(func() { close(p.resume) }) }

func (p *restartProducer) init() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume == nil {
		p.resume = make(chan struct{})
	}
}

func (p *restartProducer) receiptedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.receipted)
}

func (p *restartProducer) receiptedIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []string
	for id := range p.receipted {
		ids = append(ids, id)
	}
	return ids
}

func (p *restartProducer) run(ctx context.Context, stop <-chan struct{}, first int) {
	p.init()
	bo := backoff.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	for {
		cl, err := dial(ctx, p.url, p.token, dialOpts{})
		if err != nil {
			p.note(err)
			if !bo.Sleep(ctx) {
				return
			}
			continue
		}
		bo.Reset()
		end := p.session(cl, stop, first)
		cl.close()
		if end == nil {
			return
		}
		p.note(end)
		if !bo.Sleep(ctx) {
			return
		}
	}
}

// session sends until stop (nil) or the session ends (its error).
func (p *restartProducer) session(cl *client, stop <-chan struct{}, first int) error {
	for {
		p.mu.Lock()
		i := p.sent
		p.mu.Unlock()
		if i == first {
			select {
			case <-p.resume:
			case <-stop:
				return nil
			}
		}
		select {
		case <-stop:
			return nil
		default:
		}
		id := "m-" + strconv.Itoa(i)
		p.mu.Lock()
		p.sent++
		p.mu.Unlock()
		if err := cl.sendBody(frame.SEND, []byte(id), frame.Destination, p.dest, "persistent", "true", frame.Receipt, id); err != nil {
			return &dialErr{err: err}
		}
		f, err := cl.await(10*time.Second, receiptFor(id), nil)
		if err != nil {
			return &dialErr{err: err}
		}
		if f.Command == frame.ERROR {
			return &dialErr{code: errorCode(f)}
		}
		p.mu.Lock()
		p.receipted[id] = true
		p.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *restartProducer) note(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.codes[codeOf(err)]++
}
