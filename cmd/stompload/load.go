package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/stomp/stompws"
)

// minBody is the smallest body: the send timestamp and the pair's sequence
// number are written into its first bytes.
const minBody = 32

// Latencies are recorded in microseconds, from 1 µs to 1 minute, with 3
// significant digits.
const (
	histMin    = 1
	histMax    = int64(time.Minute / time.Microsecond)
	histDigits = 3
)

// load is one run: its pairs, clock and counters.
type load struct {
	cfg   options
	out   io.Writer
	start time.Time // monotonic zero of every timestamp in a body

	warmupEnd  time.Duration // since start
	measureEnd time.Duration

	sent     atomic.Int64 // all SENDs written, warm-up included
	received atomic.Int64 // all MESSAGEs read, warm-up and drain included
	measured atomic.Int64 // MESSAGEs read within [warmupEnd, measureEnd)
	errs     atomic.Int64 // write/read failures, ERROR frames, malformed bodies
	stopping atomic.Bool  // set once publishers are told to stop; read errors after it are expected

	mu       sync.Mutex // guards the histograms; subscribers record, the progress loop reads
	total    *hdrhistogram.Histogram
	interval *hdrhistogram.Histogram

	errMu    sync.Mutex
	firstErr error // the first error counted, for the report
}

func newLoad(cfg options, out io.Writer) *load {
	return &load{
		cfg:      cfg,
		out:      out,
		total:    hdrhistogram.New(histMin, histMax, histDigits),
		interval: hdrhistogram.New(histMin, histMax, histDigits),
	}
}

func (l *load) countErr(err error) {
	l.errs.Add(1)
	l.errMu.Lock()
	if l.firstErr == nil {
		l.firstErr = err
	}
	l.errMu.Unlock()
}

// pair is one publisher connection and one subscriber connection on the
// same destination.
type pair struct {
	i    int
	dest string
	pub  *stompws.Conn
	sub  *stompws.Conn   // the first subscriber: the closed loop's
	subs []*stompws.Conn // every subscriber (--fanout), sub first

	// Closed mode: outstanding counts messages sent and not yet received.
	// The publisher tops it up to Inflight in one flush; the subscriber
	// counts it down and signals wake once per batch of messages that
	// arrived together, not once per message. Capacity 1: a pending wake-up
	// already says "look again", a second would say nothing more, so a full
	// channel drops it.
	outstanding atomic.Int64
	wake        chan struct{}
	released    bool // the subscriber counted outstanding down since its last wake; subscriber only

	// Publisher only (the pair's goroutine in closed mode, the pacer in
	// rate mode): the SEND, encoded once, its body, which is stamped in
	// place, and what is queued on pub and not yet flushed.
	msg, body []byte
	seq       uint64
	queued    int64
	dead      bool // a write failed: nothing more is sent on this pair
}

// run connects every pair, publishes for warmup+duration, waits up to
// Drain for in-flight messages, and returns the result.
func (l *load) run(ctx context.Context) (*result, error) {
	c := l.cfg
	pairs, err := l.connect(ctx)
	defer func() {
		for _, p := range pairs {
			for _, s := range p.subs {
				s.Close()
			}
		}
	}()
	if err != nil {
		for _, p := range pairs {
			if p.pub != nil {
				_ = p.pub.Disconnect(time.Second)
			}
		}
		return nil, err
	}

	l.start = time.Now()
	l.warmupEnd = c.Warmup
	l.measureEnd = c.Warmup + c.Duration
	runCtx, stopPublishing := context.WithDeadline(ctx, l.start.Add(l.measureEnd))
	defer stopPublishing()

	var subs, pubs sync.WaitGroup
	for _, p := range pairs {
		for _, conn := range p.subs {
			subs.Add(1)
			go func() { defer subs.Done(); l.subscribe(p, conn) }()
		}
		if c.Mode == ModeClosed {
			pubs.Add(1)
			go func() { defer pubs.Done(); l.publishClosed(runCtx, p) }()
		}
	}
	if c.Mode == ModeRate {
		pubs.Add(1)
		go func() { defer pubs.Done(); l.pace(runCtx, pairs) }()
	}
	l.progress(runCtx)
	pubs.Wait()
	l.stopping.Store(true)
	for _, p := range pairs {
		_ = p.pub.Disconnect(time.Second)
	}
	l.drain(ctx)
	for _, p := range pairs {
		for _, conn := range p.subs {
			_ = conn.Disconnect(time.Second)
		}
	}
	subs.Wait()
	return l.result(), nil
}

