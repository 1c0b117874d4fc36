package amqplink

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/relay/broker"
	"github.com/stompgate/stompgate/stomp"
)

// headerLines are a frame's headers as sorted "name:value" lines, without
// those that may differ per path (message-id, ack).
func headerLines(f *frame.Frame) []string {
	var out []string
	for i := 0; i < f.Header.Len(); i++ {
		k, v := f.Header.GetAt(i)
		if k == frame.MessageId || k == frame.Ack {
			continue
		}
		out = append(out, k+":"+v)
	}
	slices.Sort(out)
	return out
}

func diffFrames(t *testing.T, what string, want, got *frame.Frame) {
	t.Helper()
	w, g := headerLines(want), headerLines(got)
	if !slices.Equal(w, g) || string(want.Body) != string(got.Body) {
		t.Errorf("%s differs\n RabbitMQ STOMP: %q body %q\n shared link:    %q body %q", what, w, want.Body, g, got.Body)
	}
}

// TestDifferentialAgainstRabbitMQSTOMP publishes from RabbitMQ's own STOMP
// adapter and from AMQP (every property, custom headers of every type) and
// receives each message through a dedicated STOMP connection (RabbitMQ's
// mapping) and through a shared link: the frames must be the same, header
// by header, for every STOMP version. Then the same SENDs go through the
// shared link's publisher and must arrive as RabbitMQ's STOMP adapter
// publishes them.
func TestDifferentialAgainstRabbitMQSTOMP(t *testing.T) {
	r := newRig(t, nil)
	ded := dedicatedBroker(r.vhost)
	type pair struct {
		v              stomp.Version
		direct, shared *recorder
	}
	var pairs []pair
	for _, v := range []stomp.Version{stomp.V10, stomp.V11, stomp.V12} {
		drec := newRecorder(v)
		ds, err := ded.Open(context.Background(), broker.SessionInfo{ID: "direct", Version: v}, drec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ds.Close() })
		subscribe(t, ds, "sub-0", "/topic/diff.#", "r")
		drec.receipt(t, "r")
		ss, srec := r.open(v)
		subscribe(t, ss, "sub-0", "/topic/diff.#", "r")
		srec.receipt(t, "r")
		pairs = append(pairs, pair{v, drec, srec})
	}

	stompHeaders := []string{"content-type", "text/plain", "persistent", "true", "priority", "4",
		"correlation-id", "c1", "expiration", "60000", "amqp-message-id", "m1", "timestamp", "123", "type", "tt",
		"content-encoding", "gzip", "x-user-id", "u1", "foo", "bar", "x-a:b", "v\nw\\z", "reply-to", "/topic/reply", "content-length", "5"}
	// 1. From RabbitMQ's STOMP adapter.
	pub, prec := func() (broker.Session, *recorder) {
		rec := newRecorder(stomp.V12)
		s, err := ded.Open(context.Background(), broker.SessionInfo{ID: "pub", Version: stomp.V12}, rec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s, rec
	}()
	if err := send(t, pub, "/topic/diff.stomp", "p1", "hello", stompHeaders...); err != nil {
		t.Fatal(err)
	}
	prec.receipt(t, "p1")
	// 2. From AMQP, with every property and typed headers.
	amqpPublish(t, r.vhost, "amq.topic", "diff.amqp/x%", amqp.Publishing{
		ContentType: "application/json", ContentEncoding: "br", DeliveryMode: 2, Priority: 3, CorrelationId: "c",
		ReplyTo: "rq", Expiration: "5000", MessageId: "mid", Timestamp: time.Unix(1700000000, 0), Type: "t",
		AppId: "app", UserId: "guest", Body: []byte(`{"a":1}`),
		Headers: amqp.Table{"s": "str", "i32": int32(-5), "i64": int64(1) << 40, "i16": int16(3), "b": true,
			"f": 1.5, "bytes": []byte("x"), "tbl": amqp.Table{"a": "b"}, "arr": []any{"a"}, "u8": uint8(1),
			"ts": time.Unix(5, 0), "dec": amqp.Decimal{Scale: 1, Value: 5}, "nil": nil, "x-seq": int64(42), "content-length": "99"},
	})
	amqpPublish(t, r.vhost, "amq.topic", "diff.bare", amqp.Publishing{Body: []byte("\xff\x00binary")})
	// 3. The same SEND through the shared link's publisher.
	s, srec := r.open(stomp.V12)
	if err := send(t, s, "/topic/diff.shared", "p2", "hello", stompHeaders...); err != nil {
		t.Fatal(err)
	}
	srec.receipt(t, "p2")

	for _, p := range pairs {
		dm := p.direct.messages(t, 4)
		sm := p.shared.messages(t, 4)
		for i := range 4 {
			diffFrames(t, fmt.Sprintf("STOMP %s message %d (%s)", p.v, i, dm[i].Header.Get("destination")), dm[i], sm[i])
		}
		// What the shared publisher sent must look like what RabbitMQ's
		// STOMP adapter published, apart from its destination.
		a, b := dm[0], dm[3]
		la := strings.ReplaceAll(strings.Join(headerLines(a), "\n"), "diff.stomp", "X")
		lb := strings.ReplaceAll(strings.Join(headerLines(b), "\n"), "diff.shared", "X")
		la = strings.ReplaceAll(la, "receipt:p1", "receipt:P")
		lb = strings.ReplaceAll(lb, "receipt:p2", "receipt:P")
		if la != lb {
			t.Errorf("STOMP %s: a SEND through the shared link is published differently\n RabbitMQ STOMP: %q\n shared link:    %q", p.v, la, lb)
		}
		if p.v == stomp.V12 {
			t.Logf("AMQP-published, as RabbitMQ's STOMP adapter maps it: %q", headerLines(dm[1]))
		}
	}
}
