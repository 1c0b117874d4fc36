package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/relay"
	"github.com/stompgate/stompgate/relay/broker/stompconn"
)

func TestMain(m *testing.M) {
	code := m.Run()
	// testenv talks to the management API with http.DefaultClient.
	http.DefaultClient.CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// startEdge runs a relay server in process, relaying to the local RabbitMQ
// on a vhost of its own, and returns its ws:// URL.
func startEdge(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url, _ := startEdgeOn(t, ln, testenv.Vhost(t), nil)
	return url
}

// startEdgeOn runs a relay server on ln relaying to vhost, with extra
// EDGE_ variables, and returns its ws:// URL and a function that stops it
// (Close: every session gets ERROR shutting_down), which cleanup also calls.
func startEdgeOn(t *testing.T, ln net.Listener, vhost string, extra map[string]string) (string, func()) {
	t.Helper()
	env := map[string]string{
		"EDGE_JWT_HS256_SECRET": testenv.Secret,
		"EDGE_BROKER_ADDRS":     testenv.StompAddr,
		"EDGE_BROKER_LOGIN":     "guest",
		"EDGE_BROKER_PASSCODE":  "guest",
		"EDGE_BROKER_VHOST":     vhost,
		"EDGE_DRAIN_DELAY":      "0s",
		"EDGE_DRAIN_PERIOD":     "0s",
	}
	for k, v := range extra {
		env[k] = v
	}
	cfg, err := config.LoadEdge(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: []byte(cfg.JWTSecret), Leeway: cfg.JWTLeeway}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	origins, err := auth.NewOriginPolicy(cfg.AllowedOrigins, cfg.AllowMissingOrigin)
	if err != nil {
		t.Fatal(err)
	}
	srv := relay.NewServer(context.Background(), relay.Deps{
		Config:   cfg,
		Verifier: verifier,
		Origins:  origins,
		Broker: stompconn.New(stompconn.Config{
			Addrs: cfg.BrokerAddrs, Login: cfg.BrokerLogin, Passcode: cfg.BrokerPasscode, Vhost: cfg.BrokerVhost,
			Heartbeat: cfg.BrokerHeartbeat, Timeout: cfg.BrokerTimeout, MaxFrameBytes: cfg.BrokerMaxFrameBytes,
		}),
		Metrics: relay.NewMetrics(prometheus.NewRegistry()),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Version: "test",
	})
	mux := http.NewServeMux()
	srv.Routes(mux)
	hs := httptest.NewUnstartedServer(mux)
	hs.Listener.Close()
	hs.Listener = ln
	hs.Start()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			srv.Close()
			hs.Close()
		})
	}
	t.Cleanup(stop)
	return "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws", stop
}

// runLoad runs stompload with args and returns its final JSON line.
func runLoad(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, append([]string{"stompload"}, args...), func(k string) string { return env[k] }, &out)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r result
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("last line is not the JSON result: %v\n%s", err, out.String())
	}
	t.Logf("%s", out.String())
	return r
}

func checkDelivered(t *testing.T, r result) {
	t.Helper()
	if r.Errors != 0 {
		t.Errorf("errors = %d (first: %s), want 0", r.Errors, r.FirstError)
	}
	if r.Received == 0 || r.Measured == 0 || r.Latency.Count == 0 {
		t.Errorf("received %d, measured %d, latency samples %d; want > 0", r.Received, r.Measured, r.Latency.Count)
	}
	if r.Lost != 0 {
		t.Errorf("lost = %d, want 0", r.Lost)
	}
}

func TestRunThroughEdge(t *testing.T) {
	t.Parallel()
	url := startEdge(t)
	env := map[string]string{"STOMPLOAD_TOKEN_SECRET": testenv.Secret}
	for _, mode := range []string{"closed", "rate"} {
		t.Run(mode, func(t *testing.T) {
			r := runLoad(t, env, "--url", url, "--mode", mode, "--rate", "200", "--pairs", "2",
				"--duration", "2s", "--warmup", "200ms", "--quiet")
			checkDelivered(t, r)
		})
	}
}