// connect sets up every pair's connections, subscriber first, 16 at a time.
func (l *load) connect(ctx context.Context) ([]*pair, error) {
	c := l.cfg
	pairs := make([]*pair, c.Pairs)
	errs := make([]error, c.Pairs)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range pairs {
		p := &pair{i: i, dest: c.dest(i), wake: make(chan struct{}, 1)}
		prefix := fmt.Appendf(nil, "SEND\ndestination:%s\ncontent-type:text/plain\ncontent-length:%d\n\n", p.dest, c.Size)
		p.msg = make([]byte, len(prefix)+c.Size+1)
		copy(p.msg, prefix)
		p.body = p.msg[len(prefix) : len(prefix)+c.Size]
		for i := range p.body {
			p.body[i] = 'x'
		}
		pairs[i] = p
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			user := c.User + "-" + strconv.Itoa(i)
			sub, err := dial(ctx, c, user, i)
			if err != nil {
				errs[i] = fmt.Errorf("pair %d subscriber: %w", i, err)
				return
			}
			p.sub = sub
			p.subs = append(p.subs, sub)
			if err := subscribe(ctx, sub, p.dest, c.Timeout); err != nil {
				errs[i] = fmt.Errorf("pair %d: %w", i, err)
				return
			}
			for j := 1; j < c.Fanout; j++ {
				extra, err := dial(ctx, c, user+"."+strconv.Itoa(j), i)
				if err != nil {
					errs[i] = fmt.Errorf("pair %d subscriber %d: %w", i, j, err)
					return
				}
				p.subs = append(p.subs, extra)
				if err := subscribe(ctx, extra, p.dest, c.Timeout); err != nil {
					errs[i] = fmt.Errorf("pair %d subscriber %d: %w", i, j, err)
					return
				}
			}
			pub, err := dial(ctx, c, user, i)
			if err != nil {
				errs[i] = fmt.Errorf("pair %d publisher: %w", i, err)
				return
			}
			p.pub = pub
		}()
	}
	wg.Wait()
	return pairs, errors.Join(errs...)
}

// queue stamps p's SEND with stamp and the next sequence number and queues
// it on p's publisher connection.
func (l *load) queue(p *pair, stamp time.Duration) {
	if p.dead {
		return
	}
	p.seq++
	stampBody(p.body, stamp, p.seq)
	if err := p.pub.WriteFrame(p.msg); err != nil {
		l.pubFailed(p, err)
		return
	}
	p.queued++
}

// flush writes out what is queued on p's publisher connection, in one write.
func (l *load) flush(p *pair) {
	if p.dead || p.queued == 0 {
		return
	}
	_ = p.pub.SetWriteDeadline(time.Now().Add(writeTimeout))
	if err := p.pub.Flush(); err != nil {
		l.pubFailed(p, err)
		return
	}
	l.sent.Add(p.queued)
	p.queued = 0
}

func (l *load) pubFailed(p *pair, err error) {
	p.dead = true
	if !l.stopping.Load() {
		l.countErr(fmt.Errorf("pair %d publish: %w", p.i, err))
	}
}

// publishClosed keeps up to Inflight of p's messages in flight until ctx
// ends. It tops the window up in batches: once at least refill(Inflight)
// messages have been received it sends that many at once, in one write.
// Refilling on every received message would make every message cost each
// process on the loop a wake-up and a system call of its own, and the
// load generator, not the server, would set the pace.
func (l *load) publishClosed(ctx context.Context, p *pair) {
	batch := refill(l.cfg.Inflight)
	for ctx.Err() == nil && !p.dead {
		n := int64(l.cfg.Inflight) - p.outstanding.Load()
		if n < batch {
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
			}
			continue
		}
		p.outstanding.Add(n)
		for range n {
			l.queue(p, time.Since(l.start))
		}
		l.flush(p)
	}
}

// refill is the least number of free places in a closed-loop window of
// inflight messages worth a write: a quarter of it.
func refill(inflight int) int64 { return max(int64(inflight)/4, 1) }

// pace is rate mode: one goroutine sends every pair's messages, message k
// (of all pairs, round robin) due at k/Rate seconds and stamped with when
// it was due, so falling behind counts as latency (no coordinated
// omission). It sleeps precisely (see sleepUntil) and flushes each
// connection it wrote to once per wake-up.
func (l *load) pace(ctx context.Context, pairs []*pair) {
	lockPacer()
	perMsg := float64(time.Second) / l.cfg.Rate
	due := func(k int64) time.Duration { return time.Duration(float64(k) * perMsg) }
	touched := make([]*pair, 0, len(pairs))
	inTouched := make([]bool, len(pairs))
	var k int64
	for ctx.Err() == nil {
		now := time.Since(l.start)
		for d := due(k); d <= now && d < l.measureEnd; d = due(k) {
			p := pairs[k%int64(len(pairs))]
			l.queue(p, d)
			if !inTouched[p.i] {
				inTouched[p.i] = true
				touched = append(touched, p)
			}
			k++
		}
		for _, p := range touched {
			l.flush(p)
			inTouched[p.i] = false
		}
		touched = touched[:0]
		if due(k) >= l.measureEnd {
			return
		}
		sleepUntil(ctx, l.start.Add(due(k)))
	}
}

