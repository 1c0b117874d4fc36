package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"
)

// result is the report of one run; its JSON form is the last line stompload
// prints (scripts/bench.sh reads it).
type result struct {
	URL        string  `json:"url"`
	Mode       Mode    `json:"mode"`
	Pairs      int     `json:"pairs"`
	Fanout     int     `json:"fanout"` // subscribers per pair: every message is received Fanout times
	Size       int     `json:"size"`
	Inflight   int     `json:"inflight,omitempty"`
	Rate       float64 `json:"rate,omitempty"` // target msgs/s, rate mode
	DurationS  float64 `json:"duration_s"`
	WarmupS    float64 `json:"warmup_s"`
	Sent       int64   `json:"sent"`     // all SENDs, warm-up included
	Received   int64   `json:"received"` // all MESSAGEs, warm-up and drain included
	Measured   int64   `json:"measured"` // MESSAGEs received within the measured duration
	Lost       int64   `json:"lost"`     // sent and not received by the end of the drain
	Errors     int64   `json:"errors"`
	FirstError string  `json:"first_error,omitempty"`
	Throughput float64 `json:"throughput_msgs_per_s"` // Measured / duration
	Latency    latency `json:"latency_ms"`            // of messages sent within the measured duration
	// LoadgenCPU is the CPU time stompload itself used (user+system
	// seconds, whole run), and its share of the wall time in cores: a
	// load generator near the machine's core count measures itself.
	LoadgenCPU      float64 `json:"loadgen_cpu_s"`
	LoadgenCPUCores float64 `json:"loadgen_cpu_cores"`
}

type latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

func (l *load) result() *result {
	c := l.cfg
	r := &result{
		URL: c.URL, Mode: c.Mode, Pairs: c.Pairs, Fanout: c.Fanout, Size: c.Size,
		DurationS: c.Duration.Seconds(), WarmupS: c.Warmup.Seconds(),
		Sent: l.sent.Load(), Received: l.received.Load(), Measured: l.measured.Load(),
		Errors: l.errs.Load(),
	}
	if c.Mode == ModeClosed {
		r.Inflight = c.Inflight
	} else {
		r.Rate = c.Rate
	}
	r.Lost = max(r.Sent*int64(max(c.Fanout, 1))-r.Received, 0)
	r.Throughput = math.Round(float64(r.Measured)/c.Duration.Seconds()*10) / 10
	r.LoadgenCPU = math.Round(cpuSeconds()*100) / 100
	if wall := time.Since(l.start).Seconds(); wall > 0 {
		r.LoadgenCPUCores = math.Round(r.LoadgenCPU/wall*100) / 100
	}
	l.errMu.Lock()
	if l.firstErr != nil {
		r.FirstError = l.firstErr.Error()
	}
	l.errMu.Unlock()
	l.mu.Lock()
	h := l.total
	ms := func(us int64) float64 { return float64(us) / 1000 }
	r.Latency = latency{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)),
		P95:   ms(h.ValueAtQuantile(95)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
		Mean:  math.Round(h.Mean()) / 1000,
	}
	l.mu.Unlock()
	return r
}

// write prints the human summary, then the JSON line.
func (r *result) write(w io.Writer) error {
	pace := fmt.Sprintf("at most %d in flight per pair", r.Inflight)
	if r.Mode == ModeRate {
		pace = fmt.Sprintf("%.0f msgs/s target", r.Rate)
	}
	fmt.Fprintf(w, "\n%s  mode=%s (%s)  pairs=%d  fanout=%d  body=%d B  duration=%gs after %gs warm-up\n",
		r.URL, r.Mode, pace, r.Pairs, r.Fanout, r.Size, r.DurationS, r.WarmupS)
	fmt.Fprintf(w, "throughput  %.1f msgs/s (%d messages received in the measured window)\n", r.Throughput, r.Measured)
	fmt.Fprintf(w, "latency     p50 %.3f ms  p95 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms  (%d samples)\n",
		r.Latency.P50, r.Latency.P95, r.Latency.P99, r.Latency.P999, r.Latency.Max, r.Latency.Count)
	fmt.Fprintf(w, "messages    sent %d  received %d  lost %d\n", r.Sent, r.Received, r.Lost)
	fmt.Fprintf(w, "stompload   %.2f CPU s (%.2f cores over the run)\n", r.LoadgenCPU, r.LoadgenCPUCores)
	fmt.Fprintf(w, "errors      %d", r.Errors)
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
