package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/stompgate/stompgate/internal/sched"
	"github.com/stompgate/stompgate/internal/testenv"
)

// binary is the persister built once for the subprocess tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "persister-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "persister")
	if out, err := exec.Command("go", "build", "-race", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build persister: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func baseEnv(vhost, dbURL string) map[string]string {
	return map[string]string{
		"PERSIST_AMQP_URL":        testenv.AMQPURL(vhost),
		"PERSIST_DATABASE_URL":    dbURL,
		"PERSIST_CONNECTION_NAME": "persister-" + vhost,
		"PERSIST_METRICS_LISTEN":  "127.0.0.1:0",
		"PERSIST_RETRY_MIN":       "20ms",
		"PERSIST_RETRY_MAX":       "500ms",
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	err := run(context.Background(), nil, testenv.Env(map[string]string{
		"PERSIST_BATCH_SIZE": "lots", "PERSIST_WRITE_MODE": "magic"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "PERSIST_BATCH_SIZE") || !strings.Contains(err.Error(), "PERSIST_WRITE_MODE") {
		t.Fatalf("error %v", err)
	}
}

// run creates a missing database, migrates it, serves /metrics and
// /healthz, archives, and returns nil when its context ends.
func TestRunCreatesDatabaseAndServesMetrics(t *testing.T) {
	t.Parallel()
	vhost := testenv.Vhost(t)
	name := "sg_test_" + testenv.Random(10)
	dbURL := "postgres://postgres@" + testenv.PGAddr + "/" + name + "?sslmode=disable"
	t.Cleanup(func() {
		ctx := context.Background()
		c, err := pgx.Connect(ctx, "postgres://postgres@"+testenv.PGAddr+"/postgres?sslmode=disable")
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Error(err)
		}
	})
	env := baseEnv(vhost, dbURL)
	env["LOG_FORMAT"] = "json"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1) // run's result
	logs := &testenv.SyncBuffer{}
	go func() { done <- run(ctx, nil, testenv.Env(env), io.MultiWriter(logs, t.Output())) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	// The metrics server listens on 127.0.0.1:0; its address is logged.
	var addr string
	testenv.WaitFor(t, 30*time.Second, func() error {
		for _, line := range strings.Split(logs.String(), "\n") {
			var l struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "metrics listening" {
				addr = l.Addr
				return nil
			}
		}
		return fmt.Errorf("no metrics address logged")
	})
	get := func(path string) (string, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get("http://" + addr + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return "", fmt.Errorf("%s: %s", path, resp.Status)
		}
		return string(b), err
	}
	testenv.WaitFor(t, 30*time.Second, func() error {
		m, err := get("/metrics")
		if err == nil && !strings.Contains(m, "\nstompgate_persister_consuming 1\n") {
			err = fmt.Errorf("not consuming yet")
		}
		return err
	})
	if _, err := get("/healthz"); err != nil {
		t.Fatal(err)
	}
	publish(t, vhost, 10, "run")
	testenv.WaitFor(t, 20*time.Second, func() error {
		m, err := get("/metrics")
		if err == nil && !strings.Contains(m, "\nstompgate_persister_rows_written_total 10\n") {
			var q, b any
			testenv.Mgmt("GET", "/api/queues/"+vhost, nil, &q)
			testenv.Mgmt("GET", "/api/bindings/"+vhost, nil, &b)
			err = fmt.Errorf("rows not written yet: %s\nqueues %v\nbindings %v", grepLines(m, "stompgate_persister"), q, b)
		}
		return err
	})
	m, _ := get("/metrics")
	for _, want := range []string{"stompgate_persister_batch_duration_seconds_bucket", "stompgate_persister_batch_size_messages_count",
		"stompgate_persister_db_pool_acquired_conns", "stompgate_persister_paused 0", "stompgate_persister_duplicates_total 0",
		"stompgate_persister_dead_letters_total 0", "stompgate_persister_redeliveries_total 0", "go_goroutines"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// publish sends n numbered messages to amq.topic, confirmed.
func publish(t *testing.T, vhost string, n int, prefix string) {
	t.Helper()
	if err := publishErr(vhost, n, prefix); err != nil {
		t.Fatal(err)
	}
}

func publishErr(vhost string, n int, prefix string) error {
	conn, err := amqp.Dial(testenv.AMQPURL(vhost))
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return err
	}
	// Unroutable messages come back (mandatory): the queue must be bound.
	returns := ch.NotifyReturn(make(chan amqp.Return, n)) // room for all: never blocks the library
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var dcs []*amqp.DeferredConfirmation
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "amq.topic", "k."+prefix, true, false, amqp.Publishing{
			MessageId: fmt.Sprintf("%s-%d", prefix, i), Body: []byte(fmt.Sprintf("%0256d", i))})
		if err != nil {
			return err
		}
		dcs = append(dcs, dc)
		if len(dcs) == 500 || i == n-1 {
			for _, dc := range dcs {
				if ok, err := dc.WaitContext(ctx); !ok || err != nil {
					return fmt.Errorf("publish not confirmed: %v", err)
				}
			}
			dcs = dcs[:0]
		}
	}
	select {
	case r := <-returns:
		return fmt.Errorf("message %s returned: %s", r.MessageId, r.ReplyText)
	default:
		return nil
	}
}

// process is the persister binary running as a subprocess.
type process struct {
	cmd  *exec.Cmd
	done chan error // Wait's result
}

func start(t *testing.T, env map[string]string) *process {
	t.Helper()
	cmd := exec.Command(binary)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *process) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(timeout):
		t.Fatalf("persister did not exit within %s", timeout)
		return nil
	}
}

