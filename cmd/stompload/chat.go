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

// Chat mode (SPEC §9): --users simulated users, --users-per-room to a room
// (/topic/<prefix>.<room>), each subscribed to its room and sending to it
// after an exponential think time (mean --think), in three phases:
//
//	ramp       users connect one after the other, evenly over --ramp
//	sustained  --duration with every user connected
//	spike      --spike-users more connect at once, in rooms of their own,
//	           and everybody sends for --spike-duration
//
// A room starts talking once all its members have subscribed, so every
// message is due to every member, the sender included: expected = sent ×
// room size, exactly. Each message carries its send time (stampBody); the
// phase a message counts in is the phase it was sent in.

// Phase indexes.
const (
	phaseRamp = iota
	phaseSustained
	phaseSpike
	numPhases
)

var phaseNames = [numPhases]string{"ramp", "sustained", "spike"}

type phaseStats struct {
	sent, expected, received atomic.Int64
	hist                     *hdrhistogram.Histogram // guarded by chat.mu
}

// room is one destination and its members.
type room struct {
	dest    string
	mu      sync.Mutex
	members int // planned, less those that failed to connect
	joined  int
	ready   chan struct{} // closed once joined == members
}

func (r *room) settle(joined bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if joined {
		r.joined++
	} else {
		r.members--
	}
	if r.joined == r.members && r.members > 0 {
		select {
		case <-r.ready:
		default:
			close(r.ready)
		}
	}
}

func (r *room) size() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return int64(r.members)
}

type chat struct {
	cfg   options
	out   io.Writer
	start time.Time
	ends  [numPhases]time.Duration // since start

	phases   [numPhases]*phaseStats
	mu       sync.Mutex
	total    *hdrhistogram.Histogram
	interval *hdrhistogram.Histogram

	rooms     []*room
	online    atomic.Int64 // users connected and subscribed
	stopping  atomic.Bool
	tally     *tally
	expected  atomic.Int64
	received  atomic.Int64
	sent      atomic.Int64
	connected atomic.Int64 // sessions ever opened
}

// phaseResult is one phase's part of the chat report.
type phaseResult struct {
	Name      string  `json:"name"`
	DurationS float64 `json:"duration_s"`
	Sent      int64   `json:"sent"`
	Expected  int64   `json:"expected"` // sent × room size
	Received  int64   `json:"received"`
	Lost      int64   `json:"lost"`
	Latency   latency `json:"latency_ms"`
}

// chatResult is the chat mode's report; its JSON form is the last line.
type chatResult struct {
	URL             string           `json:"url"`
	Mode            Mode             `json:"mode"`
	Users           int              `json:"users"`
	SpikeUsers      int              `json:"spike_users"`
	UsersPerRoom    int              `json:"users_per_room"`
	Rooms           int              `json:"rooms"`
	ThinkMS         float64          `json:"think_ms"`
	Size            int              `json:"size"`
	Connected       int64            `json:"connected"` // sessions opened (of users + spike_users)
	Sent            int64            `json:"sent"`
	Expected        int64            `json:"expected"`
	Received        int64            `json:"received"`
	Lost            int64            `json:"lost"`
	Latency         latency          `json:"latency_ms"`
	Phases          []phaseResult    `json:"phases"`
	Errors          int64            `json:"errors"`
	ErrorsByCode    map[string]int64 `json:"errors_by_code"`   // ERROR frames by x-error-code
	ConnectFailures map[string]int64 `json:"connect_failures"` // refused upgrades by HTTP status, timeouts, ...
	FirstError      string           `json:"first_error,omitempty"`
	LoadgenCPU      float64          `json:"loadgen_cpu_s"`
}

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histDigits) }

