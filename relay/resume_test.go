package relay

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-stomp/stomp/v3/frame"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/history"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/persist"
)

// journalEdge is an edge with resume over a real journal: a persister's
// Journal in-process on the test's own vhost and database.
func journalEdge(t *testing.T, env map[string]string) *edge {
	t.Helper()
	vhost, dbURL := testenv.Vhost(t), testenv.DB(t)
	cfg, err := config.LoadPersister(testenv.Env(map[string]string{
		"PERSIST_AMQP_URL":              testenv.AMQPURL(vhost),
		"PERSIST_DATABASE_URL":          dbURL,
		"PERSIST_ARCHIVE":               "false",
		"PERSIST_JOURNAL_SCAN_INTERVAL": "200ms",
		"PERSIST_JOURNAL_LOCK_POLL":     "20ms",
		"PERSIST_RETRY_MIN":             "20ms",
		"PERSIST_RETRY_MAX":             "500ms",
	}))
	if err != nil {
		t.Fatal(err)
	}
	pool := testenv.Pool(t, dbURL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := persist.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	jm := persist.NewJournalMetrics(prometheus.NewRegistry())
	jn := persist.NewJournal(cfg, jm, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})))
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- jn.Run(rctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("journal: %v", err)
		}
	})
	testenv.WaitFor(t, 20*time.Second, func() error { // the journal declared its topology and consumes
		for _, q := range must(testenv.Queues(vhost)) {
			if q.Name == cfg.JournalQueue && q.Consumers > 0 {
				return nil
			}
		}
		return fmt.Errorf("no consumer on %s yet", cfg.JournalQueue)
	})
	e := startEdgeWith(t, vhost, env, func(d *Deps) { d.Journal = history.Journal{Pool: pool} })
	// The journal leads once it consumes stompgate.ingest: a receipted
	// SEND to /app/ that comes back on /topic/ proves the whole path.
	probe := e.mustDial(nil)
	probe.connect(testenv.Token(t, "probe", nil))
	probe.raw("SUBSCRIBE\nid:p\ndestination:/topic/warmup\nreceipt:r\n\n\x00")
	probe.expect(frame.RECEIPT)
	probe.raw("SEND\ndestination:/app/warmup\n\nhello\x00")
	if m := probe.next(20 * time.Second).f; m.Command != frame.MESSAGE || m.Header.Get(HeaderSeq) != "1" {
		t.Fatalf("journal not running: %s %v", m.Command, m.Header)
	}
	return e
}

func must[T any](v T, err error) T {
	if err != nil {
		return *new(T)
	}
	return v
}

func seqOf(t *testing.T, f *frame.Frame) int64 {
	t.Helper()
	n, err := strconv.ParseInt(f.Header.Get(HeaderSeq), 10, 64)
	if err != nil {
		t.Fatalf("MESSAGE without x-seq: %v", f.Header)
	}
	return n
}

// TestResumeTenReconnectsUnderLoad: a publisher journals 500 msg/s while a
// subscriber drops and resumes ten times; every seq arrives exactly once,
// in order.
func TestResumeTenReconnectsUnderLoad(t *testing.T) {
	t.Parallel()
	e := journalEdge(t, nil)
	const total = 1500 // 3 s at 500 msg/s
	pub := e.mustDial(nil)
	pub.connect(testenv.Token(t, "publisher", nil))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for i := 1; i <= total; i++ {
			<-tick.C
			if err := pub.ws.WriteMessage(1, []byte(fmt.Sprintf("SEND\ndestination:/app/chat.resume\n\n%d\x00", i))); err != nil {
				t.Errorf("publish %d: %v", i, err)
				return
			}
		}
	}()

	var seen []int64
	last := int64(0)
	// read takes MESSAGEs until stopAt (a zero stopAt: until seq total).
	// A round may find nothing new once the publisher is done: it waits
	// for frames only until its stop time.
	read := func(c *client, stopAt time.Time) {
		for stopAt.IsZero() && last < total || !stopAt.IsZero() && time.Now().Before(stopAt) {
			wait := 10 * time.Second
			if !stopAt.IsZero() {
				wait = time.Until(stopAt)
			}
			var f *frame.Frame
			select {
			case r, ok := <-c.frames:
				if !ok {
					t.Fatalf("connection closed after seq %d", last)
				}
				f = r.f
			case <-time.After(wait):
				if stopAt.IsZero() {
					t.Fatalf("no MESSAGE within %s after seq %d", wait, last)
				}
				return
			}
			if f.Command != frame.MESSAGE {
				t.Fatalf("got %s %v", f.Command, f.Header)
			}
			if f.Header.Get(HeaderResume) == "gap" {
				t.Fatalf("gap after seq %d with EDGE_RESUME_MAX %d", last, e.srv.cfg.ResumeMax)
			}
			last = seqOf(t, f)
			seen = append(seen, last)
		}
	}
	for round := 0; round < 10; round++ {
		c := e.mustDial(nil)
		c.connect(testenv.Token(t, "reader", nil))
		c.raw(fmt.Sprintf("SUBSCRIBE\nid:r\ndestination:/topic/chat.resume\nx-resume-after:%d\nreceipt:sub\n\n\x00", last))
		r := c.expect(frame.RECEIPT)
		if at := seqOf(t, r); at < last {
			t.Fatalf("RECEIPT x-seq %d below the resume point %d", at, last)
		}
		read(c, time.Now().Add(time.Duration(100+rand.IntN(200))*time.Millisecond))
		c.ws.Close()                                                 // an abrupt drop, no DISCONNECT
		time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond) // offline while messages flow
	}
	wg.Wait()
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "reader", nil))
	c.raw(fmt.Sprintf("SUBSCRIBE\nid:r\ndestination:/topic/chat.resume\nx-resume-after:%d\n\n\x00", last))
	read(c, time.Time{})
	for i, s := range seen {
		if s != int64(i+1) {
			t.Fatalf("message %d has seq %d: %v", i, s, seen[max(0, i-3):min(len(seen), i+3)])
		}
	}
	if len(seen) != total {
		t.Fatalf("saw %d messages, want %d", len(seen), total)
	}
	if n := counter(e.metrics.ResumeReplayed); n == 0 {
		t.Fatal("nothing was replayed: the test did not exercise resume")
	}
}

