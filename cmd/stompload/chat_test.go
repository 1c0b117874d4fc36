package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stompgate/stompgate/internal/testenv"
)

// lastJSON decodes out's last line into v.
func lastJSON(t *testing.T, out string, v any) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), v); err != nil {
		t.Fatalf("last line is not the JSON result: %v\n%s", err, out)
	}
}

func TestChatThroughEdge(t *testing.T) {
	t.Parallel()
	url := startEdge(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{"stompload", "--url", url, "--mode", "chat", "--users", "20", "--users-per-room", "5",
		"--think", "100ms", "--ramp", "1s", "--duration", "2s", "--spike-users", "5", "--spike-duration", "1s"},
		func(k string) string { return map[string]string{"STOMPLOAD_TOKEN_SECRET": testenv.Secret}[k] }, &out)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	t.Logf("%s", out.String())
	if !strings.Contains(out.String(), "sustained users=20") {
		t.Errorf("no progress line for the sustained phase with 20 users")
	}
	var r chatResult
	lastJSON(t, out.String(), &r)
	if r.Errors != 0 || len(r.ErrorsByCode) != 0 || len(r.ConnectFailures) != 0 {
		t.Errorf("errors %d by code %v connect failures %v (first: %s), want none", r.Errors, r.ErrorsByCode, r.ConnectFailures, r.FirstError)
	}
	if r.Connected != 25 || r.Rooms != 5 {
		t.Errorf("connected %d in %d rooms, want 25 in 5", r.Connected, r.Rooms)
	}
	// Every room has 5 members, so every message is due 5 times.
	if r.Sent == 0 || r.Expected != r.Sent*5 || r.Received != r.Expected || r.Lost != 0 {
		t.Errorf("sent %d expected %d received %d lost %d; want received = expected = sent × 5", r.Sent, r.Expected, r.Received, r.Lost)
	}
	if r.Latency.Count != r.Received || r.Latency.P50 <= 0 || r.Latency.Max < r.Latency.P99 {
		t.Errorf("latency %+v", r.Latency)
	}
	if len(r.Phases) != 3 {
		t.Fatalf("phases %+v, want ramp, sustained, spike", r.Phases)
	}
	var sum int64
	for i, p := range r.Phases {
		if p.Name != phaseNames[i] || p.Received != p.Expected || p.Latency.Count != p.Received {
			t.Errorf("phase %d: %+v", i, p)
		}
		if i > 0 && p.Sent == 0 {
			t.Errorf("phase %s sent nothing", p.Name)
		}
		sum += p.Sent
	}
	if sum != r.Sent {
		t.Errorf("phases sent %d in all, overall %d", sum, r.Sent)
	}
	// The JSON line carries the per-phase fields by name.
	var raw map[string]any
	lastJSON(t, out.String(), &raw)
	ph := raw["phases"].([]any)[2].(map[string]any)
	for _, k := range []string{"name", "sent", "expected", "received", "latency_ms"} {
		if _, ok := ph[k]; !ok {
			t.Errorf("phase JSON has no %q: %v", k, ph)
		}
	}
	for _, k := range []string{"p50", "p95", "p99", "max"} {
		if _, ok := ph["latency_ms"].(map[string]any)[k]; !ok {
			t.Errorf("phase latency JSON has no %q", k)
		}
	}
}

// syncBuffer is a bytes.Buffer that one goroutine writes while another reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls out until it contains want.
func waitFor(t *testing.T, out *syncBuffer, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q after %s:\n%s", want, d, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStormEdgeRestart connects 50 clients, stops the edge (every session
// gets ERROR shutting_down) and starts a new one on the same address that
// admits 10 connections/s (burst 20): the rest are refused with 503 and
// Retry-After, which the clients honour, until all are back.
func TestStormEdgeRestart(t *testing.T) {
	t.Parallel()
	vhost := testenv.Vhost(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	url, stop := startEdgeOn(t, ln, vhost, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"stompload", "--url", url, "--mode", "storm", "--conns", "50",
			"--duration", "60s", "--backoff", "100ms", "--max-backoff", "1s"},
			func(k string) string { return map[string]string{"STOMPLOAD_TOKEN_SECRET": testenv.Secret}[k] }, out)
	}()
	waitFor(t, out, "connected=50/50", 20*time.Second)
	stop()
	time.Sleep(200 * time.Millisecond) // nobody listens: the first attempts fail to dial
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	startEdgeOn(t, ln2, vhost, map[string]string{"EDGE_ACCEPT_RATE": "10"})
	if err := <-done; err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	t.Logf("%s", out.String())
	var r stormResult
	lastJSON(t, out.String(), &r)
	if r.Reconnected != 50 || r.Reconnects != 50 || r.Disconnects != 50 || r.Online != 50 {
		t.Errorf("reconnected %d clients, %d reconnects of %d disconnects, %d online; want 50 each", r.Reconnected, r.Reconnects, r.Disconnects, r.Online)
	}
	if r.DisconnectsBy["shutting_down"] != 50 {
		t.Errorf("disconnects by reason %v, want shutting_down=50", r.DisconnectsBy)
	}
	if l := r.Reconnect; l.Count != 50 || l.P50 <= 0 || l.P95 < l.P50 || l.P99 < l.P95 || l.Max < l.P99 {
		t.Errorf("reconnect distribution %+v", l)
	}
	if len(r.ErrorsByCode) != 0 {
		t.Errorf("errors by code %v, want none", r.ErrorsByCode)
	}
	for kind := range r.ConnectFailures {
		if kind != "http_503" && kind != "dial" {
			t.Errorf("connect failure %q (%v): only refusals and refused dials are expected", kind, r.ConnectFailures)
		}
	}
	if r.ConnectFailures["http_503"] == 0 || r.RetryAfter != r.ConnectFailures["http_503"] {
		t.Errorf("503 refusals %d, Retry-After honoured %d: want some, each honoured", r.ConnectFailures["http_503"], r.RetryAfter)
	}
}

// TestStormDrop: the clients drop their own connections at --at and all
// come back.
func TestStormDrop(t *testing.T) {
	t.Parallel()
	url := startEdge(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{"stompload", "--url", url, "--mode", "storm", "--conns", "20", "--storm-drop", "--at", "1s",
		"--duration", "30s", "--backoff", "50ms"},
		func(k string) string { return map[string]string{"STOMPLOAD_TOKEN_SECRET": testenv.Secret}[k] }, &out)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	t.Logf("%s", out.String())
	var r stormResult
	lastJSON(t, out.String(), &r)
	if r.Reconnected != 20 || r.DisconnectsBy["dropped"] != 20 || r.Reconnect.Count != 20 || r.Errors != 0 {
		t.Errorf("storm-drop result %+v", r)
	}
}
