package faults

import (
	"context"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/backoff"
	"github.com/stompgate/stompgate/internal/testenv"
)

// Scenario 4: a deploy drain. 2,000 clients and 5 producers on edge A,
// SIGTERM to A: its /readyz turns 503 at once; after EDGE_DRAIN_DELAY its
// sessions are closed with ERROR shutting_down spread over
// EDGE_DRAIN_PERIOD (no second above 2× the average close rate); every
// client reconnects, with jittered backoff, to edge B, which ends up with
// all of them subscribed; every SEND that got a RECEIPT (on A before the
// drain, on B after) reached RabbitMQ. Default shared links: the broker
// sees 2 connections per edge, whatever the client count.
func TestDeployDrain(t *testing.T) {
	longFaults(t)
	const (
		clients   = 2000
		producers = 5
		delay     = time.Second
		period    = 10 * time.Second
	)
	raiseFDLimit(t, 3*clients)
	vhost := testenv.Vhost(t)
	env := map[string]string{"EDGE_DRAIN_DELAY": delay.String(), "EDGE_DRAIN_PERIOD": period.String(), "EDGE_MAX_SESSIONS_PER_USER": "1000"}
	a := startEdgeProc(t, "edge-a", vhost, env)
	b := startEdgeProc(t, "edge-b", vhost, env)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// The tap: what reached RabbitMQ from the producers.
	conn := testenv.Dial(t, vhost)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("tap", false, false, true, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind("tap", "drain.p.#", "amq.topic", false, nil); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume("tap", "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var tapMu sync.Mutex
	tapped := map[string]bool{}
	go func() {
		for d := range deliveries {
			tapMu.Lock()
			tapped[string(d.Body)] = true
			tapMu.Unlock()
		}
	}()

	// The clients: subscribed on A; when A ends their session they go to
	// B. closedAt is when each got ERROR shutting_down.
	var (
		mu       sync.Mutex
		closedAt []time.Duration
		codes    = map[string]int{}
		onB      int
		gotAfter int
		sigterm  time.Time
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	connected := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			token := testenv.Token(t, "d-"+strconv.Itoa(i%100), nil)
			c, err := dial(ctx, a.url, token, dialOpts{})
			if err == nil {
				err = c.subscribe("s", "/topic/drain.all")
			}
			connected <- err
			if err != nil {
				return
			}
			f, _ := c.await(3*time.Minute, func(f *frame.Frame) bool { return f.Command == frame.ERROR }, nil)
			c.close()
			mu.Lock()
			codes[errorCode(f)]++
			if errorCode(f) == "shutting_down" {
				closedAt = append(closedAt, time.Since(sigterm))
			}
			mu.Unlock()
			bo := backoff.Backoff{Min: 50 * time.Millisecond, Max: 2 * time.Second}
			for bo.Sleep(ctx) {
				c, err = dial(ctx, b.url, token, dialOpts{})
				if err == nil {
					if err = c.subscribe("s", "/topic/drain.all"); err != nil {
						c.close()
					}
				}
				if err == nil {
					break
				}
			}
			if err != nil {
				return
			}
			defer c.close()
			mu.Lock()
			onB++
			mu.Unlock()
			if f, _ := c.await(time.Minute, func(f *frame.Frame) bool { return f.Command == frame.MESSAGE }, nil); f != nil && string(f.Body) == "after" {
				mu.Lock()
				gotAfter++
				mu.Unlock()
			}
			<-stop
		}()
		if i%50 == 49 {
			time.Sleep(20 * time.Millisecond) // connect at ~2,500/s, not all at once
		}
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	for range clients {
		if err := <-connected; err != nil {
			t.Fatal(err)
		}
	}

	// The producers: receipted SENDs, on A then on B.
	var pmu sync.Mutex
	receipted := map[string]bool{}
	stopProd := make(chan struct{})
	var pwg sync.WaitGroup
	for p := range producers {
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			token := testenv.Token(t, "producer-"+strconv.Itoa(p), nil)
			urls := []string{a.url, b.url}
			bo := backoff.Backoff{Min: 50 * time.Millisecond, Max: time.Second}
			n := 0
			for u := 0; ; {
				c, err := dial(ctx, urls[u], token, dialOpts{})
				if err != nil {
					u = 1 // A refuses: go to B
					if !bo.Sleep(ctx) {
						return
					}
					continue
				}
				for {
					select {
					case <-stopProd:
						c.close()
						return
					case <-time.After(50 * time.Millisecond):
					}
					id := fmt.Sprintf("p%d-%d", p, n)
					n++
					if c.sendBody(frame.SEND, []byte(id), frame.Destination, "/topic/drain.p."+strconv.Itoa(p), frame.Receipt, id) != nil {
						break
					}
					if f, err := c.await(10*time.Second, receiptFor(id), nil); err != nil || f.Command != frame.RECEIPT {
						break
					}
					pmu.Lock()
					receipted[id] = true
					pmu.Unlock()
				}
				c.close()
				u = 1
			}
		}()
	}
	testenv.WaitFor(t, 30*time.Second, func() error {
		if n := metric(t, a.addr, "stompgate_sessions_active"); n != clients+producers {
			return fmt.Errorf("%v sessions on A", n)
		}
		return nil
	})
	// The management API lists connections a few seconds late.
	var brokerConns int
	testenv.WaitFor(t, 30*time.Second, func() error {
		n, err := mgmtCount("/api/vhosts/" + url.PathEscape(vhost) + "/connections")
		if err != nil || n != 2*2+1 {
			return fmt.Errorf("%d broker connections in the vhost, want 2 links per edge and the tap: %v", n, err)
		}
		brokerConns = n
		return nil
	})
	time.Sleep(time.Second)

	mu.Lock()
	sigterm = time.Now()
	mu.Unlock()
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var notReady time.Duration
	testenv.WaitFor(t, 5*time.Second, func() error {
		if code, _ := a.ready(); code != 503 {
			return fmt.Errorf("A /readyz %d after SIGTERM", code)
		}
		notReady = time.Since(sigterm)
		return nil
	})
	if notReady > time.Second {
		t.Errorf("A's /readyz turned 503 %s after SIGTERM, want at once", notReady)
	}
	select {
	case <-a.done:
		if a.err != nil {
			t.Errorf("edge A exited with %v", a.err)
		}
	case <-time.After(delay + period + 30*time.Second):
		t.Fatal("edge A still running after its drain")
	}
	exited := time.Since(sigterm)
	testenv.WaitFor(t, 60*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if onB != clients {
			return fmt.Errorf("%d of %d clients back on B", onB, clients)
		}
		return nil
	})
	reconnected := time.Since(sigterm)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := metric(t, b.addr, "stompgate_sessions_active"); n != clients+producers {
			return fmt.Errorf("%v sessions on B", n)
		}
		return nil
	})
	if err := ch.Publish("amq.topic", "drain.all", false, false, amqp.Publishing{Body: []byte("after")}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if gotAfter != clients {
			return fmt.Errorf("%d of %d clients on B got the message published after the drain", gotAfter, clients)
		}
		return nil
	})
	time.Sleep(time.Second) // producers keep going on B
	close(stopProd)
	pwg.Wait()
	testenv.WaitFor(t, 10*time.Second, func() error {
		pmu.Lock()
		defer pmu.Unlock()
		tapMu.Lock()
		defer tapMu.Unlock()
		for id := range receipted {
			if !tapped[id] {
				return fmt.Errorf("receipted %s never reached RabbitMQ", id)
			}
		}
		return nil
	})

	mu.Lock()
	defer mu.Unlock()
	if codes["shutting_down"] != clients || len(codes) != 1 {
		t.Errorf("clients' session ends on A: %v, want %d shutting_down", codes, clients)
	}
	// Closes per second of the drain period, from the end of the delay.
	buckets := make([]int, int(period/time.Second)+2)
	var first, last time.Duration = math.MaxInt64, 0
	for _, at := range closedAt {
		first, last = min(first, at), max(last, at)
		if i := int((at - delay) / time.Second); i >= 0 && i < len(buckets) {
			buckets[i]++
		} else {
			t.Errorf("a close %s after SIGTERM, outside delay+period", at)
		}
	}
	avg := float64(len(closedAt)) / period.Seconds()
	peak := 0
	for _, n := range buckets {
		peak = max(peak, n)
	}
	if float64(peak) > 2*avg {
		t.Errorf("closes per second %s: peak %d above 2× the average %.0f", histogram(buckets), peak, avg)
	}
	pmu.Lock()
	defer pmu.Unlock()
	t.Logf("%d clients + %d producers on A over %d broker connections in the vhost (2 shared links per edge, 1 test tap); SIGTERM: /readyz 503 after %s, closes from %s to %s (per second: %s; average %.0f/s, peak %d), A exited after %s, all on B %s after SIGTERM",
		clients, producers, brokerConns, notReady.Round(time.Millisecond), first.Round(time.Millisecond), last.Round(time.Millisecond),
		histogram(buckets), avg, peak, exited.Round(100*time.Millisecond), reconnected.Round(100*time.Millisecond))
	t.Logf("%d receipted SENDs, all %d in RabbitMQ; the message published after the drain reached %d of %d clients on B",
		len(receipted), len(receipted), gotAfter, clients)
}