func runChat(ctx context.Context, cfg options, out io.Writer) (*chatResult, error) {
	ch := &chat{cfg: cfg, out: out, total: newHist(), interval: newHist(), tally: newTally()}
	for i := range ch.phases {
		ch.phases[i] = &phaseStats{hist: newHist()}
	}
	ch.ends[phaseRamp] = cfg.Ramp
	ch.ends[phaseSustained] = cfg.Ramp + cfg.Duration
	ch.ends[phaseSpike] = ch.ends[phaseSustained]
	if cfg.SpikeUsers > 0 {
		ch.ends[phaseSpike] += cfg.SpikeDuration
	}
	baseRooms := (cfg.Users + cfg.RoomSize - 1) / cfg.RoomSize
	spikeRooms := (cfg.SpikeUsers + cfg.RoomSize - 1) / cfg.RoomSize
	roomOf := make([]int, cfg.Users+cfg.SpikeUsers)
	for i := range roomOf {
		if i < cfg.Users {
			roomOf[i] = i / cfg.RoomSize
		} else {
			roomOf[i] = baseRooms + (i-cfg.Users)/cfg.RoomSize
		}
	}
	ch.rooms = make([]*room, baseRooms+spikeRooms)
	for i := range ch.rooms {
		ch.rooms[i] = &room{dest: "/topic/" + cfg.RoomPrefix + "." + strconv.Itoa(i), ready: make(chan struct{})}
	}
	for _, r := range roomOf {
		ch.rooms[r].members++
	}

	ch.start = time.Now()
	end := ch.start.Add(ch.ends[phaseSpike])
	sendCtx, stopSending := context.WithDeadline(ctx, end)
	defer stopSending()
	var (
		writers sync.WaitGroup
		readers sync.WaitGroup
		connsMu sync.Mutex
		conns   []*stompws.Conn
	)
	for i := range roomOf {
		at := ch.ends[phaseSustained] // spike users
		if i < cfg.Users {
			at = time.Duration(int64(cfg.Ramp) * int64(i) / int64(cfg.Users))
		}
		writers.Add(1)
		go func() {
			defer writers.Done()
			if !sleepCtx(sendCtx, time.Until(ch.start.Add(at))) {
				ch.rooms[roomOf[i]].settle(false)
				return
			}
			conn := ch.user(sendCtx, i, ch.rooms[roomOf[i]], &readers)
			if conn != nil {
				connsMu.Lock()
				conns = append(conns, conn)
				connsMu.Unlock()
			}
		}()
	}
	ch.progress(sendCtx)
	writers.Wait()
	ch.stopping.Store(true)
	deadline := time.Now().Add(cfg.Drain)
	for ch.received.Load() < ch.expected.Load() && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range conns {
		_ = c.Disconnect(time.Second)
	}
	readers.Wait()
	return ch.result(), nil
}

// sleepCtx sleeps d and reports whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// user is user i's life: connect and subscribe to its room, wait for the
// room to fill, then send until ctx ends. It returns the connection (nil
// if it could not be opened) once it has stopped sending; its reader runs
// on until the connection is closed.
func (ch *chat) user(ctx context.Context, i int, r *room, readers *sync.WaitGroup) *stompws.Conn {
	c := ch.cfg
	name := c.User + "-" + strconv.Itoa(i)
	scope := c.Scope
	if scope == "" {
		scope = "send:" + r.dest + " subscribe:" + r.dest
	}
	conn, fail := open(ctx, c, name, scope, r.dest)
	if fail != nil {
		r.settle(false)
		if ctx.Err() == nil {
			ch.tally.failed(fail)
		}
		return nil
	}
	ch.connected.Add(1)
	ch.online.Add(1)
	readers.Add(1)
	go func() {
		defer readers.Done()
		defer ch.online.Add(-1)
		ch.read(i, conn)
	}()
	r.settle(true)
	select {
	case <-ctx.Done():
		return conn
	case <-r.ready:
	}
	prefix := fmt.Appendf(nil, "SEND\ndestination:%s\ncontent-type:text/plain\ncontent-length:%d\n\n", r.dest, c.Size)
	msg := make([]byte, len(prefix)+c.Size+1)
	copy(msg, prefix)
	body := msg[len(prefix) : len(prefix)+c.Size]
	for j := range body {
		body[j] = 'x'
	}
	size := r.size()
	var seq uint64
	for {
		think := time.Duration(rand.ExpFloat64() * float64(c.Think))
		if !sleepCtx(ctx, think) {
			return conn
		}
		stamp := time.Since(ch.start)
		if stamp >= ch.ends[phaseSpike] {
			return conn
		}
		seq++
		stampBody(body, stamp, seq)
		_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		err := conn.WriteFrame(msg)
		if err == nil {
			err = conn.Flush()
		}
		if err != nil {
			if !ch.stopping.Load() {
				ch.tally.otherErr(fmt.Errorf("user %d send: %w", i, err))
			}
			return conn
		}
		p := ch.phases[ch.phaseAt(stamp)]
		p.sent.Add(1)
		p.expected.Add(size)
		ch.sent.Add(1)
		ch.expected.Add(size)
	}
}

func (ch *chat) phaseAt(d time.Duration) int {
	for p := range numPhases {
		if d < ch.ends[p] {
			return p
		}
	}
	return phaseSpike
}

