package amqplink

import (
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// nopSink counts deliveries and keeps the last frame, like an outbox
// queueing shared bytes.
type nopSink struct {
	n    int
	last []byte
}

func (k *nopSink) Deliver(f broker.Frame) { k.n++; k.last = f.Data }
func (k *nopSink) Receipt(string)         {}
func (k *nopSink) Lost(error)             {}
func (k *nopSink) Idle()                  {}

func benchShared(b *testing.B, subs int, id func(i int) string, versions []stomp.Version) (*shared, []*nopSink) {
	br := &Broker{cfg: Config{MaxFrameBytes: 16 << 20}, metrics: newMetrics(nil)}
	sh := &shared{b: br, id: "sq1"}
	var list []*localSub
	var sinks []*nopSink
	for i := range subs {
		k := &nopSink{}
		s := &session{b: br, sink: k}
		list = append(list, &localSub{s: s, id: id(i), v: versions[i%len(versions)], sh: sh})
		sinks = append(sinks, k)
	}
	sh.subs.Store(&list)
	return sh, sinks
}

func benchDelivery() amqp.Delivery {
	return amqp.Delivery{Exchange: "amq.topic", RoutingKey: "bench.room", ContentType: "application/json",
		Headers: amqp.Table{"x-user-id": "alice", "x-seq": int64(12345)}, Body: []byte(strings.Repeat("x", 256))}
}

// BenchmarkFanout hands one 256-byte delivery to 1000 local subscribers
// (one op = 1000 deliveries): every browser uses stompjs' "sub-0", all
// speak STOMP 1.2, or the three versions are mixed, or every session uses
// a different subscription id (the worst case: one encoding each).
func BenchmarkFanout(b *testing.B) {
	cases := []struct {
		name     string
		id       func(int) string
		versions []stomp.Version
	}{
		{"same-id/v12", func(int) string { return "sub-0" }, []stomp.Version{stomp.V12}},
		{"same-id/mixed-versions", func(int) string { return "sub-0" }, []stomp.Version{stomp.V10, stomp.V11, stomp.V12}},
		{"ids-per-session/v12", func(i int) string { return fmt.Sprintf("sub-%d", i) }, []stomp.Version{stomp.V12}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			sh, _ := benchShared(b, 1000, c.id, c.versions)
			d := benchDelivery()
			var touched []*session
			var enc encoder
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				sh.deliver(&d, uint64(i+1), time.Time{}, &touched, &enc)
				touched = touched[:0]
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/delivery")
		})
	}
}
