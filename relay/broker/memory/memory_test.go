package memory

import (
	"fmt"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/testenv"
)

var topicCases = []struct {
	pattern string
	match   []string
	miss    []string
}{
	{"a.b", []string{"a.b"}, []string{"a", "a.b.c", "a.c", "b.a"}},
	{"a.*", []string{"a.b", "a.x"}, []string{"a", "a.b.c", "b.b"}},
	{"*.b", []string{"a.b", "x.b"}, []string{"b", "a.b.c"}},
	{"a.#", []string{"a", "a.b", "a.b.c"}, []string{"b", "b.a"}},
	{"#", []string{"a", "a.b", "a.b.c"}, nil},
	{"#.c", []string{"c", "a.c", "a.b.c"}, []string{"a.b", "c.a"}},
	{"a.#.c", []string{"a.c", "a.b.c", "a.b.b.c"}, []string{"a.b", "b.c", "a.c.d"}},
	{"*.*", []string{"a.b"}, []string{"a", "a.b.c"}},
	{"a.*.#", []string{"a.b", "a.b.c"}, []string{"a"}},
	{"#.#", []string{"a", "a.b"}, nil},
	{"*", []string{"a"}, []string{"a.b"}},
}

func TestMatchTopic(t *testing.T) {
	for _, tc := range topicCases {
		for _, k := range tc.match {
			if !MatchTopic(tc.pattern, k) {
				t.Errorf("%q should match %q", tc.pattern, k)
			}
		}
		for _, k := range tc.miss {
			if MatchTopic(tc.pattern, k) {
				t.Errorf("%q should not match %q", tc.pattern, k)
			}
		}
	}
}

// TestMatchTopicAgreesWithRabbitMQ runs the same table through RabbitMQ's
// topic exchange: the double must route as the real broker does.
func TestMatchTopicAgreesWithRabbitMQ(t *testing.T) {
	vhost := testenv.Vhost(t)
	conn := testenv.Dial(t, vhost)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	queues := map[string]string{}
	for i, tc := range topicCases {
		q, err := ch.QueueDeclare(fmt.Sprintf("p%d", i), false, true, true, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind(q.Name, tc.pattern, "amq.topic", false, nil); err != nil {
			t.Fatal(err)
		}
		queues[tc.pattern] = q.Name
		for _, k := range append(append([]string{}, tc.match...), tc.miss...) {
			keys[k] = true
		}
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	for k := range keys {
		dc, err := ch.PublishWithDeferredConfirm("amq.topic", k, false, false, amqp.Publishing{Body: []byte(k)})
		if err != nil || !dc.Wait() {
			t.Fatalf("publish %q: %v", k, err)
		}
	}
	for _, tc := range topicCases {
		got := map[string]bool{}
		deadline := time.Now().Add(5 * time.Second)
		for {
			d, ok, err := ch.Get(queues[tc.pattern], true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			got[string(d.Body)] = true
			if time.Now().After(deadline) {
				break
			}
		}
		for k := range keys {
			if got[k] != MatchTopic(tc.pattern, k) {
				t.Errorf("pattern %q key %q: RabbitMQ %v, memory %v", tc.pattern, k, got[k], MatchTopic(tc.pattern, k))
			}
		}
	}
}
