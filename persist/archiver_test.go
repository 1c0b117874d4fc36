package persist_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testConfig is the persister configuration for a test's vhost and
// database, with short retries; env overrides.
func testConfig(t testing.TB, vhost, dbURL string, env map[string]string) config.Persister {
	t.Helper()
	m := map[string]string{
		"PERSIST_AMQP_URL":         testenv.AMQPURL(vhost),
		"PERSIST_DATABASE_URL":     dbURL,
		"PERSIST_CONNECTION_NAME":  "persister-" + vhost,
		"PERSIST_RETRY_MIN":        "20ms",
		"PERSIST_RETRY_MAX":        "500ms",
		"PERSIST_SHUTDOWN_TIMEOUT": "20s",
	}
	for k, v := range env {
		m[k] = v
	}
	cfg, err := config.LoadPersister(testenv.Env(m))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// running is an Archiver running in the background of a test.
type running struct {
	cfg     config.Persister
	pool    *pgxpool.Pool
	metrics *persist.Metrics
	cancel  context.CancelFunc
	done    chan error // Run's result; one value
	once    sync.Once
	err     error
}

// stop cancels the Archiver and returns Run's result.
func (r *running) stop() error {
	r.once.Do(func() {
		r.cancel()
		r.err = <-r.done
	})
	return r.err
}

// startArchiver migrates cfg's database and runs an Archiver until the
// test ends.
func startArchiver(t *testing.T, cfg config.Persister) *running {
	t.Helper()
	pool := testenv.Pool(t, cfg.DatabaseURL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := persist.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	r := &running{cfg: cfg, pool: pool, metrics: persist.NewMetrics(prometheus.NewRegistry(), pool),
		done: make(chan error, 1)}
	var rctx context.Context
	rctx, r.cancel = context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	a := persist.NewArchiver(cfg, persist.NewWriter(pool, cfg.WriteMode), r.metrics, log)
	go func() { r.done <- a.Run(rctx) }()
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// Consuming means the topology is declared: publishes are routed.
	testenv.WaitFor(t, 15*time.Second, func() error {
		if testutil.ToFloat64(r.metrics.Consuming) != 1 {
			return fmt.Errorf("archiver is not consuming")
		}
		return nil
	})
	return r
}

func (r *running) rows(t *testing.T) int {
	t.Helper()
	n, err := testenv.Count(context.Background(), r.pool, "SELECT count(*) FROM stompgate_messages")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (r *running) waitRows(t *testing.T, want int, timeout time.Duration) {
	t.Helper()
	testenv.WaitFor(t, timeout, func() error {
		n, err := testenv.Count(context.Background(), r.pool, "SELECT count(*) FROM stompgate_messages")
		if err != nil {
			return err
		}
		if n != want {
			return fmt.Errorf("%d rows, want %d", n, want)
		}
		return nil
	})
}

// publisher publishes with confirms on its own connection.
type publisher struct {
	ch *amqp.Channel
}

func newPublisher(t *testing.T, vhost string) *publisher {
	t.Helper()
	ch, err := testenv.Dial(t, vhost).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	return &publisher{ch: ch}
}

// publish sends msgs to amq.topic with key and waits for every confirm.
func (p *publisher) publish(t *testing.T, key string, msgs ...amqp.Publishing) {
	t.Helper()
	if err := p.publishErr(key, msgs...); err != nil {
		t.Fatal(err)
	}
}

func (p *publisher) publishErr(key string, msgs ...amqp.Publishing) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var dcs []*amqp.DeferredConfirmation
	for _, m := range msgs {
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, "amq.topic", key, false, false, m)
		if err != nil {
			return err
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			return fmt.Errorf("publish not confirmed: %v", err)
		}
	}
	return nil
}

// numbered returns n messages with message ids prefix-0 … prefix-(n-1).
func numbered(prefix string, n int) []amqp.Publishing {
	out := make([]amqp.Publishing, n)
	for i := range out {
		out[i] = amqp.Publishing{MessageId: fmt.Sprintf("%s-%d", prefix, i), ContentType: "text/plain",
			Body: []byte(fmt.Sprintf("message %d", i))}
	}
	return out
}

func TestArchivesAMQPPublishWithProperties(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{config.WriteModeCopy, config.WriteModeInsert} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			vhost := testenv.Vhost(t)
			r := startArchiver(t, testConfig(t, vhost, testenv.DB(t), map[string]string{"PERSIST_WRITE_MODE": mode}))
			ts := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			newPublisher(t, vhost).publish(t, "room.7", amqp.Publishing{
				MessageId: "order-42", UserId: "guest", ContentType: "application/json", AppId: "erp",
				CorrelationId: "c-1", Type: "order.created", Timestamp: ts, DeliveryMode: amqp.Persistent,
				Headers: amqp.Table{"tenant": "acme", "n": int32(7), "raw": []byte{0xff, 0}},
				Body:    []byte(`{"total":12.5}`),
			})
			r.waitRows(t, 1, 15*time.Second)
			var (
				id, sender, exchange, key, ctype string
				headers                          []byte
				body                             []byte
				published                        time.Time
				stream                           *string
				seq                              *int64
			)
			err := r.pool.QueryRow(context.Background(), `SELECT message_id, sender, exchange, routing_key,
				content_type, headers, body, published_at, stream, seq FROM stompgate_messages`).
				Scan(&id, &sender, &exchange, &key, &ctype, &headers, &body, &published, &stream, &seq)
			if err != nil {
				t.Fatal(err)
			}
			if id != "order-42" || sender != "amqp:guest" || exchange != "amq.topic" || key != "room.7" ||
				ctype != "application/json" || string(body) != `{"total":12.5}` || !published.Equal(ts) ||
				stream != nil || seq != nil {
				t.Fatalf("row: %q %q %q %q %q %q %s %v %v", id, sender, exchange, key, ctype, body, published, stream, seq)
			}
			var doc struct {
				Properties map[string]any `json:"properties"`
				Headers    map[string]any `json:"headers"`
			}
			if err := json.Unmarshal(headers, &doc); err != nil {
				t.Fatal(err)
			}
			if doc.Properties["app_id"] != "erp" || doc.Properties["correlation_id"] != "c-1" ||
				doc.Properties["type"] != "order.created" || doc.Properties["user_id"] != "guest" ||
				doc.Properties["delivery_mode"] != float64(2) || doc.Properties["timestamp"] != "2026-01-02T03:04:05Z" ||
				doc.Headers["tenant"] != "acme" || doc.Headers["n"] != float64(7) || doc.Headers["raw"] != "/wA=" {
				t.Fatalf("headers: %s", headers)
			}
		})
	}
}

