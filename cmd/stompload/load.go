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
	pub  *stompConn
	sub  *stompConn
	// credits holds one token per message in flight (closed mode); the
	// publisher puts one in before each send, the subscriber takes one out
	// per message. Capacity Inflight: a full channel is the in-flight limit,
	// and the publisher waits on it.
	credits chan struct{}
}

// run connects every pair, publishes for warmup+duration, waits up to
// Drain for in-flight messages, and returns the result.
func (l *load) run(ctx context.Context) (*result, error) {
	c := l.cfg
	pairs, err := l.connect(ctx)
	defer func() {
		for _, p := range pairs {
			if p.sub != nil {
				p.sub.ws.Close()
			}
		}
	}()
	if err != nil {
		for _, p := range pairs {
			if p.pub != nil {
				p.pub.close()
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
		subs.Add(1)
		go func() { defer subs.Done(); l.subscribe(p) }()
		pubs.Add(1)
		go func() { defer pubs.Done(); l.publish(runCtx, p) }()
	}
	l.progress(runCtx)
	pubs.Wait()
	l.stopping.Store(true)
	for _, p := range pairs {
		p.pub.close()
	}
	l.drain(ctx)
	for _, p := range pairs {
		p.sub.close()
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
		p := &pair{i: i, dest: c.dest(i)}
		if c.Mode == ModeClosed {
			p.credits = make(chan struct{}, c.Inflight)
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
			if err := sub.subscribe(p.dest, c.Timeout); err != nil {
				errs[i] = fmt.Errorf("pair %d: %w", i, err)
				return
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

// publish sends until ctx ends, paced by the mode.
func (l *load) publish(ctx context.Context, p *pair) {
	c := l.cfg
	prefix := fmt.Appendf(nil, "SEND\ndestination:%s\ncontent-type:text/plain\ncontent-length:%d\n\n", p.dest, c.Size)
	msg := make([]byte, len(prefix)+c.Size+1)
	copy(msg, prefix)
	body := msg[len(prefix) : len(prefix)+c.Size]
	for i := range body {
		body[i] = 'x'
	}
	var seq uint64
	send := func(stamp time.Duration) bool {
		seq++
		stampBody(body, stamp, seq)
		if err := p.pub.write(msg, time.Now().Add(writeTimeout)); err != nil {
			if ctx.Err() == nil {
				l.countErr(fmt.Errorf("pair %d publish: %w", p.i, err))
			}
			return false
		}
		l.sent.Add(1)
		return true
	}

	if c.Mode == ModeClosed {
		for {
			select {
			case <-ctx.Done():
				return
			case p.credits <- struct{}{}:
			}
			if !send(time.Since(l.start)) {
				return
			}
		}
	}

	// Rate mode: message k of this pair is due at offset + k*interval; each
	// is stamped with when it was due, so falling behind counts as latency.
	interval := time.Duration(float64(time.Second) * float64(c.Pairs) / c.Rate)
	next := interval * time.Duration(p.i) / time.Duration(c.Pairs)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		now := time.Since(l.start)
		for next <= now {
			if !send(next) {
				return
			}
			next += interval
		}
		timer.Reset(next - now)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
	}
}

// subscribe reads p's subscriber connection until it is closed.
func (l *load) subscribe(p *pair) {
	for {
		f, err := p.sub.readFrame(time.Time{})
		if err != nil {
			if !l.stopping.Load() {
				l.countErr(fmt.Errorf("pair %d subscriber: %w", p.i, err))
			}
			return
		}
		now := time.Since(l.start)
		switch f.Command {
		case frame.MESSAGE:
		case frame.ERROR:
			l.countErr(fmt.Errorf("pair %d subscriber: %w: %s", p.i, ErrServerError, f.Header.Get(frame.Message)))
			return
		default:
			continue
		}
		stamp, ok := parseStamp(f.Body)
		if !ok {
			l.countErr(fmt.Errorf("pair %d: a message without a stompload timestamp", p.i))
			continue
		}
		l.received.Add(1)
		if p.credits != nil {
			select {
			case <-p.credits:
			default:
			}
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
	}
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
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastSent, lastRecv int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent, recv := l.sent.Load(), l.received.Load()
		l.mu.Lock()
		p50, p99, n := l.interval.ValueAtQuantile(50), l.interval.ValueAtQuantile(99), l.interval.TotalCount()
		l.interval.Reset()
		l.mu.Unlock()
		if !l.cfg.Quiet {
			phase := "run"
			if time.Since(l.start) < l.warmupEnd {
				phase = "warmup"
			}
			lat := "-"
			if n > 0 {
				lat = fmt.Sprintf("p50=%s p99=%s", fmtUS(p50), fmtUS(p99))
			}
			fmt.Fprintf(l.out, "%5.1fs %-6s sent/s=%d recv/s=%d %s errors=%d\n",
				time.Since(l.start).Seconds(), phase, sent-lastSent, recv-lastRecv, lat, l.errs.Load())
		}
		lastSent, lastRecv = sent, recv
	}
}

// drain waits until every sent message has been received, or Drain passes.
func (l *load) drain(ctx context.Context) {
	deadline := time.Now().Add(l.cfg.Drain)
	for l.received.Load() < l.sent.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

func fmtUS(us int64) string {
	return strconv.FormatFloat(float64(us)/1000, 'f', 3, 64) + "ms"
}
