package amqplink

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/relay/broker/stompconn"
	"github.com/stompgate/stompgate/stomp"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// recorder is a broker.Sink that keeps what it is given, parsed.
type recorder struct {
	mu     sync.Mutex
	events []event
	idles  int
	lost   error
	cond   chan struct{} // signalled on every event
	v      stomp.Version
}

type event struct {
	kind string // MESSAGE, RECEIPT
	f    *frame.Frame
	id   string // receipt id
}

func newRecorder(v stomp.Version) *recorder {
	return &recorder{cond: make(chan struct{}, 1), v: v}
}

func (r *recorder) poke() {
	select {
	case r.cond <- struct{}{}:
	default:
	}
}

func (r *recorder) Deliver(d broker.Frame) {
	data, command := d.Data, d.Command
	p := stomp.NewParser(stomp.Limits{MaxFrameBytes: 32 << 20, MaxHeaders: 10000, MaxHeaderBytes: 1 << 20}, stomp.ServerCommands)
	p.Version = r.v
	p.Feed(data)
	f, err := p.Next()
	if err != nil || f == nil {
		panic(fmt.Sprintf("undecodable delivery %q: %v", data, err))
	}
	f.Body = append([]byte(nil), f.Body...)
	r.mu.Lock()
	r.events = append(r.events, event{kind: command, f: f})
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) Receipt(id string) {
	r.mu.Lock()
	r.events = append(r.events, event{kind: frame.RECEIPT, id: id})
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) Lost(err error) {
	r.mu.Lock()
	if r.lost == nil {
		r.lost = err
	}
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) Idle() {
	r.mu.Lock()
	r.idles++
	r.mu.Unlock()
}

// wait polls until cond holds on the events, failing after timeout.
func (r *recorder) wait(t *testing.T, what string, cond func(evs []event, lost error) bool) []event {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		evs := slices.Clone(r.events)
		lost := r.lost
		r.mu.Unlock()
		if cond(evs, lost) {
			return evs
		}
		select {
		case <-r.cond:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s; have %d events, lost=%v", what, len(evs), lost)
		}
	}
}

func (r *recorder) messages(t *testing.T, n int) []*frame.Frame {
	t.Helper()
	evs := r.wait(t, fmt.Sprintf("%d messages", n), func(evs []event, lost error) bool {
		if lost != nil {
			t.Fatalf("lost: %v", lost)
		}
		return count(evs, frame.MESSAGE) >= n
	})
	var out []*frame.Frame
	for _, e := range evs {
		if e.kind == frame.MESSAGE {
			out = append(out, e.f)
		}
	}
	return out
}

func (r *recorder) receipt(t *testing.T, id string) {
	t.Helper()
	r.wait(t, "receipt "+id, func(evs []event, lost error) bool {
		if lost != nil {
			t.Fatalf("lost while waiting for receipt %s: %v", id, lost)
		}
		return slices.ContainsFunc(evs, func(e event) bool { return e.kind == frame.RECEIPT && e.id == id })
	})
}

func (r *recorder) lostErr(t *testing.T) error {
	t.Helper()
	r.wait(t, "loss", func(_ []event, lost error) bool { return lost != nil })
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lost
}

func count(evs []event, kind string) int {
	n := 0
	for _, e := range evs {
		if e.kind == kind {
			n++
		}
	}
	return n
}

// rig is a shared-link broker on a vhost of its own.
type rig struct {
	t     *testing.T
	vhost string
	b     *Broker
	reg   *prometheus.Registry
}

func dedicatedBroker(vhost string) *stompconn.Broker {
	return stompconn.New(stompconn.Config{Addrs: []string{testenv.StompAddr}, Login: "guest", Passcode: "guest",
		Vhost: vhost, Heartbeat: 10 * time.Second, Timeout: 5 * time.Second, MaxFrameBytes: 16 << 20})
}

