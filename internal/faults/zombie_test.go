package faults

import (
	"context"
	"fmt"
	"net/url"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stompgate/stompgate/internal/testenv"
)

// Scenario 6: 500 clients that stop reading and heart-beating without
// closing (half-open: their sockets stay open, nobody reads or writes
// them, as with a phone that lost its radio or a paused process). The
// edge must close every one within 1.5× the negotiated heart-beat (SPEC
// §4), release their broker side (the management API's connections and
// queues of the vhost back to what they were before), and its goroutines
// and heap must come back to the baseline. The edge runs in the test
// process so that runtime.NumGoroutine and the heap measure it; the
// zombies' own sockets hold no goroutine.
// Not parallel: it counts the goroutines of the whole test process.
func TestZombiesAreClosedAndReleased(t *testing.T) {
	testenv.Integration(t)
	const (
		zombies   = 500
		topics    = 50 // shared subscriptions: one broker queue per topic
		dedicated = 20 // ack:client subscriptions: a broker connection and queue each
		heartBeat = 2 * time.Second
		limit     = heartBeat * 3 / 2
		// slack on the 1.5× bound: the edge's read deadline is set after
		// each read, 500 closes run on 2 shared cores, and the test polls.
		slack = 2 * time.Second
	)
	raiseFDLimit(t, 4*zombies)
	vhost := testenv.Vhost(t)
	e := startInprocEdge(t, vhost, map[string]string{"EDGE_HEARTBEAT": heartBeat.String(), "EDGE_MAX_SESSIONS_PER_USER": "1000"})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	queuesAPI, connsAPI := "/api/queues/"+url.PathEscape(vhost), "/api/vhosts/"+url.PathEscape(vhost)+"/connections"

	// Warm up the paths the zombies will use (shared and dedicated), let
	// it all end, then take the baseline.
	warm := mustDial(t, ctx, e.url, testenv.Token(t, "warm", nil))
	if err := warm.subscribe("a", "/topic/zombie.warm"); err != nil {
		t.Fatal(err)
	}
	if err := warm.subscribe("b", "/topic/zombie.warm.c", "ack", "client"); err != nil {
		t.Fatal(err)
	}
	warm.close()
	var baseConns, baseQueues int
	testenv.WaitFor(t, 30*time.Second, func() error {
		q, err := mgmtCount(queuesAPI)
		if err != nil {
			return err
		}
		c, err := mgmtCount(connsAPI)
		if err != nil {
			return err
		}
		if q != 0 || c != 2 || testutil.ToFloat64(e.metrics.SessionsActive) != 0 {
			return fmt.Errorf("%d queues, %d connections (want 0, the 2 shared links)", q, c)
		}
		baseConns, baseQueues = c, q
		return nil
	})
	runtime.GC()
	baseGoroutines, baseHeap := runtime.NumGoroutine(), heapInuse()

	// The zombies: connect, subscribe, heart-beat every second until
	// paused, then nothing.
	pause := make(chan struct{})
	var beating sync.WaitGroup
	clients := make([]*client, zombies)
	g := newGroup(16)
	for i := range clients {
		g.Go(func() error {
			c, err := dial(ctx, e.url, testenv.Token(t, fmt.Sprintf("zombie-%d", i%100), nil), dialOpts{heartBeat: heartBeat, noReader: true})
			if err != nil {
				return err
			}
			clients[i] = c
			sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
			defer scancel()
			if err := c.ws.Subscribe(sctx, "t", fmt.Sprintf("/topic/zombie.%d", i%topics)); err != nil {
				return err
			}
			if i < dedicated {
				if err := c.ws.Subscribe(sctx, "c", fmt.Sprintf("/topic/zombie.c.%d", i), "ack", "client"); err != nil {
					return err
				}
			}
			beating.Add(1)
			go func() {
				defer beating.Done()
				tick := time.NewTicker(heartBeat / 2)
				defer tick.Stop()
				for {
					select {
					case <-pause:
						return
					case <-tick.C:
						if err := c.ws.WriteHeartBeat(); err != nil {
							return
						}
					}
				}
			}()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.ws.Close()
			}
		}
	})
	var peakConns, peakQueues int
	testenv.WaitFor(t, 30*time.Second, func() error {
		q, _ := mgmtCount(queuesAPI)
		c, _ := mgmtCount(connsAPI)
		if q != baseQueues+topics+dedicated || c != baseConns+dedicated {
			return fmt.Errorf("%d queues, %d connections while the zombies are subscribed", q, c)
		}
		peakConns, peakQueues = c, q
		return nil
	})
	peakGoroutines, peakHeap := runtime.NumGoroutine(), heapInuse()
	if n := testutil.ToFloat64(e.metrics.SessionsActive); n != zombies {
		t.Fatalf("%v sessions before the pause, want %d", n, zombies)
	}

	close(pause)
	beating.Wait()
	paused := time.Now() // every zombie's last write is before this
	var closedAfter time.Duration
	testenv.WaitFor(t, limit+slack+5*time.Second, func() error {
		if n := testutil.ToFloat64(e.metrics.SessionsActive); n != 0 {
			return fmt.Errorf("%v zombie sessions still open %s after the pause", n, time.Since(paused))
		}
		closedAfter = time.Since(paused)
		return nil
	})
	if closedAfter > limit+slack {
		t.Errorf("the last zombie was closed %s after the pause, want within 1.5×%s + %s", closedAfter, heartBeat, slack)
	}
	closedByBeat := testutil.ToFloat64(e.metrics.SessionsClosed.WithLabelValues("heart-beat_timeout"))
	if closedByBeat != zombies {
		t.Errorf("%v sessions closed for heart-beat_timeout, want %d", closedByBeat, zombies)
	}

	// The broker side: the 20 dedicated connections and their queues, and
	// the 50 shared queues after their linger (2s), are gone.
	var releasedAfter time.Duration
	testenv.WaitFor(t, 30*time.Second, func() error {
		q, err := mgmtCount(queuesAPI)
		if err != nil {
			return err
		}
		c, err := mgmtCount(connsAPI)
		if err != nil {
			return err
		}
		if q != baseQueues || c != baseConns {
			return fmt.Errorf("%d queues, %d connections, want the baseline %d, %d", q, c, baseQueues, baseConns)
		}
		releasedAfter = time.Since(paused)
		return nil
	})

	// The edge's goroutines and heap: the zombies' sockets are closed on
	// our side too (they hold buffers in this process, no goroutine).
	for i, c := range clients {
		c.ws.Close()
		clients[i] = nil
	}
	const goroutineSlack = 2  // runtime/test bookkeeping that comes and goes
	const heapSlack = 4 << 20 // allocator fragmentation after 500 sessions
	var endGoroutines int
	var endHeap uint64
	testenv.WaitFor(t, 15*time.Second, func() error {
		runtime.GC()
		endGoroutines, endHeap = runtime.NumGoroutine(), heapInuse()
		if endGoroutines > baseGoroutines+goroutineSlack {
			return fmt.Errorf("%d goroutines, baseline %d", endGoroutines, baseGoroutines)
		}
		if endHeap > baseHeap+heapSlack {
			return fmt.Errorf("heap in use %d MiB, baseline %d MiB", endHeap>>20, baseHeap>>20)
		}
		return nil
	})
	t.Logf("%d zombies (%d dedicated): all closed %s after the pause (bound 1.5×%s = %s, +%s slack), %v by heart-beat_timeout",
		zombies, dedicated, closedAfter.Round(10*time.Millisecond), heartBeat, limit, slack, closedByBeat)
	t.Logf("broker: %d connections / %d queues at peak → %d / %d (baseline) %s after the pause",
		peakConns, peakQueues, baseConns, baseQueues, releasedAfter.Round(100*time.Millisecond))
	t.Logf("edge process: goroutines %d → %d → %d, heap in use %d → %d → %d MiB",
		baseGoroutines, peakGoroutines, endGoroutines, baseHeap>>20, peakHeap>>20, endHeap>>20)
}

func heapInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}
