package persist_test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/testenv"
)

// benchFlow publishes n messages over 100 streams to exchange (with
// publisher confirms, at rate msgs/s when rate > 0) and receives them from
// amq.topic; it reports msgs/s end to end and the publish→receive p99.
func benchFlow(b *testing.B, vhost, exchange string, n, rate int) (perSec float64, p50, p99 time.Duration) {
	conn := testenv.Dial(b, vhost)
	sub, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	q, err := sub.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := sub.QueueBind(q.Name, "bench.#", "amq.topic", false, nil); err != nil {
		b.Fatal(err)
	}
	ds, err := sub.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	pub, err := testenv.Dial(b, vhost).Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := pub.Confirm(false); err != nil {
		b.Fatal(err)
	}
	confirms := pub.NotifyPublish(make(chan amqp.Confirmation, n+1)) // one per publish, never blocks
	lat := make([]time.Duration, 0, n)
	run := testenv.Random(8) // message ids unique per run: no duplicates
	var wg sync.WaitGroup
	wg.Go(func() {
		for d := range ds {
			sent, _ := time.Parse(time.RFC3339Nano, d.Headers["sent"].(string))
			lat = append(lat, time.Since(sent))
			if len(lat) == n {
				return
			}
		}
	})
	start := time.Now()
	for i := range n {
		if rate > 0 {
			if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
				time.Sleep(d)
			}
		}
		err := pub.PublishWithContext(context.Background(), exchange, fmt.Sprintf("bench.%d", i%100), false, false, amqp.Publishing{
			MessageId: fmt.Sprint(run, "-", i), Headers: amqp.Table{"x-user-id": "bench", "sent": time.Now().Format(time.RFC3339Nano)},
			ContentType: "text/plain", Body: []byte(fmt.Sprintf("message %d with some text in it", i))})
		if err != nil {
			b.Fatal(err)
		}
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(120 * time.Second):
		b.Fatalf("received %d of %d", len(lat), n)
	}
	elapsed := time.Since(start)
	for range n {
		<-confirms
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return float64(n) / elapsed.Seconds(), lat[n/2], lat[n*99/100]
}

// BenchmarkJournal: throughput over 100 streams (publish as fast as
// confirms allow) and latency at 500 msg/s, through the journal and, for
// reference, straight through amq.topic in the same run. Each case is a
// sub-benchmark: -bench 'BenchmarkJournal/500' runs the latency pair only.
//
//	go test -run '^$' -bench BenchmarkJournal -benchtime 1x ./persist/
func BenchmarkJournal(b *testing.B) {
	vhost, dbURL := testenv.Vhost(b), testenv.DB(b)
	startJournal(b, journalConfig(b, vhost, dbURL), true)
	for _, c := range []struct {
		name     string
		exchange string
		n, rate  int
	}{
		{"max/reference", "amq.topic", 20000, 0},
		{"max/journal", "stompgate.ingest", 20000, 0},
		{"500/reference", "amq.topic", 10000, 500},
		{"500/journal", "stompgate.ingest", 10000, 500},
	} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				rate, p50, p99 := benchFlow(b, vhost, c.exchange, c.n, c.rate)
				b.Logf("%-16s %6d msgs: %8.0f msg/s  p50 %6.2f ms  p99 %6.2f ms", c.name, c.n, rate,
					float64(p50.Microseconds())/1000, float64(p99.Microseconds())/1000)
			}
		})
	}
}
