package faults

import (
	"context"
	"encoding/csv"
	"fmt"
	"image/color"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/internal/testenv"
)

// The soak (issue 10 point 10, make soak): SOAK_IDLE (5,000) idle sessions
// heart-beating every 10 s plus a chat workload (SOAK_USERS, 40, users in 8
// rooms, each sending every SOAK_INTERVAL, 1 s, alternately to the journaled
// /app/room.<r> and the archived /topic/chat.<r>, with receipts; every user
// subscribed to /topic/room.<r> and /topic/chat.<r> of its room) for
// SOAK_DURATION (10m), against a real edge and persister process on the
// shared RabbitMQ and Postgres. Every 10 s the RSS of the edge, of the
// broker's beam.smp and of the persister, and the edge's go_goroutines,
// process_resident_memory_bytes and open sessions go to soak.csv; at the
// end soak.png plots them (SOAK_OUT, default docs/). Asserted: no ERROR, no
// session lost, every SEND receipted, delivered to each subscriber of its
// room and stored once; the edge's RSS and goroutines flat after
// SOAK_WARMUP (2m): last sample within 15% (RSS) and 2% (goroutines) of the
// first one after the warm-up.
func TestSoak(t *testing.T) {
	testenv.Integration(t)
	if os.Getenv("STOMPGATE_SOAK") != "1" {
		t.Skip("soak: runs with STOMPGATE_SOAK=1 (make soak)")
	}
	duration := envDuration(t, "SOAK_DURATION", 10*time.Minute)
	warmup := envDuration(t, "SOAK_WARMUP", min(2*time.Minute, duration/5))
	interval := envDuration(t, "SOAK_INTERVAL", time.Second)
	idle := envInt(t, "SOAK_IDLE", 5000)
	users := envInt(t, "SOAK_USERS", 40)
	const (
		rooms  = 8
		sample = 10 * time.Second
		beat   = 10 * time.Second // idle clients' heart-beat, well inside the edge's 25 s
	)
	out := os.Getenv("SOAK_OUT")
	if out == "" {
		out = filepath.Join("..", "..", "docs")
	}
	raiseFDLimit(t, uint64(2*idle+1000)) // the edge inherits the limit
	vhost := testenv.Vhost(t)
	dbURL := testenv.DB(t)
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	pers := startProc(t, "persister", binary(t, "persister"), map[string]string{
		"PERSIST_AMQP_URL": testenv.AMQPURL(vhost), "PERSIST_DATABASE_URL": dbURL,
		"PERSIST_BINDINGS": "chat.#", "PERSIST_METRICS_LISTEN": metricsAddr, "PERSIST_SCHED_POLICY": "other",
	})
	testenv.WaitFor(t, 30*time.Second, func() error {
		if c, err := metrics(metricsAddr); err != nil || sum(c, "stompgate_persister_consuming") != 1 {
			return fmt.Errorf("persister not consuming yet: %v", err)
		}
		return nil
	})
	e := startEdgeProc(t, "edge", vhost, map[string]string{"EDGE_MAX_SESSIONS_PER_USER": "1000"})
	edgeLimit := procLimit(e.cmd.Process.Pid, "Max open files")
	beamPID, err := brokerPID()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), duration+5*time.Minute)
	defer cancel()

	// Idle sessions: connected, subscribed to one of 50 quiet topics,
	// heart-beating; one goroutine writes their heart-beats.
	began := time.Now()
	idlers := make([]*client, idle)
	tokens := make([]string, idle/100+1)
	for i := range tokens {
		tokens[i] = testenv.Token(t, fmt.Sprintf("idle-%d", i), nil)
	}
	g := newGroup(64)
	for i := range idlers {
		g.Go(func() error {
			c, err := dial(ctx, e.url, tokens[i/100], dialOpts{heartBeat: beat, buffer: 16})
			if err != nil {
				return fmt.Errorf("idle %d: %w", i, err)
			}
			idlers[i] = c
			return c.subscribe("q", fmt.Sprintf("/topic/quiet.%d", i%50))
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, c := range idlers {
			if c != nil {
				c.close()
			}
		}
	}()
	t.Logf("%d idle sessions connected and subscribed in %s (edge RLIMIT_NOFILE %s)", idle, time.Since(began).Round(100*time.Millisecond), edgeLimit)
	stopBeat := make(chan struct{})
	beatDone := make(chan struct{})
	go func() {
		defer close(beatDone)
		tick := time.NewTicker(beat)
		defer tick.Stop()
		for {
			select {
			case <-stopBeat:
				return
			case <-tick.C:
			}
			for _, c := range idlers {
				_ = c.ws.WriteHeartBeat()
			}
		}
	}()

	// The chat.
	var sent, sentApp, sentTopic, receipts, delivered, errorsSeen atomic.Int64
	var codeMu sync.Mutex
	codes := map[string]int{}
	chatters := make([]*client, users)
	for u := range chatters {
		c, err := dial(ctx, e.url, testenv.Token(t, fmt.Sprintf("user-%d", u), nil), dialOpts{heartBeat: beat})
		if err != nil {
			t.Fatal(err)
		}
		chatters[u] = c
		r := u % rooms
		for _, d := range []string{fmt.Sprintf("/topic/room.%d", r), fmt.Sprintf("/topic/chat.%d", r)} {
			if err := c.subscribe(d, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	var readers sync.WaitGroup
	for _, c := range chatters {
		readers.Go(func() {
			for f := range c.frames {
				switch f.Command {
				case frame.MESSAGE:
					delivered.Add(1)
				case frame.RECEIPT:
					receipts.Add(1)
				case frame.ERROR:
					errorsSeen.Add(1)
					codeMu.Lock()
					codes[errorCode(f)]++
					codeMu.Unlock()
				}
			}
		})
	}
	stopChat := make(chan struct{})
	var writers sync.WaitGroup
	for u, c := range chatters {
		writers.Go(func() {
			r := u % rooms
			time.Sleep(time.Duration(u) * interval / time.Duration(users)) // spread over the interval
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stopChat:
					return
				case <-tick.C:
				}
				dest := fmt.Sprintf("/topic/chat.%d", r)
				if i%2 == 0 {
					dest = fmt.Sprintf("/app/room.%d", r)
				}
				id := fmt.Sprintf("u%d-%d", u, i)
				if err := c.sendBody(frame.SEND, []byte(`{"text":"hello from `+id+`"}`), frame.Destination, dest,
					frame.ContentType, "application/json", "amqp-message-id", id, frame.Receipt, id); err != nil {
					errorsSeen.Add(1)
					return
				}
				sent.Add(1)
				if i%2 == 0 {
					sentApp.Add(1)
				} else {
					sentTopic.Add(1)
				}
			}
		})
	}

	// The samples.
	csvPath := filepath.Join(out, "soak.csv")
	f, err := os.Create(csvPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := csv.NewWriter(f)
	header := []string{"seconds", "edge_rss_mib", "edge_process_resident_memory_mib", "edge_go_goroutines", "edge_sessions",
		"beam_rss_mib", "persister_rss_mib", "sent", "delivered"}
	_ = w.Write(header)
	type point struct {
		at                                      float64 // seconds since the chat began
		edgeRSS, edgeProm, goroutines, sessions float64
		beamRSS, persRSS, sentN, deliveredN     float64
	}
	var points []point
	chatStart := time.Now()
	take := func() {
		m, err := metrics(e.addr)
		if err != nil {
			t.Errorf("scrape: %v", err)
			return
		}
		p := point{
			at:      time.Since(chatStart).Seconds(),
			edgeRSS: rssMiB(e.cmd.Process.Pid), edgeProm: sum(m, "process_resident_memory_bytes") / (1 << 20),
			goroutines: sum(m, "go_goroutines"), sessions: sum(m, "stompgate_sessions_active"),
			beamRSS: rssMiB(beamPID), persRSS: rssMiB(pers.cmd.Process.Pid),
			sentN: float64(sent.Load()), deliveredN: float64(delivered.Load()),
		}
		points = append(points, p)
		_ = w.Write([]string{fmt.Sprintf("%.0f", p.at), ff(p.edgeRSS), ff(p.edgeProm), ff(p.goroutines), ff(p.sessions),
			ff(p.beamRSS), ff(p.persRSS), ff(p.sentN), ff(p.deliveredN)})
		w.Flush()
		if len(points)%6 == 1 {
			t.Logf("t=%4.0fs edge RSS %.1f MiB, goroutines %.0f, sessions %.0f, beam.smp RSS %.1f MiB, persister RSS %.1f MiB, sent %d, delivered %d, errors %d",
				p.at, p.edgeRSS, p.goroutines, p.sessions, p.beamRSS, p.persRSS, sent.Load(), delivered.Load(), errorsSeen.Load())
		}
	}
	take()
	tick := time.NewTicker(sample)
	for time.Since(chatStart) < duration {
		<-tick.C
		take()
	}
	tick.Stop()
	close(stopChat)
	writers.Wait()
	total := sent.Load()
	testenv.WaitFor(t, 30*time.Second, func() error {
		if r := receipts.Load(); r < total {
			return fmt.Errorf("%d receipts of %d SENDs", r, total)
		}
		return nil
	})
	close(stopBeat)
	<-beatDone

	// Deliveries: every message to each of the users/rooms members of its
	// room, on both destinations.
	perRoom := int64(users / rooms)
	pool := testenv.Pool(t, dbURL)
	var archived, journaled int
	testenv.WaitFor(t, 60*time.Second, func() error {
		if d := delivered.Load(); d < total*perRoom {
			return fmt.Errorf("%d deliveries of %d", d, total*perRoom)
		}
		if archived, err = testenv.Count(ctx, pool, `SELECT count(DISTINCT message_id) FROM stompgate_messages WHERE stream IS NULL`); err != nil || archived < int(sentTopic.Load()) {
			return fmt.Errorf("%d archived of %d: %v", archived, sentTopic.Load(), err)
		}
		if journaled, err = testenv.Count(ctx, pool, `SELECT count(DISTINCT message_id) FROM stompgate_messages WHERE stream IS NOT NULL`); err != nil || journaled < int(sentApp.Load()) {
			return fmt.Errorf("%d journaled of %d: %v", journaled, sentApp.Load(), err)
		}
		return nil
	})
	rows, _ := testenv.Count(ctx, pool, `SELECT count(*) FROM stompgate_messages`)
	if rows != archived+journaled || archived != int(sentTopic.Load()) || journaled != int(sentApp.Load()) {
		t.Errorf("%d rows: %d archived (sent %d), %d journaled (sent %d)", rows, archived, sentTopic.Load(), journaled, sentApp.Load())
	}
	if d := delivered.Load(); d != total*perRoom {
		t.Errorf("%d deliveries, want %d", d, total*perRoom)
	}
	if n := errorsSeen.Load(); n != 0 {
		t.Errorf("%d errors: %v", n, codes)
	}
	lost := 0
	for _, c := range idlers {
		select {
		case <-c.done:
			lost++
		default:
		}
	}
	if lost != 0 {
		t.Errorf("%d of %d idle sessions ended during the soak", lost, idle)
	}

	// Flat after the warm-up?
	var after []point
	for _, p := range points {
		if p.at >= warmup.Seconds() {
			after = append(after, p)
		}
	}
	flat := "n/a"
	if len(after) >= 2 {
		a, z := after[0], after[len(after)-1]
		rssGrowth := (z.edgeRSS - a.edgeRSS) / a.edgeRSS
		gorGrowth := (z.goroutines - a.goroutines) / a.goroutines
		slope := func(get func(point) float64) float64 {
			return slopePerMinute(after, func(i int) (float64, float64) { return after[i].at, get(after[i]) })
		}
		flat = fmt.Sprintf("after the %s warm-up (%d samples): edge RSS %.1f → %.1f MiB (%+.1f%%, slope %+.2f MiB/min, range %.1f-%.1f), goroutines %.0f → %.0f (%+.2f%%, range %.0f-%.0f), beam.smp RSS %.1f → %.1f MiB (slope %+.2f MiB/min), persister RSS %.1f → %.1f MiB",
			warmup, len(after), a.edgeRSS, z.edgeRSS, 100*rssGrowth, slope(func(p point) float64 { return p.edgeRSS }),
			minOf(after, func(p point) float64 { return p.edgeRSS }), maxOf(after, func(p point) float64 { return p.edgeRSS }),
			a.goroutines, z.goroutines, 100*gorGrowth,
			minOf(after, func(p point) float64 { return p.goroutines }), maxOf(after, func(p point) float64 { return p.goroutines }),
			a.beamRSS, z.beamRSS, slope(func(p point) float64 { return p.beamRSS }), a.persRSS, z.persRSS)
		if rssGrowth > 0.15 {
			t.Errorf("edge RSS grew %.1f%% after the warm-up", 100*rssGrowth)
		}
		if math.Abs(gorGrowth) > 0.02 {
			t.Errorf("edge goroutines changed %.2f%% after the warm-up", 100*gorGrowth)
		}
	}

	// The plot.
	xs := make([]float64, len(points))
	col := func(get func(point) float64) []float64 {
		v := make([]float64, len(points))
		for i, p := range points {
			v[i] = get(p)
		}
		return v
	}
	for i, p := range points {
		xs[i] = p.at / 60
	}
	pngPath := filepath.Join(out, "soak.png")
	title := fmt.Sprintf("STOMPGATE SOAK: %d IDLE + %d CHAT USERS, %g MIN", idle, users, duration.Minutes())
	if err := plotPNG(pngPath, title, xs, []panel{
		{title: "EDGE RSS (MIB)", series: []series{
			{name: "VMRSS", color: color.RGBA{31, 119, 180, 255}, ys: col(func(p point) float64 { return p.edgeRSS })},
			{name: "PROCESS_RESIDENT_MEMORY_BYTES", color: color.RGBA{214, 39, 40, 255}, ys: col(func(p point) float64 { return p.edgeProm })},
		}},
		{title: "BROKER AND PERSISTER RSS (MIB)", series: []series{
			{name: "BEAM.SMP (SHARED BROKER)", color: color.RGBA{255, 127, 14, 255}, ys: col(func(p point) float64 { return p.beamRSS })},
			{name: "PERSISTER", color: color.RGBA{44, 160, 44, 255}, ys: col(func(p point) float64 { return p.persRSS })},
		}},
		{title: "EDGE GOROUTINES AND SESSIONS", series: []series{
			{name: "GO_GOROUTINES", color: color.RGBA{148, 103, 189, 255}, ys: col(func(p point) float64 { return p.goroutines })},
			{name: "SESSIONS", color: color.RGBA{140, 86, 75, 255}, ys: col(func(p point) float64 { return p.sessions })},
		}},
	}); err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("soak %s: %d idle sessions (%d lost), %d chat users in %d rooms, %d SENDs (%d /app/, %d /topic/), %d receipts, %d deliveries (%d per message), %d archived, %d journaled, %d errors",
		duration, idle, lost, users, rooms, total, sentApp.Load(), sentTopic.Load(), receipts.Load(), delivered.Load(), perRoom, archived, journaled, errorsSeen.Load())
	t.Logf("%s", flat)
	t.Logf("wrote %s (%d samples) and %s; the test process held %d goroutines, %d MiB of Go heap", csvPath, len(points), pngPath, runtime.NumGoroutine(), ms.HeapInuse>>20)
}

func ff(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: not a positive duration", name, v)
	}
	return d
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: not a positive integer", name, v)
	}
	return n
}

// rssMiB is VmRSS of pid in MiB, NaN when unreadable.
func rssMiB(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return math.NaN()
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseFloat(f[0], 64)
				return kb / 1024
			}
		}
	}
	return math.NaN()
}