// TestResumeReplayMatchesLive: a replayed message carries the same headers
// as its live broadcast (only subscription and message-id differ).
func TestResumeReplayMatchesLive(t *testing.T) {
	t.Parallel()
	e := journalEdge(t, nil)
	live := e.mustDial(nil)
	live.connect(testenv.Token(t, "live", nil))
	live.raw("SUBSCRIBE\nid:l\ndestination:/topic/match.x\nreceipt:r\n\n\x00")
	live.expect(frame.RECEIPT)
	pub := e.mustDial(nil)
	pub.connect(testenv.Token(t, "alice", nil))
	pub.raw("SEND\ndestination:/app/match.x\ncontent-type:application/json\ncolor:blue\ncorrelation-id:c-1\npersistent:true\n\n{\"n\":1}\x00")
	lf := live.expect(frame.MESSAGE)

	re := e.mustDial(nil)
	re.connect(testenv.Token(t, "late", nil))
	re.raw("SUBSCRIBE\nid:z\ndestination:/topic/match.x\nx-resume-after:0\nreceipt:r\n\n\x00")
	if r := re.expect(frame.RECEIPT); r.Header.Get(HeaderSeq) != "1" {
		t.Fatalf("RECEIPT %v, want x-seq:1", r.Header)
	}
	rf := re.expect(frame.MESSAGE)
	headers := func(f *frame.Frame) map[string]string {
		m := map[string]string{}
		for i := 0; i < f.Header.Len(); i++ {
			k, v := f.Header.GetAt(i)
			switch k {
			case frame.Subscription, frame.MessageId, frame.Ack:
				continue
			}
			m[k] = v
		}
		return m
	}
	lh, rh := headers(lf), headers(rf)
	for k, v := range lh {
		if rh[k] != v {
			t.Errorf("header %s: live %q, replayed %q", k, v, rh[k])
		}
	}
	for k, v := range rh {
		if _, ok := lh[k]; !ok {
			t.Errorf("replayed has %s:%q, live does not", k, v)
		}
	}
	if string(rf.Body) != string(lf.Body) {
		t.Fatalf("body %q vs %q", rf.Body, lf.Body)
	}
}

// TestResumeGap: more to replay than EDGE_RESUME_MAX: the first MESSAGE
// carries x-resume:gap and the client fills from /api/history.
func TestResumeGap(t *testing.T) {
	t.Parallel()
	e := journalEdge(t, map[string]string{"EDGE_RESUME_MAX": "3"})
	pub := e.mustDial(nil)
	pub.connect(testenv.Token(t, "alice", nil))
	for i := 0; i < 5; i++ {
		pub.raw(fmt.Sprintf("SEND\ndestination:/app/gap.x\nreceipt:s%d\n\n%d\x00", i, i))
		pub.expect(frame.RECEIPT)
	}
	c := e.mustDial(nil)
	c.connect(testenv.Token(t, "late", nil))
	// Wait until all five are journaled: the RECEIPT's x-seq says.
	testenv.WaitFor(t, 10*time.Second, func() error {
		probe := e.mustDial(nil)
		probe.connect(testenv.Token(t, "probe", nil))
		probe.raw("SUBSCRIBE\nid:p\ndestination:/topic/gap.x\nx-resume-after:5\nreceipt:r\n\n\x00")
		if r := probe.expect(frame.RECEIPT); r.Header.Get(HeaderSeq) != "5" {
			return fmt.Errorf("x-seq %s", r.Header.Get(HeaderSeq))
		}
		return nil
	})
	c.raw("SUBSCRIBE\nid:g\ndestination:/topic/gap.x\nx-resume-after:0\nreceipt:r\n\n\x00")
	c.expect(frame.RECEIPT)
	pub.raw("SEND\ndestination:/app/gap.x\n\nlive\x00")
	m := c.expect(frame.MESSAGE)
	if m.Header.Get(HeaderResume) != "gap" || seqOf(t, m) != 6 {
		t.Fatalf("first MESSAGE %v, want x-resume:gap and x-seq 6", m.Header)
	}
	if n := counter(e.metrics.ResumeGaps); n != 1 {
		t.Fatalf("resume gaps = %v", n)
	}
}

// TestResumeRefusals: x-resume-after only where it can mean something.
func TestResumeRefusals(t *testing.T) {
	t.Parallel()
	e, _ := startMemEdge(t, nil, nil) // no journal
	for _, tc := range []struct{ frames, code string }{
		{"SUBSCRIBE\nid:1\ndestination:/topic/a\nx-resume-after:3\n\n\x00", CodeBadFrame},     // no journal on this edge
		{"SUBSCRIBE\nid:1\ndestination:/topic/a.*\nx-resume-after:3\n\n\x00", CodeBadFrame},   // wildcard
		{"SUBSCRIBE\nid:1\ndestination:/queue/a\nx-resume-after:3\n\n\x00", CodeBadFrame},     // not a stream
		{"SUBSCRIBE\nid:1\ndestination:/topic/a\nx-resume-after:minus\n\n\x00", CodeBadFrame}, // not a seq
	} {
		c := e.mustDial(nil)
		c.connect(testenv.Token(t, "a", nil))
		c.raw(tc.frames)
		c.expectError(tc.code)
	}
}