func newRig(t *testing.T, adjust func(*Config)) *rig {
	t.Helper()
	vhost := testenv.Vhost(t)
	reg := prometheus.NewRegistry()
	cfg := Config{
		URLs: []string{testenv.AMQPURL(vhost)}, Links: 2, MaxDedicated: 10, Dedicated: dedicatedBroker(vhost),
		Name: "test-" + vhost, Linger: 200 * time.Millisecond, Timeout: 5 * time.Second, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if adjust != nil {
		adjust(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	waitFor(t, 10*time.Second, func() error {
		if n := b.LinksUp(); n != cfg.Links {
			return fmt.Errorf("%d of %d links up", n, cfg.Links)
		}
		return nil
	})
	return &rig{t: t, vhost: vhost, b: b, reg: reg}
}

// open attaches a session with a recorder sink.
func (r *rig) open(v stomp.Version) (broker.Session, *recorder) {
	r.t.Helper()
	rec := newRecorder(v)
	s, err := r.b.Open(context.Background(), broker.SessionInfo{ID: testenv.Random(8), Subject: "u", Version: v}, rec)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { s.Close() })
	return s, rec
}

// testWriter sends the broker's log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func waitFor(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hdr(kv ...string) *frame.Header {
	h := frame.NewHeader()
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func subscribe(t *testing.T, s broker.Session, id, dest, receipt string, extra ...string) {
	t.Helper()
	h := hdr(append([]string{frame.Id, id, frame.Destination, dest}, extra...)...)
	if receipt != "" {
		h.Add(frame.Receipt, receipt)
	}
	mode, _ := broker.ParseAckMode(h.Get(frame.Ack))
	if err := s.Subscribe(broker.Subscription{ID: id, Destination: dest, Ack: mode, Receipt: receipt, Header: h}); err != nil {
		t.Fatalf("subscribe %s: %v", dest, err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
}

func send(t *testing.T, s broker.Session, dest, receipt, body string, extra ...string) error {
	t.Helper()
	h := hdr(append([]string{frame.Destination, dest}, extra...)...)
	if receipt != "" {
		h.Add(frame.Receipt, receipt)
	}
	err := s.Send(broker.Message{Destination: dest, Receipt: receipt, Transaction: h.Get(frame.Transaction), Header: h, Body: []byte(body)})
	if err == nil {
		err = s.Flush()
	}
	return err
}

// queues lists the vhost's queues (management API).
func queues(t *testing.T, vhost string) []string {
	t.Helper()
	var qs []struct {
		Name string `json:"name"`
	}
	if err := testenv.Mgmt("GET", "/api/queues/"+url.PathEscape(vhost), nil, &qs); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, q := range qs {
		out = append(out, q.Name)
	}
	return out
}

func amqpPublish(t *testing.T, vhost, exchange, key string, p amqp.Publishing) {
	t.Helper()
	conn := testenv.Dial(t, vhost)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Publish(exchange, key, false, false, p); err != nil {
		t.Fatal(err)
	}
}

func TestSharedFanoutOneQueuePerDestination(t *testing.T) {
	r := newRig(t, nil)
	var recs []*recorder
	for i := range 5 {
		v := []stomp.Version{stomp.V10, stomp.V11, stomp.V12}[i%3]
		s, rec := r.open(v)
		subscribe(t, s, "sub-0", "/topic/chat.room1", "r")
		rec.receipt(t, "r")
		recs = append(recs, rec)
	}
	if n := r.b.SharedSubscriptions(); n != 1 {
		t.Fatalf("%d shared subscriptions, want 1", n)
	}
	waitFor(t, 10*time.Second, func() error {
		if qs := queues(t, r.vhost); len(qs) != 1 {
			return fmt.Errorf("broker queues %v, want exactly one", qs)
		}
		return nil
	})
	s, _ := r.open(stomp.V12)
	for i := range 3 {
		if err := send(t, s, "/topic/chat.room1", "", fmt.Sprintf("m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, rec := range recs {
		ms := rec.messages(t, 3)
		ids := map[string]bool{}
		for i, m := range ms[:3] {
			if string(m.Body) != fmt.Sprintf("m%d", i) || m.Header.Get("subscription") != "sub-0" || m.Header.Get("destination") != "/topic/chat.room1" {
				t.Fatalf("message %d: %v %q", i, m.Header, m.Body)
			}
			ids[m.Header.Get(frame.MessageId)] = true
		}
		if len(ids) != 3 {
			t.Fatalf("message ids not unique within a session: %v", ids)
		}
	}
}

func TestLingerThenRemove(t *testing.T) {
	r := newRig(t, func(c *Config) { c.Linger = 300 * time.Millisecond })
	s, rec := r.open(stomp.V12)
	subscribe(t, s, "a", "/topic/linger", "r1")
	rec.receipt(t, "r1")
	if err := s.Unsubscribe("a", "r2"); err != nil {
		t.Fatal(err)
	}
	rec.receipt(t, "r2")
	// A reload: back within the linger, same queue.
	subscribe(t, s, "b", "/topic/linger", "r3")
	rec.receipt(t, "r3")
	if n := r.b.SharedSubscriptions(); n != 1 {
		t.Fatalf("%d shared subscriptions", n)
	}
	if err := s.Unsubscribe("b", ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if n := r.b.SharedSubscriptions(); n != 0 {
			return fmt.Errorf("%d shared subscriptions left", n)
		}
		if qs := queues(t, r.vhost); len(qs) != 0 {
			return fmt.Errorf("broker queues left: %v", qs)
		}
		return nil
	})
}

func TestSendReceiptAfterConfirmAndMapping(t *testing.T) {
	r := newRig(t, nil)
	conn := testenv.Dial(t, r.vhost)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "map.#", "amq.topic", false, nil); err != nil {
		t.Fatal(err)
	}
	dels, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	s, rec := r.open(stomp.V12)
	if err := send(t, s, "/topic/map.a", "r1", "hello", "content-type", "text/plain", "persistent", "true",
		"priority", "4", "correlation-id", "c1", "expiration", "60000", "amqp-message-id", "m1", "timestamp", "123",
		"type", "tt", "content-encoding", "gzip", "x-user-id", "u1", "foo", "bar", "content-length", "5"); err != nil {
		t.Fatal(err)
	}
	rec.receipt(t, "r1")
	select {
	case d := <-dels:
		want := amqp.Table{"content-length": "5", "foo": "bar", "receipt": "r1", "x-user-id": "u1"}
		if d.ContentType != "text/plain" || d.DeliveryMode != 2 || d.Priority != 4 || d.CorrelationId != "c1" ||
			d.Expiration != "60000" || d.MessageId != "m1" || d.Timestamp.Unix() != 123 || d.Type != "tt" ||
			d.ContentEncoding != "gzip" || fmt.Sprint(d.Headers) != fmt.Sprint(want) || string(d.Body) != "hello" || d.RoutingKey != "map.a" {
			t.Fatalf("published %+v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing published")
	}
}