// procLimit is one line of /proc/pid/limits ("soft hard").
func procLimit(pid int, name string) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, name); ok {
			f := strings.Fields(rest)
			if len(f) >= 2 {
				return f[0] + " soft, " + f[1] + " hard"
			}
		}
	}
	return "?"
}

// brokerPID is the OS pid of the shared RabbitMQ node's beam.smp (asked
// of the node itself: read only).
func brokerPID() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "eval", "os:getpid().").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("rabbitmqctl eval os:getpid(): %v: %s", err, out)
	}
	return strconv.Atoi(strings.Trim(strings.TrimSpace(string(out)), `"`))
}

// slopePerMinute is the least-squares slope of the n points xy(i)
// (x in seconds), per minute.
func slopePerMinute[T any](pts []T, xy func(i int) (float64, float64)) float64 {
	var sx, sy, sxx, sxy float64
	n := float64(len(pts))
	for i := range pts {
		x, y := xy(i)
		sx, sy, sxx, sxy = sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d * 60
}

func minOf[T any](pts []T, get func(T) float64) float64 {
	m := math.Inf(1)
	for _, p := range pts {
		m = math.Min(m, get(p))
	}
	return m
}

func maxOf[T any](pts []T, get func(T) float64) float64 {
	m := math.Inf(-1)
	for _, p := range pts {
		m = math.Max(m, get(p))
	}
	return m
}
