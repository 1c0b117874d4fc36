package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/stomp/stompws"
)

// Storm mode (SPEC §9): --conns clients connect (16 at a time) and
// subscribe to /topic/<prefix>.storm; then, when the server closes them (an
// edge restart or drain) or, with --storm-drop, when they drop their own
// connections at --at, every client reconnects at once: after a jitter of
// up to --backoff, then with full-jitter exponential backoff up to
// --max-backoff, waiting at least a refused upgrade's Retry-After. The
// report is the distribution of the time from losing the connection to
// CONNECTED again (and subscribed), refusals by HTTP status, and ERROR
// frames by x-error-code. The run ends when every client has reconnected
// at least once, or after --duration.

// Reconnect times are recorded in microseconds, up to an hour.
const stormHistMax = int64(time.Hour / time.Microsecond)

type storm struct {
	cfg   options
	out   io.Writer
	start time.Time
	dest  string

	mu       sync.Mutex
	total    *hdrhistogram.Histogram // reconnect times
	interval *hdrhistogram.Histogram
	reasons  map[string]int64 // disconnects by reason

	tally       *tally
	online      atomic.Int64 // clients connected and subscribed now
	disconnects atomic.Int64
	reconnects  atomic.Int64                   // reconnections (one per disconnect that recovered)
	recovered   atomic.Int64                   // clients that reconnected at least once
	honoured    atomic.Int64                   // waits that honoured a Retry-After
	onlineAtEnd int64                          // online when the run ended, before the clients closed
	connCur     []atomic.Pointer[stompws.Conn] // client i's open connection; --storm-drop swaps it out and closes it
}

// stormResult is the storm mode's report; its JSON form is the last line.
type stormResult struct {
	URL             string           `json:"url"`
	Mode            Mode             `json:"mode"`
	Conns           int              `json:"conns"`
	Drop            bool             `json:"storm_drop"`
	AtS             float64          `json:"at_s,omitempty"`
	ElapsedS        float64          `json:"elapsed_s"`
	Online          int64            `json:"online"`      // connected at the end
	Disconnects     int64            `json:"disconnects"` // connections lost, all clients
	Reconnects      int64            `json:"reconnects"`  // of those, reconnected
	Reconnected     int64            `json:"reconnected"` // clients that reconnected at least once
	Reconnect       latency          `json:"reconnect_ms"`
	DisconnectsBy   map[string]int64 `json:"disconnects_by_reason"` // x-error-code of the server's ERROR, "closed", "dropped"
	ConnectFailures map[string]int64 `json:"connect_failures"`      // refused upgrades by HTTP status, dial failures, timeouts
	RetryAfter      int64            `json:"retry_after_honoured"`
	Errors          int64            `json:"errors"`         // connect failures + ERROR answers to CONNECT/SUBSCRIBE + other
	ErrorsByCode    map[string]int64 `json:"errors_by_code"` // ERROR answers to CONNECT/SUBSCRIBE by x-error-code
	FirstError      string           `json:"first_error,omitempty"`
	LoadgenCPU      float64          `json:"loadgen_cpu_s"`
}

func runStorm(ctx context.Context, cfg options, out io.Writer) (*stormResult, error) {
	s := &storm{
		cfg: cfg, out: out, dest: "/topic/" + cfg.RoomPrefix + ".storm",
		total:    hdrhistogram.New(histMin, stormHistMax, histDigits),
		interval: hdrhistogram.New(histMin, stormHistMax, histDigits),
		reasons:  map[string]int64{}, tally: newTally(),
		connCur: make([]atomic.Pointer[stompws.Conn], cfg.Conns),
	}
	s.start = time.Now()
	runCtx, cancel := context.WithDeadline(ctx, s.start.Add(cfg.Duration))
	defer cancel()
	if cfg.StormDrop {
		t := time.AfterFunc(cfg.At, func() {
			for i := range s.connCur {
				if c := s.connCur[i].Swap(nil); c != nil {
					c.Close()
				}
			}
		})
		defer t.Stop()
	}
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range cfg.Conns {
		wg.Add(1)
		go func() { defer wg.Done(); s.client(runCtx, i, sem) }()
	}
	s.onlineAtEnd = s.progress(runCtx, cancel)
	cancel()
	wg.Wait()
	return s.result(), nil
}

// client is client i: connect (the first time through sem), read until
// the connection is lost, reconnect, until ctx ends.
func (s *storm) client(ctx context.Context, i int, sem chan struct{}) {
	c := s.cfg
	name := c.User + "-" + strconv.Itoa(i)
	scope := c.Scope
	if scope == "" {
		scope = "subscribe:" + s.dest
	}
	var lostAt time.Time // zero before the first connection
	attempt := 0
	recovered := false // reconnected at least once
	for ctx.Err() == nil {
		if lostAt.IsZero() {
			sem <- struct{}{}
		}
		conn, fail := open(ctx, c, name, scope, s.dest)
		if lostAt.IsZero() {
			<-sem
		}
		if fail != nil {
			if ctx.Err() != nil {
				return
			}
			s.tally.failed(fail)
			wait := time.Duration(rand.Int64N(int64(min(c.MaxBackoff, c.Backoff<<min(attempt, 20))) + 1))
			if fail.RetryAfter > 0 {
				s.honoured.Add(1)
				wait = fail.RetryAfter + time.Duration(rand.Int64N(int64(c.Backoff)))
			}
			attempt++
			sleepCtx(ctx, wait)
			continue
		}
		attempt = 0
		if !lostAt.IsZero() {
			us := max(time.Since(lostAt).Microseconds(), histMin)
			s.mu.Lock()
			_ = s.total.RecordValue(us)
			_ = s.interval.RecordValue(us)
			s.mu.Unlock()
			s.reconnects.Add(1)
			if !recovered {
				recovered = true
				s.recovered.Add(1)
			}
		}
		s.connCur[i].Store(conn)
		s.online.Add(1)
		stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
		reason := s.read(conn)
		stop()
		if s.connCur[i].Swap(nil) == nil {
			reason = "dropped" // --storm-drop took it
		}
		s.online.Add(-1)
		conn.Close()
		if ctx.Err() != nil {
			return
		}
		lostAt = time.Now()
		s.disconnects.Add(1)
		s.mu.Lock()
		s.reasons[reason]++
		s.mu.Unlock()
		// Everyone lost the connection at about the same moment: spread
		// the first attempt over --backoff.
		sleepCtx(ctx, time.Duration(rand.Int64N(int64(c.Backoff))))
	}
}

