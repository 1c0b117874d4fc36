package persist_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stompgate/stompgate/internal/testenv"
)

// BenchmarkStompgatePublish: 8 application connections, each in a closed
// loop of BEGIN; SELECT stompgate_publish(…); COMMIT, for a fixed time,
// on 100 streams (spread) and on one stream (hot). It reports committed
// transactions/s and the time from COMMIT returning to the application
// until the broadcast arrives at a subscriber of amq.topic (p50, p99).
//
//	go test -run '^$' -bench BenchmarkStompgatePublish -benchtime 1x ./persist/
func BenchmarkStompgatePublish(b *testing.B) {
	vhost, dbURL := testenv.Vhost(b), testenv.DB(b)
	startJournal(b, journalConfig(b, vhost, dbURL), true)
	for _, c := range []struct {
		name    string
		streams int
	}{{"spread", 100}, {"hot", 1}} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				tps, n, p50, p99 := benchPublish(b, vhost, dbURL, c.name, c.streams, 8, 10*time.Second)
				b.Logf("%-6s %3d streams, 8 connections: %6d tx, %7.0f tx/s  COMMIT→broadcast p50 %6.2f ms  p99 %6.2f ms",
					c.name, c.streams, n, tps, float64(p50.Microseconds())/1000, float64(p99.Microseconds())/1000)
			}
		})
	}
}

// benchPublish runs conns closed-loop publishers for d on streams streams
// named prefix.0…, then waits for every broadcast.
func benchPublish(b *testing.B, vhost, dbURL, prefix string, streams, conns int, d time.Duration) (tps float64, n int, p50, p99 time.Duration) {
	type key struct {
		stream string
		seq    int64
	}
	var mu sync.Mutex
	arrived := map[key]time.Time{}
	committed := map[key]time.Time{}

	ch, err := testenv.Dial(b, vhost).Channel()
	if err != nil {
		b.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, prefix+".#", "amq.topic", false, nil); err != nil {
		b.Fatal(err)
	}
	ds, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for m := range ds {
			now := time.Now()
			seq, _ := m.Headers["x-seq"].(int64)
			mu.Lock()
			if _, dup := arrived[key{m.RoutingKey, seq}]; !dup {
				arrived[key{m.RoutingKey, seq}] = now
			}
			mu.Unlock()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), d+60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, conns) // at most one per connection
	start := time.Now()
	for w := range conns {
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { conn.Close(context.Background()) })
		wg.Go(func() {
			for i := 0; time.Since(start) < d; i++ {
				stream := fmt.Sprintf("%s.%d", prefix, (w+i*conns)%streams)
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				var seq int64
				if err := tx.QueryRow(ctx, `SELECT stompgate_publish($1, $2::text, 'text/plain', '{"bench":"1"}', 'bench')`,
					stream, "a message from a transaction").Scan(&seq); err != nil {
					errs <- err
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
				now := time.Now()
				mu.Lock()
				committed[key{stream, seq}] = now
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	mu.Lock()
	n = len(committed)
	mu.Unlock()
	testenv.WaitFor(b, 60*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(arrived) < n {
			return fmt.Errorf("%d of %d broadcasts", len(arrived), n)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	lat := make([]time.Duration, 0, n)
	for k, c := range committed {
		a, ok := arrived[k]
		if !ok {
			b.Fatalf("%v committed, never broadcast", k)
		}
		lat = append(lat, max(a.Sub(c), 0)) // a broadcast may beat the COMMIT reply to the application
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return float64(n) / elapsed.Seconds(), n, lat[n/2], lat[n*99/100]
}