// subscribe reads one of p's subscriber connections until it is closed;
// only the first (p.sub) drives the closed loop.
func (l *load) subscribe(p *pair, conn *stompws.Conn) {
	wakeAt := int64(l.cfg.Inflight) - refill(l.cfg.Inflight)
	first := conn == p.sub
	err := conn.ReadLoop(func(f *frame.Frame, _ bool) error {
		return l.received1(p, f, first)
	}, func() {
		if first && p.released && p.outstanding.Load() <= wakeAt {
			p.released = false
			select {
			case p.wake <- struct{}{}:
			default: // a wake-up is already pending
			}
		}
	})
	if errors.Is(err, stompws.ErrServerError) {
		l.countErr(fmt.Errorf("pair %d subscriber: %w", p.i, err))
		return
	}
	if !l.stopping.Load() {
		l.countErr(fmt.Errorf("pair %d subscriber: %w", p.i, err))
	}
}

// received1 accounts for one frame read by one of p's subscribers; first
// says it is the one that drives the closed loop.
func (l *load) received1(p *pair, f *frame.Frame, first bool) error {
	now := time.Since(l.start)
	switch f.Command {
	case frame.MESSAGE:
	case frame.ERROR:
		return fmt.Errorf("%w: %s", stompws.ErrServerError, f.Header.Get(frame.Message))
	default:
		return nil
	}
	stamp, ok := parseStamp(f.Body)
	if !ok {
		l.countErr(fmt.Errorf("pair %d: a message without a stompload timestamp", p.i))
		return nil
	}
	l.received.Add(1)
	if first {
		p.outstanding.Add(-1)
		p.released = true
	}
	if now >= l.warmupEnd && now < l.measureEnd {
		l.measured.Add(1)
	}
	if stamp >= l.warmupEnd && stamp < l.measureEnd {
		us := max((now - stamp).Microseconds(), histMin)
		l.mu.Lock()
		_ = l.total.RecordValue(us)
		_ = l.interval.RecordValue(us)
		l.mu.Unlock()
	}
	return nil
}

// stampBody writes the send time (ns since start) and seq as hex into the
// first minBody bytes of body: "tttttttttttttttt sssssssssssssss".
func stampBody(body []byte, stamp time.Duration, seq uint64) {
	putHex(body[0:16], uint64(stamp))
	body[16] = ' '
	putHex(body[17:minBody], seq) // the low 15 hex digits
}

func putHex(dst []byte, v uint64) {
	const digits = "0123456789abcdef"
	for i := len(dst) - 1; i >= 0; i-- {
		dst[i] = digits[v&0xf]
		v >>= 4
	}
}

func parseStamp(body []byte) (time.Duration, bool) {
	if len(body) < minBody || body[16] != ' ' {
		return 0, false
	}
	var v uint64
	for _, c := range body[:16] {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return time.Duration(v), true
}

// progress prints one line a second until ctx ends.
func (l *load) progress(ctx context.Context) {
	everySecond(ctx, &l.sent, &l.received, &l.mu, l.interval, func(dSent, dRecv int64, lat string) {
		if l.cfg.Quiet {
			return
		}
		phase := "run"
		if time.Since(l.start) < l.warmupEnd {
			phase = "warmup"
		}
		fmt.Fprintf(l.out, "%5.1fs %-6s sent/s=%d recv/s=%d %s errors=%d\n",
			time.Since(l.start).Seconds(), phase, dSent, dRecv, lat, l.errs.Load())
	})
}

// everySecond is the progress loop of every mode: once a second until ctx
// ends it calls line with the messages sent and received in that second
// and the p50/p99 of interval ("-" when empty), which it then resets
// (interval is guarded by mu).
func everySecond(ctx context.Context, sent, received *atomic.Int64, mu *sync.Mutex, interval *hdrhistogram.Histogram,
	line func(dSent, dRecv int64, lat string)) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastSent, lastRecv int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s, r := sent.Load(), received.Load()
		mu.Lock()
		p50, p99, n := interval.ValueAtQuantile(50), interval.ValueAtQuantile(99), interval.TotalCount()
		interval.Reset()
		mu.Unlock()
		lat := "-"
		if n > 0 {
			lat = fmt.Sprintf("p50=%s p99=%s", fmtUS(p50), fmtUS(p99))
		}
		line(s-lastSent, r-lastRecv, lat)
		lastSent, lastRecv = s, r
	}
}

// drain waits until every sent message has been received, or Drain passes.
func (l *load) drain(ctx context.Context) {
	deadline := time.Now().Add(l.cfg.Drain)
	for l.received.Load() < l.sent.Load()*int64(l.cfg.Fanout) && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

func fmtUS(us int64) string {
	return strconv.FormatFloat(float64(us)/1000, 'f', 3, 64) + "ms"
}