func TestRunThroughWebSTOMP(t *testing.T) {
	testenv.Integration(t) // RabbitMQ's own Web-STOMP
	t.Parallel()
	url := "ws://127.0.0.1:15674/ws"
	r := runLoad(t, nil, "--url", url, "--login", "guest", "--passcode", "guest", "--vhost", "/",
		"--duration", "2s", "--warmup", "200ms")
	checkDelivered(t, r)
}

func TestConfigValidation(t *testing.T) {
	env := func(string) string { return "" }
	tests := []struct {
		name string
		args []string
		want []string // substrings of the error; none = valid
	}{
		{"token", []string{"--token-secret", "s"}, nil},
		{"login", []string{"--login", "guest", "--passcode", "guest", "--mode", "rate"}, nil},
		{"no credentials", nil, []string{"--token-secret"}},
		{"both credentials", []string{"--token-secret", "s", "--login", "g"}, []string{"exclusive"}},
		{"remote", []string{"--token-secret", "s", "--url", "ws://example.com/ws"}, []string{"not a loopback"}},
		{"remote allowed", []string{"--token-secret", "s", "--url", "ws://example.com/ws", "--allow-remote"}, nil},
		{"http scheme", []string{"--token-secret", "s", "--url", "http://127.0.0.1/ws"}, []string{"scheme"}},
		{"all reported together", []string{"--token-secret", "s", "--mode", "x", "--size", "8", "--duration", "0s", "--pairs", "0"},
			[]string{"--mode", "--size", "--duration", "--pairs"}},
		{"rate", []string{"--token-secret", "s", "--mode", "rate", "--rate", "0"}, []string{"--rate"}},
		{"inflight", []string{"--token-secret", "s", "--inflight", "0"}, []string{"--inflight"}},
		{"chat", []string{"--token-secret", "s", "--mode", "chat", "--users", "20", "--spike-users", "5"}, nil},
		{"chat bad", []string{"--token-secret", "s", "--mode", "chat", "--users", "0", "--think", "0s", "--users-per-room", "0"},
			[]string{"--users", "--think", "--users-per-room"}},
		{"storm", []string{"--token-secret", "s", "--mode", "storm", "--conns", "50"}, nil},
		{"storm drop", []string{"--token-secret", "s", "--mode", "storm", "--storm-drop", "--at", "1s"}, nil},
		{"storm drop needs at", []string{"--token-secret", "s", "--mode", "storm", "--storm-drop"}, []string{"--at"}},
		{"storm at needs drop", []string{"--token-secret", "s", "--mode", "storm", "--at", "1s"}, []string{"--storm-drop"}},
		{"storm backoff", []string{"--token-secret", "s", "--mode", "storm", "--backoff", "1s", "--max-backoff", "10ms"}, []string{"--max-backoff"}},
		{"room prefix", []string{"--token-secret", "s", "--mode", "chat", "--room-prefix", "a/b"}, []string{"--room-prefix"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig(append([]string{"stompload"}, tc.args...), env, io.Discard)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want one mentioning %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestStampRoundTrip(t *testing.T) {
	body := bytes.Repeat([]byte{'x'}, minBody)
	for _, d := range []time.Duration{0, 1, time.Second, 90 * time.Minute} {
		stampBody(body, d, 12345)
		got, ok := parseStamp(body)
		if !ok || got != d {
			t.Errorf("stamp %v: got %v, %v", d, got, ok)
		}
	}
	if _, ok := parseStamp([]byte("short")); ok {
		t.Error("short body parsed")
	}
}

func TestIdleThroughEdge(t *testing.T) {
	t.Parallel()
	url := startEdge(t)
	env := map[string]string{"STOMPLOAD_TOKEN_SECRET": testenv.Secret}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	// The edge runs in this process: its growth is stompload's own.
	err := run(ctx, []string{"stompload", "--url", url, "--mode", "idle", "--conns", "20", "--duration", "200ms",
		"--pids", fmt.Sprintf("self=%d", os.Getpid()), "--quiet"}, func(k string) string { return env[k] }, &out)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var r idleResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("last line is not the JSON result: %v\n%s", err, out.String())
	}
	t.Logf("%s", out.String())
	if r.Connected != 20 || r.Errors != 0 || len(r.Processes) != 1 || r.Processes[0].AfterKB == 0 {
		t.Fatalf("idle result %+v", r)
	}
}
