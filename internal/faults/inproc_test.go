package faults

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stompgate/stompgate/auth"
	"github.com/stompgate/stompgate/config"
	"github.com/stompgate/stompgate/internal/testenv"
	"github.com/stompgate/stompgate/relay"
	"github.com/stompgate/stompgate/relay/broker/amqplink"
	"github.com/stompgate/stompgate/relay/broker/stompconn"
)

// inprocEdge is an edge in the test process, wired as cmd/edge wires it
// (shared AMQP links, dedicated STOMP connections where needed, the broker
// prober), for what a child process cannot show: goroutines and heap.
type inprocEdge struct {
	srv     *relay.Server
	metrics *relay.Metrics
	links   *amqplink.Broker
	url     string
	stop    func()
}

func startInprocEdge(t *testing.T, vhost string, env map[string]string) *inprocEdge {
	t.Helper()
	vars := edgeEnv(vhost)
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.LoadEdge(testenv.Env(vars))
	if err != nil {
		t.Fatal(err)
	}
	origins, err := auth.NewOriginPolicy(cfg.AllowedOrigins, cfg.AllowMissingOrigin)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := auth.NewVerifier(auth.VerifierConfig{HS256Secret: []byte(cfg.JWTSecret), Leeway: cfg.JWTLeeway}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg := prometheus.NewRegistry()
	dedicated := stompconn.New(stompconn.Config{
		Addrs: cfg.BrokerAddrs, Login: cfg.BrokerLogin, Passcode: cfg.BrokerPasscode,
		Vhost: cfg.BrokerVhost, Heartbeat: cfg.BrokerHeartbeat, Timeout: cfg.BrokerTimeout,
		MaxFrameBytes: cfg.BrokerMaxFrameBytes,
	})
	links, err := amqplink.New(amqplink.Config{
		URLs: cfg.BrokerAMQPURLs, Links: cfg.BrokerLinks, MaxDedicated: cfg.MaxDedicated, Dedicated: dedicated,
		Name: "faults-" + t.Name(), Linger: cfg.BrokerLinger, Timeout: cfg.BrokerTimeout, Heartbeat: cfg.BrokerHeartbeat,
		MaxFrameBytes: cfg.BrokerMaxFrameBytes, Registerer: reg, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	m := relay.NewMetrics(reg)
	srv := relay.NewServer(context.Background(), relay.Deps{
		Config: cfg, Verifier: verifier, Origins: origins, Broker: links, Metrics: m, Logger: log, Version: "faults",
	})
	mux := http.NewServeMux()
	srv.Routes(mux)
	hs := httptest.NewServer(mux)
	probeCtx, stopProbe := context.WithCancel(context.Background())
	probed := make(chan struct{})
	go func() { srv.ProbeBroker(probeCtx, 5*time.Second); close(probed) }()
	e := &inprocEdge{srv: srv, metrics: m, links: links, url: "ws" + strings.TrimPrefix(hs.URL, "http") + "/ws"}
	e.stop = func() {
		srv.Close()
		hs.Close()
		stopProbe()
		<-probed
		links.Close()
		verifier.Close()
	}
	t.Cleanup(e.stop)
	return e
}
