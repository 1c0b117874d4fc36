package amqplink

import (
	"errors"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// TestOrderAcrossTheSwitch: SENDs and a SUBSCRIBE on the shared side, then
// BEGIN, an ack:client subscription, a SEND in a transaction and COMMIT on
// the dedicated side; receipts come in frame order and deliveries in
// publish order.
func TestOrderAcrossTheSwitch(t *testing.T) {
	r := newRig(t, nil)
	s, rec := r.open(stomp.V12)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(send(t, s, "/topic/order.a", "r1", "a"))
	subscribe(t, s, "s1", "/topic/order.#", "r2")
	must(send(t, s, "/topic/order.b", "r3", "b"))
	must(s.Begin("tx1", "r4"))
	subscribe(t, s, "s2", "/queue/oq-"+testenv.Random(6), "r5", frame.Ack, "client")
	must(send(t, s, "/topic/order.c", "r6", "c", frame.Transaction, "tx1"))
	must(send(t, s, "/topic/order.d", "r7", "d"))
	must(s.Commit("tx1", "r8"))
	must(s.Flush())
	if r.b.Dedicated() != 1 {
		t.Fatalf("%d dedicated connections, want 1", r.b.Dedicated())
	}
	evs := rec.wait(t, "8 receipts and 3 messages", func(evs []event, lost error) bool {
		if lost != nil {
			t.Fatalf("lost: %v", lost)
		}
		return count(evs, frame.RECEIPT) == 8 && count(evs, frame.MESSAGE) == 3
	})
	var receipts, bodies []string
	for _, e := range evs {
		switch e.kind {
		case frame.RECEIPT:
			receipts = append(receipts, e.id)
		case frame.MESSAGE:
			bodies = append(bodies, string(e.f.Body))
		}
	}
	if fmt.Sprint(receipts) != "[r1 r2 r3 r4 r5 r6 r7 r8]" {
		t.Errorf("receipts in order %v", receipts)
	}
	// d was published outside the transaction, before COMMIT published c.
	if fmt.Sprint(bodies) != "[b d c]" {
		t.Errorf("deliveries in order %v", bodies)
	}
}

// TestIsolation: refused requests end only the session that made them;
// the link and its other sessions carry on.
func TestIsolation(t *testing.T) {
	r := newRig(t, func(c *Config) { c.Links = 1 })
	b, brec := r.open(stomp.V12)
	subscribe(t, b, "s", "/topic/iso", "r")
	brec.receipt(t, "r")

	var be *broker.Error
	a1, _ := r.open(stomp.V12)
	err := a1.Subscribe(broker.Subscription{ID: "x", Destination: "/exchange/nope/k", Ack: broker.AckAuto, Header: hdr("destination", "/exchange/nope/k", "id", "x")})
	if !errors.As(err, &be) || be.Message != "not_found" {
		t.Fatalf("subscribe to a missing exchange: %v", err)
	}
	a2, _ := r.open(stomp.V12)
	if err := send(t, a2, "/exchange/nope/k", "", "x"); !errors.As(err, &be) || be.Message != "not_found" {
		t.Fatalf("send to a missing exchange: %v", err)
	}
	a3, a3rec := r.open(stomp.V12)
	subscribe(t, a3, "q", "/amq/queue/missing-"+testenv.Random(6), "")
	if err := a3rec.lostErr(t); !errors.As(err, &be) {
		t.Fatalf("subscribe to a missing /amq/queue/: %v", err)
	}
	a4, _ := r.open(stomp.V12)
	if err := a4.Subscribe(broker.Subscription{ID: "d", Destination: "/topic/iso", Ack: broker.AckAuto, Header: hdr("destination", "/topic/iso", "id", "d")}); err != nil {
		t.Fatal(err)
	}
	if err := a4.Subscribe(broker.Subscription{ID: "d", Destination: "/topic/iso2", Ack: broker.AckAuto, Header: hdr("destination", "/topic/iso2", "id", "d")}); !errors.As(err, &be) {
		t.Fatalf("duplicated subscription id: %v", err)
	}

	if r.b.LinksUp() != 1 {
		t.Fatal("the link went down")
	}
	p, _ := r.open(stomp.V12)
	if err := send(t, p, "/topic/iso", "", "still here"); err != nil {
		t.Fatal(err)
	}
	if m := brec.messages(t, 1); string(m[0].Body) != "still here" {
		t.Fatalf("got %q", m[0].Body)
	}
	c, crec := r.open(stomp.V12)
	subscribe(t, c, "s", "/topic/iso.new", "r")
	crec.receipt(t, "r")
}

// TestDedicatedCap: past MaxDedicated the frame that needs a dedicated
// connection fails with broker.ErrBusy; shared work goes on.
func TestDedicatedCap(t *testing.T) {
	r := newRig(t, func(c *Config) { c.MaxDedicated = 1 })
	s1, _ := r.open(stomp.V12)
	if err := s1.Begin("t", ""); err != nil {
		t.Fatal(err)
	}
	s2, rec2 := r.open(stomp.V12)
	if err := s2.Begin("t", ""); !errors.Is(err, broker.ErrBusy) {
		t.Fatalf("second dedicated connection: %v, want ErrBusy", err)
	}
	subscribe(t, s2, "s", "/topic/cap", "r")
	rec2.receipt(t, "r")
	s1.Close()
	if err := s2.Begin("t", ""); err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
}

// TestLinkLoss: a link closed by the broker loses its sessions with
// broker.ErrUnavailable, Probe fails until it is back, and it reconnects
// by itself under its management UI name.
func TestLinkLoss(t *testing.T) {
	r := newRig(t, func(c *Config) { c.Links = 1 })
	name := "stompgate-edge test-" + r.vhost + " link 1"
	var conns []string
	waitFor(t, 10*time.Second, func() (err error) {
		conns, err = testenv.ConnectionNames(r.vhost, name)
		if err == nil && len(conns) != 1 {
			err = fmt.Errorf("connections named %q: %v", name, conns)
		}
		return err
	})
	s, rec := r.open(stomp.V12)
	subscribe(t, s, "s", "/topic/loss", "r")
	rec.receipt(t, "r")
	if err := testenv.Mgmt("DELETE", "/api/connections/"+url.PathEscape(conns[0]), nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := rec.lostErr(t); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("lost with %v", err)
	}
	waitFor(t, 15*time.Second, func() error {
		if n := testutil.ToFloat64(r.b.metrics.reconnected); n < 2 {
			return fmt.Errorf("link connected %v times", n)
		}
		return r.b.Probe(t.Context())
	})
	if r.b.SharedSubscriptions() != 0 {
		t.Fatalf("%d shared subscriptions survived the link", r.b.SharedSubscriptions())
	}
	s2, rec2 := r.open(stomp.V12)
	subscribe(t, s2, "s", "/topic/loss", "r")
	rec2.receipt(t, "r")
	if err := send(t, s2, "/topic/loss", "", "again"); err != nil {
		t.Fatal(err)
	}
	rec2.messages(t, 1)
}

// TestMoreSessionsThanBrokerSockets: 1000 sessions (a stock RabbitMQ has
// 832 sockets) subscribe and publish over two links; the broker sees two
// connections and ten queues, and stays healthy.
func TestMoreSessionsThanBrokerSockets(t *testing.T) {
	r := newRig(t, nil)
	const n = 1000
	recs := make([]*recorder, n)
	for i := range n {
		s, rec := r.open(stomp.V12)
		subscribe(t, s, "sub-0", fmt.Sprintf("/topic/many.%d", i%10), "")
		recs[i] = rec
	}
	last, lrec := r.open(stomp.V12)
	for k := range 10 {
		if err := send(t, last, fmt.Sprintf("/topic/many.%d", k), fmt.Sprintf("r%d", k), "hi"); err != nil {
			t.Fatal(err)
		}
	}
	for k := range 10 {
		lrec.receipt(t, fmt.Sprintf("r%d", k))
	}
	for _, rec := range recs {
		rec.messages(t, 1)
	}
	var conns []struct{ Name string }
	waitFor(t, 15*time.Second, func() error {
		// The management API lists connections once their stats arrive.
		if err := testenv.Mgmt("GET", "/api/vhosts/"+url.PathEscape(r.vhost)+"/connections", nil, &conns); err != nil {
			return err
		}
		if len(conns) < 2 {
			return fmt.Errorf("management API lists %d connections", len(conns))
		}
		return nil
	})
	if len(conns) >= 20 {
		t.Fatalf("%d broker connections for %d sessions", len(conns), n)
	}
	if qs := queues(t, r.vhost); len(qs) != 10 {
		t.Fatalf("%d broker queues, want 10", len(qs))
	}
	var health struct{ Status string }
	if err := testenv.Mgmt("GET", "/api/health/checks/alarms", nil, &health); err != nil || health.Status != "ok" {
		t.Fatalf("broker health: %v %+v", err, health)
	}
	t.Logf("%d sessions: %d broker connections, %d queues", n, len(conns), 10)
}
