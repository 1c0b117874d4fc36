package persist_test

import (
	"encoding/json"
	"errors"
	"os"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
)

// The persister's declarations agree with rabbitmq/definitions.json (a
// mismatch is a PRECONDITION_FAILED that closes the channel), and are
// idempotent.
func TestTopologyMatchesDefinitions(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../rabbitmq/definitions.json")
	if err != nil {
		t.Fatal(err)
	}
	var defs map[string]any
	if err := json.Unmarshal(raw, &defs); err != nil {
		t.Fatal(err)
	}
	vhost := testenv.Vhost(t)
	imp := map[string]any{}
	for _, k := range []string{"exchanges", "queues", "bindings"} {
		items, _ := defs[k].([]any)
		for _, it := range items {
			it.(map[string]any)["vhost"] = vhost
		}
		imp[k] = items
	}
	if err := testenv.Mgmt("POST", "/api/definitions/"+vhost, imp, nil); err != nil {
		t.Fatal(err)
	}
	conn := testenv.Dial(t, vhost)
	topo := persist.Topology{Queue: "stompgate.archive", DLX: "stompgate.dlx", DLQ: "stompgate.archive.dlq",
		Bindings: []string{"#", "room.*"}, DeliveryLimit: 5}
	testenv.WaitFor(t, 10*time.Second, func() error { // the import is asynchronous
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		defer ch.Close()
		_, err = ch.QueueDeclarePassive("stompgate.archive", true, false, false, false, nil)
		return err
	})
	for range 2 {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := topo.Declare(ch); err != nil {
			t.Fatal(err)
		}
		ch.Close()
	}
	// And a mismatch is caught.
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	bad := topo
	bad.DeliveryLimit = 6
	if err := bad.Declare(ch); err == nil {
		t.Fatal("declaration with another x-delivery-limit accepted")
	} else if e := (*amqp.Error)(nil); !errors.As(err, &e) || e.Code != amqp.PreconditionFailed {
		t.Fatalf("unexpected error %v", err)
	}
}
