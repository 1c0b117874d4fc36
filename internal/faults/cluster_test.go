package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/stompgate/stompgate/internal/backoff"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
)

// Scenario 2: a three-node RabbitMQ cluster on loopback (private nodes,
// started, joined, stopped and removed by the test), the archive and the
// journal on quorum queues replicated to all three. Under a steady stream
// of receipted SENDs through the edge to /topic/ (archived) and /app/
// (journaled), the node leading those queues is stopped. The edge fails
// over through EDGE_BROKER_ADDRS and EDGE_BROKER_AMQP_URLS, the persister
// through PERSIST_AMQP_URLS, the producers reconnect and resend what was
// not receipted (same amqp-message-id). Asserted: every receipted message
// archived exactly once, every receipted /app/ message journaled exactly
// once, the stream's seq gapless (1..n, no duplicate, none missing).
func TestClusterLeaderStop(t *testing.T) {
	longFaults(t)
	const (
		before    = 10 * time.Second      // steady flow before the stop
		after     = 20 * time.Second      // and after it
		gap       = 30 * time.Millisecond // between a producer's SENDs
		producers = 3                     // of each kind
	)
	began := time.Now()
	nodes := startCluster(t, 3)
	clusterUp := time.Since(began)
	var stompAddrs, amqpURLs []string
	for _, n := range nodes {
		stompAddrs = append(stompAddrs, n.StompAddr)
		amqpURLs = append(amqpURLs, n.AMQPURL)
	}

	// The quorum queues, declared on node 1 the way the persister declares
	// them: their leaders start there (queue_leader_locator client-local).
	topo := persist.Topology{Queue: "stompgate.archive", Bindings: []string{"arch.#"}, DLX: "stompgate.dlx",
		DLQ: "stompgate.archive.dlq", DeliveryLimit: 5}
	jtopo := persist.JournalTopology{Exchange: "stompgate.ingest", Queue: "stompgate.ingest", DLX: "stompgate.dlx", DeliveryLimit: 5}
	func() {
		conn, err := amqp.Dial(nodes[0].AMQPURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := topo.Declare(ch); err != nil {
			t.Fatal(err)
		}
		if _, err := jtopo.Declare(conn, ch); err != nil {
			t.Fatal(err)
		}
	}()

	dbURL := testenv.DB(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	pers := startProc(t, "persister", binary(t, "persister"), map[string]string{
		"PERSIST_AMQP_URLS": strings.Join(amqpURLs, ","), "PERSIST_DATABASE_URL": dbURL,
		"PERSIST_BINDINGS": "arch.#", "PERSIST_METRICS_LISTEN": metricsAddr,
		"PERSIST_RETRY_MIN": "100ms", "PERSIST_RETRY_MAX": "1s", "PERSIST_SCHED_POLICY": "other",
	})
	e := startEdgeProc(t, "edge", "/", map[string]string{
		"EDGE_BROKER_ADDRS":     strings.Join(stompAddrs, ","),
		"EDGE_BROKER_AMQP_URLS": strings.Join(amqpURLs, ","),
		"EDGE_BROKER_LINKS":     "3",
		"EDGE_BROKER_TIMEOUT":   "3s",
	})
	testenv.WaitFor(t, 30*time.Second, func() error {
		m, err := metrics(metricsAddr)
		if err != nil {
			return err
		}
		if sum(m, "stompgate_persister_consuming") != 1 {
			return fmt.Errorf("persister not consuming yet")
		}
		return nil
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Three producers of each kind: six sessions spread over the three
	// shared links (one per node), so two of them ride the stopped node.
	var arch, jour []*clusterProducer
	for i := range producers {
		arch = append(arch, &clusterProducer{url: e.url, token: testenv.Token(t, "arch-writer", nil), dest: "/topic/arch.x",
			prefix: fmt.Sprintf("a%d-", i), receipted: map[string]bool{}, codes: map[string]int{}})
		jour = append(jour, &clusterProducer{url: e.url, token: testenv.Token(t, "journal-writer", nil), dest: "/app/room.c1",
			prefix: fmt.Sprintf("j%d-", i), receipted: map[string]bool{}, codes: map[string]int{}})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range append(append([]*clusterProducer{}, arch...), jour...) {
		wg.Go(func() { p.run(ctx, stop, gap) })
	}
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(before)

	leader, err := queueLeader(nodes, topo.Queue)
	if err != nil {
		t.Fatal(err)
	}
	jleader, err := queueLeader(nodes, jtopo.Queue)
	if err != nil {
		t.Fatal(err)
	}
	var victim *privateRabbit
	for _, n := range nodes {
		if n.node == leader {
			victim = n
		}
	}
	if victim == nil {
		t.Fatalf("leader %q of %s is none of the cluster's nodes", leader, topo.Queue)
	}
	onVictim, err := connectionsOn(victim)
	if err != nil {
		t.Fatal(err)
	}
	if onVictim["persister"] == 0 || onVictim["persister-journal"] == 0 || onVictim["edge"] == 0 {
		t.Errorf("connections on the node to stop %v: want the archive's, the journal's and an edge link", onVictim)
	}
	archBefore, jourBefore := receiptedCount(arch), receiptedCount(jour)
	stopped := time.Now()
	if err := victim.shutdown(); err != nil {
		t.Fatal(err)
	}
	stopTook := time.Since(stopped)
	var rest []*privateRabbit
	for _, n := range nodes {
		if n != victim {
			rest = append(rest, n)
		}
	}
	// Both producers receipted again: the edge took them over to a node
	// that is up.
	var backAfter time.Duration
	testenv.WaitFor(t, 30*time.Second, func() error {
		a, j := receiptedCount(arch), receiptedCount(jour)
		if a < archBefore+30 || j < jourBefore+30 {
			return fmt.Errorf("receipts since the stop: archive %d, journal %d", a-archBefore, j-jourBefore)
		}
		backAfter = time.Since(stopped)
		return nil
	})
	newLeader, err := queueLeader(rest, topo.Queue)
	if err != nil {
		t.Fatal(err)
	}
	newJLeader, err := queueLeader(rest, jtopo.Queue)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(stopped.Add(after)))
	close(stop)
	wg.Wait()
	stop = make(chan struct{}) // for the deferred close

	pool := testenv.Pool(t, dbURL)
	archIDs, jourIDs := receiptedIDs(arch), receiptedIDs(jour)
	type row struct {
		body string
		seq  int64
	}
	var archRows, jourRows []row
	testenv.WaitFor(t, 60*time.Second, func() error {
		archRows, jourRows = nil, nil
		rows, err := pool.Query(ctx, `SELECT convert_from(body, 'UTF8'), coalesce(seq, 0), routing_key FROM stompgate_messages ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var r row
			var key string
			if err := rows.Scan(&r.body, &r.seq, &key); err != nil {
				return err
			}
			if key == "arch.x" {
				archRows = append(archRows, r)
			} else {
				jourRows = append(jourRows, r)
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(archRows) < len(archIDs) || len(jourRows) < len(jourIDs) {
			return fmt.Errorf("archive rows %d of %d receipted, journal rows %d of %d", len(archRows), len(archIDs), len(jourRows), len(jourIDs))
		}
		return nil
	})

	// Exactly once: each receipted body in one row; other rows are SENDs
	// that were taken without a receipt reaching the producer (each once,
	// resent and deduplicated by amqp-message-id).
	check := func(what string, rows []row, receipted []string, ps []*clusterProducer) (extra int) {
		seen := map[string]int{}
		for _, r := range rows {
			seen[r.body]++
		}
		for b, n := range seen {
			if n != 1 {
				t.Errorf("%s: %q stored %d times", what, b, n)
			}
			if !sentBy(ps, b) {
				t.Errorf("%s: row %q was never sent", what, b)
			}
		}
		for _, id := range receipted {
			if seen[id] != 1 {
				t.Errorf("%s: receipted %q stored %d times", what, id, seen[id])
			}
		}
		return len(seen) - len(receipted)
	}
	archExtra := check("archive", archRows, archIDs, arch)
	jourExtra := check("journal", jourRows, jourIDs, jour)
	errs := map[string]int{}
	var gaps []string
	for _, p := range append(append([]*clusterProducer{}, arch...), jour...) {
		for k, v := range p.errorCodes() {
			errs[k] += v
		}
		p.mu.Lock()
		gaps = append(gaps, p.maxGap.Round(10*time.Millisecond).String())
		p.mu.Unlock()
	}
	if len(errs) == 0 {
		t.Errorf("no producer session ended at the stop: none rode the stopped node")
	}
	seqs := map[int64]int{}
	var maxSeq int64
	for _, r := range jourRows {
		seqs[r.seq]++
		maxSeq = max(maxSeq, r.seq)
	}
	for s := int64(1); s <= maxSeq; s++ {
		if seqs[s] != 1 {
			t.Errorf("journal seq %d held by %d rows", s, seqs[s])
		}
	}
	if int(maxSeq) != len(jourRows) || seqs[0] != 0 {
		t.Errorf("journal: %d rows, seqs up to %d (%d without a seq): not gapless", len(jourRows), maxSeq, seqs[0])
	}
	var lastSeq int64
	if err := pool.QueryRow(ctx, `SELECT last_seq FROM stompgate_streams WHERE stream = 'room.c1'`).Scan(&lastSeq); err != nil || lastSeq != maxSeq {
		t.Errorf("stompgate_streams last_seq %d, want %d: %v", lastSeq, maxSeq, err)
	}
	m, err := metrics(metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if dl := sum(m, "stompgate_persister_dead_letters_total") + sum(m, "stompgate_journal_dead_letters_total"); dl != 0 {
		t.Errorf("%v dead letters", dl)
	}
	for _, line := range strings.Split(pers.out.String(), "\n") {
		if strings.Contains(line, "reconnecting") || strings.Contains(line, "trying again") ||
			strings.Contains(line, "consuming") || strings.Contains(line, "journal leader") {
			t.Logf("persister: %s", line)
		}
	}
	t.Logf("persister: archive %v redeliveries, %v duplicates ignored; journal %v redeliveries, %v duplicates ignored",
		sum(m, "stompgate_persister_redeliveries_total"), sum(m, "stompgate_persister_duplicates_total"),
		sum(m, "stompgate_journal_redeliveries_total"), sum(m, "stompgate_journal_duplicates_total"))

	t.Logf("cluster of %d nodes up and joined in %s; %s and %s led by %s and %s",
		len(nodes), clusterUp.Round(100*time.Millisecond), topo.Queue, jtopo.Queue, short(leader), short(jleader))
	t.Logf("connections on %s at the stop: %v", short(leader), onVictim)
	t.Logf("stopped %s after %s of traffic (rabbitmqctl stop took %s); new leaders %s and %s; 30 more receipts of each kind %s after the stop began",
		short(leader), before, stopTook.Round(10*time.Millisecond), short(newLeader), short(newJLeader), backAfter.Round(10*time.Millisecond))
	t.Logf("producer sessions ended by the stop, by code: %v (each resent its unreceipted SEND on a new session); longest wait between two receipts per producer (archive ×3, journal ×3): %s",
		errs, strings.Join(gaps, " "))
	t.Logf("archive (/topic/arch.x, %d producers): %d SENDs, %d receipted (%d before the stop), %d rows, each receipted one once, %d taken without its receipt",
		producers, sentCount(arch), len(archIDs), archBefore, len(archRows), archExtra)
	t.Logf("journal (/app/room.c1, %d producers): %d SENDs, %d receipted (%d before the stop), %d rows, seq 1..%d gapless, each receipted one once, %d taken without its receipt",
		producers, sentCount(jour), len(jourIDs), jourBefore, len(jourRows), maxSeq, jourExtra)
	t.Logf("whole test %s", time.Since(began).Round(100*time.Millisecond))
}

func short(node string) string { return strings.SplitN(node, "-", 2)[0] }

// startCluster starts n private nodes one at a time (2 cores: no three
// Erlang VMs booting at once), joins nodes 2..n to node 1 and stops and
// removes all of them when t ends, whatever happened.
func startCluster(t *testing.T, n int) []*privateRabbit {
	t.Helper()
	testenv.Integration(t)
	if _, err := exec.LookPath("rabbitmq-server"); err != nil {
		t.Skip("rabbitmq-server not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("private RabbitMQ nodes need root (rabbitmq-server switches to the rabbitmq user)")
	}
	dir, err := os.MkdirTemp("", "sg-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if out, err := exec.Command("chown", "rabbitmq:rabbitmq", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
	suffix := testenv.Random(6)
	var nodes []*privateRabbit
	for i := 1; i <= n; i++ {
		r := startClusterNode(t, filepath.Join(dir, strconv.Itoa(i)), fmt.Sprintf("sgc%d-%s@localhost", i, suffix))
		if i > 1 {
			for _, args := range [][]string{{"stop_app"}, {"join_cluster", nodes[0].node}, {"start_app"}} {
				if out, err := rabbitmqctl(90*time.Second, append([]string{"-n", r.node}, args...)...); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
			}
		}
		nodes = append(nodes, r)
	}
	return nodes
}

// startClusterNode starts one node in dir: its own name, AMQP, STOMP and
// distribution ports, data and log directories, one scheduler and no busy
// waiting (three VMs and the shared broker on two cores). The Erlang cookie
// is the rabbitmq user's (~rabbitmq/.erlang.cookie), the same for every
// node and for rabbitmqctl.
func startClusterNode(t *testing.T, dir, node string) *privateRabbit {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	amqpPort, stompPort, distPort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	r := &privateRabbit{
		node:      node,
		dir:       dir,
		AMQPURL:   fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/%%2F", amqpPort),
		StompAddr: fmt.Sprintf("127.0.0.1:%d", stompPort),
	}
	conf := fmt.Sprintf("listeners.tcp.default = 127.0.0.1:%d\nstomp.listeners.tcp.1 = 127.0.0.1:%d\n"+
		"loopback_users = none\nvm_memory_high_watermark.absolute = 512MiB\n", amqpPort, stompPort)
	for name, content := range map[string]string{"rabbitmq.conf": conf, "enabled_plugins": "[rabbitmq_stomp].\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("chown", "-R", "rabbitmq:rabbitmq", dir).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
	cmd := exec.Command("rabbitmq-server", "-detached")
	cmd.Env = append(os.Environ(),
		"RABBITMQ_NODENAME="+r.node,
		fmt.Sprintf("RABBITMQ_NODE_PORT=%d", amqpPort),
		fmt.Sprintf("RABBITMQ_DIST_PORT=%d", distPort),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_PID_FILE="+r.pidFile(),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none",
	)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("rabbitmq-server -detached %s: %v: %s", node, err, out)
	}
	t.Cleanup(func() { r.shutdown() })
	if _, err := rabbitmqctl(100*time.Second, "-n", r.node, "wait", "--timeout", "90", r.pidFile()); err != nil {
		logs, _ := exec.Command("sh", "-c", "tail -n 40 "+filepath.Join(dir, "log")+"/*.log").CombinedOutput()
		t.Fatalf("node %s did not start: %v\n%s", node, err, logs)
	}
	return r
}

// shutdown stops the node (rabbitmqctl stop, waiting for its pid to
// exit), killing it when that fails or takes over 60 s. The CLI runs in
// its own process group, killed with it on a timeout: rabbitmqctl is an
// escript whose Erlang VM would outlive the killed wrapper. A node already
// stopped is left alone.
func (r *privateRabbit) shutdown() error {
	pidb, err := os.ReadFile(r.pidFile())
	if err != nil {
		return nil // never started, or stopped and its pid file gone
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(pidb)))
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return nil
	}
	if out, err := rabbitmqctl(60*time.Second, "-n", r.node, "stop", r.pidFile()); err != nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		return fmt.Errorf("%v: %s (killed the node)", err, out)
	}
	_ = os.Remove(r.pidFile())
	return nil
}

// rabbitmqctl runs the CLI with args within timeout in its own process
// group, all of it killed on the timeout (the escript's Erlang VM would
// outlive a killed wrapper).
func rabbitmqctl(timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "rabbitmqctl", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("rabbitmqctl %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// queueLeader asks the first node that answers which node leads queue.
func queueLeader(nodes []*privateRabbit, queue string) (string, error) {
	var errs []string
	for _, n := range nodes {
		out, err := rabbitmqctl(30*time.Second, "-n", n.node, "-q", "list_queues", "--no-table-headers", "name", "leader")
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v: %s", n.node, err, out))
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == queue {
				return f[1], nil
			}
		}
		errs = append(errs, fmt.Sprintf("%s: no leader for %s in %q", n.node, queue, out))
	}
	return "", fmt.Errorf("leader of %s: %s", queue, strings.Join(errs, "; "))
}

// connectionsOn counts the client connections that node n itself holds
// (its AMQP or STOMP port) by kind: "persister", "persister-journal" (their
// connection_name), "edge" (the shared links), "other".
func connectionsOn(n *privateRabbit) (map[string]int, error) {
	out, err := rabbitmqctl(30*time.Second, "-n", n.node, "-q", "list_connections", "--no-table-headers", "port", "client_properties")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	amqpPort := n.AMQPURL[strings.LastIndexByte(n.AMQPURL, ':')+1 : strings.LastIndexByte(n.AMQPURL, '/')]
	stompPort := n.StompAddr[strings.LastIndexByte(n.StompAddr, ':')+1:]
	kinds := map[string]int{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || (f[0] != amqpPort && f[0] != stompPort) {
			continue
		}
		switch {
		case strings.Contains(line, "stompgate-persister-journal"):
			kinds["persister-journal"]++
		case strings.Contains(line, "stompgate-persister"):
			kinds["persister"]++
		case strings.Contains(line, `"stompgate"`):
			kinds["edge"]++
		default:
			kinds["other"]++
		}
	}
	return kinds, nil
}

// clusterProducer sends <prefix>0, <prefix>1, ... to dest, one receipted
// SEND every gap; a SEND whose receipt does not come (ERROR, closed
// socket, timeout) is sent again, same body and amqp-message-id, on a new
// session after a jittered backoff, until receipted: an at-least-once
// client, which the persister turns into exactly once.
type clusterProducer struct {
	url, token, dest, prefix string

	mu        sync.Mutex
	sent      int // distinct messages sent (the next one's number)
	receipted map[string]bool
	codes     map[string]int
	last      time.Time     // of the last receipt
	maxGap    time.Duration // longest time between two receipts
}

func (p *clusterProducer) run(ctx context.Context, stop <-chan struct{}, gap time.Duration) {
	bo := backoff.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	pending := "" // sent, not receipted: resent first
	for {
		select {
		case <-stop:
			return
		default:
		}
		cl, err := dial(ctx, p.url, p.token, dialOpts{})
		if err != nil {
			p.note(err)
			if !bo.Sleep(ctx) {
				return
			}
			continue
		}
		bo.Reset()
		err = p.session(cl, stop, gap, &pending)
		cl.close()
		if err == nil {
			return
		}
		p.note(err)
		if !bo.Sleep(ctx) {
			return
		}
	}
}

func (p *clusterProducer) session(cl *client, stop <-chan struct{}, gap time.Duration, pending *string) error {
	tick := time.NewTicker(gap)
	defer tick.Stop()
	for {
		id := *pending
		if id == "" {
			select {
			case <-stop:
				return nil
			case <-tick.C:
			}
			p.mu.Lock()
			id = p.prefix + strconv.Itoa(p.sent)
			p.sent++
			p.mu.Unlock()
			*pending = id
		}
		if err := cl.sendBody(frame.SEND, []byte(id), frame.Destination, p.dest, "persistent", "true",
			"amqp-message-id", id, frame.Receipt, id); err != nil {
			return &dialErr{err: err}
		}
		f, err := cl.await(10*time.Second, receiptFor(id), nil)
		if err != nil {
			return &dialErr{err: err}
		}
		if f.Command == frame.ERROR {
			return &dialErr{code: errorCode(f)}
		}
		p.mu.Lock()
		p.receipted[id] = true
		if now := time.Now(); !p.last.IsZero() {
			p.maxGap = max(p.maxGap, now.Sub(p.last))
			p.last = now
		} else {
			p.last = now
		}
		p.mu.Unlock()
		*pending = ""
	}
}

func (p *clusterProducer) note(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.codes[codeOf(err)]++
}

func (p *clusterProducer) receiptedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.receipted)
}

func (p *clusterProducer) sentCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent
}

func (p *clusterProducer) receiptedIDs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := make([]string, 0, len(p.receipted))
	for id := range p.receipted {
		ids = append(ids, id)
	}
	return ids
}

func receiptedCount(ps []*clusterProducer) (n int) {
	for _, p := range ps {
		n += p.receiptedCount()
	}
	return n
}

func sentCount(ps []*clusterProducer) (n int) {
	for _, p := range ps {
		n += p.sentCount()
	}
	return n
}

func receiptedIDs(ps []*clusterProducer) (ids []string) {
	for _, p := range ps {
		ids = append(ids, p.receiptedIDs()...)
	}
	return ids
}

// sentBy reports whether body is a message one of ps sent.
func sentBy(ps []*clusterProducer, body string) bool {
	for _, p := range ps {
		if rest, ok := strings.CutPrefix(body, p.prefix); ok {
			i, err := strconv.Atoi(rest)
			return err == nil && i < p.sentCount()
		}
	}
	return false
}

func (p *clusterProducer) errorCodes() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.codes))
	for k, v := range p.codes {
		out[k] = v
	}
	return out
}
