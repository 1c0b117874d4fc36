package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-stomp/stomp/v3/frame"

	"github.com/stompgate/stompgate/stomp/stompws"
)

// idleResult is the idle mode's report; its JSON form is the last line.
type idleResult struct {
	URL       string        `json:"url"`
	Mode      Mode          `json:"mode"`
	Conns     int           `json:"conns"`     // sessions asked for
	Connected int           `json:"connected"` // sessions connected and subscribed
	HoldS     float64       `json:"hold_s"`
	Errors    int64         `json:"errors"`
	FirstErr  string        `json:"first_error,omitempty"`
	Processes []processRSS  `json:"processes,omitempty"`
	TotalPer  float64       `json:"total_bytes_per_session,omitempty"` // sum of the processes' growth / Connected
	Loadgen   loadgenMemory `json:"loadgen"`
}

type processRSS struct {
	Name       string  `json:"name"`
	PID        int     `json:"pid"`
	BeforeKB   int64   `json:"rss_before_kb"`
	AfterKB    int64   `json:"rss_after_kb"` // at the end of the hold
	PerSession float64 `json:"bytes_per_session"`
}

type loadgenMemory struct {
	RSSKB      int64   `json:"rss_kb"`
	CPUSeconds float64 `json:"cpu_s"`
}

// runIdle opens cfg.Conns sessions (16 at a time), each subscribed to
// cfg.Dest, holds them for cfg.Duration without sending, and reports the
// RSS growth of the watched processes per connected session.
func runIdle(ctx context.Context, cfg options, out io.Writer) (*idleResult, error) {
	r := &idleResult{URL: cfg.URL, Mode: ModeIdle, Conns: cfg.Conns, HoldS: cfg.Duration.Seconds()}
	before := make([]int64, len(cfg.PIDs))
	for i, p := range cfg.PIDs {
		kb, err := vmRSS(p.PID)
		if err != nil {
			return nil, fmt.Errorf("--pids %s=%d: %w", p.Name, p.PID, err)
		}
		before[i] = kb
	}
	conns := make([]*stompws.Conn, cfg.Conns)
	var (
		mu       sync.Mutex
		errs     int64
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, 16)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			c, err := dial(ctx, cfg, cfg.User+"-"+strconv.Itoa(i), 0)
			if err == nil {
				if err = subscribe(ctx, c, cfg.Dest, cfg.Timeout); err != nil {
					c.Close()
				}
			}
			if err != nil {
				mu.Lock()
				errs++
				if firstErr == nil {
					firstErr = fmt.Errorf("session %d: %w", i, err)
				}
				mu.Unlock()
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	var readers sync.WaitGroup
	for _, c := range conns {
		if c == nil {
			continue
		}
		r.Connected++
		readers.Add(1)
		go func() { defer readers.Done(); _ = c.ReadLoop(func(*frame.Frame, bool) error { return nil }, nil) }()
	}
	if !cfg.Quiet {
		fmt.Fprintf(out, "idle: %d of %d sessions connected and subscribed; holding %s\n", r.Connected, cfg.Conns, cfg.Duration)
	}
	t := time.NewTimer(cfg.Duration)
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	t.Stop()
	var total int64
	for i, p := range cfg.PIDs {
		kb, err := vmRSS(p.PID)
		if err != nil {
			return nil, fmt.Errorf("--pids %s=%d: %w", p.Name, p.PID, err)
		}
		pr := processRSS{Name: p.Name, PID: p.PID, BeforeKB: before[i], AfterKB: kb}
		if r.Connected > 0 {
			pr.PerSession = float64((kb-before[i])*1024) / float64(r.Connected)
		}
		total += kb - before[i]
		r.Processes = append(r.Processes, pr)
	}
	if r.Connected > 0 && len(cfg.PIDs) > 0 {
		r.TotalPer = float64(total*1024) / float64(r.Connected)
	}
	if kb, err := vmRSS(os.Getpid()); err == nil {
		r.Loadgen.RSSKB = kb
	}
	r.Loadgen.CPUSeconds = cpuSeconds()
	for _, c := range conns {
		if c != nil {
			_ = c.Disconnect(time.Second)
			c.Close()
		}
	}
	readers.Wait()
	r.Errors = errs
	if firstErr != nil {
		r.FirstErr = firstErr.Error()
	}
	runtime.KeepAlive(conns)
	return r, nil
}

// vmRSS reads a process's resident set size in KiB (/proc/<pid>/status).
func vmRSS(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS line")
}

func (r *idleResult) write(w io.Writer) error {
	fmt.Fprintf(w, "\n%s  mode=idle  sessions=%d of %d  held %gs  errors=%d", r.URL, r.Connected, r.Conns, r.HoldS, r.Errors)
	if r.FirstErr != "" {
		fmt.Fprintf(w, " (first: %s)", r.FirstErr)
	}
	fmt.Fprintln(w)
	for _, p := range r.Processes {
		fmt.Fprintf(w, "%-10s pid %d  RSS %d → %d KiB  %.0f bytes per session\n", p.Name, p.PID, p.BeforeKB, p.AfterKB, p.PerSession)
	}
	if len(r.Processes) > 0 {
		fmt.Fprintf(w, "total      %.0f bytes per session\n", r.TotalPer)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}