// A message published through RabbitMQ's own STOMP adapter (as the edge
// does) lands with the x-user-id header as its sender.
func TestArchivesSTOMPPublishWithSender(t *testing.T) {
	t.Parallel()
	vhost := testenv.Vhost(t)
	r := startArchiver(t, testConfig(t, vhost, testenv.DB(t), nil))
	conn, err := stomp.Dial("tcp", testenv.StompAddr, stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host(vhost))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect()
	if err := conn.Send("/topic/room.7", "text/plain", []byte("hello from stomp"), stomp.SendOpt.Receipt,
		stomp.SendOpt.Header("x-user-id", "alice"), stomp.SendOpt.Header("amqp-message-id", "m-1")); err != nil {
		t.Fatal(err)
	}
	// Without an id: the persister derives one from the content.
	if err := conn.Send("/topic/room.7", "text/plain", []byte("no id"), stomp.SendOpt.Receipt,
		stomp.SendOpt.Header("x-user-id", "bob")); err != nil {
		t.Fatal(err)
	}
	r.waitRows(t, 2, 15*time.Second)
	rows, err := r.pool.Query(context.Background(), `SELECT message_id, sender, exchange, routing_key, convert_from(body, 'UTF8'),
		headers->'headers'->>'x-user-id' FROM stompgate_messages ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var id, sender, ex, key, body, hdr string
		if err := rows.Scan(&id, &sender, &ex, &key, &body, &hdr); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(id, "sha256:") {
			id = "sha256:…"
		}
		got = append(got, strings.Join([]string{id, sender, ex, key, body, hdr}, "|"))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"m-1|alice|amq.topic|room.7|hello from stomp|alice", "sha256:…|bob|amq.topic|room.7|no id|bob"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDuplicatesAreSkipped(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{config.WriteModeCopy, config.WriteModeInsert} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			vhost := testenv.Vhost(t)
			r := startArchiver(t, testConfig(t, vhost, testenv.DB(t), map[string]string{
				"PERSIST_BATCH_WAIT": "50ms", "PERSIST_WRITE_MODE": mode}))
			p := newPublisher(t, vhost)
			msgs := numbered("dup", 10)
			p.publish(t, "a.b", msgs...)
			r.waitRows(t, 10, 15*time.Second)
			p.publish(t, "a.b", msgs[:4]...)                                                            // in a later batch
			p.publish(t, "a.b", msgs[5], msgs[5])                                                       // twice in one batch
			p.publish(t, "a.b", amqp.Publishing{Body: []byte("x")}, amqp.Publishing{Body: []byte("x")}) // same content, no id
			testenv.WaitFor(t, 15*time.Second, func() error {
				if d := testutil.ToFloat64(r.metrics.Duplicates); d != 7 {
					return fmt.Errorf("%v duplicates, want 7", d)
				}
				return nil
			})
			if n := r.rows(t); n != 11 {
				t.Fatalf("%d rows, want 11", n)
			}
			if got := testenv.QueueDepth(t, vhost, r.cfg.Queue); got != 0 {
				t.Fatalf("%d messages left in the queue", got)
			}
		})
	}
}

// Messages the database refuses are dead-lettered with the reason; the
// rest of their batch is committed.
func TestPoisonMessagesAreDeadLettered(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{config.WriteModeCopy, config.WriteModeInsert} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			vhost := testenv.Vhost(t)
			r := startArchiver(t, testConfig(t, vhost, testenv.DB(t), map[string]string{
				"PERSIST_WRITE_MODE": mode, "PERSIST_BATCH_WAIT": "300ms"}))
			msgs := numbered("p", 100)
			msgs[17].Headers = amqp.Table{"note": "nul \x00 in jsonb"} // jsonb refuses \u0000
			msgs[42].Headers = amqp.Table{"x-user-id": "mallory\x00"}  // text refuses NUL
			msgs[77].MessageId = "bad-utf8-\xff\xfe"                   // text refuses invalid UTF-8
			msgs[90].MessageId = ""
			msgs[90].Headers = amqp.Table{"amqp-message-id": testenv.Random(6000)} // btree index row too large
			newPublisher(t, vhost).publish(t, "room.poison", msgs...)
			r.waitRows(t, 96, 20*time.Second)

			conn := testenv.Dial(t, vhost)
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			reasons := map[string]string{}
			testenv.WaitFor(t, 15*time.Second, func() error {
				d, ok, err := ch.Get(r.cfg.DLQ, true)
				if err != nil {
					return err
				}
				if ok {
					reason, _ := d.Headers[persist.HeaderReason].(string)
					if d.Headers["x-stompgate-original-routing-key"] != "room.poison" {
						t.Errorf("dead letter lost its routing key: %v", d.Headers)
					}
					reasons[string(d.Body)] = reason
				}
				if len(reasons) < 4 {
					return fmt.Errorf("%d dead letters", len(reasons))
				}
				return nil
			})
			for _, i := range []int{17, 42, 77, 90} {
				if reason := reasons[fmt.Sprintf("message %d", i)]; !strings.Contains(reason, "SQLSTATE") {
					t.Errorf("message %d: reason %q", i, reason)
				}
			}
			if got := testutil.ToFloat64(r.metrics.DeadLetters); got != 4 {
				t.Errorf("dead letters metric %v", got)
			}
			if got := testenv.QueueDepth(t, vhost, r.cfg.Queue); got != 0 {
				t.Errorf("%d messages left in the archive queue", got)
			}
		})
	}
}

// Losing the RabbitMQ connection: the archiver reconnects, re-declares
// and goes on.
func TestReconnectsAfterConnectionLoss(t *testing.T) {
	t.Parallel()
	vhost := testenv.Vhost(t)
	r := startArchiver(t, testConfig(t, vhost, testenv.DB(t), nil))
	p := newPublisher(t, vhost)
	p.publish(t, "r", numbered("before", 100)...)
	r.waitRows(t, 100, 15*time.Second)

	var names []string
	testenv.WaitFor(t, 20*time.Second, func() (err error) {
		names, err = testenv.ConnectionNames(vhost, r.cfg.ConnectionName)
		if err == nil && len(names) != 1 {
			err = fmt.Errorf("connections named %s: %v", r.cfg.ConnectionName, names)
		}
		return err
	})
	if err := testenv.Mgmt("DELETE", "/api/connections/"+pathEscape(names[0]), nil, nil); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 15*time.Second, func() error {
		if testutil.ToFloat64(r.metrics.Reconnects) < 1 {
			return fmt.Errorf("no reconnect yet")
		}
		return nil
	})
	p.publish(t, "r", numbered("after", 100)...)
	r.waitRows(t, 200, 20*time.Second)
}

// Cancelling Run (SIGTERM in cmd/persister) writes and acks the batch in
// flight before returning.
func TestStopSettlesBatchInFlight(t *testing.T) {
	t.Parallel()
	vhost := testenv.Vhost(t)
	// A batch that would wait a minute for more messages.
	r := startArchiver(t, testConfig(t, vhost, testenv.DB(t), map[string]string{"PERSIST_BATCH_WAIT": "1m"}))
	newPublisher(t, vhost).publish(t, "s", numbered("s", 50)...)
	testenv.WaitFor(t, 10*time.Second, func() error {
		if n := testenv.QueueDepth(t, vhost, r.cfg.Queue); n != 0 {
			return fmt.Errorf("%d not yet delivered", n)
		}
		return nil
	})
	if n := r.rows(t); n != 0 {
		t.Fatalf("%d rows before the batch was due", n)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if n := r.rows(t); n != 50 {
		t.Fatalf("%d rows after stop, want 50", n)
	}
	if n := testenv.QueueDepth(t, vhost, r.cfg.Queue); n != 0 {
		t.Fatalf("%d messages back in the queue after stop", n)
	}
}

func pathEscape(s string) string {
	return strings.NewReplacer("%", "%25", "/", "%2F", " ", "%20", ">", "%3E").Replace(s)
}