func countRows(t *testing.T, dbURL string, query string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, query).Scan(&n); err != nil {
		// The table appears when the persister has migrated.
		return -1
	}
	return n
}

// waitBound waits until the persister has bound its queue to amq.topic,
// so that what is published next is routed to it.
func waitBound(t *testing.T, vhost string) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, func() error {
		var b []map[string]any
		if err := testenv.Mgmt("GET", "/api/exchanges/"+vhost+"/amq.topic/bindings/source", nil, &b); err != nil {
			return err
		}
		if len(b) == 0 {
			return fmt.Errorf("amq.topic has no bindings yet")
		}
		return nil
	})
}

// SIGTERM: stop consuming, write and ack the batch in flight, exit 0.
func TestSIGTERMSettlesBatchAndExitsZero(t *testing.T) {
	t.Parallel()
	vhost := testenv.Vhost(t)
	dbURL := testenv.DB(t)
	env := baseEnv(vhost, dbURL)
	env["PERSIST_BATCH_WAIT"] = "1m" // the batch would wait a minute for more
	p := start(t, env)
	waitBound(t, vhost)
	testenv.WaitFor(t, 20*time.Second, func() error {
		if names, _ := testenv.ConnectionNames(vhost, env["PERSIST_CONNECTION_NAME"]); len(names) == 0 {
			return fmt.Errorf("persister not connected")
		}
		return nil
	})
	// PERSIST_SCHED_POLICY defaults to batch: every thread runs under it.
	tids, err := sched.Threads(p.cmd.Process.Pid)
	if err != nil || len(tids) < 2 {
		t.Fatalf("threads of the persister: %v %v", tids, err)
	}
	for _, tid := range tids {
		if pol, err := sched.Of(tid); err == nil && pol != sched.Batch {
			t.Errorf("persister thread %d runs under %s, want batch", tid, pol)
		}
	}
	publish(t, vhost, 120, "term")
	testenv.WaitFor(t, 20*time.Second, func() error {
		if n := testenv.QueueDepth(t, vhost, "stompgate.archive"); n != 0 {
			return fmt.Errorf("%d not delivered yet", n)
		}
		return nil
	})
	if n := countRows(t, dbURL, "SELECT count(*) FROM stompgate_messages"); n != 0 {
		t.Fatalf("%d rows before the batch was due", n)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if n := countRows(t, dbURL, "SELECT count(*) FROM stompgate_messages"); n != 120 {
		t.Fatalf("%d rows after SIGTERM, want 120", n)
	}
	if n := testenv.QueueDepth(t, vhost, "stompgate.archive"); n != 0 {
		t.Fatalf("%d messages back in the queue: not acked", n)
	}
}

// kill -9 in the middle of the stream, then a restart: nothing lost,
// nothing twice.
func TestKill9LosesNothingAndDuplicatesNothing(t *testing.T) {
	t.Parallel()
	const total = 10000
	vhost := testenv.Vhost(t)
	dbURL := testenv.DB(t)
	env := baseEnv(vhost, dbURL)
	env["PERSIST_BATCH_SIZE"] = "200"
	env["PERSIST_WRITE_MODE"] = "insert"
	p := start(t, env)
	waitBound(t, vhost)
	published := make(chan error, 1) // the publisher's result
	go func() { published <- publishErr(vhost, total, "k9") }()
	// Kill while messages still flow, with a batch most likely in flight.
	deadline := time.Now().Add(60 * time.Second)
	for countRows(t, dbURL, "SELECT count(*) FROM stompgate_messages") < 1000 {
		if time.Now().After(deadline) {
			t.Fatal("persister did not write 1000 rows within 60s")
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.wait(t, 10*time.Second)
	mid := countRows(t, dbURL, "SELECT count(*) FROM stompgate_messages")
	t.Logf("%d of %d rows when killed", mid, total)
	if err := <-published; err != nil {
		t.Fatal(err)
	}

	start(t, env)
	testenv.WaitFor(t, 90*time.Second, func() error {
		if n := countRows(t, dbURL, "SELECT count(*) FROM stompgate_messages"); n != total {
			return fmt.Errorf("%d rows, want %d", n, total)
		}
		return nil
	})
	if n := countRows(t, dbURL, "SELECT count(DISTINCT message_id) FROM stompgate_messages"); n != total {
		t.Fatalf("%d distinct ids, want %d", n, total)
	}
	testenv.WaitFor(t, 20*time.Second, func() error {
		if n := testenv.QueueDepth(t, vhost, "stompgate.archive"); n != 0 {
			return fmt.Errorf("%d left in the queue", n)
		}
		return nil
	})
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
