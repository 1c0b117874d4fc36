package faults

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/revocation"
)

// Scenario 3: Postgres is down for 30 s under a steady flow (a private
// server the test stops; never the shared one). The persister pauses and
// resumes by itself and archives every message exactly once (row count ==
// receipted count, no duplicate message id, no dead letter); the edge keeps
// relaying the whole time (the live subscriber gets every message) and
// keeps refusing a subject revoked before the outage from its in-memory
// list, /readyz saying "stale" but staying 200.
func TestDatabaseOutage(t *testing.T) {
	longFaults(t)
	const (
		outage = 30 * time.Second
		rate   = 50 // SENDs per second, each awaited for its receipt
	)
	pg := testenv.StartPrivatePostgres(t)
	dbURL := testenv.DBOn(t, pg.Addr)
	vhost := testenv.Vhost(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	startProc(t, "persister", binary(t, "persister"), map[string]string{
		"PERSIST_AMQP_URL": testenv.AMQPURL(vhost), "PERSIST_DATABASE_URL": dbURL,
		"PERSIST_BINDINGS": "flow.#", "PERSIST_JOURNAL": "false", "PERSIST_METRICS_LISTEN": metricsAddr,
		"PERSIST_RETRY_MAX": "500ms", "PERSIST_SCHED_POLICY": "other",
	})
	e := startEdgeProc(t, "edge", vhost, map[string]string{"EDGE_DATABASE_URL": dbURL})
	testenv.WaitFor(t, 30*time.Second, func() error {
		m, err := metrics(metricsAddr)
		if err != nil {
			return err
		}
		if sum(m, "stompgate_persister_consuming") != 1 {
			return fmt.Errorf("persister not consuming yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := revocation.Revoke(ctx, pool, revocation.Row{Subject: "mallory", Reason: "faults test"}); err != nil {
		t.Fatal(err)
	}
	refused := func() error {
		_, err := dial(ctx, e.url, testenv.Token(t, "mallory", nil), dialOpts{})
		if de, ok := err.(*dialErr); !ok || de.code != "revoked" {
			return fmt.Errorf("mallory's CONNECT: %v, want ERROR revoked", err)
		}
		return nil
	}
	testenv.WaitFor(t, 10*time.Second, refused)

	sub := mustDial(t, ctx, e.url, testenv.Token(t, "reader", nil))
	if err := sub.subscribe("s", "/topic/flow.x"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	received := map[string]int{}
	subDone := make(chan struct{})
	go func() {
		defer close(subDone)
		for f := range sub.frames {
			if f.Command == frame.MESSAGE {
				mu.Lock()
				received[string(f.Body)]++
				mu.Unlock()
			}
		}
	}()
	receivedNow := func() int { mu.Lock(); defer mu.Unlock(); return len(received) }

	pub := mustDial(t, ctx, e.url, testenv.Token(t, "writer", nil))
	stopPub := make(chan struct{})
	pubDone := make(chan error, 1)
	var receipted sync.Map
	var nReceipted int64
	var countMu sync.Mutex
	go func() {
		tick := time.NewTicker(time.Second / rate)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				pubDone <- nil
				return
			case <-tick.C:
			}
			id := "f-" + strconv.Itoa(i)
			if err := pub.sendBody(frame.SEND, []byte(id), frame.Destination, "/topic/flow.x", frame.Receipt, id); err != nil {
				pubDone <- err
				return
			}
			f, err := pub.await(10*time.Second, receiptFor(id), nil)
			if err != nil || f.Command != frame.RECEIPT {
				pubDone <- fmt.Errorf("SEND %s: %v %v", id, f, err)
				return
			}
			receipted.Store(id, true)
			countMu.Lock()
			nReceipted++
			countMu.Unlock()
		}
	}()
	receiptedNow := func() int { countMu.Lock(); defer countMu.Unlock(); return int(nReceipted) }
	rows := func() (int, error) { return testenv.Count(ctx, pool, "SELECT count(*) FROM stompgate_messages") }
	testenv.WaitFor(t, 20*time.Second, func() error {
		if n, err := rows(); err != nil || n < 100 {
			return fmt.Errorf("%d rows, %v", n, err)
		}
		return nil
	})

	down := time.Now()
	pg.Stop(t)
	beforeDown := receiptedNow()
	testenv.WaitFor(t, 15*time.Second, func() error {
		if p := metric(t, metricsAddr, "stompgate_persister_paused"); p != 1 {
			return fmt.Errorf("persister paused=%v", p)
		}
		return nil
	})
	paused := time.Since(down)
	// Well into the outage: the edge relays, refuses mallory, is ready
	// with a stale list.
	time.Sleep(outage / 3)
	if err := refused(); err != nil {
		t.Error("during the outage:", err)
	}
	code, body := e.ready()
	if d := parseReady(body); code != 200 || d.Revocations != "stale" {
		t.Errorf("/readyz during the outage: %d %s, want 200 with revocations stale", code, body)
	}
	time.Sleep(time.Until(down.Add(outage)))
	duringRelayed := receivedNow()
	duringReceipted := receiptedNow() - beforeDown
	if duringReceipted < rate*int(outage/time.Second)/2 {
		t.Errorf("only %d SENDs receipted during the %s outage", duringReceipted, outage)
	}
	pg.Start(t)
	up := time.Now()
	testenv.WaitFor(t, 60*time.Second, func() error {
		if p := metric(t, metricsAddr, "stompgate_persister_paused"); p != 0 {
			return fmt.Errorf("persister paused=%v", p)
		}
		return nil
	})
	resumed := time.Since(up)
	time.Sleep(5 * time.Second) // the flow goes on after the outage
	close(stopPub)
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	total := receiptedNow()
	var caughtUp time.Duration
	testenv.WaitFor(t, 90*time.Second, func() error {
		n, err := rows()
		if err != nil || n < total {
			return fmt.Errorf("%d rows of %d, %v", n, total, err)
		}
		caughtUp = time.Since(up)
		return nil
	})
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := receivedNow(); n != total {
			return fmt.Errorf("subscriber received %d distinct of %d", n, total)
		}
		return nil
	})
	n, err := rows()
	if err != nil || n != total {
		t.Errorf("%d rows, want exactly %d: %v", n, total, err)
	}
	distinct, err := testenv.Count(ctx, pool, "SELECT count(DISTINCT message_id) FROM stompgate_messages")
	if err != nil || distinct != total {
		t.Errorf("%d distinct message ids, want %d: %v", distinct, total, err)
	}
	bodies, err := testenv.Count(ctx, pool, "SELECT count(DISTINCT body) FROM stompgate_messages")
	if err != nil || bodies != total {
		t.Errorf("%d distinct bodies, want %d: %v", bodies, total, err)
	}
	m, err := metrics(metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if dl := sum(m, "stompgate_persister_dead_letters_total"); dl != 0 {
		t.Errorf("%v dead letters", dl)
	}
	mu.Lock()
	dups := 0
	for _, k := range received {
		dups += k - 1
	}
	mu.Unlock()
	if dups != 0 {
		t.Errorf("the subscriber got %d duplicates", dups)
	}
	if err := refused(); err != nil {
		t.Error("after the outage:", err)
	}
	t.Logf("Postgres down %s: persister paused %s after the stop, resumed %s after the start, caught up (%d rows) %s after it",
		outage, paused.Round(10*time.Millisecond), resumed.Round(10*time.Millisecond), total, caughtUp.Round(10*time.Millisecond))
	t.Logf("%d SENDs receipted (%d during the outage), %d rows, %d distinct message ids, %d relayed live (%d by the end of the outage), 0 duplicates; mallory refused before, during and after",
		total, duringReceipted, n, distinct, total, duringRelayed)
}