// read reads conn until it ends and says why: the x-error-code of the
// server's ERROR, "dropped" (--storm-drop) or "closed".
func (s *storm) read(conn *stompws.Conn) string {
	reason := ""
	_ = conn.ReadLoop(func(f *frame.Frame, _ bool) error {
		if f.Command == frame.ERROR {
			reason = errorCode(f)
			return stompws.ErrServerError
		}
		return nil
	}, nil)
	if reason == "" {
		reason = "closed"
	}
	return reason
}

// progress prints one line a second; it ends the run (cancel) once every
// client has reconnected at least once and is online, or when ctx ends,
// and returns how many were online then.
func (s *storm) progress(ctx context.Context, cancel func()) int64 {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	n := int64(s.cfg.Conns)
	for {
		select {
		case <-ctx.Done():
			return s.online.Load()
		case <-t.C:
		}
		online := s.online.Load()
		done := s.recovered.Load() == n && online == n
		if time.Since(last) >= time.Second || done {
			last = time.Now()
			s.mu.Lock()
			p50, p99, cnt := s.interval.ValueAtQuantile(50), s.interval.ValueAtQuantile(99), s.interval.TotalCount()
			s.interval.Reset()
			s.mu.Unlock()
			if !s.cfg.Quiet {
				lat := "-"
				if cnt > 0 {
					lat = fmt.Sprintf("reconnect p50=%s p99=%s", fmtUS(p50), fmtUS(p99))
				}
				byCode, failures, _, _ := s.tally.counts()
				fmt.Fprintf(s.out, "%5.1fs storm connected=%d/%d disconnects=%d reconnected=%d %s refused[%s] codes[%s]\n",
					time.Since(s.start).Seconds(), s.online.Load(), n, s.disconnects.Load(), s.recovered.Load(), lat,
					fmtCounts(failures), fmtCounts(byCode))
			}
		}
		if done {
			cancel()
			return online
		}
	}
}

func (s *storm) result() *stormResult {
	c := s.cfg
	r := &stormResult{
		URL: c.URL, Mode: ModeStorm, Conns: c.Conns, Drop: c.StormDrop, AtS: c.At.Seconds(),
		ElapsedS:    math.Round(time.Since(s.start).Seconds()*1000) / 1000,
		Online:      s.onlineAtEnd,
		Disconnects: s.disconnects.Load(), Reconnects: s.reconnects.Load(), Reconnected: s.recovered.Load(),
		RetryAfter: s.honoured.Load(),
	}
	r.ErrorsByCode, r.ConnectFailures, r.Errors, r.FirstError = s.tally.counts()
	s.mu.Lock()
	h := s.total
	r.Reconnect = latencyOf(h)
	r.DisconnectsBy = map[string]int64{}
	for k, v := range s.reasons {
		r.DisconnectsBy[k] = v
	}
	s.mu.Unlock()
	r.LoadgenCPU = math.Round(cpuSeconds()*100) / 100
	return r
}

func (r *stormResult) write(w io.Writer) error {
	trigger := "server closes"
	if r.Drop {
		trigger = fmt.Sprintf("clients drop at %gs", r.AtS)
	}
	fmt.Fprintf(w, "\n%s  mode=storm (%s)  clients=%d  elapsed %.1fs  online at the end %d\n",
		r.URL, trigger, r.Conns, r.ElapsedS, r.Online)
	fmt.Fprintf(w, "disconnects %d (%s)  reconnects %d  clients reconnected %d of %d\n",
		r.Disconnects, fmtCounts(r.DisconnectsBy), r.Reconnects, r.Reconnected, r.Conns)
	l := r.Reconnect
	fmt.Fprintf(w, "reconnect   p50 %.1f ms  p95 %.1f ms  p99 %.1f ms  max %.1f ms  (%d samples, disconnect to CONNECTED and subscribed)\n",
		l.P50, l.P95, l.P99, l.Max, l.Count)
	fmt.Fprintf(w, "refusals    %s  (Retry-After honoured %d times)\n", fmtCounts(r.ConnectFailures), r.RetryAfter)
	fmt.Fprintf(w, "errors      %d  by x-error-code: %s", r.Errors, fmtCounts(r.ErrorsByCode))
	if r.FirstError != "" {
		fmt.Fprintf(w, " (first: %s)", r.FirstError)
	}
	fmt.Fprintln(w)
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