// read accounts for what user i receives until its connection ends.
func (ch *chat) read(i int, conn *stompws.Conn) {
	var gotError bool
	err := conn.ReadLoop(func(f *frame.Frame, _ bool) error {
		now := time.Since(ch.start)
		switch f.Command {
		case frame.MESSAGE:
		case frame.ERROR:
			gotError = true
			code := errorCode(f)
			err := fmt.Errorf("user %d: ERROR %s: %s", i, code, f.Header.Get(frame.Message))
			ch.tally.errorFrame(code, err)
			return err
		default:
			return nil
		}
		stamp, ok := parseStamp(f.Body)
		if !ok {
			ch.tally.otherErr(fmt.Errorf("user %d: a message without a stompload timestamp", i))
			return nil
		}
		us := max((now - stamp).Microseconds(), histMin)
		p := ch.phases[ch.phaseAt(stamp)]
		p.received.Add(1)
		ch.received.Add(1)
		ch.mu.Lock()
		_ = ch.total.RecordValue(us)
		_ = ch.interval.RecordValue(us)
		_ = p.hist.RecordValue(us)
		ch.mu.Unlock()
		return nil
	}, nil)
	if !gotError && !ch.stopping.Load() {
		ch.tally.otherErr(fmt.Errorf("user %d: connection lost: %w", i, err))
	}
}

// progress prints one line a second until ctx ends.
func (ch *chat) progress(ctx context.Context) {
	everySecond(ctx, &ch.sent, &ch.received, &ch.mu, ch.interval, func(dSent, dRecv int64, lat string) {
		if ch.cfg.Quiet {
			return
		}
		now := time.Since(ch.start)
		byCode, failures, errs, _ := ch.tally.counts()
		fmt.Fprintf(ch.out, "%5.1fs %-9s users=%d sent/s=%d recv/s=%d %s errors=%d codes[%s] refused[%s]\n",
			now.Seconds(), phaseNames[ch.phaseAt(now)], ch.online.Load(), dSent, dRecv, lat,
			errs, fmtCounts(byCode), fmtCounts(failures))
	})
}

func latencyOf(h *hdrhistogram.Histogram) latency {
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return latency{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)),
		P95:   ms(h.ValueAtQuantile(95)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
		Mean:  math.Round(h.Mean()) / 1000,
	}
}

func (ch *chat) result() *chatResult {
	c := ch.cfg
	r := &chatResult{
		URL: c.URL, Mode: ModeChat, Users: c.Users, SpikeUsers: c.SpikeUsers, UsersPerRoom: c.RoomSize,
		Rooms: len(ch.rooms), ThinkMS: float64(c.Think) / 1e6, Size: c.Size, Connected: ch.connected.Load(),
		Sent: ch.sent.Load(), Expected: ch.expected.Load(), Received: ch.received.Load(),
	}
	r.Lost = max(r.Expected-r.Received, 0)
	r.ErrorsByCode, r.ConnectFailures, r.Errors, r.FirstError = ch.tally.counts()
	ch.mu.Lock()
	r.Latency = latencyOf(ch.total)
	var from time.Duration
	for i, p := range ch.phases {
		if i == phaseSpike && c.SpikeUsers == 0 {
			break
		}
		pr := phaseResult{
			Name: phaseNames[i], DurationS: (ch.ends[i] - from).Seconds(),
			Sent: p.sent.Load(), Expected: p.expected.Load(), Received: p.received.Load(),
			Latency: latencyOf(p.hist),
		}
		pr.Lost = max(pr.Expected-pr.Received, 0)
		r.Phases = append(r.Phases, pr)
		from = ch.ends[i]
	}
	ch.mu.Unlock()
	r.LoadgenCPU = math.Round(cpuSeconds()*100) / 100
	return r
}

func (r *chatResult) write(w io.Writer) error {
	fmt.Fprintf(w, "\n%s  mode=chat  users=%d (+%d spike)  rooms=%d of %d users  think=%gms  body=%d B\n",
		r.URL, r.Users, r.SpikeUsers, r.Rooms, r.UsersPerRoom, r.ThinkMS, r.Size)
	for _, p := range append(r.Phases, phaseResult{Name: "overall", Sent: r.Sent, Expected: r.Expected, Received: r.Received, Lost: r.Lost, Latency: r.Latency}) {
		fmt.Fprintf(w, "%-9s  sent %d  received %d of %d (lost %d)  p50 %.3f ms  p95 %.3f ms  p99 %.3f ms  max %.3f ms\n",
			p.Name, p.Sent, p.Received, p.Expected, p.Lost, p.Latency.P50, p.Latency.P95, p.Latency.P99, p.Latency.Max)
	}
	fmt.Fprintf(w, "errors     %d  by x-error-code: %s  connect failures: %s", r.Errors, fmtCounts(r.ErrorsByCode), fmtCounts(r.ConnectFailures))
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
