package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/testenv"
)

// journalLeader returns the application_name of the connection holding
// the journal lock, "" when none does.
func journalLeader(t *testing.T, dbURL string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var name string
	err = c.QueryRow(ctx, `SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND (l.classid::bigint << 32 | l.objid::bigint) = $1`, int64(0x73746f6d706a726e)).Scan(&name)
	if err != nil {
		return ""
	}
	return name
}

// Two persister processes; the journal leader is killed with SIGKILL
// while messages flow on 10 streams; the other takes over. Every message
// is stored exactly once, seqs are gapless per stream, and subscribers
// see every seq, first sightings in order (re-broadcasts after the kill
// are allowed: at-least-once broadcast).
func TestJournalFailoverKill9(t *testing.T) {
	t.Parallel()
	vhost, dbURL := testenv.Vhost(t), testenv.DB(t)
	env := func(name string) map[string]string {
		e := baseEnv(vhost, dbURL+"&application_name="+name)
		e["PERSIST_ARCHIVE"] = "false"
		e["PERSIST_JOURNAL_LOCK_POLL"] = "20ms"
		e["PERSIST_JOURNAL_BATCH_SIZE"] = "50"
		e["PERSIST_SCHED_POLICY"] = "other"
		return e
	}
	procs := map[string]*process{"pa": start(t, env("pa"))}
	testenv.WaitFor(t, 60*time.Second, func() error {
		if l := journalLeader(t, dbURL); l != "pa" {
			return fmt.Errorf("leader %q", l)
		}
		// Consuming means the queue is bound: what is published next is
		// routed to it (unroutable messages are confirmed and dropped).
		conn, err := amqp.Dial(testenv.AMQPURL(vhost))
		if err != nil {
			return err
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		q, err := ch.QueueDeclarePassive("stompgate.ingest", true, false, false, false, nil)
		if err == nil && q.Consumers == 0 {
			err = fmt.Errorf("not consuming yet")
		}
		return err
	})
	procs["pb"] = start(t, env("pb"))

	// Subscriber of every broadcast.
	ch, err := testenv.Dial(t, vhost).Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "#", "amq.topic", false, nil); err != nil {
		t.Fatal(err)
	}
	ds, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		stream, id string
		seq        int64
	}
	var mu sync.Mutex
	var got []seen
	go func() {
		for d := range ds {
			s, _ := d.Headers["x-seq"].(int64)
			id, _ := d.Headers["x-message-id"].(string)
			mu.Lock()
			got = append(got, seen{d.RoutingKey, id, s})
			mu.Unlock()
		}
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }

	// The exchange exists once the leader declared it.
	pub, err := testenv.Dial(t, vhost).Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Confirm(false); err != nil {
		t.Fatal(err)
	}
	const streams, total = 10, 3000
	published := make(chan error, 1) // the publisher's result
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		for i := 0; i < total; i += 50 {
			var dcs []*amqp.DeferredConfirmation
			for k := i; k < i+50; k++ {
				dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, "stompgate.ingest", fmt.Sprintf("fo.%d", k%streams), false, false,
					amqp.Publishing{MessageId: fmt.Sprint("m", k), Headers: amqp.Table{"x-user-id": "alice"}, Body: []byte(fmt.Sprint(k))})
				if err != nil {
					published <- err
					return
				}
				dcs = append(dcs, dc)
			}
			for _, dc := range dcs {
				if ok, err := dc.WaitContext(ctx); !ok || err != nil {
					published <- fmt.Errorf("not confirmed: %v", err)
					return
				}
			}
			time.Sleep(5 * time.Millisecond) // keep messages flowing across the kill
		}
		published <- nil
	}()
	testenv.WaitFor(t, 60*time.Second, func() error {
		if n := count(); n < total/3 {
			return fmt.Errorf("%d broadcasts", n)
		}
		return nil
	})
	if err := procs["pa"].cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	procs["pa"].wait(t, 10*time.Second)
	atKill := count()
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	if atKill >= total {
		t.Fatalf("everything was broadcast before the kill (%d); the test proves nothing", atKill)
	}
	testenv.WaitFor(t, 60*time.Second, func() error {
		if n := countRows(t, dbURL, `SELECT count(*) FROM stompgate_messages`); n != total {
			return fmt.Errorf("%d rows", n)
		}
		if l := journalLeader(t, dbURL); l != "pb" {
			return fmt.Errorf("leader %q", l)
		}
		mu.Lock()
		defer mu.Unlock()
		distinct := map[seen]bool{}
		for _, s := range got {
			distinct[s] = true
		}
		if len(distinct) != total {
			return fmt.Errorf("%d distinct broadcasts", len(distinct))
		}
		return nil
	})
	// Exactly once in the table, gapless per stream.
	if n := countRows(t, dbURL, `SELECT count(DISTINCT message_id) FROM stompgate_messages WHERE sender = 'alice'`); n != total {
		t.Fatalf("%d distinct messages stored", n)
	}
	if n := countRows(t, dbURL, `SELECT count(*) FROM (SELECT stream FROM stompgate_messages GROUP BY stream
		HAVING min(seq) = 1 AND max(seq) = count(*) AND count(DISTINCT seq) = count(*)) s`); n != streams {
		t.Fatalf("%d of %d streams gapless", n, streams)
	}
	if n := countRows(t, dbURL, `SELECT count(*) FROM stompgate_streams s WHERE last_seq = (SELECT count(*) FROM stompgate_messages m WHERE m.stream = s.stream)`); n != streams {
		t.Fatalf("%d of %d streams have last_seq = rows", n, streams)
	}
	// What subscribers saw agrees with the table, first sightings in order.
	mu.Lock()
	defer mu.Unlock()
	high := map[string]int64{}
	ids := map[string]string{}
	repeats := 0
	for _, s := range got {
		key := fmt.Sprint(s.stream, "/", s.seq)
		if prev, ok := ids[key]; ok && prev != s.id {
			t.Fatalf("%s broadcast as %s and %s", key, prev, s.id)
		}
		ids[key] = s.id
		switch {
		case s.seq == high[s.stream]+1:
			high[s.stream] = s.seq
		case s.seq <= high[s.stream]:
			repeats++
		default:
			t.Fatalf("stream %s: seq %d after %d", s.stream, s.seq, high[s.stream])
		}
	}
	t.Logf("%d broadcasts at the kill, %d in all, %d repeated after the takeover", atKill, len(got), repeats)
}
